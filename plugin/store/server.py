"""ServerStore: a Qdrant server reached through ``qdrant-client`` (URL + optional API key).

``location=":memory:"`` (or ``path=...``) gives qdrant-client's local mode, which has the same API as
the server and is what the tests use for this code path (it is pure NumPy: fine for tests, slow at
scale; see docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import json
import os


from plugin.errors import CollectionExistsError, CollectionNotFoundError, HSearchError
from plugin.store.base import DISTANCES, Filter, Hit, NoFacetIndex, Store, to_record, translate_filter


def _models():
    from qdrant_client import models

    return models


def _client_filter(f: Filter | None):
    return translate_filter(_models(), f)


class ServerStore(Store):
    """A collection on a Qdrant server (or in qdrant-client's local mode)."""

    def __init__(self, collection: str, dim: int | None = None, distance: str = "cosine", *,
                 url: str | None = None, api_key: str | None = None, location: str | None = None,
                 path: str | None = None, client=None, timeout: int = 60):
        from qdrant_client import QdrantClient

        m = _models()
        self.name = collection
        self._meta: dict = {}
        self._state_dir = None
        self._where = url or path or location or ":memory:"
        self._owns_client = client is None
        if client is None:
            if url:
                client = QdrantClient(url=url, api_key=api_key, timeout=timeout)
            elif path:
                client = QdrantClient(path=path)
            else:
                client = QdrantClient(location=location or ":memory:")
        self.client = client
        try:
            exists = client.collection_exists(collection)
        except Exception as e:
            raise CollectionNotFoundError(f"cannot reach Qdrant at {url or location or path}: {e}") from None
        if exists:
            params = client.get_collection(collection).config.params.vectors
            have_dim = int(params.size)
            have_dist = {"Cosine": "cosine", "Dot": "dot", "Euclid": "euclid"}[str(params.distance.value)]
            if dim is not None and int(dim) != have_dim:
                raise CollectionExistsError(
                    f"collection '{collection}' has dimension {have_dim}, not {dim}")
            if dim is not None and distance != have_dist:
                raise CollectionExistsError(f"collection '{collection}' uses {have_dist} distance, not {distance}")
            self.dim, self.distance = have_dim, have_dist
        elif dim is None:
            raise CollectionNotFoundError(f"collection '{collection}' does not exist on the Qdrant server")
        else:
            if distance not in DISTANCES:
                raise HSearchError(f"unknown distance '{distance}', expected one of {DISTANCES}")
            self.dim, self.distance = int(dim), distance
            dist = {"cosine": m.Distance.COSINE, "dot": m.Distance.DOT, "euclid": m.Distance.EUCLID}[distance]
            client.create_collection(collection, vectors_config=m.VectorParams(size=self.dim, distance=dist))
            self.ensure_partition_indexes()
        self.routed_layout = self._read_layout()  # read once: a search must not cost a round trip more

    def _upsert(self, ids, vectors, payloads):
        m = _models()
        self.client.upsert(self.name, points=m.Batch(ids=[int(i) for i in ids], vectors=vectors.tolist(),
                                                     payloads=payloads), wait=True)

    def _delete(self, ids):
        m = _models()
        if len(ids):
            self.client.delete(self.name, points_selector=m.PointIdsList(points=[int(i) for i in ids]), wait=True)

    def _set_payload(self, ids, payload):
        if len(ids):
            self.client.set_payload(self.name, payload=payload, points=[int(i) for i in ids], wait=True)

    def _search_batch(self, vectors, k, filters, exact, hnsw_ef, with_payload, oversampling=None):
        m = _models()
        if oversampling is not None:  # routed layout (no graph): the server scans the int8 copy, rescores
            params = m.SearchParams(exact=False, quantization=m.QuantizationSearchParams(
                rescore=True, oversampling=oversampling))
        else:
            params = m.SearchParams(exact=bool(exact), hnsw_ef=hnsw_ef)
        reqs = [m.QueryRequest(query=v.tolist(), limit=k, filter=_client_filter(f), params=params,
                               with_payload=with_payload) for v, f in zip(vectors, filters)]
        out = self.client.query_batch_points(self.name, requests=reqs)
        return [[Hit(int(p.id), float(p.score), p.payload or {}) for p in res.points] for res in out]

    def _retrieve(self, ids, with_vectors):
        recs = self.client.retrieve(self.name, ids=[int(i) for i in ids], with_payload=True,
                                    with_vectors=bool(with_vectors))
        by_id = {int(r.id): r for r in recs}
        return [to_record(by_id[int(i)], with_vectors) for i in ids if int(i) in by_id]

    def _scroll_page(self, offset, limit, filter, with_payload, with_vectors):
        return self.client.scroll(self.name, limit=limit, offset=offset, scroll_filter=_client_filter(filter),
                                  with_payload=with_payload, with_vectors=with_vectors)

    def count(self, filter: Filter | None = None) -> int:
        return int(self.client.count(self.name, count_filter=_client_filter(filter), exact=True).count)

    def _facet(self, key, filter, limit):
        """The server's facet needs a payload index on ``key`` (local mode counts without one)."""
        from qdrant_client.http.exceptions import UnexpectedResponse

        try:
            res = self.client.facet(self.name, key, facet_filter=_client_filter(filter), limit=limit, exact=True)
        except UnexpectedResponse as e:  # HTTP 400 "Index required but not found" for an unindexed field
            if e.status_code == 400 and "index" in str(e).lower():
                raise NoFacetIndex(key) from None
            raise
        return {h.value: int(h.count) for h in res.hits}

    def _read_layout(self) -> bool:
        """The collection's own config says: no HNSW graph (m=0) and a quantized copy."""
        cfg = self.client.get_collection(self.name).config
        return getattr(cfg.hnsw_config, "m", 16) == 0 and cfg.quantization_config is not None

    def cluster_by(self, field: str = "leaf") -> dict:
        """The routed layout on a server, the same settings as the embedded one (``EdgeStore.cluster_by``):
        ``field`` indexed with ``is_principal=True`` (the server co-locates points by it when it
        optimizes segments), the HNSW graph off (``m=0``), an int8 copy of the vectors in RAM. The
        server applies it in the background (its optimizers); searches stay correct meanwhile.
        qdrant-client's local mode accepts these calls and ignores them (it is brute force in NumPy),
        so here only a real server shows their effect."""
        m = _models()
        self.client.update_collection(
            self.name, hnsw_config=m.HnswConfigDiff(m=0),
            quantization_config=m.ScalarQuantization(scalar=m.ScalarQuantizationConfig(
                type=m.ScalarType.INT8, quantile=0.99, always_ram=True)))
        self.client.create_payload_index(self.name, field_name=field, wait=True, field_schema=m.IntegerIndexParams(
            type=m.IntegerIndexType.INTEGER, lookup=True, range=False, is_principal=True))
        self.routed_layout = self._read_layout()
        return {"clustered": True, "routed_layout": self.routed_layout}

    def create_payload_index(self, field_name: str, kind: str) -> None:
        m = _models()
        schema = {"integer": m.PayloadSchemaType.INTEGER, "keyword": m.PayloadSchemaType.KEYWORD}[kind]
        self.client.create_payload_index(self.name, field_name=field_name, field_schema=schema, wait=True)

    def state_dir(self):
        """``$HSEARCH_HOME/server-state/<server>/<collection>``; a fresh temp dir for ``:memory:``."""
        if self._state_dir is None:
            import re
            import tempfile

            from plugin import config

            if self._where == ":memory:":
                self._state_dir = tempfile.mkdtemp(prefix=f"hsearch-{self.name}-")
            else:
                self._state_dir = str(config.home() / "server-state" / re.sub(r"[^A-Za-z0-9_.-]+", "_", self._where)
                                      / self.name)
                os.makedirs(self._state_dir, exist_ok=True)
        return self._state_dir

    def _meta_file(self):
        return None if self._where == ":memory:" else os.path.join(self.state_dir(), "meta.json")

    def get_meta(self) -> dict:
        """Kept in ``meta.json`` in :meth:`state_dir` (qdrant-client's local mode has no collection metadata,
        and the router state lives there too); in memory for ``:memory:``."""
        path = self._meta_file()
        if path and os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        return dict(self._meta)

    def update_meta(self, **values) -> None:
        meta = {**self.get_meta(), **values}
        self._meta = meta
        path = self._meta_file()
        if path:
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(meta, f)
            os.replace(tmp, path)

    def flush(self) -> None:
        pass  # the server persists on its own; local mode writes on every call

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
        if self._owns_client and self._where == ":memory:" and self._state_dir is not None:
            import shutil

            shutil.rmtree(self._state_dir, ignore_errors=True)  # a memory collection's state dies with it
            self._state_dir = None
