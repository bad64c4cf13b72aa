"""``hsearch bench scaling``: placements, routed recall and the model on a small real tree (recomputed
independently), a tiny CLI run, and the committed results against the Makefile target that makes them."""
from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest

from plugin.bench import scaling as B

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


@pytest.fixture(scope="module")
def small(fmnist_small, tmp_path_factory):
    """A 4x3 router over 240 real Fashion-MNIST vectors, and 60 more as queries."""
    from plugin.router import Router
    from plugin.store.edge import EdgeStore

    vecs = fmnist_small[0]
    db, qv = vecs[:240], vecs[240:]
    store = EdgeStore(tmp_path_factory.mktemp("scaling") / "db", dim=db.shape[1])
    store.upsert(np.arange(len(db)), db, [{"leaf": -1} for _ in range(len(db))])
    router = Router.build(store, k=4, l=3, save=False, relayout=False)
    yield store, router, db, qv
    store.close()


def test_routed_recall_is_the_recall_of_the_engines_routed_search(small):
    store, router, db, qv = small
    top = np.argsort(-(qv @ db.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(np.sort(B.exact_top(db, qv), 1), np.sort(top, 1))
    ids, leaves = B._point_leaves(store)
    point_leaf = np.empty(len(db), np.int64)
    point_leaf[ids] = leaves
    lids = B.leaf_layout(router.flat).leaf_ids
    for s2 in (0.0, 0.03, 0.1):
        R = B.route_matrix(router.route(qv, mode="relaxed", s2=s2), lids)
        hits = router.search_batch(qv, k=10, mode="relaxed", s2=s2)
        engine = np.mean([len({h.id for h in r} & set(top[i].tolist())) / 10 for i, r in enumerate(hits)])
        assert B.routed_recall(R, lids, point_leaf, top) == pytest.approx(engine, abs=1e-6)


def test_layout_orders_leaves_depth_first(small):
    _, router, _, _ = small
    lay = B.leaf_layout(router.flat)
    assert len(lay.leaf_ids) == router.flat.n_leaves and lay.sizes.sum() == len(small[2])
    top_in_order = lay.top[lay.order]
    # each top-level subtree is one run of the order, and the order changes subtree exactly at lca depth 0
    assert len(np.unique(top_in_order)) == 1 + int((np.diff(top_in_order) != 0).sum())
    np.testing.assert_array_equal(lay.lca_depth == 0, np.diff(top_in_order) != 0)


@pytest.mark.parametrize("S", [1, 2, 3, 8, 40])
@pytest.mark.parametrize("name", B.PLACEMENTS)
def test_every_placement_holds_every_point_once(small, name, S):
    lay = B.leaf_layout(small[1].flat)
    A, M = B.PLACEMENT_FNS[name](lay, S, np.random.default_rng(0))
    assert A.shape == M.shape == (len(lay.sizes), S)
    np.testing.assert_allclose(M.sum(axis=1), lay.sizes)
    assert not (M > 0)[~A].any()  # a query reaches every point it can score
    if name in ("balanced", "random") or (name == "subtree" and S <= len(np.unique(lay.top))):
        assert (A.sum(axis=1) == 1).all()  # whole leaves, one shard each
    if name == "subtree":  # a top-level subtree never shares a shard key's shard with another subtree...
        for t in np.unique(lay.top):
            inside, outside = A[lay.top == t].any(axis=0), A[lay.top != t].any(axis=0)
            assert (A[lay.top == t] == inside).all()  # ...and its leaves sit on the same shards
            if S > len(np.unique(lay.top)):
                assert not (inside & outside).any()


def test_balanced_cuts_at_a_subtree_boundary_when_slack_allows(small):
    lay = B.leaf_layout(small[1].flat)
    A, _ = B.place_balanced(lay, 2, slack=1.0)
    for t in np.unique(lay.top):  # any top-level boundary is within a whole shard's size of the middle
        assert A[lay.top == t].any(axis=0).sum() == 1
    _, M = B.place_balanced(lay, 2, slack=0.0)  # no slack: the cut nearest the middle, wherever it falls
    cum = np.cumsum(lay.sizes[lay.order])
    assert M[:, 0].sum() == cum[np.argmin(np.abs(cum[:-1] - cum[-1] / 2))]


def test_simulated_touches_and_points_match_a_direct_count(small):
    _, router, _, qv = small
    lay = B.leaf_layout(router.flat)
    routes = router.route(qv, mode="relaxed", s2=0.05)
    recs, stats = B.simulate(router, qv, shard_counts=(3, 8), seed=7, s2=0.05)
    size = dict(zip(lay.leaf_ids.tolist(), lay.sizes))
    assert stats["operands_mean"] == pytest.approx(np.mean([sum(size[x] for x in r) for r in routes]))
    for rec in recs:
        S = rec["shards"]
        A, M = B.PLACEMENT_FNS[rec["placement"]](lay, S, np.random.default_rng([7, S]))
        col = {lid: i for i, lid in enumerate(lay.leaf_ids.tolist())}
        touched, busiest = [], []
        for r in routes:
            per_shard = np.zeros(S)
            reached = set(range(S)) if rec["placement"] == "broadcast" else set()
            for lid in r:
                reached |= set(np.flatnonzero(A[col[lid]]).tolist())
                per_shard += M[col[lid]]
            touched.append(len(reached))
            busiest.append(per_shard.max())
        assert rec["shards_touched_mean"] == pytest.approx(np.mean(touched))
        assert rec["shards_touched_max"] == max(touched)
        assert rec["max_shard_points_mean"] == pytest.approx(np.mean(busiest), rel=1e-5)
        assert rec["points_per_query"] == pytest.approx(stats["operands_mean"], rel=1e-5)
        if rec["placement"] == "broadcast":
            assert rec["shards_touched_p95"] == S and rec["request_balance"] == 1.0


def test_model_by_hand():
    rec = {"shard_request_share": [1.0, 0.5], "shard_points_per_query": [100.0, 50.0],
           "max_shard_points_mean": 100.0, "max_shard_points_p99": 120.0}
    # twice the points, 1 µs a point, 1 ms a shard search: shards busy 1 + 0.2 and 0.5 + 0.1 ms per query
    m = B.model(rec, 2000, 1000, point_us=1.0, overhead_ms=1.0, bound="fraction")
    assert m["latency_mean_ms"] == pytest.approx(1.2) and m["latency_p99_ms"] == pytest.approx(1.24)
    assert m["cluster_ms_per_query"] == pytest.approx(1.8)
    assert m["qps_hottest_shard"] == pytest.approx(1000 / 1.2) and m["qps_balanced"] == pytest.approx(2000 / 1.8)
    m = B.model(rec, 2000, 1000, point_us=1.0, overhead_ms=1.0, bound="leaves")  # scored points do not grow
    assert m["latency_p99_ms"] == pytest.approx(1.12) and m["qps_hottest_shard"] == pytest.approx(1000 / 1.1)


def test_cli_small_run_writes_records_tables_and_plot(tmp_path):
    from plugin.cli import main

    out = {ext: tmp_path / f"s.{ext}" for ext in ("json", "md", "png")}
    argv = ["bench", "scaling", "--device", "cpu", "--limit", "300", "--queries", "40", "--tree", "4x3",
            "--recall", "0.9", "--shards", "2,4", "--json", str(out["json"]), "--md", str(out["md"]),
            "--plot", str(out["png"])]
    assert main(argv) == 0
    recs = B.read_records(out["json"])
    assert recs[0]["kind"] == "run" and recs[0]["n_db"] == 300 and recs[0]["overhead_ms"] > 0
    assert recs[0]["local_mode"]["create_shard_key"].startswith("NotImplementedError")
    routes = [r for r in recs if r["kind"] == "routes"]
    assert len(routes) == 1 and routes[0]["recall_at_10"] >= 0.9
    assert sorted((r["placement"], r["shards"]) for r in recs if r["kind"] == "placement") == sorted(
        (p, s) for p in B.PLACEMENTS for s in (2, 4))
    assert out["md"].read_text() == B.markdown(recs)
    assert out["png"].stat().st_size > 10_000


@pytest.mark.parametrize("bad", [["--recall", "1.5"], ["--shards", "0,4"], ["--tree", "16by3"]])
def test_bad_arguments_are_refused_before_any_work(monkeypatch, capsys, bad):
    from plugin.cli import main

    def no_run(*a, **k):
        raise AssertionError("bad arguments reached the run")

    monkeypatch.setattr(B, "run", no_run)
    assert main(["bench", "scaling", *bad]) == 2
    assert capsys.readouterr().err.startswith("error: --")


def _make_command():
    from plugin.cli import build_parser

    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("bench-scaling:"))
    cmds = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        argv = shlex.split(line.split(";", 1)[-1])
        if "plugin.cli" in argv:
            cmds.append(build_parser().parse_args(argv[argv.index("plugin.cli") + 1:]))
    assert len(cmds) == 1
    return cmds[0]


def test_make_bench_scaling_passes_the_arguments_of_the_committed_results():
    args = _make_command()
    stem = "docs/results/scaling-fashion-mnist"
    assert (args.json, args.md, args.plot) == tuple(f"{stem}.{ext}" for ext in ("json", "md", "png"))
    recs = B.read_records(ROOT / args.json)
    run = recs[0]
    assert (run["dataset"], run["encoder"], run["n_queries"], run["seed"], run["limit"]) == (
        args.dataset, args.encoder, args.queries, args.seed, args.limit)
    assert run["trees"] == args.tree.split(",") and run["recalls"] == [float(x) for x in args.recall.split(",")]
    assert run["shard_counts"] == [int(x) for x in args.shards.split(",")]
    routes = [r for r in recs if r["kind"] == "routes"]
    assert [(f"{r['k']}x{r['l']}", r["target_recall"]) for r in routes] == [
        (t, float(x)) for t in args.tree.split(",") for x in args.recall.split(",")]
    assert all(r["recall_at_10"] >= r["target_recall"] for r in routes)
    assert (ROOT / args.plot).stat().st_size > 10_000


def test_committed_markdown_is_the_committed_records():
    recs = B.read_records(RESULTS / "scaling-fashion-mnist.json")
    assert (RESULTS / "scaling-fashion-mnist.md").read_text() == B.markdown(recs)
