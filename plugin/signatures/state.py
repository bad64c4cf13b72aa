"""The semantics engine's state on disk: ``signatures.npz`` in the collection's state directory, written
atomically and durably (:func:`plugin.fsutil.atomic_write_bytes`), read without pickle.

Saved: the searched hierarchy (wnids, parents, counts), every node's signatures (representative
vectors, DC, cluster sizes and member sums) with how they were made (images, sample, clusters,
seconds, a fingerprint of the member ids), the build parameters, the feature blocks and the collection
it belongs to. The VP-trees are not saved: they are rebuilt from the signatures on load (a few per
synset), so they cannot disagree with them.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from plugin.errors import HSearchError
from plugin.fsutil import atomic_write_bytes

STATE_FILE = "signatures.npz"
FORMAT = 1


class SignaturesError(HSearchError):
    """The signatures of a collection are missing, stale or belong to another collection."""


def state_path(store) -> Path:
    return Path(store.state_dir()) / STATE_FILE


def to_bytes(arrays: dict, meta: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, meta_json=np.array(json.dumps({**meta, "format": FORMAT})), **arrays)
    return buf.getvalue()


def write(path, arrays: dict, meta: dict) -> None:
    atomic_write_bytes(path, to_bytes(arrays, meta))


def read(path) -> tuple[dict, dict]:
    path = Path(path)
    if not path.exists():
        raise SignaturesError(f"no signatures at {path}: run `hsearch signatures build` for this collection first")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta_json")))
    except Exception as e:  # truncated / foreign file
        raise SignaturesError(f"cannot read signatures state {path}: {e}") from None
    if meta.get("format") != FORMAT:
        raise SignaturesError(f"signatures state {path} has format {meta.get('format')}, expected {FORMAT}: rebuild it")
    return arrays, meta
