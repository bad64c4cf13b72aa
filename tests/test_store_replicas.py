"""Read replicas (plugin.store.replicas): worker processes scoring parts of a batch on copies of an
embedded collection give exactly the primary's results, follow its writes, and survive a dead worker."""
from __future__ import annotations

import numpy as np
import pytest

from plugin.errors import HSearchError
from plugin.store import Filter
from plugin.store import replicas as rep
from plugin.store.edge import EdgeStore
from plugin.store.replicas import REPLICAS_DIR


def _hits(res):
    return [[(h.id, round(h.score, 5), h.payload.get("leaf"), h.payload.get("label")) for h in r] for r in res]


@pytest.fixture
def routed(tmp_path, fmnist_small, monkeypatch):
    monkeypatch.setattr(rep, "MIN_BATCH", 8)  # the 300-image collection's batches are small
    vecs, wnids, _ = fmnist_small
    s = EdgeStore(tmp_path / "c", dim=vecs.shape[1])
    s.upsert(np.arange(1, len(vecs) + 1), vecs, [{"leaf": i % 12, "label": w} for i, w in enumerate(wnids)])
    s.cluster_by("leaf")
    yield s, vecs
    s.close()


def _leaves(n):
    return [[(i + j) % 12 for j in range(4)] for i in range(n)]


def test_replicas_give_the_primary_results(routed):
    s, vecs = routed
    q = vecs[:40]
    want_leaves = s.search_leaves(q, 10, _leaves(40), oversampling=2.0)
    filters = [Filter.of(leaf_in=[i % 12]) if i % 3 else None for i in range(40)]
    want_batch = s.search_batch(q, 7, filters, exact=True)
    s.set_read_replicas(2)
    assert s.read_replicas == 2
    assert _hits(s.search_leaves(q, 10, _leaves(40), oversampling=2.0)) == _hits(want_leaves)
    assert _hits(s.search_batch(q, 7, filters, exact=True)) == _hits(want_batch)
    no_payload = s.search_leaves(q, 10, _leaves(40), oversampling=2.0, with_payload=False)
    assert [[h.id for h in r] for r in no_payload] == [[h.id for h in r] for r in want_leaves]
    assert all(h.payload == {} for r in no_payload for h in r)
    st = s._replicas.stats
    # 40 queries are five chunks of 8: each replica takes two ahead, this process the last, in each of
    # the three batches, all from one copy
    assert [b - a for a, b in rep._chunks(40, 2)] == [8] * 5
    # leaf lists given (not a router's parts): no chunk routed in a replica
    assert st == {"refreshes": 1, "fallbacks": 0, "replica_chunks": 12, "replica_routed": 0}
    assert len(list((s.path / REPLICAS_DIR).iterdir())) == 2


def test_chunks_are_shared_between_this_process_and_a_replica_in_order(routed):
    s, vecs = routed
    q = np.concatenate([vecs, vecs[:60]])  # 360 queries: 23 chunks of 16
    want = s.search_leaves(q, 10, _leaves(len(q)), oversampling=2.0)
    s.set_read_replicas(1)
    got = s.search_leaves(q, 10, _leaves(len(q)), oversampling=2.0)
    assert _hits(got) == _hits(want)
    chunks = len(rep._chunks(len(q), 1))
    # the replica is kept two chunks ahead; this process scores at least one (from the back)
    assert 2 <= s._replicas.stats["replica_chunks"] <= chunks - 1 and s._replicas.stats["fallbacks"] == 0
    bounds = rep._chunks(len(q), 1)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(q) and all(b[1] == c[0] for b, c in zip(bounds, bounds[1:]))


def test_chunks_shrink_where_the_replicas_and_this_process_meet():
    for n, replicas in [(1000, 1), (1000, 3), (100, 1), (333, 2)]:
        bounds = rep._chunks(n, replicas)
        sizes = [b - a for a, b in bounds]
        assert bounds[0][0] == 0 and bounds[-1][1] == n and all(b[1] == c[0] for b, c in zip(bounds, bounds[1:]))
        assert max(sizes) <= rep.MAX_CHUNK and min(sizes) >= rep.MIN_CHUNK  # a rest joins its neighbour
        # the replicas take from the front, this process from the back: chunks shrink to a run of small
        # ones where they meet (one of those holds the rest, under 2 MIN_CHUNK)
        small = [i for i, x in enumerate(sizes) if x < 2 * rep.MIN_CHUNK]
        i, j = small[0], small[-1]
        assert small == list(range(i, j + 1))
        assert sizes[:i] == sorted(sizes[:i], reverse=True) and sizes[j + 1:] == sorted(sizes[j + 1:])
        if n >= 1000:
            assert sizes[0] == sizes[-1] == rep.MAX_CHUNK and min(sizes) <= rep.MIN_CHUNK


