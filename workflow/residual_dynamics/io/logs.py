"""Logging for rule scripts: everything (logs, progress bars, tracebacks) goes to the rule's log."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(log_path: str | Path | None, level: int = logging.INFO) -> None:
    """Send logging and stderr to ``log_path`` so the rule's log holds the whole story."""
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (lives as long as the job)
        sys.stderr = stream
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
