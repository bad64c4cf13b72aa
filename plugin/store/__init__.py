"""Where vectors live: one :class:`Store` interface, an embedded and a server implementation."""
from __future__ import annotations

import os

from plugin.store.base import Filter, Hit, Record, Store


def open_store(location: str | os.PathLike, dim: int | None = None, distance: str = "cosine",
               collection: str | None = None, api_key: str | None = None) -> Store:
    """Open (or, given ``dim``, create) a collection.

    ``location`` is a directory (embedded qdrant-edge, the default), an ``http(s)://`` URL of a Qdrant
    server (``collection`` names the collection there; ``api_key`` or ``$QDRANT_API_KEY``), or
    ``:memory:`` (qdrant-client local mode, for tests).
    """
    loc = str(location)
    if loc.startswith(("http://", "https://")) or loc == ":memory:":
        from plugin.store.server import ServerStore

        name = collection or "images"
        if loc == ":memory:":
            return ServerStore(name, dim, distance, location=":memory:")
        return ServerStore(name, dim, distance, url=loc, api_key=api_key or os.environ.get("QDRANT_API_KEY"))
    from plugin.store.edge import EdgeStore

    path = os.path.join(loc, collection) if collection else loc
    return EdgeStore(path, dim, distance)


__all__ = ["Filter", "Hit", "Record", "Store", "open_store"]
