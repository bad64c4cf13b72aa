"""EdgeStore: the real Qdrant engine in-process (``qdrant-edge-py``), the embedded default.

One collection is one directory::

    <path>/collection.json   name, dim, distance, created (our metadata; Edge has no collection manager)
    <path>/shard/            the EdgeShard (segments + WAL)

Creation and ``cluster_by`` write beside these (``collection.json.creating``, ``shard.next``, ...) and commit
by a rename followed by a directory fsync; a crash at any step leaves the collection complete or, for a
creation, cleanly absent (see ``_create`` and ``_recover_rewrite``).

Only one ``EdgeShard`` may hold a directory open at a time (its WAL takes an exclusive lock); a
second opener gets :class:`StoreLockedError` instead of the engine's ``WouldBlock``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from plugin.errors import CollectionExistsError, CollectionNotFoundError, HSearchError, StoreLockedError
from plugin.fsutil import atomic_write_bytes, fsync_dir, fsync_tree
from plugin.store import replicas
from plugin.store.base import DISTANCES, Filter, Hit, NoFacetIndex, Store, leaf_condition, to_record, translate_filter

META_FILE = "collection.json"
#: Segments above this size (KB) are optimized (co-located by the principal field, quantized) by
#: ``optimize()`` in the routed layout; the engine's default (10 MB) would leave small collections raw.
ROUTED_INDEXING_THRESHOLD_KB = 1
#: Threads in the engine's per-shard search pool (``EdgeConfig.max_search_threads``; 0 = the engine's
#: CPU-derived default, 8 threads on this 2-core machine). The pool runs a query's per-segment reads in
#: parallel, and our collections are one optimized segment plus an empty appendable one, so there is
#: nothing to run in parallel while every query still pays for the handoff: one thread cut the
#: engine's fixed cost per query (an empty-filter call) and both the routed and the HNSW query times
#: (docs/results/anatomy-fashion-mnist.md, "search pool"). A collection with many large segments on a
#: many-core machine may want 0.
SEARCH_THREADS = 1
CREATING_FILE = "collection.json.creating"  # a creation in progress: renamed to META_FILE when it completes
log = logging.getLogger(__name__)


def _sort_key(v):
    return (0, v) if isinstance(v, (int, float)) else (1, str(v))


def _qe():
    import qdrant_edge

    return qdrant_edge


def _distance(qe, name: str):
    return {"cosine": qe.Distance.Cosine, "dot": qe.Distance.Dot, "euclid": qe.Distance.Euclid}[name]


def _points(qe, ids, vectors, payloads) -> list:
    """The engine's points for rows of ``vectors`` (made float32 and C-contiguous once, here). The binding
    reads a vector one element at a time, and a memoryview of the row is the cheapest thing to read: 16.9
    us per 1280-d point against 22.2 from an ``array('f')``, 23.4 from a list and 52.6 from the NumPy row
    (2000 points, measured); at 10% growth of 60k Fashion-MNIST, building the points was 0.11 s of
    router.add's 0.35 s with ``array('f')``."""
    rows = np.ascontiguousarray(vectors, np.float32)
    return [qe.Point(int(i), memoryview(v), p) for i, v, p in zip(ids, rows, payloads)]


def _edge_filter(qe, f: Filter | None):
    return translate_filter(qe, f)


