"""The vectors of the points the last ``router.add`` calls wrote, kept in memory for the splits they cause.

A split, a merge and a boundary reassignment read every point of a few leaves back from the store. The
engine hands a stored vector back as a Python list of floats, which costs 50-100 us per 1280-d point to
turn into a NumPy row (scratch timing: 1850 points, 0.11 s for the lists and 0.10 s for the array);
that was the largest part of adding two new classes (2.5 s of 6.9 s under the profiler). The leaves a
new class splits hold mostly points added moments before, so ``router.add`` keeps its rows here and
maintenance reads only the other points' vectors from the store (:func:`points_of`).

What a newcomer should know:

* Bounded by bytes (:data:`RECENT_BYTES`), whole batches evicted oldest first; ``max_bytes=0`` turns it
  off. Memory is the batches' own rows: one ``router.add`` batch is one array, not copied again.
* The store stays the truth for *which* points a leaf holds (a payload-only scroll); the cache only
  saves reading their vectors. Deletes drop ids, a re-upsert replaces the row, ``reconcile`` clears it.
* It holds the rows ``router.add`` upserted (unit rows under cosine). The engine normalises cosine
  vectors again on write, so its copy can differ in the last bit; the tree's sums do not notice.
* Points written past the router (``store.upsert`` by hand) are not seen here: the same blind spot
  ``Router.check`` documents for a re-upsert that stayed in its leaf.
"""
from __future__ import annotations

from collections import deque

import numpy as np

#: default bound of :class:`RecentVectors`: 128 MiB, 26k points of 1280 float32 dimensions (the two new
#: classes of the ingest benchmark add 12,000)
RECENT_BYTES = 128 << 20


class RecentVectors:
    """Rows of recently added points by id, at most ``max_bytes`` of them (whole batches, oldest out)."""

    def __init__(self, max_bytes: int = RECENT_BYTES):
        self.max_bytes = int(max_bytes)
        self._batches: deque = deque()  # (ids, rows) per put, oldest first
        self._where: dict[int, tuple[tuple, int]] = {}  # id -> (its batch, row)
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._where)

    def put(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Remember ``rows`` (kept, not copied: the caller hands over an array it no longer changes)."""
        ids = np.asarray(ids, np.int64)
        if self.max_bytes <= 0 or rows.nbytes > self.max_bytes or len(ids) == 0:
            self.drop(ids)  # a re-upsert too large to keep must not leave the old row behind
            return
        batch = (ids, rows)  # a new tuple per put: its identity tells batches apart, even of one array
        self._batches.append(batch)
        self._where.update((i, (batch, j)) for j, i in enumerate(ids.tolist()))
        self._bytes += rows.nbytes
        while self._bytes > self.max_bytes:
            old = self._batches.popleft()
            self._bytes -= old[1].nbytes
            for i in old[0].tolist():
                if self._where.get(i, (None,))[0] is old:  # not re-put in a newer batch since
                    del self._where[i]

    def drop(self, ids) -> None:
        for i in np.asarray(ids, np.int64).tolist():
            self._where.pop(i, None)

    def clear(self) -> None:
        self._batches.clear()
        self._where.clear()
        self._bytes = 0

    def get(self, ids: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, found): float32 (len(ids), dim) rows, zero where ``found`` is False."""
        out = np.zeros((len(ids), dim), np.float32)
        found = np.zeros(len(ids), bool)
        where = self._where.get
        for j, i in enumerate(np.asarray(ids, np.int64).tolist()):
            at = where(i)
            if at is not None:
                out[j] = at[0][1][at[1]]
                found[j] = True
        return out, found


def points_of(store, recent: RecentVectors, flt) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(ids, vectors, payloads with ``leaf``) of every stored point passing ``flt``, as
    ``store.all_vectors`` returns them, with the vectors of recently added points taken from ``recent``
    and only the others read from the store."""
    if len(recent) == 0:
        return store.all_vectors(payload_fields=["leaf"], filter=flt)
    ids, pls = [], []
    for page in store.scroll(with_vectors=False, filter=flt, payload_fields=["leaf"]):
        for r in page:
            ids.append(r.id)
            pls.append(r.payload)
    ids = np.asarray(ids, np.int64)
    vecs, found = recent.get(ids, store.dim)
    missing = np.flatnonzero(~found)
    if len(missing):
        got = {r.id: r.vector for r in store.retrieve(ids[missing], with_vectors=True)}
        for j in missing.tolist():
            if int(ids[j]) in got:
                vecs[j] = got[int(ids[j])]
                found[j] = True
        if not found.all():  # deleted between the two reads (another client of a server): left out
            ids, vecs, pls = ids[found], vecs[found], [p for p, f in zip(pls, found) if f]
    return ids, vecs, pls
