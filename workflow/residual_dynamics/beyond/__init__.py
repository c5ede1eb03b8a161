"""Beyond the paper: the residual stream's local dynamics, basis-free, on every recording beside
its untrained twin.

The measurements live in ``analysis`` (``layer_geometry``, ``jacobians`` and ``local_dynamics``,
``layer_ablation``); here: ``config`` (which recordings, the config checks), ``summary`` (the
numbers and verdicts), ``figures`` and ``section`` (the report section "Beyond the paper")."""
