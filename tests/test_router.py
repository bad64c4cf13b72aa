"""Router: build invariants, each search mode against brute force on real embeddings, persistence,
incremental add/split/merge/delete, concurrency, and bad input."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from plugin.errors import BadVectorError, EmptyCollectionError, RouterError
from plugin.router import Router
from plugin.router.kernels import nearest_leaf_batch
from plugin.router.state import state_path
from plugin.store import Filter, open_store


@pytest.fixture
def filled(make_store, fmnist_small):
    vecs, wnids, _ = fmnist_small
    s = make_store(vecs.shape[1])
    s.upsert(np.arange(len(vecs)), vecs, [{"wnid": w, "leaf": -1} for w in wnids])
    return s, vecs


def _leaf_of_all(store):
    ids, _, pls = store.all_vectors(payload_fields=["leaf"])
    return dict(zip(ids.tolist(), [p["leaf"] for p in pls]))


def _check_invariants(router):
    """Every point in exactly one live leaf; router counts equal store counts per leaf and in total."""
    leaf = _leaf_of_all(router.store)
    live = set(router.tree.leaf_ids().tolist())
    assert set(leaf.values()) <= live
    counts = np.bincount(list(leaf.values()), minlength=router.tree.next_leaf_id)
    np.testing.assert_array_equal(counts, router.leaf_counts)
    assert router.tree.counts[0] == router.store.count() == len(leaf)
    for lid in live:  # node sums agree with the stored vectors of the leaf
        node = router.tree.leaf_node[lid]
        if router.tree.counts[node]:
            _, v, _ = (lambda r: (None, np.vstack([x.vector for x in r]), None))(
                [x for page in router.store.scroll(filter=Filter.of(leaf_in=[lid])) for x in page])
            np.testing.assert_allclose(router.tree.sums[node], v.sum(0), atol=1e-3)


def test_build_invariants(filled):
    s, vecs = filled
    r = Router.build(s, k=3, l=3)
    assert r.tree.n_leaves <= 9 and r.describe()["points"] == len(vecs)
    _check_invariants(r)
    assert s.count(Filter.of(leaf_in=[-1])) == 0


def test_balanced_leaves_and_min_size(filled):
    s, vecs = filled
    r = Router.build(s, k=2, l=2, max_leaf_size=40, min_leaf_size=10)
    sizes = r.leaf_counts[r.tree.leaf_ids()]
    assert sizes.max() <= 40 and sizes.min() >= 1
    assert r.describe()["depth_max"] > 2  # big clusters were split below level l
    _check_invariants(r)


def _brute(vecs, q, k, allowed=None):
    s = vecs @ (q / np.linalg.norm(q))
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    return set(np.argsort(-s)[:k].tolist())


@pytest.mark.parametrize("mode", ["intensive", "auto", "relaxed", "probe"])
def test_modes_score_exactly_their_leaves(filled, mode):
    """Within the chosen leaves the store's ranking equals brute force over those points."""
    s, vecs = filled
    r = Router.build(s, k=3, l=3)
    leaf = _leaf_of_all(s)
    leaf_arr = np.asarray([leaf[i] for i in range(len(vecs))])
    for qi in (0, 50, 123, 299):
        res = r.search(vecs[qi], k=5, mode=mode)
        allowed = np.isin(leaf_arr, res.stats["leaves"])
        assert len(res) == min(5, int(allowed.sum()))
        assert {h.id for h in res} == _brute(vecs, vecs[qi], len(res), allowed)
        assert res.stats["operands"] == int(allowed.sum())
        if mode == "intensive":  # one greedy path
            f = r.flat
            q = r.prepare_queries(vecs[qi:qi + 1])
            assert res.stats["leaves"] == [int(nearest_leaf_batch(q, f.centroids, f.child_offsets, f.children,
                                                                   f.leaf_of_node, f.metric)[0])]


def test_mode_nesting_and_relaxed_extremes(filled):
    s, vecs = filled
    r = Router.build(s, k=3, l=3)
    for qi in range(0, 300, 37):
        intensive = set(r.route(vecs[qi], "intensive")[0].tolist())
        relaxed = set(r.route(vecs[qi], "relaxed", s1=0.0, s2=0.05)[0].tolist())
        assert intensive <= relaxed
        everything = r.search(vecs[qi], k=10, mode="relaxed", s1=10.0, s2=10.0)
        exact = r.search(vecs[qi], k=10, mode="exact")
        assert [h.id for h in everything] == [h.id for h in exact]
        assert everything.stats["operands"] == exact.stats["operands"] == len(vecs)
        strict = set(r.route(vecs[qi], "relaxed", s1=None, s2=0.0)[0].tolist())
        assert strict == intensive  # eq. 2 off and s2=0: only the best node per level, one path


