"""The config: its schema and vocabulary (``schema``), validation (``validate``) and generated
docs (``doc``)."""
