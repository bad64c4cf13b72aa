"""The router never strands a point: unsaved changes, crashes mid-build, leaf-id reuse, bounds after
maintenance, compaction. Every scenario reopens the collection and looks for every point."""
from __future__ import annotations

import numpy as np
import pytest

from plugin.errors import HSearchError
from plugin.router import Router
from plugin.router.state import staged_path, state_path
from plugin.store import Filter, open_store

EVERYWHERE = {"mode": "relaxed", "s1": 10.0, "s2": 10.0}  # routes through the tree but keeps every node


def _leaves_in_store(store) -> dict[int, int]:
    ids, _, pls = store.all_vectors(payload_fields=["leaf"])
    return dict(zip(ids.tolist(), [int(p["leaf"]) for p in pls]))


def assert_every_point_findable(router, vecs_by_id: dict[int, np.ndarray]):
    """Each stored point is the top hit for its own vector, routed everywhere and exact; the tree knows
    every leaf the store uses and counts it right."""
    assert router.check()["consistent"], router.check()
    live = set(router.tree.leaf_ids().tolist())
    assert set(_leaves_in_store(router.store).values()) <= live
    ids = list(vecs_by_id)
    Q = np.vstack([vecs_by_id[i] for i in ids])
    for mode_kw in (EVERYWHERE, {"mode": "exact"}):
        res = router.search_batch(Q, k=3, **mode_kw)
        for i, hits in zip(ids, res):
            # the point itself, or a byte-identical vector with score 1 (Fashion-MNIST has duplicates)
            assert hits and (hits[0].id == i or hits[0].score > 0.99999), (i, mode_kw, hits[:2])
            assert any(h.id == i for h in hits) or hits[2].score > 0.99999


@pytest.fixture
def coll(tmp_path, fmnist_small):
    vecs, _, _ = fmnist_small
    path = tmp_path / "c"
    s = open_store(path, dim=vecs.shape[1])
    s.upsert(np.arange(150), vecs[:150], [{"leaf": -1} for _ in range(150)])
    return path, s, vecs


def test_unsaved_add_and_delete_with_equal_count_is_repaired_on_open(coll):
    """The review's case: add 100 (leaves split), delete 100 others, no save, reopen. The count matches
    the saved state, but the split leaves are unknown to it."""
    path, s, vecs = coll
    r = Router.build(s, k=2, l=2, max_leaf_size=60, min_leaf_size=5)
    leaves_before = r.tree.n_leaves
    st = r.add(np.arange(150, 250), vecs[150:250])
    assert st["splits"] >= 1 and r.tree.n_leaves > leaves_before
    r.delete(np.arange(0, 100))
    assert s.count() == 150  # same as the saved state
    s.close()  # a crash: nothing saved since the build
    r2 = Router.open(path)
    assert_every_point_findable(r2, {i: vecs[i] for i in range(100, 250)})
    r2.close()


def test_unsaved_reupsert_of_existing_ids_is_repaired_on_open(coll):
    """Re-upserting existing ids with other vectors moves them between leaves (and splits)."""
    path, s, vecs = coll
    r = Router.build(s, k=2, l=2, max_leaf_size=60, min_leaf_size=5)
    st = r.add(np.arange(0, 100), vecs[150:250])  # ids 0..99 now hold other images
    assert st["replaced"] == 100
    s.close()
    r2 = Router.open(path)
    want = {i: vecs[150 + i] for i in range(100)} | {i: vecs[i] for i in range(100, 150)}
    assert_every_point_findable(r2, want)
    r2.close()