def test_auto_selects_up_to_largest_gap():
    from plugin.router.kernels import AUTO, select

    keep = np.zeros(5, np.bool_)
    select(np.array([0.10, 0.12, 0.50, 0.52, 0.55]), AUTO, 0.0, 0.0, keep)
    assert keep.tolist() == [True, True, False, False, False]
    select(np.array([0.3, 0.1, 0.2, 0.9, 0.8]), AUTO, 0.0, 0.0, keep)
    assert keep.tolist() == [True, True, True, False, False]


def _leaf_centroids(r):
    lids = r.tree.leaf_ids()
    c = r.tree.leaf_centroids(lids).astype(np.float64)
    return lids, c / np.linalg.norm(c, axis=1, keepdims=True)


def test_probe_scores_the_nearest_leaves_reached(filled):
    """With a band that reaches every leaf, probe's leaves are the ``nprobe`` nearest leaf centroids by
    brute force over the int8 codes it routes on, nearest first, and within the codes' error of the
    nearest by the float centroids; a narrow band reaches a subset, still ordered; bad nprobe is refused."""
    s, vecs = filled
    r = Router.build(s, k=3, l=3)
    lids, cents = _leaf_centroids(r)
    f = r.flat
    nodes = np.array([int(np.flatnonzero(f.leaf_of_node == lid)[0]) for lid in lids])
    coded = f.codes[nodes].astype(np.float64) * f.code_scale[nodes, None]
    assert np.abs(coded - f.centroids[nodes]).max() <= np.abs(f.centroids[nodes]).max() / 254 + 1e-7
    for qi in (0, 77, 211):
        q = vecs[qi] / np.linalg.norm(vecs[qi])
        got = r.route(vecs[qi], "probe", nprobe=4, s2=10.0)[0]
        assert got.tolist() == lids[np.argsort(-(coded @ q), kind="stable")[:4]].tolist()
        exact_d = 1 - cents @ q
        assert (1 - cents[np.searchsorted(lids, got)] @ q).max() <= np.sort(exact_d)[3] + 2e-3
        narrow = r.route(vecs[qi], "probe", nprobe=4, s2=0.0)[0]
        d = 1 - coded[np.searchsorted(lids, narrow)] @ q
        assert len(narrow) >= 1 and np.all(np.diff(d) >= -1e-6)
        assert set(narrow.tolist()) <= set(r.route(vecs[qi], "probe", nprobe=50, s2=10.0)[0].tolist())
    for bad in (0, -1, 2.5, True):
        with pytest.raises(RouterError, match="nprobe"):
            r.search(vecs[0], mode="probe", nprobe=bad)


def test_probe_work_counts_the_centroids_the_descent_evaluates(filled):
    """``probe_work_batch`` (the anatomy bench's routing cost) counts, per query, every child of every node
    the probe descent expands: the root's children, then those of the internal nodes within ``s2`` of
    each level's nearest, as an independent walk over the int8 codes counts them."""
    from plugin.router import kernels

    s, vecs = filled
    r = Router.build(s, k=3, l=3)
    f = r.flat
    Q = r.prepare_queries(vecs[[0, 77, 211, 5]])
    rows, scale, _ = f.rows(quantized=True)

    def walk(q, s2):
        frontier, evals = [0], 0
        while frontier:
            cand = []
            for node in frontier:
                for c in f.children[f.child_offsets[node]:f.child_offsets[node + 1]]:
                    evals += 1
                    if f.leaf_of_node[c] < 0 and f.child_offsets[c + 1] > f.child_offsets[c]:
                        cand.append((1 - float(rows[c].astype(np.float64) @ q) * scale[c], c))
            best = min((d for d, _ in cand), default=0.0)
            frontier = [c for d, c in cand if d - best <= s2]
        return evals

    args = (*f.rows(quantized=True), f.child_offsets, f.children, f.leaf_of_node, f.metric)
    for s2 in (0.0, 0.05, 10.0):
        got = kernels.probe_work_batch(Q, *args, 5, s2)
        assert got.tolist() == [walk(q, s2) for q in Q]
    assert kernels.probe_work_batch(Q, *args, 5, 10.0).min() == len(f.children)  # everything: every edge
    assert kernels.probe_work_batch(Q, *args, 5, 0.0).max() < len(f.children)


