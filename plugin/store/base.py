"""The storage interface the rest of the plugin talks to (qdrant-client style: one base, several backends).

Nothing above ``plugin/store`` imports qdrant-edge or qdrant-client. A backend implements the
``_``-prefixed primitives; the public methods here validate input *before* anything is written, so a
bad batch (wrong dimension, NaN, mismatched lengths) never reaches the engine and never half-applies.

Point ids are unsigned integers below 2**63 (they fit numpy ``int64`` and Qdrant's u64 ids).
"""
from __future__ import annotations

import abc
import functools
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from plugin.errors import BadVectorError, EmptyCollectionError, HSearchError

DISTANCES = ("cosine", "dot", "euclid")
#: Payload fields searches filter or facet on, each with a payload index: the k-means leaf, the WordNet
#: synsets (class + ancestors) and the class itself (category-first search lists classes by facet).
PARTITION_FIELDS = {"leaf": "integer", "synsets": "keyword", "wnid": "keyword"}
MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class Filter:
    """A payload filter in our own terms; each backend translates it.

    ``leaf_in``: the point's ``leaf`` is one of these ints. ``synsets_all``: groups of wnids; the
    point's ``synsets`` array holds at least one wnid of *every* group (an AND of ORs, so ``within=``
    a subtree and a search mode's own synsets restrict together); an empty group matches nothing.
    ``match``: exact equality on other payload fields. All given conditions must hold (AND).
    ``spill``: with ``leaf_in``, a point also passes when its ``spill`` payload (its second leaf,
    :mod:`plugin.router.spill`) is one of ``leaf_in``.
    Build one with :meth:`of`; combine two with :meth:`both`.
    """

    leaf_in: tuple[int, ...] | None = None
    synsets_all: tuple[tuple[str, ...], ...] = ()
    match: tuple[tuple[str, Any], ...] = ()
    spill: bool = False

    @staticmethod
    def of(leaf_in=None, synsets_any=None, synsets_all=(), **match) -> "Filter":
        """``synsets_any``: one group (the point is under one of these wnids; a str is one wnid);
        ``synsets_all``: more groups, each of which must hold."""
        groups = ([] if synsets_any is None else [_wnid_group(synsets_any)]) + [_wnid_group(g) for g in synsets_all]
        return Filter(
            leaf_in=None if leaf_in is None else tuple(int(x) for x in leaf_in),
            synsets_all=_minimal_groups(groups),
            match=tuple(sorted(match.items())),
        )

    @staticmethod
    def both(a: "Filter | None", b: "Filter | None") -> "Filter | None":
        """``a`` AND ``b``: ``leaf_in`` lists intersect, synset groups and ``match`` conditions add up.
        Two leaf lists intersect on ``leaf`` alone: the result keeps ``spill`` only if both ask for it
        (it may then miss a spilled point the AND would take, never take one it would not)."""
        if a is None or b is None:
            return a if b is None else b
        if a.leaf_in is None or b.leaf_in is None:
            leaf_in = a.leaf_in if b.leaf_in is None else b.leaf_in
            spill = a.spill if b.leaf_in is None else b.spill
        else:
            keep = set(b.leaf_in)
            leaf_in = tuple(x for x in a.leaf_in if x in keep)
            spill = a.spill and b.spill
        return Filter(leaf_in=leaf_in, synsets_all=_minimal_groups(a.synsets_all + b.synsets_all),
                      match=tuple(sorted(set(a.match) | set(b.match))), spill=spill and leaf_in is not None)


def _wnid_group(wnids) -> tuple[str, ...]:
    if isinstance(wnids, str):
        return (wnids,)
    return tuple(dict.fromkeys(str(x) for x in wnids))


def _minimal_groups(groups) -> tuple[tuple[str, ...], ...]:
    """The same AND of ORs with redundant groups dropped: a group that contains another is implied by it."""
    sets = [frozenset(g) for g in groups]
    keep = []
    for i, s in enumerate(sets):
        implied = any(t <= s and (t != s or j < i) for j, t in enumerate(sets) if j != i)
        if not implied:
            keep.append(tuple(groups[i]))
    return tuple(keep)


