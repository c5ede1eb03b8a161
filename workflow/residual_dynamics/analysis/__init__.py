"""Analyses of recorded stores: unit means, transitions, mutual information, rotations,
PCA, the compressing autoencoder, perturbations that re-enter the model, the Dask cluster."""
