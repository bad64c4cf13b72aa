"""Atomic save / load of router state (``router.npz`` in the collection's state directory).

The file is written to a temporary name, fsynced, then ``os.replace``d: a crash mid-write leaves the
previous state intact. The state is derived data — the store's ``leaf`` payloads are the truth — so a
state that lags behind the store (a crash between a store write and a state save) is repaired by
``Router.reconcile()`` when opened.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from plugin.errors import RouterError

STATE_FILE = "router.npz"
FORMAT_VERSION = 1


def state_path(store) -> Path:
    return Path(store.state_dir()) / STATE_FILE


def save_state(path: Path, meta: dict, arrays: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, __meta__=np.asarray(json.dumps({**meta, "format": FORMAT_VERSION})), **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_state(path: Path) -> tuple[dict, dict]:
    path = Path(path)
    if not path.is_file():
        raise RouterError(f"no router at {path}: run `hsearch build` (Router.build) first")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
    except Exception as e:
        raise RouterError(f"router file {path} is unreadable ({e}); rebuild it with `hsearch build`") from None
    if meta.get("format") != FORMAT_VERSION:
        raise RouterError(f"router file {path} has format {meta.get('format')}, expected {FORMAT_VERSION}: rebuild")
    return meta, arrays