@dataclass
class Hit:
    """One search result."""

    id: int
    score: float
    payload: dict = field(default_factory=dict)
    #: why a search mode returned it (e.g. the query's predicted class, their LCA), when it says
    why: dict | None = None


@dataclass
class Record:
    """One stored point as returned by ``retrieve``/``scroll``."""

    id: int
    payload: dict
    vector: np.ndarray | None = None


def to_record(r, with_vectors: bool) -> Record:
    """An engine record (qdrant-edge or qdrant-client: same attribute names) as our :class:`Record`."""
    return Record(int(r.id), r.payload or {}, np.asarray(r.vector, np.float32) if with_vectors else None)


def check_vectors(vectors, dim: int) -> np.ndarray:
    """Return ``vectors`` as a C-contiguous float32 (N, dim) array or raise :class:`BadVectorError`."""
    try:
        arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise BadVectorError(f"vectors must be numeric arrays: {e}") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise BadVectorError(f"expected a (N, {dim}) array of vectors, got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise BadVectorError(f"vector dimension {arr.shape[1]} does not match the collection's dimension {dim}")
    arr = np.ascontiguousarray(arr)
    if _first_non_finite_row()(arr) >= 0:
        bad = ~np.isfinite(arr).all(axis=1)
        rows = np.flatnonzero(bad)[:5].tolist()
        raise BadVectorError(f"{int(bad.sum())} vector(s) contain NaN or inf (rows {rows}...); nothing was written")
    return arr


@functools.cache
def _first_non_finite_row():
    """:func:`plugin.store.finite.first_non_finite_row`, imported on the first check rather than with the
    store (it brings numba); cached, since an import statement in ``check_vectors`` cost ~2.4 us a call."""
    from plugin.store.finite import first_non_finite_row

    return first_non_finite_row


def check_ids(ids, n: int | None = None) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise HSearchError(f"point ids must be a 1-d sequence of integers, got {arr.dtype} with shape {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0):
        raise HSearchError("point ids must be non-negative integers below 2**63")
    if n is not None and arr.size != n:
        raise HSearchError(f"got {arr.size} ids for {n} vectors")
    return arr


def check_payloads(payloads, n: int) -> list[dict]:
    if payloads is None:
        return [{} for _ in range(n)]
    if len(payloads) != n:
        raise HSearchError(f"got {len(payloads)} payloads for {n} vectors")
    return list(payloads)


def leaf_condition(m, leaves: list, spill: bool = False):
    """``leaf`` is one of ``leaves`` (a list of ints), or with ``spill`` ``leaf`` or ``spill`` is: the
    router's partition condition in a Qdrant API's terms (``m``: qdrant-edge or ``qdrant_client.models``)."""
    on_leaf = m.FieldCondition(key="leaf", match=m.MatchAny(any=leaves))
    if not spill:
        return on_leaf
    return m.Filter(should=[on_leaf, m.FieldCondition(key="spill", match=m.MatchAny(any=leaves))])


def translate_filter(m, f: Filter | None):
    """Our :class:`Filter` in a Qdrant API's terms. qdrant-edge and ``qdrant_client.models`` name the
    classes and fields alike (``Filter(must=...)``, ``FieldCondition(key, match)``, ``MatchAny``,
    ``MatchValue``), so ``m`` is either module."""
    if f is None:
        return None
    must = []
    if f.leaf_in is not None:
        must.append(leaf_condition(m, [int(x) for x in f.leaf_in], f.spill))
    for group in f.synsets_all:  # one condition per group: must = AND, MatchAny = OR
        must.append(m.FieldCondition(key="synsets", match=m.MatchAny(any=[str(x) for x in group])))
    for key, value in f.match:
        must.append(m.FieldCondition(key=key, match=m.MatchValue(value=value)))
    return m.Filter(must=must) if must else None


class Store(abc.ABC):
    """A single vector collection: the source of truth for points and payloads."""

    name: str
    dim: int
    distance: str

    # ---- writes -------------------------------------------------------------------------------
    def upsert(self, ids, vectors, payloads: Sequence[dict] | None = None, batch_size: int = 1024) -> int:
        """Insert or replace points. Validates everything first; returns the number written."""
        vecs = check_vectors(vectors, self.dim)
        id_arr = check_ids(ids, len(vecs))
        payloads = check_payloads(payloads, len(vecs))
        if len(np.unique(id_arr)) != len(id_arr):
            raise HSearchError("duplicate ids in one upsert batch")
        for s in range(0, len(vecs), batch_size):
            self._upsert(id_arr[s:s + batch_size], vecs[s:s + batch_size], list(payloads[s:s + batch_size]))
        return len(vecs)

    def delete(self, ids) -> None:
        self._delete(check_ids(ids))

    def set_payload(self, ids, payload: dict) -> None:
        """Set (merge) the same payload keys on several points."""
        self._set_payload(check_ids(ids), payload)

    # ---- reads --------------------------------------------------------------------------------
    def search(self, vector, k: int = 10, filter: Filter | None = None, exact: bool = False,
               hnsw_ef: int | None = None, with_payload: bool = True, oversampling: float | None = None) -> list[Hit]:
        """Top-``k`` nearest points; ``exact=True`` scores every point that passes ``filter``."""
        return self.search_batch(vector, k, filter, exact, hnsw_ef, with_payload, oversampling)[0]

    def search_batch(self, vectors, k: int = 10, filter: Filter | Sequence[Filter | None] | None = None,
                     exact: bool = False, hnsw_ef: int | None = None, with_payload: bool = True,
                     oversampling: float | None = None) -> list[list[Hit]]:
        """Top-``k`` per query vector (one filter for all, or one per query).

        ``oversampling`` (with ``exact=True``): where the collection is in the routed layout
        (:meth:`cluster_by`: an int8 copy of every vector and no HNSW graph), score the points that pass
        the filter on the int8 copy and rescore the best ``k * oversampling`` with the stored floats, so
        the returned scores are exact and only the candidate set is approximate. Elsewhere it is
        ignored and every point is scored with floats. What it costs and keeps is measured in
        the levers table of docs/results/hkm-fashion-mnist.md.
        """
        if oversampling is not None and not (1.0 <= float(oversampling) <= 100.0):
            raise HSearchError(f"oversampling must be between 1 and 100, got {oversampling}")
        vecs = check_vectors(vectors, self.dim)
        if k < 1:
            raise HSearchError(f"k must be >= 1, got {k}")
        filters = list(filter) if isinstance(filter, (list, tuple)) else [filter] * len(vecs)
        if len(filters) != len(vecs):
            raise HSearchError(f"got {len(filters)} filters for {len(vecs)} query vectors")
        if len(vecs) == 0:  # an empty batch has an empty answer (the engine takes no empty request)
            return []
        quantized = bool(exact) and oversampling is not None and self.routed_layout
        out = self._search_batch(vecs, int(k), filters, exact, hnsw_ef, with_payload,
                                 float(oversampling) if quantized else None)
        # checked only when nothing came back: an exact count costs as much as a filtered search
        if not any(out) and self.count() == 0:
            raise EmptyCollectionError(f"collection '{self.name}' is empty: ingest images first")
        return out

    def search_leaves(self, vectors, k: int, leaves: Sequence[np.ndarray], oversampling: float | None = None,
                      with_payload: bool = True, spill: bool = False) -> list[list[Hit]]:
        """Top-``k`` per query among the points whose ``leaf`` payload is one of that query's ``leaves``:
        the router's scoring step, ``search_batch(vectors, k, [Filter(leaf_in=l) ...], exact=True,
        oversampling=...)`` without our :class:`Filter` in between. ``vectors`` must already be a
        float32 (N, dim) array of finite rows (the router's ``prepare_queries`` checked them); only
        the shape is checked again. Backends build the engine's leaf condition directly
        (:meth:`_search_leaves`), which at one routed query per call is the part of the call that is
        ours rather than the engine's (see ``docs/results/anatomy-fashion-mnist.md``). ``spill``: points
        whose ``spill`` payload is one of the leaves count too (``Filter.spill``)."""
        vecs = vectors if isinstance(vectors, np.ndarray) and vectors.dtype == np.float32 and vectors.ndim == 2 \
            else check_vectors(vectors, self.dim)
        if vecs.shape[1] != self.dim:
            check_vectors(vecs, self.dim)  # raises the dimension error
        if len(leaves) != len(vecs):
            raise HSearchError(f"got {len(leaves)} leaf lists for {len(vecs)} query vectors")
        if k < 1:
            raise HSearchError(f"k must be >= 1, got {k}")
        if oversampling is not None and not (1.0 <= float(oversampling) <= 100.0):
            raise HSearchError(f"oversampling must be between 1 and 100, got {oversampling}")
        if len(vecs) == 0:
            return []
        out = self._search_leaves(np.ascontiguousarray(vecs), int(k), leaves, with_payload,
                                  float(oversampling) if oversampling is not None and self.routed_layout else None,
                                  bool(spill))
        if not any(out) and self.count() == 0:
            raise EmptyCollectionError(f"collection '{self.name}' is empty: ingest images first")
        return out

    def scores_on_replicas(self, n_queries: int) -> bool:
        """Whether a batch of ``n_queries`` is scored partly by read replicas in other processes, which then
        hold the other cores (the embedded engine's :mod:`plugin.store.replicas`); the router routes such
        a batch on one thread. False here: a server scores on its own machine."""
        return False

    def _search_leaves(self, vectors: np.ndarray, k: int, leaves, with_payload: bool,
                       oversampling: float | None, spill: bool = False) -> list[list[Hit]]:
        """Through :meth:`_search_batch` and our filter; a backend may build its leaf condition directly."""
        filters = [Filter(leaf_in=tuple(int(x) for x in np.asarray(l).ravel()), spill=spill) for l in leaves]
        return self._search_batch(vectors, k, filters, True, None, with_payload, oversampling)

    def retrieve(self, ids, with_vectors: bool = False) -> list[Record]:
        """Records for the ids that exist (missing ids are left out), in the order asked."""
        return self._retrieve(check_ids(ids), with_vectors)

    def existing_ids(self, ids) -> set[int]:
        return {r.id for r in self.retrieve(ids, with_vectors=False)}

    def scroll(self, batch_size: int = 2048, with_vectors: bool = True, filter: Filter | None = None,
               payload_fields: Sequence[str] | None = None) -> Iterator[list[Record]]:
        """Iterate over all points (optionally filtered) in pages."""
        yield from self._scroll(batch_size, with_vectors, filter, payload_fields)

    def all_vectors(self, payload_fields: Sequence[str] | None = (), filter: Filter | None = None,
                    batch_size: int = 2048) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """(ids, vectors, payloads) of every point passing ``filter``, in scroll order; payloads hold
        ``payload_fields`` (None: the whole payload)."""
        ids, vecs, pls = [], [], []
        fields = None if payload_fields is None else list(payload_fields)
        for page in self.scroll(batch_size=batch_size, with_vectors=True, filter=filter, payload_fields=fields):
            for r in page:
                ids.append(r.id)
                vecs.append(r.vector)
                pls.append(r.payload)
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32), []
        return np.asarray(ids, np.int64), np.vstack(vecs).astype(np.float32), pls

    @abc.abstractmethod
    def count(self, filter: Filter | None = None) -> int: ...

    def facet(self, key: str, filter: Filter | None = None, limit: int = 1000) -> dict:
        """``{value: number of points holding it in payload field key}``, most frequent first (ties by
        value), at most ``limit`` values; only points passing ``filter`` count.

        An array field counts a point once under each of its values, so one call on ``synsets`` gives
        the image count of every WordNet synset in the collection (the demo's hierarchy). The engine
        counts from its payload index (``leaf`` and ``synsets`` have one); a field without an index is
        counted from a scroll instead, which reads every payload (O(points)) but gives the same answer.
        """
        if int(limit) < 1:
            raise HSearchError(f"facet limit must be >= 1, got {limit}")
        try:
            counts = self._facet(key, filter, int(limit))
        except NoFacetIndex:
            counts = self._facet_scroll(key, filter)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], _value_order(kv[0])))
        return dict(ranked[:int(limit)])

    # ---- admin --------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_payload_index(self, field_name: str, kind: str) -> None:
        """``kind`` is ``integer`` or ``keyword``."""

    def ensure_partition_indexes(self) -> None:
        for name, kind in PARTITION_FIELDS.items():
            self.create_payload_index(name, kind)

    def optimize(self) -> None:
        """Build the engine's ANN index (HNSW) now; a no-op where the backend has none."""

    #: Whether the collection is in the routed layout (see :meth:`cluster_by`).
    routed_layout: bool = False

    def cluster_by(self, field: str = "leaf") -> dict:
        """Put the collection in the *routed layout*: points co-located by ``field`` (the engine's
        principal payload index), no HNSW graph (the router replaces it), and an int8 copy of every
        vector for :meth:`search_batch`'s ``oversampling``. A no-op where the backend cannot."""
        return {"clustered": False}

    @abc.abstractmethod
    def flush(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def state_dir(self) -> "os.PathLike":
        """A local directory for derived state kept beside the collection (router files)."""

    @abc.abstractmethod
    def get_meta(self) -> dict:
        """Small JSON metadata kept with the collection (e.g. which encoder filled it)."""

    @abc.abstractmethod
    def update_meta(self, **values) -> None: ...

    def info(self) -> dict:
        return {"name": self.name, "backend": type(self).__name__, "dim": self.dim,
                "distance": self.distance, "points": self.count(), **self.get_meta()}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- backend primitives -------------------------------------------------------------------
    @abc.abstractmethod
    def _upsert(self, ids: np.ndarray, vectors: np.ndarray, payloads: list[dict]) -> None: ...

    @abc.abstractmethod
    def _delete(self, ids: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _set_payload(self, ids: np.ndarray, payload: dict) -> None: ...

    @abc.abstractmethod
    def _search_batch(self, vectors: np.ndarray, k: int, filters: list[Filter | None], exact: bool,
                      hnsw_ef: int | None, with_payload: bool, oversampling: float | None) -> list[list[Hit]]:
        """``oversampling`` is set only in the routed layout: score the int8 copy, rescore with floats."""

    @abc.abstractmethod
    def _retrieve(self, ids: np.ndarray, with_vectors: bool) -> list[Record]: ...

    def _scroll(self, batch_size: int, with_vectors: bool, filter: Filter | None,
                payload_fields: Sequence[str] | None) -> Iterator[list[Record]]:
        offset = None
        with_payload = True if payload_fields is None else list(payload_fields) or False
        while True:
            recs, offset = self._scroll_page(offset, batch_size, filter, with_payload, with_vectors)
            if recs:
                yield [to_record(r, with_vectors) for r in recs]
            if offset is None:
                return

    @abc.abstractmethod
    def _scroll_page(self, offset, limit: int, filter: Filter | None, with_payload, with_vectors: bool):
        """One page of the engine's scroll: (engine records, next offset or None)."""

    def _facet(self, key: str, filter: Filter | None, limit: int) -> dict:
        """The engine's facet: {value: count}; raise :class:`NoFacetIndex` when it needs an index on ``key``."""
        raise NoFacetIndex(key)

    def _facet_scroll(self, key: str, filter: Filter | None) -> dict:
        counts: dict = {}
        for page in self.scroll(with_vectors=False, filter=filter, payload_fields=[key]):
            for r in page:
                v = r.payload.get(key)
                for x in {e for e in (v if isinstance(v, list) else [v]) if isinstance(e, (str, int))}:
                    counts[x] = counts.get(x, 0) + 1
        return counts


class NoFacetIndex(Exception):
    """A backend's facet refused a field without a payload index (``Store.facet`` then counts by scrolling)."""


def _value_order(v):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))