def test_the_last_chunk_is_scored_here_rather_than_queued_behind_a_replica_chunk(routed):
    s, vecs = routed
    assert [b - a for a, b in rep._chunks(16, 1)] == [8, 8]
    want = s.search_leaves(vecs[:16], 10, _leaves(16))
    s.set_read_replicas(1)
    assert _hits(s.search_leaves(vecs[:16], 10, _leaves(16))) == _hits(want)
    assert s._replicas.stats["replica_chunks"] == 1  # the replica the front chunk, this process the other


def test_a_replica_is_given_as_many_queued_queries_as_this_process_takes_next(routed, monkeypatch):
    """While this process scores its chunk of 40 it cannot feed the replica: the replica gets a third
    chunk, since 8 queries queued behind the one it scores would run out first."""
    s, vecs = routed
    q = np.concatenate([vecs, vecs])[:64]
    want = s.search_leaves(q, 10, _leaves(64))
    monkeypatch.setattr(rep, "_chunks", lambda n, replicas: [(0, 8), (8, 16), (16, 24), (24, 64)])

    class Taken(list):  # records the order in which chunks' leaves are taken (to send, or to score here)
        order: list = []

        def __getitem__(self, i):
            if isinstance(i, slice):
                Taken.order.append((i.start, i.stop))
            return super().__getitem__(i)

    s.set_read_replicas(1)
    assert _hits(s.search_leaves(q, 10, Taken(_leaves(64)))) == _hits(want)
    assert Taken.order == [(0, 8), (8, 16), (16, 24), (24, 64)]  # the third sent before scoring here
    assert s._replicas.stats["replica_chunks"] == 3


def test_small_batches_stay_in_this_process(routed):
    s, vecs = routed
    s.set_read_replicas(1)
    s.search_leaves(vecs[:rep.MIN_BATCH - 1], 5, _leaves(rep.MIN_BATCH - 1))
    assert s._replicas.stats["refreshes"] == 0 and not (s.path / REPLICAS_DIR).exists()


def test_replicas_follow_every_write(routed, fmnist_small):
    s, vecs = routed
    s.set_read_replicas(1)
    q, leaves = vecs[:30], _leaves(30)
    first = s.search_leaves(q, 10, leaves)
    gone = sorted({h.id for r in first for h in r})[:20]
    s.delete(gone)
    after = s.search_leaves(q, 10, leaves)
    assert not {h.id for r in after for h in r} & set(gone)
    s.set_payload([after[-1][0].id], {"label": "relabelled"})
    assert s.search_leaves(q, 10, leaves)[-1][0].payload["label"] == "relabelled"
    s.upsert([10_000], vecs[29:30], [{"leaf": 5, "label": "new"}])  # query 29 scores leaves 5-8
    last = s.search_leaves(q, 10, leaves)
    assert 10_000 in [h.id for h in last[29][:2]]  # the replica holding that query's part sees it (a tie with 30)
    s._replicas, r = None, s._replicas
    assert _hits(last) == _hits(s.search_leaves(q, 10, leaves))
    s._replicas = r
    assert r.stats["refreshes"] == 4 and r.stats["replica_chunks"] >= 4 and r.stats["fallbacks"] == 0


def test_a_dead_replica_is_replaced_or_its_part_scored_here(routed, monkeypatch, caplog):
    s, vecs = routed
    s.set_read_replicas(1)
    q, leaves = vecs[:20], _leaves(20)
    want = _hits(s.search_leaves(q, 10, leaves))
    r = s._replicas
    r._live[0].proc.kill()
    r._live[0].proc.wait()
    assert _hits(s.search_leaves(q, 10, leaves)) == want  # seen dead before the batch: a new one is started
    assert r.stats["refreshes"] == 2 and r.stats["fallbacks"] == 0
    # dying while the batch is in flight: the part is scored by this process
    monkeypatch.setattr(rep._Replica, "alive", lambda self: True)
    r._live[0].proc.kill()
    r._live[0].proc.wait()
    assert _hits(s.search_leaves(q, 10, leaves)) == want
    assert r.stats["fallbacks"] == 1 and "died" in caplog.text


