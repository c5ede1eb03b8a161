"""Reading and writing: the activation store, atomic writes, checkpoints, logs."""
