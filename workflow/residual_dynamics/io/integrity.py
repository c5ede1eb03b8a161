"""Every chunk read from an activation store is checked: a changed, truncated or missing chunk file
is an error that names the store and how to redo it, never a silent number.

Stores written since the checksum was added carry Zarr v3's ``crc32c`` codec as the last codec of
``resid`` (4 bytes of CRC-32C after the compressed chunk). Zarr checks it too, but its error names
neither the file nor the fix, and a missing chunk file reads as the fill value (NaN) without a
word. :class:`CheckedLocalStore` is the store :func:`residual_dynamics.io.store.open_store` opens:
it verifies the checksum of every ``resid`` chunk on the raw bytes as they come off the disk and
refuses a chunk file that is absent. Older stores (no ``crc32c`` codec) are read as before, with a
warning that a flipped byte inside them would go unnoticed and how to rewrite them.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import google_crc32c
import numpy as np
from zarr.storage import LocalStore

log = logging.getLogger(__name__)

CHECKSUM_CODEC = "crc32c"
CHECKED_ARRAY = "resid"
CHUNK_KEY = re.compile(r"^([^/]+)/c(/|$)")
DAMAGE = "A disk or copy that damages files may do it again: check it first"


class StoreError(ValueError):
    """A store is missing, incomplete, corrupt, or was written by an incompatible version.
    (Defined here so that the corruption error below is one; ``io.store`` exports it.)"""


class StoreCorruptError(StoreError):
    """A store's chunk file was changed, truncated or deleted after the store was written."""


def redo_hint(path: Path, attrs: dict) -> str:
    """How to rebuild the store at ``path``: which directory to delete and which rule reruns."""
    if attrs.get("control"):
        rule = "control_store (the control is synthesised again from its recording)"
    elif path.parent.name.endswith(".shards"):
        rule = "extract_activations for this shard"
    else:
        rule = "extract_activations and merge_shards (the shard stores are temporary)"
    return f"Delete {path} (rm -r) and rerun the same snakemake command: it redoes {rule}"


def array_codecs(path: Path, array: str = CHECKED_ARRAY) -> list[str]:
    """Names of the codecs of one array of the store at ``path`` (from its zarr.json)."""
    meta = path / array / "zarr.json"
    if not meta.exists():
        return []
    return [c.get("name") for c in json.loads(meta.read_text()).get("codecs", [])]


def has_checksum(path: Path, array: str = CHECKED_ARRAY) -> bool:
    return CHECKSUM_CODEC in array_codecs(Path(path), array)


def crc32c_ok(raw: bytes | memoryview | np.ndarray) -> bool:
    """Whether bytes that end with a little-endian CRC-32C of what precedes it are intact."""
    data = np.frombuffer(raw, dtype=np.uint8)
    if data.size < 4:
        return False
    stored = int(data[-4:].view("<u4")[0])
    return google_crc32c.value(data[:-4]) == stored


class CheckedLocalStore(LocalStore):
    """A read-only LocalStore that checks every chunk of ``resid`` before Zarr decodes it.

    ``hint`` is the sentence that tells how to redo the store (:func:`redo_hint`); it travels
    with the store when Dask pickles it for its workers.
    """

    def __init__(self, root: Path | str, *, read_only: bool = True, hint: str = "") -> None:
        super().__init__(root, read_only=read_only)
        self.hint = hint
        self._checked: dict[str, bool] = {}

    def with_read_only(self, read_only: bool = False) -> CheckedLocalStore:
        return type(self)(root=self.root, read_only=read_only, hint=self.hint)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, type(self)) and self.root == other.root

    def __hash__(self) -> int:
        return hash((type(self), self.root))

    def __getstate__(self) -> dict:
        return {"root": str(self.root), "read_only": self.read_only, "hint": self.hint}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"], read_only=state["read_only"], hint=state["hint"])

    def _has_checksum(self, array: str) -> bool:
        if array not in self._checked:
            self._checked[array] = has_checksum(self.root, array)
        return self._checked[array]

    async def get(self, key, prototype=None, byte_range=None):
        buffer = await super().get(key, prototype, byte_range)
        chunk = CHUNK_KEY.match(key)
        if chunk is None or byte_range is not None or not self._has_checksum(chunk[1]):
            return buffer
        if buffer is None:
            if chunk[1] != CHECKED_ARRAY:
                return buffer  # a per-row chunk of zeros is legitimately never written
            raise StoreCorruptError(
                f"activation store {self.root}: chunk file {key} is missing (deleted or copied "
                f"incompletely; the writer writes every chunk); it would read as NaN. {self.hint}. "
                f"{DAMAGE}"
            )
        if not crc32c_ok(buffer.as_numpy_array()):
            raise StoreCorruptError(
                f"activation store {self.root}: chunk file {key} ({len(buffer)} bytes) fails its "
                "crc32c checksum: it was truncated or changed after it was written, so its "
                f"numbers cannot be trusted and none were read. {self.hint}. {DAMAGE}"
            )
        return buffer
