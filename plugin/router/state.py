"""Atomic, durable save / load of router state beside the collection.

``router.npz`` is the committed state; ``router.next.npz`` a build's staged state, promoted once the
collection metadata names that build (``router_id``: the commit point, see ``Router.build``). Files are
written through :func:`plugin.fsutil.atomic_write` (temporary file, fsync, rename, fsync of the
directory; the temporary file is removed on failure), so a crash mid-write leaves the previous state.
The state is derived: the store's ``leaf`` payloads are the truth, and ``Router.open`` repairs a state
that lags behind them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from plugin.errors import RouterError
from plugin.fsutil import atomic_write, fsync_dir

STATE_FILE = "router.npz"
STAGED_FILE = "router.next.npz"
FORMAT_VERSION = 1


def state_path(store) -> Path:
    return Path(store.state_dir()) / STATE_FILE


def staged_path(store) -> Path:
    return Path(store.state_dir()) / STAGED_FILE


def save_state(path: Path, meta: dict, arrays: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = np.asarray(json.dumps({**meta, "format": FORMAT_VERSION}))
    # streamed into the file: building the 30-50 MB archive in memory first took about half of a save
    atomic_write(path, lambda f: np.savez(f, __meta__=header, **arrays))


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


def commit_staged(store) -> None:
    """Promote a committed build's staged state to ``router.npz`` (rename + directory fsync)."""
    os.replace(staged_path(store), state_path(store))
    fsync_dir(state_path(store).parent)


def load_committed(store) -> tuple[dict, dict]:
    """The state of the build the collection metadata names, finishing or discarding a staged build.

    A staged file whose build committed (metadata names it) is promoted; one whose build never
    committed (a crash mid-rebuild) is deleted, and the previous ``router.npz`` is used.
    """
    want = store.get_meta().get("router_id")
    staged = staged_path(store)
    if staged.is_file():
        try:
            staged_id = load_state(staged)[0].get("router_id")
        except RouterError:
            staged_id = None
        if staged_id is not None and staged_id == want:
            commit_staged(store)
        else:
            staged.unlink()
            fsync_dir(staged.parent)
    meta, arrays = load_state(state_path(store))
    if meta.get("router_id") != want or meta.get("collection") != store.name:
        raise RouterError(
            f"router file {state_path(store)} belongs to another collection or build "
            f"({meta.get('collection')}/{meta.get('router_id')}, expected {store.name}/{want}): "
            "rebuild with `hsearch build`")
    return meta, arrays
