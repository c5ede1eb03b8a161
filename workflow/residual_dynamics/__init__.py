"""residual_dynamics: the transformer residual stream as a dynamical system across layers.

The importable library behind the Snakemake workflow: config validation, datasets, model loading,
hook points, activation stores, analyses, figures and the report. Nothing here reads Snakemake
objects; the scripts in workflow/scripts/ translate between the two.
"""

__version__ = "0.1.0"