def test_close_stops_the_replicas_and_removes_their_copies(tmp_path, routed):
    s, vecs = routed
    s.set_read_replicas(1)
    s.search_leaves(vecs[:20], 5, _leaves(20))
    proc = s._replicas._live[0].proc
    s.close()
    assert proc.poll() is not None and not (s.path / REPLICAS_DIR).exists()
    (s.path / REPLICAS_DIR / "0").mkdir(parents=True)  # what a crashed process's replicas would leave
    again = EdgeStore(s.path)
    assert not (s.path / REPLICAS_DIR).exists() and again.count() == len(vecs)
    again.close()


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_replica_counts_are_refused(routed, bad):
    s, _ = routed
    with pytest.raises(HSearchError, match="read_replicas"):
        s.set_read_replicas(bad)
    assert s.read_replicas == 0


def test_router_batches_through_replicas_match(routed):
    from plugin.router import Router

    s, vecs = routed
    router = Router.build(s, k=4, l=2, save=False)
    want = router.search_batch(vecs[:32], k=10, mode="relaxed", s2=0.05)
    s.set_read_replicas(1)
    got = router.search_batch(vecs[:32], k=10, mode="relaxed", s2=0.05)
    assert _hits(got) == _hits(want)
    assert s._replicas.stats["replica_chunks"] >= 1 and s._replicas.stats["fallbacks"] == 0


def test_open_store_passes_replicas_to_the_embedded_engine_only(tmp_path):
    from plugin.store import open_store

    s = open_store(tmp_path / "e", dim=8, read_replicas=1)
    assert s.read_replicas == 1
    s.close()
    with pytest.raises(HSearchError, match="embedded engine"):
        open_store(":memory:", dim=8, read_replicas=1)


def test_query_buffers_of_dead_processes_are_removed(routed):
    """A buffer named after a process that is gone (a crash) is removed when a new buffer is made; one of a
    live process stays; close removes this process's own."""
    import os
    import subprocess
    import sys

    s, vecs = routed
    s.set_read_replicas(1)
    s.search_leaves(vecs[:20], 5, _leaves(20))
    folder = s._replicas._buf_dir()
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    orphan, alive = folder / f"hsearch-queries-{gone}-1-1.npy", folder / f"hsearch-queries-{os.getpid()}-1-9.npy"
    orphan.write_bytes(b"x")
    alive.write_bytes(b"x")
    s.set_read_replicas(1)  # a new replica set makes a new buffer at its first batch, and looks for orphans
    s.search_leaves(vecs[:20], 5, _leaves(20))
    assert not orphan.exists() and alive.exists()
    alive.unlink()
    s.close()
    assert not list(folder.glob(f"hsearch-queries-{os.getpid()}-*"))


def test_local_only_bypasses_the_replicas_and_keeps_them(routed):
    s, vecs = routed
    s.set_read_replicas(1)
    s.search_leaves(vecs[:40], 5, _leaves(40))
    before = dict(s._replicas.stats)
    with s.local_only():
        assert s.read_replicas == 0
        s.search_leaves(vecs[:40], 5, _leaves(40))
    assert s.read_replicas == 1 and s._replicas.stats == before
    s.search_leaves(vecs[:40], 5, _leaves(40))
    assert s._replicas.stats["replica_chunks"] > before["replica_chunks"] and s._replicas.stats["refreshes"] == 1


@pytest.mark.parametrize("mode, params, kernel", [("probe", {"nprobe": 3, "s2": 0.05}, "probe_batch_parallel"),
                                                  ("relaxed", {"s2": 0.05}, "route_batch_parallel")])
def test_batches_scored_on_replicas_are_routed_on_one_thread(routed, monkeypatch, mode, params, kernel):
    """The parallel routing kernels' OpenMP threads spin after a launch and took the replica's core
    (plugin.router.kernels._on_every_core): a batch the replicas share is routed by the serial kernel."""
    import numba

    from plugin.router import Router, kernels

    if numba.get_num_threads() < 2:
        pytest.skip("numba runs one thread here: every kernel is the serial one")
    s, vecs = routed
    router = Router.build(s, k=4, l=2, save=False)
    launches = []
    parallel = getattr(kernels, kernel)
    monkeypatch.setattr(kernels, kernel, lambda *a: launches.append(len(a[0])) or parallel(*a))
    monkeypatch.setattr(kernels, "PARALLEL_MIN", 8)
    want = router.search_batch(vecs[:32], k=10, mode=mode, **params)
    assert launches == [32]  # no replicas: every core routes
    s.set_read_replicas(1)
    got = router.search_batch(vecs[:32], k=10, mode=mode, **params)
    assert launches == [32] and s._replicas.stats["replica_chunks"] >= 1
    assert _hits(got) == _hits(want)
    assert router.search_batch(vecs[:4], k=10, mode=mode, **params) and launches == [32]  # small: one thread anyway
