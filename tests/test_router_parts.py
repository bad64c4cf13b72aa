"""Routing a batch in parts (plugin.router.parts): each part routed once, when the store takes it, and the
router's answers and stats the same as routing the batch whole."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from plugin.router import Router
from plugin.router import modes as modes_mod
from plugin.router.parts import RoutedParts
from plugin.store import replicas as rep
from plugin.store.edge import EdgeStore


SIZES = [2] * 7 + [0] * 3 + [5] * 20 + [1] * 40  # points under leaf ids 0..69


def _parts(n=10):
    calls = []
    rows = [np.array([(3 * j) % 7, j % 5 + 10, 20 + j]) for j in range(n)]

    def route(a, b):
        calls.append((a, b))
        return rows[a:b]

    return RoutedParts(route, n, sizes=SIZES, unfiled=-1), calls, rows


def test_a_slice_is_routed_when_taken_and_only_once():
    parts, calls, rows = _parts()
    assert len(parts) == 10 and calls == []
    got = parts[2:5]
    assert calls == [(2, 5)]
    assert got == [sorted(rows[j].tolist()) + [-1] for j in range(2, 5)]
    assert parts[3:7] and calls == [(2, 5), (5, 7)]  # rows 3 and 4 are not routed again
    assert parts[-1] == sorted(rows[9].tolist()) + [-1] and calls[-1] == (9, 10)
    list(parts)
    assert calls[-2:] == [(0, 2), (7, 9)]  # the rest: each run of rows not routed yet
    assert parts.ids[0] == sorted(rows[0].tolist())
    assert parts.operands == [sum(SIZES[x] for x in rows[j]) for j in range(10)]
    n_calls = len(calls)
    parts.fill()
    assert len(calls) == n_calls and parts.seconds > 0
    with pytest.raises(IndexError):
        parts[10]
    with pytest.raises(IndexError):
        parts[0:6:2]


@pytest.fixture
def replicated(tmp_path, fmnist_small, monkeypatch):
    monkeypatch.setattr(rep, "MIN_BATCH", 8)  # the 300-image collection's batches are small
    vecs, wnids, _ = fmnist_small
    s = EdgeStore(tmp_path / "c", dim=vecs.shape[1])
    s.upsert(np.arange(1, len(vecs) + 1), vecs, [{"label": w} for w in wnids])
    router = Router.build(s, k=4, l=2, save=False)
    yield router, s, vecs
    s.close()


@pytest.mark.parametrize("mode, params", [("probe", {"nprobe": 3, "s2": 0.05}), ("relaxed", {"s2": 0.05}),
                                          ("auto", {}), ("intensive", {})])
def test_a_batch_shared_with_a_replica_is_routed_in_parts_with_the_same_answer(replicated, monkeypatch, mode,
                                                                              params):
    router, s, vecs = replicated
    modes_mod._ensure_loaded()
    m = modes_mod.MODES[mode]
    routed = []
    monkeypatch.setitem(modes_mod.MODES, mode, dataclasses.replace(
        m, fn=lambda ctx, Q, **p: routed.append(len(Q)) or m.fn(ctx, Q, **p)))
    q = np.concatenate([vecs, vecs[:100]])  # 400 queries
    want = router.search_batch(q, k=10, mode=mode, **params)
    # no replicas: the batch routed whole; with one, every chunk routed here, replicas' too: the wrapped
    # mode lives in this test module, which a replica's process cannot import
    assert routed == [400]
    s.set_read_replicas(1)
    got = router.search_batch(q, k=10, mode=mode, **params)
    assert len(routed) - 1 == len(rep._chunks(400, 1)) > 2 and sum(routed[1:]) == 400  # chunk by chunk
    assert s._replicas.stats["replica_chunks"] >= 2
    assert [[(h.id, round(h.score, 5), h.payload) for h in r] for r in got] == \
        [[(h.id, round(h.score, 5), h.payload) for h in r] for r in want]
    keys = ("mode", "operands", "operands_frac", "n_leaves", "leaves", "widened", "within", *params)
    assert [{k: r.stats[k] for k in keys} for r in got] == [{k: r.stats[k] for k in keys} for r in want]
    assert all(0 < r.stats["route_ms"] <= r.stats["ms"] for r in got)


@pytest.mark.parametrize("mode, params", [("probe", {"nprobe": 3, "s2": 0.05}), ("relaxed", {"s2": 0.05})])
def test_a_replica_routes_its_own_chunks_of_a_builtin_mode_with_the_same_answer(replicated, mode, params):
    router, s, vecs = replicated
    q = np.concatenate([vecs, vecs[:100]])
    keys = ("mode", "operands", "operands_frac", "n_leaves", "leaves", "widened", "within", *params)

    def answers(res):
        return [[(h.id, round(h.score, 5)) for h in r] for r in res], [{k: r.stats[k] for k in keys} for r in res]

    want = answers(router.search_batch(q, k=10, mode=mode, with_payload=False, **params))
    s.set_read_replicas(1)
    got = router.search_batch(q, k=10, mode=mode, with_payload=False, **params)
    st = s._replicas.stats
    assert st["replica_routed"] == st["replica_chunks"] >= 2 and st["fallbacks"] == 0
    assert answers(got) == want
    assert all(0 < r.stats["route_ms"] <= r.stats["ms"] for r in got)
    # the tree changes: the replica is sent the new snapshot and routes on it
    rng = np.random.default_rng(0)
    new = vecs[:60] + 0.05 * rng.standard_normal(vecs[:60].shape).astype(np.float32)
    router.add(np.arange(10_001, 10_061), new, [{"label": "x"}] * 60)
    live = s._replicas._live[0]
    assert live.context is not router.flat
    got = router.search_batch(q, k=10, mode=mode, with_payload=False, **params)
    assert live.context is router.flat and st["replica_routed"] >= 4
    with s.local_only():
        assert answers(got) == answers(router.search_batch(q, k=10, mode=mode, with_payload=False, **params))


def test_a_mode_that_is_not_rowwise_is_routed_whole(replicated, monkeypatch):
    router, s, vecs = replicated
    modes_mod._ensure_loaded()
    m = modes_mod.MODES["probe"]
    routed = []
    monkeypatch.setitem(modes_mod.MODES, "probe", dataclasses.replace(
        m, rowwise=False, fn=lambda ctx, Q, **p: routed.append(len(Q)) or m.fn(ctx, Q, **p)))
    s.set_read_replicas(1)
    router.search_batch(vecs, k=10, mode="probe")
    assert routed == [len(vecs)] and s._replicas.stats["replica_chunks"] >= 1