def test_an_add_the_store_refuses_leaves_the_tree_as_it_was(coll, monkeypatch):
    """The tree's sums are added beside the engine's upsert; when the upsert fails they are taken back
    out: counts exactly, sums and centroids to float rounding, and the next add goes through."""
    path, s, vecs = coll
    r = Router.build(s, k=2, l=2, max_leaf_size=60, min_leaf_size=5)
    counts, sums, cents = r.tree.counts.copy(), r.tree.sums.copy(), r.tree.centroids.copy()

    def refuse(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(s, "_upsert", refuse)
    with pytest.raises(OSError, match="disk full"):
        r.add(np.arange(150, 190), vecs[150:190])
    monkeypatch.undo()
    assert np.array_equal(r.tree.counts, counts) and r.flat.n_points == 150
    np.testing.assert_allclose(r.tree.sums, sums, atol=1e-9)
    np.testing.assert_allclose(r.tree.centroids, cents, atol=1e-6)
    assert r.check()["consistent"]
    r.add(np.arange(150, 190), vecs[150:190])
    assert_every_point_findable(r, {i: vecs[i] for i in range(190)})


@pytest.mark.parametrize("refused_write", [2, 5])  # in the first half (filed up front), in the second (filed on the worker)
def test_an_add_refused_partway_keeps_what_the_store_took(coll, monkeypatch, refused_write):
    """An add is written in parts; when the store refuses one, the parts before it stay added in the
    store, the tree and the recent vectors alike, and the rest are in none of them."""
    from plugin.router import maintenance

    path, s, vecs = coll
    r = Router.build(s, k=2, l=2, max_leaf_size=60, min_leaf_size=5)
    monkeypatch.setattr(maintenance, "ADD_PART", 32)  # 150 points: halves of 75, writes of 32, 32, 11
    upsert, calls = s._upsert, []

    def refuse_one(*a):
        calls.append(len(a[0]))
        if len(calls) == refused_write:
            raise OSError("disk full")
        upsert(*a)

    monkeypatch.setattr(s, "_upsert", refuse_one)
    with pytest.raises(OSError, match="disk full"):
        r.add(np.arange(150, 300), vecs[150:300])
    monkeypatch.undo()
    kept = 150 + sum(calls[:refused_write - 1])
    assert s.count() == kept and r.flat.n_points == kept and int(r.tree.counts[0]) == kept
    found = r.recent.get(np.arange(150, 300), s.dim)[1]
    assert np.array_equal(np.flatnonzero(found) + 150, np.arange(150, kept))
    assert_every_point_findable(r, {i: vecs[i] for i in range(kept)})
    r.add(np.arange(kept, 300), vecs[kept:300])
    assert_every_point_findable(r, {i: vecs[i] for i in range(300)})


@pytest.mark.parametrize("replace", [False, True])
def test_an_add_publishes_the_snapshot_of_the_tree_it_leaves(coll, replace):
    """The snapshot's rows made beside the engine's write are those of the tree after the add: the same
    arrays a fresh flatten makes (also when re-upserted points moved sums after the rows were made)."""
    path, s, vecs = coll
    r = Router.build(s, k=2, l=2, split_bound=10_000, merge_bound=1)  # no splits: the rows are kept
    before = r.flat.centroids.copy()
    ids = np.arange(0, 150) if replace else np.arange(150, 300)
    st = r.add(ids, vecs[::-1][:150] if replace else vecs[150:300])
    assert st["splits"] == st["merges"] == 0 and st["replaced"] == (150 if replace else 0)
    fresh = r.tree.flatten()
    assert not np.array_equal(r.flat.centroids, before)  # the add moved the centroids
    for name in ("centroids", "sqnorm", "codes", "code_scale", "leaf_counts"):
        assert np.array_equal(getattr(r.flat, name), getattr(fresh, name)), name


def test_an_add_with_an_id_twice_is_refused_before_anything_changes(coll):
    path, s, vecs = coll
    r = Router.build(s, k=2, l=2)
    counts = r.tree.counts.copy()
    with pytest.raises(HSearchError, match="duplicate ids"):
        r.add(np.r_[400:549, 400], vecs[150:300])  # the two halves, written apart, hold one id each
    assert np.array_equal(r.tree.counts, counts) and s.count() == 150 and len(r.recent) == 0


def test_routed_search_scores_points_not_yet_filed(coll):
    """Points upserted around the router (leaf -1) are scored by every routed search, not skipped."""
    path, s, vecs = coll
    r = Router.build(s, k=2, l=3)
    s.upsert([900], vecs[200:201], [{"leaf": -1}])
    res = r.search(vecs[200], k=1, mode="intensive")
    assert res[0].id == 900
    assert not r.check()["consistent"]  # and the check says the tree does not know it
    r.reconcile()
    assert r.check()["consistent"] and _leaves_in_store(s)[900] in set(r.tree.leaf_ids().tolist())


def test_leaf_ids_never_repeat_within_a_collection(coll):
    path, s, vecs = coll
    seen: set[int] = set()
    r = Router.build(s, k=2, l=2, max_leaf_size=60, min_leaf_size=5)
    seen |= set(r.tree.leaf_ids().tolist())
    r.add(np.arange(150, 250), vecs[150:250])  # splits allocate ids; not saved
    split_ids = set(r.tree.leaf_ids().tolist()) - seen
    assert split_ids
    seen |= split_ids
    r2 = Router.build(s, k=2, l=2)
    assert not set(r2.tree.leaf_ids().tolist()) & seen
    seen |= set(r2.tree.leaf_ids().tolist())
    r2.add(np.arange(250, 300), vecs[250:300])
    r2.save()
    s.close()
    r3 = Router.open(path)
    r4 = Router.build(r3.store, k=2, l=2)
    assert not set(r4.tree.leaf_ids().tolist()) & seen
    r3.close()


@pytest.mark.parametrize("crash_at", ["payloads", "relayout", "commit"])
def test_crash_mid_rebuild_leaves_a_usable_router(coll, monkeypatch, crash_at):
    """Old router before the commit point (metadata names the new build), new router after it."""
    path, s, vecs = coll
    old = Router.build(s, k=2, l=2)
    old.add(np.arange(150, 200), vecs[150:200], save=True)
    old_ids = set(old.tree.leaf_ids().tolist())

    class Crash(Exception):
        pass

    def boom(*a, **k):
        raise Crash

    if crash_at == "payloads":  # half the leaves rewritten
        real, calls = s.set_payload, []

        def half(ids, payload):
            calls.append(1)
            if len(calls) > 2:
                raise Crash
            real(ids, payload)

        monkeypatch.setattr(s, "set_payload", half)
    elif crash_at == "relayout":
        monkeypatch.setattr(s, "cluster_by", boom)
    else:
        import plugin.router.router as rr

        monkeypatch.setattr(rr, "commit_staged", boom)
    with pytest.raises(Crash):
        Router.build(s, k=3, l=2)
    monkeypatch.undo()
    s.close()
    r = Router.open(path)
    if crash_at == "commit":
        assert r.meta["router_id"] != old.meta["router_id"] and r.meta["k"] == 3
        assert not set(r.tree.leaf_ids().tolist()) & old_ids
    else:
        assert r.meta["router_id"] == old.meta["router_id"] and r.meta["k"] == 2
    assert not staged_path(r.store).exists() and state_path(r.store).exists()
    assert_every_point_findable(r, {i: vecs[i] for i in range(200)})
    r.close()


@pytest.mark.parametrize("split_bound,merge_bound,step", [(24, 8, 7), (30, 8, 10)])
def test_adds_keep_every_leaf_in_bounds_without_needless_merges(make_store, fmnist_small, split_bound,
                                                                merge_bound, step):
    """After every add all leaves are within [merge_bound, split_bound] (leaves that boundary reassignment
    grew are re-checked; a leaf k-means cannot split is halved), and growth alone never needs more
    than a stray merge: a split does not make children so small they are merged straight back."""
    vecs, _, _ = fmnist_small
    s = make_store(vecs.shape[1])
    s.upsert(np.arange(80), vecs[:80])
    r = Router.build(s, k=3, l=2, split_bound=split_bound, merge_bound=merge_bound)
    merges = 0
    for a in range(80, 300, step):
        merges += r.add(np.arange(a, min(a + step, 300)), vecs[a:a + step])["merges"]
        sizes = r.leaf_counts[r.tree.leaf_ids()]
        assert sizes.max() <= split_bound and sizes.min() >= merge_bound, sorted(sizes.tolist())
    assert merges <= 1
    r.delete(np.arange(0, 200, 2))
    sizes = r.leaf_counts[r.tree.leaf_ids()]
    assert sizes.max() <= split_bound and sizes.min() >= merge_bound, sorted(sizes.tolist())
    assert_every_point_findable(r, {i: vecs[i] for i in range(1, 300, 2)} | {i: vecs[i] for i in range(200, 300)})


def test_dead_nodes_are_compacted(make_store, fmnist_small):
    vecs, _, _ = fmnist_small
    s = make_store(vecs.shape[1])
    s.upsert(np.arange(300), vecs)
    r = Router.build(s, k=3, l=3, min_leaf_size=8, max_leaf_size=200)
    n_nodes = r.tree.n_nodes
    r.delete(np.arange(0, 240))
    assert r.tree.n_nodes < n_nodes
    reachable, stack = 0, [0]
    while stack:
        reachable += 1
        stack.extend(r.tree.children[stack.pop()])
    assert reachable == r.tree.n_nodes == r.flat.centroids.shape[0]
    assert_every_point_findable(r, {i: vecs[i] for i in range(240, 300)})


def test_relaxed_default_is_sensible_under_dot(make_store, fmnist_small):
    """Under ``dot`` the paper's s1=0 keeps every node with a positive inner product (CNN features are
    non-negative: all of them); the default s1=None switches eq. 2 off."""
    vecs, _, _ = fmnist_small
    s = make_store(vecs.shape[1])
    s.upsert(np.arange(300), vecs)
    r = Router.build(s, k=3, l=3, metric="dot", relayout=False)
    default = r.search(vecs[3], k=5, mode="relaxed")
    s1_zero = r.search(vecs[3], k=5, mode="relaxed", s1=0.0)
    assert s1_zero.stats["operands"] == 300
    assert default.stats["operands"] < 150 and default.stats["s1"] is None
    assert r.route(vecs[3], "relaxed", s2=0.0)[0].tolist() == r.route(vecs[3], "intensive")[0].tolist()


def test_within_restricts_to_a_subtree(make_store, fmnist_small):
    vecs, wnids, _ = fmnist_small
    from plugin.errors import UnknownSynsetError
    from plugin.taxonomy import synset_payload

    s = make_store(vecs.shape[1])
    s.upsert(np.arange(300), vecs, [synset_payload(w) | {"leaf": -1} for w in wnids])
    r = Router.build(s, k=3, l=3)
    footwear = "n03380867"  # sandals, sneakers, boots
    is_foot = np.asarray([footwear in synset_payload(w)["synsets"] for w in wnids])
    shirt = int(np.flatnonzero(~is_foot)[0])  # a query that is not footwear
    for mode in ("exact", "intensive", "relaxed", "auto"):
        res = r.search(vecs[shirt], k=10, mode=mode, within=footwear)
        assert len(res) == 10 and all(footwear in h.payload["synsets"] for h in res)
    exact = r.search(vecs[shirt], k=10, mode="exact", within=footwear)
    sims = vecs[is_foot] @ (vecs[shirt] / np.linalg.norm(vecs[shirt]))
    want = set(np.flatnonzero(is_foot)[np.argsort(-sims)[:10]].tolist())
    assert {h.id for h in exact} == want
    intensive = r.search(vecs[shirt], k=10, mode="intensive", within=footwear)
    assert intensive.stats["widened"]  # a shirt's leaf holds few shoes: scored the whole subtree instead
    assert r.search(vecs[shirt], k=5, within="n02084071") == []  # dogs: a real synset, no points
    assert len(r.search(vecs[shirt], k=5, within=[footwear, "n03236735"])) == 5  # footwear or dresses
    with pytest.raises(UnknownSynsetError, match="n99999999"):
        r.search(vecs[shirt], within="n99999999")
    with pytest.raises(UnknownSynsetError, match="dog"):
        r.search(vecs[shirt], within="dog")
    sub = r.search(vecs[shirt], k=5, mode="relaxed", filter=Filter.of(synsets_any=[footwear], wnid="n02872752"))
    assert sub and all(h.payload["wnid"] == "n02872752" for h in sub)  # boots only