def test_ranked_probe_gives_probes_leaves_with_their_code_distances(filled):
    """Mode target's candidates (``probe_ranked_batch``): the leaves the probe kernel picks, in its order,
    with each leaf's distance to the query over the int8 codes (1 - cosine), nearest first, padded past
    the count; a tree that is one leaf gives that leaf and its distance."""
    from plugin.router import kernels

    s, vecs = filled
    r = Router.build(s, k=3, l=3)
    f = r.flat
    Q = r.prepare_queries(vecs[[0, 77, 211]])
    args = (*f.rows(quantized=True), f.child_offsets, f.children, f.leaf_of_node, f.metric)
    for nprobe, s2 in ((4, 10.0), (50, 0.0), (6, 0.05)):
        want, want_n = kernels.probe_batch(Q, *args, nprobe, s2)
        leaves, dist, counts = kernels.probe_ranked_batch(Q, *args, nprobe, s2)
        np.testing.assert_array_equal(counts, want_n)
        np.testing.assert_array_equal(leaves, want)
        for b in range(len(Q)):
            n = counts[b]
            nodes = [int(np.flatnonzero(f.leaf_of_node == lid)[0]) for lid in leaves[b, :n]]
            coded = f.codes[nodes].astype(np.float64) * f.code_scale[nodes, None]
            np.testing.assert_allclose(dist[b, :n], 1 - coded @ Q[b], atol=1e-5)
            assert np.all(np.diff(dist[b, :n]) >= 0) and np.all(np.isinf(dist[b, n:]))
    from plugin.router.tree import build_tree

    one = build_tree(vecs[:5], k=3, l=1, metric="cosine", seed=0)[0].flatten()
    assert one.leaf_of_node[0] >= 0  # the root is the only leaf
    leaves, dist, counts = kernels.probe_ranked_batch(Q[:1], *one.rows(quantized=True), one.child_offsets,
                                                      one.children, one.leaf_of_node, one.metric, 3, 0.0)
    coded = one.codes[0].astype(np.float64) * one.code_scale[0]
    assert counts[0] == 1 and leaves[0, 0] == one.leaf_of_node[0]
    assert dist[0, 0] == pytest.approx(1 - coded @ Q[0], abs=1e-5)


def _objective(r, vecs):
    """Sum over points of 1 - cos(point, centroid of its leaf)."""
    leaf = _leaf_of_all(r.store)
    lids, cents = _leaf_centroids(r)
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    own = np.searchsorted(lids, [leaf[i] for i in range(len(vecs))])
    return float((1 - np.einsum("ij,ij->i", unit, cents[own])).sum()), unit, cents, own


def test_refine_files_points_under_their_nearest_leaf(make_store, fmnist_small):
    """Refined leaves lower the k-means objective of the paper's tree, and once converged every point
    sits in the leaf whose centroid is nearest to it; the tree's sums and counts follow the points."""
    vecs, wnids, _ = fmnist_small
    objective = {}
    for refine in (0, 50):
        s = make_store(vecs.shape[1], name=f"r{refine}")
        s.upsert(np.arange(len(vecs)), vecs, [{"leaf": -1} for _ in vecs])
        r = Router.build(s, k=4, l=3, refine=refine, relayout=False)
        _check_invariants(r)
        objective[refine], unit, cents, own = _objective(r, vecs)
        if refine:
            assert r.meta["refine"] == 50
            nearest = np.argmax(unit @ cents.T, axis=1)
            assert np.mean(nearest == own) >= 0.99  # converged (ties and empty leaves aside)
    assert objective[50] < objective[0]


def test_search_without_payload(filled):
    s, vecs = filled
    r = Router.build(s, k=3, l=3)
    full = r.search(vecs[5], k=5, mode="probe")
    bare = r.search(vecs[5], k=5, mode="probe", with_payload=False)
    assert [h.id for h in bare] == [h.id for h in full] and all(h.payload for h in full)
    assert all(h.payload == {} for h in bare)


def test_search_batch_matches_single(filled):
    s, vecs = filled
    r = Router.build(s, k=3, l=3)
    batch = r.search_batch(vecs[:4], k=5, mode="auto")
    for b in range(4):
        single = r.search(vecs[b], k=5, mode="auto")
        assert [h.id for h in batch[b]] == [h.id for h in single]
        assert batch[b].stats["leaves"] == single.stats["leaves"]


def test_persistence_and_reopen(tmp_path, fmnist_small):
    vecs, _, _ = fmnist_small
    s = open_store(tmp_path / "c", dim=vecs.shape[1])
    s.upsert(np.arange(len(vecs)), vecs)
    r = Router.build(s, k=3, l=3)
    want = [h.id for h in r.search(vecs[7], k=10, mode="relaxed")]
    s.close()
    r2 = Router.open(tmp_path / "c")
    assert [h.id for h in r2.search(vecs[7], k=10, mode="relaxed")] == want
    assert r2.describe() == r.describe()
    r2.close()


