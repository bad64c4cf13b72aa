"""Concurrency: routing reads an immutable snapshot; searches share the lock and never wait for each
other; searches stay correct while adds and deletes run in other threads."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from plugin.router import Router
from plugin.router.rwlock import RWLock


def test_snapshot_is_immutable_and_self_consistent(make_store, fmnist_small):
    vecs, _, _ = fmnist_small
    s = make_store(vecs.shape[1])
    s.upsert(np.arange(100), vecs[:100])
    r = Router.build(s, k=2, l=2, max_leaf_size=40, min_leaf_size=5)
    old = r.flat
    copies = {k: getattr(old, k).copy() for k in ("centroids", "child_offsets", "children", "leaf_of_node")}
    with pytest.raises(ValueError):
        old.leaf_of_node[0] = 7  # read-only: a kernel cannot scribble on it either
    r.add(np.arange(100, 300), vecs[100:300])  # splits: the live tree grows
    assert r.flat is not old and r.flat.n_leaves > old.n_leaves
    for k, v in copies.items():
        np.testing.assert_array_equal(getattr(old, k), v)
    assert old.n_leaves == int((old.leaf_of_node >= 0).sum())
    from plugin.router.modes import route

    routes, _ = route(old, r.prepare_queries(vecs[:20]), "relaxed", {"s1": 10.0, "s2": 10.0})
    assert all(sorted(x.tolist()) == old.leaf_ids.tolist() for x in routes)  # sized by its own leaf count


def test_readers_share_the_lock_and_a_writer_excludes_them():
    lock, events = RWLock(), []
    inside = threading.Barrier(2, timeout=5)

    def reader(name):
        with lock.read():
            events.append(f"{name} in")
            inside.wait()  # both readers must be inside at once, or this times out
            time.sleep(0.05)
            events.append(f"{name} out")

    def writer():
        time.sleep(0.01)
        with lock.write():
            events.append("writer")

    ts = [threading.Thread(target=reader, args=(n,)) for n in "ab"] + [threading.Thread(target=writer)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert events.index("writer") > max(events.index("a out"), events.index("b out"))
    assert not inside.broken


def test_many_threads_search_while_others_add_and_delete(make_store, fmnist_small):
    vecs, _, _ = fmnist_small
    s = make_store(vecs.shape[1])
    stable = np.arange(0, 100)  # never deleted: always findable
    s.upsert(stable, vecs[stable])
    r = Router.build(s, k=2, l=2, max_leaf_size=50, min_leaf_size=5)
    errors: list = []
    stop = threading.Event()

    def searcher(seed):
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                qi = int(rng.integers(0, 100))
                res = r.search(vecs[qi], k=5, mode="relaxed", s1=10.0, s2=10.0)  # every live leaf
                if not res or (res[0].id != qi and res[0].score < 0.99999):
                    errors.append(("not found", qi, [(h.id, h.score) for h in res]))
                res = r.search(vecs[qi], k=5, mode="auto")
                if any(h.payload["leaf"] not in res.stats["leaves"] for h in res):
                    errors.append(("hit outside its route", qi))
                if [h.score for h in res] != sorted((h.score for h in res), reverse=True):
                    errors.append(("unsorted", qi))
        except Exception as e:  # any exception in a search thread is a failure
            errors.append(("raised", repr(e)))

    def writer():
        try:
            for a in range(100, 300, 20):
                r.add(np.arange(a, a + 20), vecs[a:a + 20])
                if a >= 160:
                    r.delete(np.arange(a - 60, a - 50))
        except Exception as e:
            errors.append(("writer raised", repr(e)))

    threads = [threading.Thread(target=searcher, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    w = threading.Thread(target=writer)
    w.start()
    w.join()
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert r.check()["consistent"]
