"""One semantics engine per collection and process, shared by the ``semantic`` search mode, the demo and
ingestion, so an ingest's :meth:`~plugin.signatures.engine.SemanticsEngine.add` is what the next query
reads (no second copy left behind).

The engine is loaded once per version of the collection's ``signatures.npz`` and reloaded when the file
changes under it (another process rebuilt it); :func:`remember` records a save made through the shared
engine itself, so that save does not cause a reload.
"""
from __future__ import annotations

import os
import threading

from plugin.signatures.engine import SemanticsEngine
from plugin.signatures.state import state_path

_cache: dict = {}  # state path -> (file mtime_ns or None, engine)
_cache_lock = threading.Lock()


def _stamp(path):
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


def has_signatures(store) -> bool:
    return state_path(store).exists()


def engine_for(store) -> SemanticsEngine:
    """The collection's engine, loaded once per version of its state file (a missing file raises
    :class:`~plugin.signatures.state.SignaturesError` saying how to build it)."""
    path = state_path(store)
    stamp = _stamp(path)
    key = str(path)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] == stamp and hit[1].store is store:
            return hit[1]
    eng = SemanticsEngine.load(path, store)
    with _cache_lock:
        _cache[key] = (stamp, eng)
    return eng


def remember(store, eng: SemanticsEngine) -> None:
    """``eng`` has just saved the collection's state file: it stays the shared engine for that version."""
    path = state_path(store)
    with _cache_lock:
        _cache[str(path)] = (_stamp(path), eng)