def test_saved_state_derives_sums_from_exact_centroids_and_reads_older_files(tmp_path, fmnist_small):
    """The state file holds centroids and counts, not sums: after a reopen the centroids are bit-identical,
    the sums equal centroid x count to float32 rounding (as the float32 sums saved before), and a state
    file that still holds sums loads them as saved."""
    from plugin.router.state import load_state, save_state

    vecs, _, _ = fmnist_small
    s = open_store(tmp_path / "c", dim=vecs.shape[1])
    s.upsert(np.arange(250), vecs[:250])
    r = Router.build(s, k=3, l=2, max_leaf_size=60, min_leaf_size=5)
    r.add(np.arange(250, 300), vecs[250:300], save=True)
    sums, cents, counts = r.tree.sums.copy(), r.tree.centroids.copy(), r.tree.counts.copy()
    meta, arrays = load_state(state_path(s))
    assert "sums" not in arrays
    s.close()
    r2 = Router.open(tmp_path / "c")
    assert np.array_equal(r2.tree.centroids, cents) and np.array_equal(r2.tree.counts, counts)
    np.testing.assert_allclose(r2.tree.sums, sums, rtol=2e-6, atol=1e-5)
    r2.close()
    old = tmp_path / "old.npz"
    save_state(old, meta, {**arrays, "sums": sums * 2})  # a file written before sums were derived
    _, arrays_old = load_state(old)
    from plugin.router.tree import Tree

    t = Tree.from_arrays(vecs.shape[1], "cosine", 3, 2, meta["next_leaf_id"], arrays_old)
    assert np.array_equal(t.sums, sums * 2)


def test_crash_mid_state_write_keeps_previous_state(tmp_path, fmnist_small, monkeypatch):
    vecs, _, _ = fmnist_small
    s = open_store(tmp_path / "c", dim=vecs.shape[1])
    s.upsert(np.arange(200), vecs[:200])
    r = Router.build(s, k=2, l=3)
    import plugin.fsutil as fsu

    def boom(*a, **k):
        raise OSError("disk full")

    before = state_path(s).read_bytes()
    r.add(np.arange(200, 260), vecs[200:260])
    monkeypatch.setattr(fsu.os, "fsync", boom)  # fails after the temporary file was written
    with pytest.raises(OSError):
        r.save()
    monkeypatch.undo()
    assert sorted(p.name for p in state_path(s).parent.glob("router*")) == ["router.npz"]
    assert state_path(s).read_bytes() == before
    r2 = Router.open(s)  # the previous file is intact; reconcile picks up the 60 points it missed
    assert r2.tree.counts[0] == 260
    _check_invariants(r2)


def test_incremental_add_routes_and_splits(filled, fmnist_small):
    s, vecs = filled
    base = 150
    s.delete(np.arange(base, len(vecs)))
    r = Router.build(s, k=2, l=3, max_leaf_size=60, min_leaf_size=5)
    before = r.tree.n_leaves
    stats = r.add(np.arange(base, len(vecs)), vecs[base:])
    assert stats["added"] == len(vecs) - base and stats["splits"] >= 1
    assert r.tree.n_leaves > before and r.leaf_counts.max() <= 60
    _check_invariants(r)
    for qi in (base, base + 20, len(vecs) - 1):  # new points are findable
        assert r.search(vecs[qi], k=1, mode="auto")[0].id == qi


def test_delete_updates_counts_and_merges(filled):
    s, vecs = filled
    r = Router.build(s, k=3, l=3, min_leaf_size=8, max_leaf_size=200)
    lid = int(r.tree.leaf_ids()[np.argmin(r.leaf_counts[r.tree.leaf_ids()])])
    members = [x.id for page in s.scroll(filter=Filter.of(leaf_in=[lid]), with_vectors=False) for x in page]
    leaves_before = r.tree.n_leaves
    stats = r.delete(members[: max(1, len(members) - 3)])
    assert stats["deleted"] == max(1, len(members) - 3)
    assert stats["merges"] >= 1 and r.tree.n_leaves < leaves_before and lid not in r.tree.leaf_node
    _check_invariants(r)


def test_readd_same_id_replaces(filled):
    s, vecs = filled
    r = Router.build(s, k=3, l=3)
    r.add([5], vecs[6:7])
    assert s.count() == len(vecs)
    _check_invariants(r)


def test_search_during_add_stays_correct(filled, fmnist_small):
    s, vecs = filled
    s.delete(np.arange(200, len(vecs)))
    r = Router.build(s, k=2, l=3, max_leaf_size=70, min_leaf_size=5)
    errors = []

    def searcher():
        for it in range(60):
            qi = (it * 7) % 200
            # every live leaf, routed through the tree: a stored point must always be found
            # (it would be missed if a search saw payloads and tree of different moments)
            res = r.search(vecs[qi], k=1, mode="relaxed", s1=10.0, s2=10.0)
            if not res or (res[0].id != qi and res[0].score < 0.99999):  # or an exact duplicate image
                errors.append((qi, [(h.id, h.score) for h in res]))
            res = r.search(vecs[qi], k=5, mode="auto")
            if any(h.payload["leaf"] not in res.stats["leaves"] for h in res):
                errors.append(("leaf outside route", qi))

    t = threading.Thread(target=searcher)
    t.start()
    for s0 in range(200, len(vecs), 20):
        r.add(np.arange(s0, min(s0 + 20, len(vecs))), vecs[s0:s0 + 20])
    t.join()
    assert not errors
    _check_invariants(r)


