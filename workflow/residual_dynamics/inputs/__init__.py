"""What goes into a recording: datasets, synthetic tasks, model loading, training."""