class EdgeStore(Store):
    """A collection stored in a local directory through qdrant-edge.

    ``EdgeStore(path)`` opens an existing collection; ``EdgeStore(path, dim=512)`` opens it or creates
    it if missing (and checks ``dim``/``distance`` agree when it exists).
    """

    def __init__(self, path: str | os.PathLike, dim: int | None = None, distance: str = "cosine",
                 hnsw_m: int | None = None, max_search_threads: int = SEARCH_THREADS, read_replicas: int = 0):
        """``hnsw_m``: the HNSW graph's edges per node for a new collection (None: the engine's default).
        ``max_search_threads``: the engine's search pool for this opener (see :data:`SEARCH_THREADS`);
        the engine records it in the shard's ``edge_config.json``, and every open sets it again.
        ``read_replicas``: worker processes that score parts of large batches on copies of the
        collection (:mod:`plugin.store.replicas`; :meth:`set_read_replicas`)."""
        qe = _qe()
        if isinstance(max_search_threads, bool) or int(max_search_threads) != max_search_threads \
                or max_search_threads < 0:
            raise HSearchError(f"max_search_threads must be an integer >= 0 (0: the engine's default), "
                               f"got {max_search_threads!r}")
        self._hnsw_m = hnsw_m
        self._search_threads = int(max_search_threads)
        self._params_cache: dict = {}  # (exact, hnsw_ef, oversampling) -> SearchParams (see _params)
        self._replicas = None
        #: writes made through this opener: read replicas copy the collection again when it moved
        self.writes = 0
        self.path = Path(path)
        self.name = self.path.name
        meta_path = self.path / META_FILE
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if dim is not None and int(dim) != meta["dim"]:
                raise CollectionExistsError(
                    f"collection '{self.name}' at {self.path} has dimension {meta['dim']}, not {dim}: "
                    "use another collection name or the encoder it was built with")
            if dim is not None and distance != meta["distance"]:
                raise CollectionExistsError(
                    f"collection '{self.name}' uses {meta['distance']} distance, not {distance}")
            self.dim, self.distance = int(meta["dim"]), meta["distance"]
            (self.path / (META_FILE + ".tmp")).unlink(missing_ok=True)  # an interrupted update_meta
            self._recover_rewrite()
            self._shard = self._load(qe)
            self.routed_layout = self._read_layout()
            # copies a crashed process's read replicas left (they were never the truth; ours holds the lock)
            shutil.rmtree(self.path / replicas.REPLICAS_DIR, ignore_errors=True)
        elif dim is None:
            unfinished = " (an interrupted creation left files there; creating it again replaces them)" \
                if (self.path / CREATING_FILE).exists() or (self.path / "shard").exists() else ""
            raise CollectionNotFoundError(
                f"no collection at {self.path}{unfinished}: run `hsearch ingest` first or check --store")
        else:
            if distance not in DISTANCES:
                raise HSearchError(f"unknown distance '{distance}', expected one of {DISTANCES}")
            if int(dim) < 1:
                raise HSearchError(f"vector dimension must be >= 1, got {dim}")
            self.dim, self.distance = int(dim), distance
            self._create(qe)
        self._closed = False
        if read_replicas:
            self.set_read_replicas(read_replicas)

    def set_read_replicas(self, n: int) -> None:
        """Score batches of at least :data:`replicas.MIN_BATCH` queries across this process and ``n``
        worker processes, each holding a copy of the collection (copied on the first such batch and
        again after writes); 0 stops them and removes the copies. Results are the same as without
        them; what they buy on 2 cores is in docs/results/hkm-fashion-mnist.md (batched rows)."""
        if isinstance(n, bool) or int(n) != n or n < 0:
            raise HSearchError(f"read_replicas must be an integer >= 0, got {n!r}")
        if self._replicas is not None:
            self._replicas.close()
            self._replicas = None
        if n:
            self._replicas = replicas.ReadReplicas(self, int(n))

    @property
    def read_replicas(self) -> int:
        return 0 if self._replicas is None else self._replicas.n

    @contextlib.contextmanager
    def local_only(self):
        """Score in this process alone inside the block; the replicas and their copies stay (for timing
        one against the other, or a caller that wants no hand-off). For the opener's own thread: other
        threads searching meanwhile score locally too."""
        saved, self._replicas = self._replicas, None
        try:
            yield self
        finally:
            self._replicas = saved

    def _create(self, qe) -> None:
        """Create the collection so that a crash at any step leaves it complete or cleanly absent.

        ``collection.json`` is written first as ``collection.json.creating``, then the shard (fsynced),
        and the rename of ``.creating`` to ``collection.json`` is the commit. A directory without
        ``collection.json`` is no collection; creating it again discards what an unfinished creation left
        (a shard that never received a point) or, for a shard without the ``.creating`` record (made by an
        older version, or ``collection.json`` lost), adopts it with its points when its own
        ``edge_config.json`` records this dimension and distance, and moves it aside otherwise.
        """
        meta_path, creating, shard = self.path / META_FILE, self.path / CREATING_FILE, self.path / "shard"
        self.path.mkdir(parents=True, exist_ok=True)
        fsync_dir(self.path.parent)
        meta = {"name": self.name, "dim": self.dim, "distance": self.distance,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if creating.exists():  # an unfinished creation: its shard was never returned to a caller, so it is empty
            shutil.rmtree(shard, ignore_errors=True)
        elif shard.exists():
            if self._orphan_matches(shard):
                log.warning("collection '%s' at %s: adopting a shard without %s (dim %d, %s)",
                            self.name, self.path, META_FILE, self.dim, self.distance)
                atomic_write_bytes(meta_path, json.dumps({**meta, "adopted": True}).encode())
                self._shard = self._load(qe)
                self.ensure_partition_indexes()
                return
            aside = self.path / f"shard.orphaned-{time.strftime('%Y%m%d-%H%M%S')}"
            os.rename(shard, aside)
            fsync_dir(self.path)
            log.warning("collection '%s' at %s: a shard without %s and not of dim %d / %s was moved to %s",
                        self.name, self.path, META_FILE, self.dim, self.distance, aside)
        atomic_write_bytes(creating, json.dumps(meta).encode())
        self._shard = qe.EdgeShard.create(str(shard), self._config(qe))
        try:
            self.ensure_partition_indexes()
            self._shard.flush()
            fsync_tree(shard)
            fsync_dir(self.path)
            os.replace(creating, meta_path)
            fsync_dir(self.path)
        except Exception:
            self._shard.close()
            raise

    def _orphan_matches(self, shard: Path) -> bool:
        """Whether a shard's own config records this collection's dimension and distance."""
        try:
            vec = json.loads((shard / "edge_config.json").read_text())["vectors"][""]
            return int(vec["size"]) == self.dim and str(vec["distance"]).lower() == self.distance
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _config(self, qe, routed: bool = False):
        """The engine's configuration: its defaults (HNSW graph built by ``optimize()``), or for the
        routed layout no graph (``m=0``: the router picks the points, a graph over all of them would
        only cost build time and memory) and an int8 copy of every vector kept in RAM."""
        vectors = qe.EdgeVectorParams(size=self.dim, distance=_distance(qe, self.distance))
        if not routed:
            hnsw = None if self._hnsw_m is None else qe.HnswIndexConfig(m=int(self._hnsw_m), ef_construct=100,
                                                                         full_scan_threshold=10_000)
            return qe.EdgeConfig(vectors=vectors, hnsw_config=hnsw, max_search_threads=self._search_threads)
        return qe.EdgeConfig(
            vectors=vectors, max_search_threads=self._search_threads,
            hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
            quantization_config=qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True),
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=ROUTED_INDEXING_THRESHOLD_KB))

    def _read_layout(self) -> bool:
        """Whether the shard is in the routed layout (its own config: no HNSW graph, quantized)."""
        try:
            cfg = json.loads((self.path / "shard" / "edge_config.json").read_text())
        except (OSError, ValueError):
            return False
        return int((cfg.get("hnsw_config") or {}).get("m", 16)) == 0 and bool(cfg.get("quantization_config"))

    def _load(self, qe):
        # the vector params are required beside any other setting; the rest stays as the shard has it
        config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=self.dim, distance=_distance(qe, self.distance)),
                               max_search_threads=self._search_threads)
        try:
            return qe.EdgeShard.load(str(self.path / "shard"), config)
        except Exception as e:  # the binding raises a bare Exception
            if "WouldBlock" in str(e):
                raise StoreLockedError(
                    f"collection '{self.name}' at {self.path} is already open in another process or "
                    "object (the embedded engine allows one opener per directory): close it first") from None
            raise CollectionNotFoundError(f"cannot open collection at {self.path}: {e}") from None

    # ---- clustered layout ---------------------------------------------------------------------
    def cluster_by(self, field: str = "leaf", batch_size: int = 2048) -> dict:
        """Rewrite the shard in the routed layout: co-located by ``field``, no HNSW graph, int8 copy.

        What each part buys was measured per scored point (../shared/ENVIRONMENT.md, "What qdrant-edge
        0.9.0 costs per routed point"; 60k Fashion-MNIST x 1280-d): re-upserting sorted by leaf alone,
        0.43-0.52 -> 0.42 us; an integer index on ``field`` with ``is_principal=True`` *and* an
        ``optimize()`` (the engine then stores each segment ordered by it), 0.18 us; scoring the int8
        copy and rescoring ``2k`` candidates with floats, 0.08-0.09 us at the same recall. This
        repository's own before/after rows are in docs/results/hkm-fashion-mnist.md.

        Crash-safe and durable: the new shard is written beside the old one and fsynced, a
        ``shard.next.complete`` marker commits it, and renames swap it in (each followed by a directory
        fsync). A crash before the marker leaves the old shard, after it the new one; the next open
        finishes the swap or rolls it back (see ``_recover_rewrite``).
        """
        qe = _qe()
        t0 = time.perf_counter()
        schema = {name: info.data_type for name, info in self._shard.info().payload_schema.items()}
        ids, vecs, payloads = self.all_vectors(payload_fields=None, batch_size=batch_size)
        order = sorted(range(len(ids)), key=lambda i: (_sort_key(payloads[i].get(field)), ids[i]))
        shard, nxt = self.path / "shard", self.path / "shard.next"
        prev, done = self.path / "shard.prev", self.path / "shard.next.complete"
        shutil.rmtree(nxt, ignore_errors=True)
        new = qe.EdgeShard.create(str(nxt), self._config(qe, routed=True))
        try:
            for name, dtype in schema.items():
                if name == field:  # the engine co-locates points by a principal field at optimize()
                    dtype = qe.IntegerIndexParams(lookup=True, range=False, is_principal=True)
                new.update(qe.UpdateOperation.create_field_index(name, dtype))
            for s in range(0, len(order), batch_size):
                chunk = order[s:s + batch_size]
                new.update(qe.UpdateOperation.upsert_points(
                    _points(qe, ids[chunk], vecs[chunk], [payloads[i] for i in chunk])))
            new.optimize()
            new.flush()
        finally:
            new.close()
        fsync_tree(nxt)       # the new shard is on disk before the marker says it is complete
        fsync_dir(self.path)
        atomic_write_bytes(done, b"")  # the commit point: from here on, recovery rolls forward
        self._shard.flush()
        self._shard.close()
        try:
            os.rename(shard, prev)
            fsync_dir(self.path)
            os.rename(nxt, shard)
            fsync_dir(self.path)
            done.unlink()
            fsync_dir(self.path)
            shutil.rmtree(prev, ignore_errors=True)
        except Exception as e:  # an ordinary error (not a crash): finish the swap as the next open would
            try:
                self._recover_rewrite()
                self._shard = self._load(qe)
            except Exception:
                self._closed = True
                raise HSearchError(f"the relayout of collection '{self.name}' at {self.path} was interrupted "
                                   f"({e}): reopen the collection, which finishes it") from e
            raise
        self._shard = self._load(qe)
        self.routed_layout = self._read_layout()
        self.writes += 1
        return {"points": len(ids), "seconds": time.perf_counter() - t0, "routed_layout": self.routed_layout}

    def _recover_rewrite(self) -> None:
        """Finish or roll back a ``cluster_by`` that a crash interrupted.

        Once ``shard.next.complete`` exists, ``shard.next`` is complete and durable: roll forward (swap it
        in, wherever the renames stopped). Before, roll back: the old shard is ``shard`` (or, should a
        crash have left it only as ``shard.prev``, that). Leftovers are removed only once ``shard`` exists.
        """
        shard, nxt = self.path / "shard", self.path / "shard.next"
        prev, done = self.path / "shard.prev", self.path / "shard.next.complete"
        done_tmp = done.with_name(done.name + ".tmp")
        if not (nxt.exists() or prev.exists() or done.exists() or done_tmp.exists()):
            return  # the common case: no relayout was interrupted
        if done.exists() and nxt.exists():
            if shard.exists():
                shutil.rmtree(prev, ignore_errors=True)
                os.rename(shard, prev)
                fsync_dir(self.path)
            os.rename(nxt, shard)
            fsync_dir(self.path)
        elif not shard.exists() and prev.exists():
            os.rename(prev, shard)
            fsync_dir(self.path)
        if not shard.exists():
            return
        for marker in (done, done_tmp):
            marker.unlink(missing_ok=True)
        for leftover in (nxt, prev):
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
        fsync_dir(self.path)

    # ---- primitives ---------------------------------------------------------------------------
    def _upsert(self, ids, vectors, payloads):
        qe = _qe()
        self.writes += 1
        self._shard.update(qe.UpdateOperation.upsert_points(_points(qe, ids, vectors, payloads)))

    def _delete(self, ids):
        qe = _qe()
        if len(ids):
            self.writes += 1
            self._shard.update(qe.UpdateOperation.delete_points([int(i) for i in ids]))

    def _set_payload(self, ids, payload):
        qe = _qe()
        if len(ids):
            self.writes += 1
            self._shard.update(qe.UpdateOperation.set_payload([int(i) for i in ids], payload))

    def scores_on_replicas(self, n_queries: int) -> bool:
        """Whether a batch of ``n_queries`` is cut into chunks shared with the read replicas."""
        return self._replicas is not None and n_queries >= replicas.MIN_BATCH

    def _search_batch(self, vectors, k, filters, exact, hnsw_ef, with_payload, oversampling=None):
        if self.scores_on_replicas(len(vectors)):
            return self._replicas.search("batch", vectors, k, list(filters), (exact, hnsw_ef, oversampling),
                                         with_payload)
        out = self._batch_here(vectors, k, filters, exact, hnsw_ef, oversampling)
        return self.attach_payloads(out) if with_payload else out

    def _batch_here(self, vectors, k, filters, exact, hnsw_ef, oversampling):
        """Hits without payloads, scored by this process."""
        # routed layout and an oversampling: no graph, so a non-exact search scans the int8 copy
        params = self._params(oversampling=oversampling) if oversampling is not None else \
            self._params(exact=bool(exact), hnsw_ef=hnsw_ef)
        return self._query(vectors, k, [_edge_filter(_qe(), f) for f in filters], params)

    def _search_leaves(self, vectors, k, leaves, with_payload, oversampling, spill=False):
        if self.scores_on_replicas(len(vectors)):
            return self._replicas.search("leaves", vectors, k, leaves, (oversampling, spill), with_payload)
        out = self._leaves_here(vectors, k, leaves, oversampling, spill)
        return self.attach_payloads(out) if with_payload else out

    def _leaves_here(self, vectors, k, leaves, oversampling, spill=False):
        """The leaf condition built straight in the engine's terms (one ``MatchAny`` on ``leaf``; with
        ``spill``, ``leaf`` or ``spill``); hits without payloads, scored by this process."""
        qe = _qe()
        params = self._params(oversampling=oversampling) if oversampling is not None else self._params(exact=True)
        filters = [qe.Filter(must=[leaf_condition(qe, l if type(l) is list else np.asarray(l, np.int64).tolist(),
                                                  spill)]) for l in leaves]
        return self._query(vectors, k, filters, params)

    def _params(self, exact: bool = False, hnsw_ef: int | None = None, oversampling: float | None = None):
        """The engine's search params, one object per setting: they are immutable, and building one is a
        few microseconds of every query. ``oversampling``: the routed layout's int8 scan with float
        rescoring of the best ``k * oversampling``."""
        key = (exact, hnsw_ef, oversampling)
        params = self._params_cache.get(key)
        if params is None:
            qe = _qe()
            params = qe.SearchParams(exact=exact, hnsw_ef=hnsw_ef) if oversampling is None else qe.SearchParams(
                exact=False, quantization=qe.QuantizationSearchParams(rescore=True, oversampling=oversampling))
            self._params_cache[key] = params
        return params

    def _query(self, vectors, k, engine_filters, params):
        qe = _qe()
        # Payloads come from one ``retrieve`` of the final hits, not from the query: asked of the query, the
        # engine reads them for more candidates than it returns (measured on 10k Fashion-MNIST, 16 leaves,
        # int8 rescore: 0.153 ms a query with payload, 0.110 without, 0.125 without + retrieve of the 10 hits).
        # The query vector goes in as a memoryview of its float32 row (``vectors`` is C-contiguous float32):
        # the binding reads one element at a time whatever it gets, and for 1280-d it took 16 us from a
        # memoryview, 22 from an ``array('f')`` and 24 from a list (hot loop, measured), a few percent
        # of a routed query.
        reqs = [qe.QueryRequest(limit=k, query=qe.Query.Nearest(memoryview(v)), filter=f,
                                with_payload=False, params=params)
                for v, f in zip(vectors, engine_filters)]
        out = self._shard.query_batch(qe.QueryBatchRequest(reqs)) if len(reqs) > 1 else [self._shard.query(reqs[0])]
        return [[Hit(int(p.id), float(p.score), {}) for p in res] for res in out]

    @staticmethod
    def hit(id_: int, score: float) -> Hit:
        return Hit(int(id_), float(score), {})

    def attach_payloads(self, hits: list[list[Hit]]) -> list[list[Hit]]:
        """The hits' payloads, from one ``retrieve`` of every hit of the batch."""
        ids = list({h.id for res in hits for h in res})
        payload = {int(r.id): r.payload or {} for r in self._shard.retrieve(ids, True, False)} if ids else {}
        # a hit deleted between the query and the retrieve (a writer outside the router's lock) is dropped
        return [[Hit(h.id, h.score, payload[h.id]) for h in res if h.id in payload] for res in hits]

    def _retrieve(self, ids, with_vectors):
        recs = self._shard.retrieve([int(i) for i in ids], True, bool(with_vectors))
        by_id = {int(r.id): r for r in recs}
        return [to_record(by_id[int(i)], with_vectors) for i in ids if int(i) in by_id]

    def _scroll_page(self, offset, limit, filter, with_payload, with_vectors):
        qe = _qe()
        return self._shard.scroll(qe.ScrollRequest(offset=offset, limit=limit, filter=_edge_filter(qe, filter),
                                                   with_payload=with_payload, with_vector=with_vectors))

    def count(self, filter: Filter | None = None) -> int:
        qe = _qe()
        if filter is None:  # ~0.01 ms, where an exact count scans (~5 ms at 60k points)
            return int(self._shard.info().points_count)
        return int(self._shard.count(qe.CountRequest(exact=True, filter=_edge_filter(qe, filter))))

    def _facet(self, key, filter, limit):
        qe = _qe()
        try:
            res = self._shard.facet(qe.FacetRequest(key, limit=limit, exact=True, filter=_edge_filter(qe, filter)))
        except Exception as e:  # the binding raises a bare Exception
            if "No appropriate index" in str(e):
                raise NoFacetIndex(key) from None
            raise
        return {h.value: int(h.count) for h in res}

    def create_payload_index(self, field_name: str, kind: str) -> None:
        qe = _qe()
        schema = {"integer": qe.PayloadSchemaType.Integer, "keyword": qe.PayloadSchemaType.Keyword}[kind]
        self.writes += 1
        self._shard.update(qe.UpdateOperation.create_field_index(field_name, schema))

    def payload_indexes(self) -> list[str]:
        return sorted(self._shard.info().payload_schema.keys())

    def optimize(self) -> None:
        self.writes += 1
        self._shard.optimize()

    def state_dir(self) -> Path:
        return self.path

    def get_meta(self) -> dict:
        return json.loads((self.path / META_FILE).read_text()).get("meta", {})

    def update_meta(self, **values) -> None:
        meta_path = self.path / META_FILE
        data = json.loads(meta_path.read_text())
        data.setdefault("meta", {}).update(values)
        atomic_write_bytes(meta_path, json.dumps(data, indent=1).encode())

    def flush(self) -> None:
        self._shard.flush()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.set_read_replicas(0)
            self._shard.flush()
            self._shard.close()