def test_bad_input(make_store, filled, tmp_path, fmnist_small):
    s, vecs = filled
    with pytest.raises(RouterError, match="k must be"):
        Router.build(s, k=1, l=3)
    with pytest.raises(RouterError, match="l must be"):
        Router.build(s, k=3, l=0)
    with pytest.raises(RouterError, match="only 300 points"):
        Router.build(s, k=10, l=4)
    with pytest.raises(RouterError, match="no router"):
        Router.open(s)
    r = Router.build(s, k=3, l=3)
    n = s.count()
    with pytest.raises(BadVectorError, match="dimension"):
        r.search(np.ones(5, np.float32))
    with pytest.raises(BadVectorError, match="NaN"):
        r.search(np.full(vecs.shape[1], np.nan, np.float32))
    with pytest.raises(BadVectorError, match="NaN"):
        r.add([1000], np.full((1, vecs.shape[1]), np.inf, np.float32))
    with pytest.raises(RouterError, match="unknown search mode"):
        r.search(vecs[0], mode="telepathy")
    with pytest.raises(RouterError, match=">= 0"):
        r.search(vecs[0], mode="relaxed", s2=-1)
    with pytest.raises(RouterError, match=r"does not take S2; it takes s1=None, s2=0.04"):
        r.search(vecs[0], mode="relaxed", S2=0.1)
    with pytest.raises(RouterError, match=r"'intensive' does not take s2; it takes no parameters"):
        r.search(vecs[0], mode="intensive", s2=0.1)
    with pytest.raises(RouterError, match="s1 must be a finite number or None"):
        r.route(vecs[0], mode="relaxed", s1=float("nan"))
    assert s.count() == n
    _check_invariants(r)
    empty = make_store(8, name="empty")
    with pytest.raises(RouterError, match="empty collection"):
        Router.build(empty, k=2, l=2)


