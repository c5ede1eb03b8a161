"""Writing results so that a reader never sees half of one: build at ``<name>.partial``, then
move into place. An interrupted job leaves only the ``.partial`` behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def partial_path(path: Path | str) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


def move_into_place(tmp: Path | str, path: Path | str) -> None:
    """Rename a finished file or directory over ``path`` (an older result there is replaced)."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    os.replace(tmp, path)


def write_text_atomic(path: Path | str, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    tmp.write_text(text, encoding="utf-8")
    move_into_place(tmp, path)
