"""Where vectors live: one :class:`Store` interface, an embedded and a server implementation."""
from __future__ import annotations

import os

from plugin.store.base import Filter, Hit, Record, Store


def open_store(location: str | os.PathLike, dim: int | None = None, distance: str = "cosine",
               collection: str | None = None, api_key: str | None = None, read_replicas: int = 0) -> Store:
    """Open (or, given ``dim``, create) a collection.

    ``location`` is a directory (embedded qdrant-edge, the default), an ``http(s)://`` URL of a Qdrant
    server (``collection`` names the collection there; ``api_key`` or ``$QDRANT_API_KEY``), or
    ``:memory:`` (qdrant-client local mode, for tests).

    ``read_replicas`` (embedded only): worker processes scoring parts of large batches on copies of
    the collection (:mod:`plugin.store.replicas`). A Qdrant server scores concurrent requests on its
    own threads, so it has no use for them and they are refused there.
    """
    loc = str(location)
    if loc.startswith(("http://", "https://")) or loc == ":memory:":
        from plugin.errors import HSearchError
        from plugin.store.server import ServerStore

        if read_replicas:
            raise HSearchError("read replicas are for the embedded engine: a Qdrant server scores concurrent "
                               "requests on its own threads (add server replicas with replication_factor)")
        name = collection or "images"
        if loc == ":memory:":
            return ServerStore(name, dim, distance, location=":memory:")
        return ServerStore(name, dim, distance, url=loc, api_key=api_key or os.environ.get("QDRANT_API_KEY"))
    from plugin.store.edge import EdgeStore

    path = os.path.join(loc, collection) if collection else loc
    return EdgeStore(path, dim, distance, read_replicas=read_replicas)


__all__ = ["Filter", "Hit", "Record", "Store", "open_store"]