def test_prepare_queries_checks_every_row_and_normalises(filled):
    """One kernel call checks and normalises a float32 batch: a NaN, an inf or a zero vector in any row is
    refused with the error of the general path, and other inputs (lists, float64) give the same rows."""
    s, vecs = filled
    r = Router.build(s, k=3, l=3)
    q = np.ascontiguousarray(vecs[:4], np.float32)
    got = r.prepare_queries(q)
    np.testing.assert_allclose(got, q / np.linalg.norm(q, axis=1, keepdims=True), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(r.prepare_queries(q.astype(np.float64).tolist()), got)
    for row, col, value, match in ((2, 7, np.nan, "NaN"), (3, 0, np.inf, "NaN"), (1, None, 0.0, "zero vector")):
        b = q.copy()
        b[row, slice(None) if col is None else col] = value
        for call in (r.prepare_queries, r.search_batch, lambda x: r.search(x[row])):
            with pytest.raises(BadVectorError, match=match):
                call(b)


def test_router_file_from_another_collection(tmp_path, fmnist_small):
    vecs, _, _ = fmnist_small
    a = open_store(tmp_path / "a", dim=vecs.shape[1])
    b = open_store(tmp_path / "b", dim=vecs.shape[1])
    for st in (a, b):
        st.upsert(np.arange(100), vecs[:100])
    Router.build(a, k=2, l=2)
    Router.build(b, k=2, l=2)
    state_path(b).write_bytes(state_path(a).read_bytes())
    with pytest.raises(RouterError, match="another collection"):
        Router.open(b)
    a.close()
    b.close()


def test_search_after_everything_deleted(make_store, fmnist_small):
    vecs, _, _ = fmnist_small
    s = make_store(vecs.shape[1])
    s.upsert(np.arange(60), vecs[:60])
    r = Router.build(s, k=2, l=2)
    r.delete(np.arange(60))
    assert s.count() == 0 and r.tree.counts[0] == 0
    with pytest.raises(EmptyCollectionError, match="empty"):
        r.search(vecs[0], k=3)


def test_router_reopens_on_the_server_backend(tmp_path, monkeypatch, fmnist_small):
    """The server code path (qdrant-client on-disk local mode): build, close, reopen from a new client."""
    from plugin.store.server import ServerStore

    monkeypatch.setenv("HSEARCH_HOME", str(tmp_path / "home"))
    vecs, _, _ = fmnist_small
    s = ServerStore("c", vecs.shape[1], path=str(tmp_path / "qd"))
    s.upsert(np.arange(120), vecs[:120])
    want = [h.id for h in Router.build(s, k=2, l=3).search(vecs[5], k=5, mode="relaxed")]
    s.close()
    s2 = ServerStore("c", path=str(tmp_path / "qd"))
    assert Router.exists(s2)
    assert [h.id for h in Router.open(s2).search(vecs[5], k=5, mode="relaxed")] == want
    s2.close()


@pytest.mark.parametrize("metric", [0, 1, 2])
def test_row_distance_matches_node_distance(fmnist_small, metric):
    """Probe's distance over float rows is node_distance's (float32 sums); over int8 codes it is within
    the codes' error, for cosine, Euclidean and inner product."""
    from plugin.router.kernels import node_distance, row_distance
    from plugin.router.tree import int8_codes

    vecs = fmnist_small[0][:40].astype(np.float32)
    rows = vecs / np.linalg.norm(vecs, axis=1, keepdims=True) if metric == 0 else vecs
    q = rows[0] * 0.5 + rows[1] * 0.5
    q = q / np.linalg.norm(q) if metric == 0 else q
    codes, scale = int8_codes(rows)
    sq = np.einsum("ij,ij->i", rows, rows)
    qq = float(q @ q)
    want = np.array([node_distance(q, rows, i, metric) for i in range(len(rows))])
    flt = np.array([row_distance(q, qq, rows, np.ones(len(rows), np.float32), sq, i, metric) for i in range(len(rows))])
    cod = np.array([row_distance(q, qq, codes, scale, sq, i, metric) for i in range(len(rows))])
    np.testing.assert_allclose(flt, want, rtol=1e-4, atol=1e-4)
    bound = np.abs(q).sum() * scale / 2 * (1 if metric != 1 else 2 / np.maximum(want, 1e-3))
    assert np.all(np.abs(cod - want) <= bound + 1e-4)
    assert not np.allclose(cod, want, rtol=0, atol=1e-9)  # the codes are coarser than the floats


@pytest.mark.parametrize("metric", ["cosine", "l2", "dot"])
def test_centroid_distances_are_maintenance_distances(fmnist_small, metric):
    """The split's neighbour search (one numba pass over raw, not unit, centroid rows of chosen nodes) gives
    maintenance's NumPy distances in all three metrics, so the same leaves are nearest."""
    from plugin.router.kernels import centroid_distances
    from plugin.router.maintenance import _dist
    from plugin.router.tree import METRICS

    vecs = fmnist_small[0][:60].astype(np.float32)
    rows = vecs[:50] * np.linspace(0.5, 3, 50, dtype=np.float32)[:, None]  # means, of any length
    nodes = np.array([3, 17, 0, 44, 9, 31, 28], np.int64)
    q = vecs[55].astype(np.float64) * 1.7
    got = centroid_distances(q, rows, nodes, METRICS[metric])
    want = _dist(metric, q[None].astype(np.float32), rows[nodes])[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.argsort(got).tolist() == np.argsort(want).tolist()


def test_tree_modes_answer_alike_on_the_short_path_and_under_a_filter(make_store, fmnist_small):
    """A tree mode with no filter takes one store call (``search_leaves``, no Plan); under a filter every
    point passes it takes the general path. Same hits, scores and stats either way."""
    vecs, wnids, _ = fmnist_small
    s = make_store(vecs.shape[1])
    s.upsert(np.arange(len(vecs)), vecs, [{"wnid": w, "leaf": -1, "kind": "photo"} for w in wnids])
    r = Router.build(s, k=3, l=3)
    everyone = Filter.of(kind="photo")
    for mode, kw in (("probe", {"nprobe": 4}), ("relaxed", {"s2": 0.05}), ("intensive", {}), ("auto", {})):
        short = r.search_batch(vecs[:6], k=5, mode=mode, **kw)
        general = r.search_batch(vecs[:6], k=5, mode=mode, filter=everyone, **kw)
        for a, b in zip(short, general):
            assert [h.id for h in a] == [h.id for h in b]
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-6)
            assert a[0].payload["wnid"] == b[0].payload["wnid"]
            drop = ("route_ms", "score_ms", "ms")
            assert {k: v for k, v in a.stats.items() if k not in drop} == \
                {k: v for k, v in b.stats.items() if k not in drop}
            assert a.stats["operands"] == int(r.leaf_counts[a.stats["leaves"]].sum()) > 0


@pytest.mark.parametrize("n, dim", [(40, 64), (90, 16)])
def test_halve_splits_along_the_first_principal_direction(n, dim):
    """The split fallback halves a leaf at the median of its points' first principal direction, whether it
    has fewer points than dimensions (Gram-matrix eigenvector) or more (SVD): two near-duplicate groups
    apart along one direction come out as the two halves."""
    from plugin.router.tree import _halve

    rng = np.random.default_rng(3)
    axis = rng.normal(size=dim)
    side = rng.permutation(np.repeat([-1.0, 1.0], n // 2))
    vecs = (side[:, None] * axis * 3 + rng.normal(size=(n, dim)) * 0.05 + 10).astype(np.float32)
    a, b = _halve(vecs)
    assert len(a) == len(b) == n // 2
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(n))
    assert len(set(side[a].tolist())) == 1 and len(set(side[b].tolist())) == 1 and side[a][0] != side[b][0]


def test_int8_codes_are_the_rounded_scaled_rows(fmnist_small):
    """The one-pass kernel gives exactly NumPy's codes and scales: rint of row / (max|row| / 127), clipped;
    a zero row gets scale 1 and zero codes; a tiny row is still scaled to its own peak."""
    from plugin.router.tree import int8_codes

    rows = fmnist_small[0][:30].astype(np.float32) * np.linspace(-2, 3, 30, dtype=np.float32)[:, None]
    rows[4] = 0
    rows[7] *= np.float32(1e-30)
    codes, scale = int8_codes(rows)
    peak = np.abs(rows).max(axis=1)
    want_scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    want = np.clip(np.rint(rows / want_scale[:, None]), -127, 127).astype(np.int8)
    assert codes.dtype == np.int8 and np.array_equal(codes, want) and np.array_equal(scale, want_scale)
    assert not codes[4].any() and scale[4] == 1 and np.abs(codes[7]).max() == 127


def test_add_to_leaves_keeps_every_ancestor_sum_count_and_centroid(fmnist_small):
    """Points added to (and taken out of) leaves land in the leaf and every ancestor: sums and counts equal
    a recount from the points' leaves, centroids are the means of the nodes that hold points, an empty
    node keeps its last mean, unknown leaf ids are ignored."""
    from plugin.router.tree import Tree

    vecs = fmnist_small[0][:90].astype(np.float32)
    t = Tree(vecs.shape[1], "cosine", 2, 3)
    root = t.add_node(-1, vecs.mean(0), is_leaf=False)
    mids = [t.add_node(root, vecs[i], is_leaf=False) for i in (0, 1)]
    leaves = [t.add_node(m, vecs[i], is_leaf=True) for i, m in enumerate([mids[0], mids[0], mids[1], mids[1]])]
    lids = np.array([t.leaf_id[n] for n in leaves])
    of = lids[np.arange(90) % 3]  # leaf 3 stays empty
    of[5] = 999  # unknown: ignored
    assert t.add_to_leaves(vecs, of, +1) == sorted(lids[:3].tolist())
    assert t.add_to_leaves(vecs[:30], of[:30], -1) == sorted(lids[:3].tolist())
    keep = (np.arange(90) >= 30) & (of != 999)
    for node in range(t.n_nodes):
        below = [lid for lid in lids if node in t.path(t.leaf_node[lid])]
        mask = keep & np.isin(of, below)
        np.testing.assert_allclose(t.sums[node], vecs[mask].sum(0, dtype=np.float64), rtol=1e-9, atol=1e-9)
        assert t.counts[node] == mask.sum()
        if mask.any():
            np.testing.assert_allclose(t.centroids[node], vecs[mask].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(t.centroids[leaves[3]], vecs[3])  # empty: its last (initial) mean


def test_parallel_routing_gives_the_serial_kernels_results_under_concurrent_batches(fmnist_small):
    """A batch of at least PARALLEL_MIN queries is routed by the prange kernels: the same leaves as the
    one-thread kernels, for probe and the relaxed walk, also while other threads route batches at once."""
    import threading

    from plugin.router import kernels

    vecs = fmnist_small[0]
    Q = np.ascontiguousarray(np.concatenate([vecs, vecs[::-1]]))  # 600 queries
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    from plugin.router.tree import build_tree

    tree, _ = build_tree(vecs, k=3, l=3, metric="cosine", seed=0)
    f = tree.flatten()
    probe_args = (*f.rows(quantized=True), f.child_offsets, f.children, f.leaf_of_node, f.metric, 5, 0.05)
    walk_args = (f.centroids, f.child_offsets, f.children, f.leaf_of_node, f.metric, kernels.RELAXED, -np.inf, 0.06,
                 max(f.n_leaves, 1))
    assert len(Q) >= kernels.PARALLEL_MIN
    want_p, want_w = kernels.probe_batch(Q, *probe_args), kernels.route_batch(Q, *walk_args)
    got = {}

    def run(i):
        got[i] = (kernels.probe_many(Q, *probe_args), kernels.route_many(Q, *walk_args))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (p, w) in got.values():
        for a, b in ((p, want_p), (w, want_w)):
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    assert want_w[1].max() > 1 and want_p[1].max() > 1  # routes with several leaves: a comparison that can fail


@pytest.mark.parametrize("cosine", [True, False])
def test_snapshot_rows_are_the_unit_rows_their_norms_and_codes(fmnist_small, cosine):
    """The snapshot's one-pass kernel: unit rows under cosine (a zero row stays zero), the rows as given
    otherwise, their squared norms, and the int8 codes of exactly those rows."""
    from plugin.router.kernels import snapshot_rows, snapshot_rows_parallel, snapshot_rows_serial
    from plugin.router.tree import int8_codes

    cents = fmnist_small[0][:80].astype(np.float32) * np.linspace(0.2, 4, 80, dtype=np.float32)[:, None]
    cents[6] = 0
    rows, sq, codes, scale = snapshot_rows(cents, cosine)
    for kernel in (snapshot_rows_serial, snapshot_rows_parallel):  # snapshot_rows picks one by size
        assert all(np.array_equal(a, b) for a, b in zip(kernel(cents, cosine), (rows, sq, codes, scale)))
    want = cents / np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12) if cosine else cents
    np.testing.assert_allclose(rows, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sq, np.einsum("ij,ij->i", want, want), rtol=1e-5, atol=1e-7)
    want_codes, want_scale = int8_codes(rows)
    assert np.array_equal(codes, want_codes) and np.array_equal(scale, want_scale)
    assert not rows[6].any() and sq[6] == 0
    if cosine:
        np.testing.assert_allclose(np.linalg.norm(np.delete(rows, 6, 0), axis=1), 1, rtol=1e-5)


def test_compact_drops_exactly_the_detached_nodes_and_skips_an_unchanged_tree(fmnist_small):
    """A detached leaf, and a parent its detach left childless, are dropped by the next compact (leaf ids
    kept); a compact with nothing detached since the last one changes nothing and walks nothing."""
    from plugin.router.tree import Tree

    vecs = fmnist_small[0][:8].astype(np.float32)
    t = Tree(vecs.shape[1], "cosine", 2, 3)
    root = t.add_node(-1, vecs.mean(0), is_leaf=False)
    mids = [t.add_node(root, vecs[i], is_leaf=False) for i in (0, 1)]
    leaves = [t.add_node(m, vecs[i], is_leaf=True) for i, m in enumerate([mids[0], mids[0], mids[1]])]
    lids = [t.leaf_id[n] for n in leaves]
    assert t.compact() is False  # all reachable
    assert t.compact() is False and t.n_nodes == 6
    t.retire_leaf(leaves[2])
    t.detach(leaves[2])  # its parent mids[1] is left without children: pruned as well
    assert t.compact() is True
    assert t.n_nodes == 4 and sorted(t.leaf_node) == lids[:2]
    assert all(t.parent[t.leaf_node[lid]] == 1 for lid in lids[:2]) and t.children[0] == [1]
    node = t.leaf_node[lids[1]]
    t.retire_leaf(node)
    t.detach(node, prune=False)
    assert t.compact() is True and t.n_nodes == 3 and t.children[1] == [2]


def test_a_leaf_grown_twofold_splits_below_the_split_bound(filled):
    """Growth rule: a leaf that receives GROWTH times the points it was clustered with (a mode the tree has
    not seen) is re-clustered even though it stays under ``split_bound``."""
    s, vecs = filled
    r = Router.build(s, k=3, l=2, split_bound=10_000, merge_bound=2)
    lid = int(r.tree.leaf_ids()[np.argmax(r.leaf_counts[r.tree.leaf_ids()])])
    ids, own = s.all_vectors(filter=Filter.of(leaf_in=[lid]))[:2]
    n = len(ids)
    assert 2 * n < 10_000
    rng = np.random.default_rng(0)
    new = own[rng.integers(0, n, 2 * n)] + 0.01 * rng.standard_normal((2 * n, own.shape[1])).astype(np.float32)
    stats = r.add(np.arange(10_000, 10_000 + 2 * n), new)
    assert stats["splits"] >= 1 and lid not in r.tree.leaf_node
    _check_invariants(r)


def test_an_empty_batch_has_an_empty_answer_and_bad_parameters_are_still_errors(filled):
    s, vecs = filled
    router = Router.build(s, k=4, l=2, save=False)
    none = np.zeros((0, vecs.shape[1]), np.float32)
    assert router.search_batch(none, k=5, mode="probe") == [] and router.search_batch(none, mode="exact") == []
    with pytest.raises(RouterError):
        router.search_batch(none, mode="probe", S2=0.1)
    with pytest.raises(BadVectorError):
        router.search_batch(np.zeros((0, vecs.shape[1] + 1), np.float32))
