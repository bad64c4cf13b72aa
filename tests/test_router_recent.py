"""Recently added vectors kept for splits (plugin.router.recent): bounded, never stale, and read in
place of the store's copy; maintenance reads from the store only the points the cache does not hold."""
from __future__ import annotations

import numpy as np
import pytest

from plugin.router import Router
from plugin.router.maintenance import _points_of
from plugin.router.recent import RecentVectors
from plugin.store import Filter


def _rows(n, dim=4, start=0.0):
    return (np.arange(n * dim, dtype=np.float32).reshape(n, dim) + start)


def test_batches_are_evicted_oldest_first_by_bytes_and_a_newer_copy_survives():
    rows = _rows(3)
    rv = RecentVectors(max_bytes=2 * rows.nbytes)
    rv.put(np.array([1, 2, 3]), rows)
    rv.put(np.array([3, 4, 5]), rows + 100)  # id 3 re-put: the newer row wins
    got, found = rv.get(np.array([1, 3, 4, 9]), 4)
    assert found.tolist() == [True, True, True, False]
    assert np.array_equal(got[1], rows[0] + 100) and np.array_equal(got[0], rows[0]) and not got[3].any()
    rv.put(np.array([6, 7, 8]), rows + 200)  # over the bound: the first batch goes
    got, found = rv.get(np.array([1, 2, 3, 4, 6]), 4)
    assert found.tolist() == [False, False, True, True, True]  # 3 lives on in the second batch
    assert np.array_equal(got[2], rows[0] + 100)
    rv.drop([4])
    assert not rv.get(np.array([4]), 4)[1][0] and len(rv) == 5  # 3, 5, 6, 7, 8


def test_off_or_oversized_batches_keep_nothing_and_forget_the_ids():
    rows = _rows(3)
    off = RecentVectors(max_bytes=0)
    off.put(np.array([1, 2, 3]), rows)
    assert len(off) == 0
    small = RecentVectors(max_bytes=rows.nbytes)
    small.put(np.array([1, 2, 3]), rows)
    small.put(np.array([1, 5, 6, 7]), _rows(4, start=50))  # too large to keep: id 1's old row must go too
    assert not small.get(np.array([1]), 4)[1][0] and small.get(np.array([2]), 4)[1][0]


def test_maintenance_reads_only_uncached_vectors_and_agrees_with_the_store(make_store, fmnist_small, monkeypatch):
    """After adds (one of them re-upserting ids with new vectors) and a delete, the points of every leaf
    come out as the store holds them, while the store is asked for the vectors of the built points only."""
    vecs = fmnist_small[0]
    s = make_store(vecs.shape[1])
    s.upsert(np.arange(150), vecs[:150], [{"leaf": -1} for _ in range(150)])
    r = Router.build(s, k=2, l=2, max_leaf_size=400, min_leaf_size=2, refine=0)
    r.add(np.arange(150, 250), vecs[150:250])
    r.add(np.arange(200, 220), vecs[20:40])  # re-upsert: ids 200-219 now hold rows 20-39
    r.delete(np.arange(240, 250))
    assert len(r.recent) == 90
    asked, full_scrolls = [], []
    retrieve, scroll_page = s._retrieve, s._scroll_page
    monkeypatch.setattr(s, "_retrieve", lambda ids, wv: (asked.extend(ids.tolist()) if wv else None) or retrieve(ids, wv))
    monkeypatch.setattr(s, "_scroll_page", lambda o, n, f, p, wv: (full_scrolls.append(wv) if wv else None)
                        or scroll_page(o, n, f, p, wv))
    lids = r.tree.leaf_ids().tolist()
    ids, got, leaf = _points_of(r, lids)
    monkeypatch.undo()
    assert not full_scrolls and sorted(asked) == list(range(150))
    want_ids, want, pls = s.all_vectors(payload_fields=["leaf"], filter=Filter.of(leaf_in=lids))
    order, want_order = np.argsort(ids), np.argsort(want_ids)
    assert np.array_equal(ids[order], want_ids[want_order]) and len(ids) == 240
    np.testing.assert_allclose(got[order], want[want_order], atol=2e-6)
    assert np.array_equal(leaf[order], np.asarray([p["leaf"] for p in pls])[want_order])
    r.reconcile()
    assert len(r.recent) == 0
