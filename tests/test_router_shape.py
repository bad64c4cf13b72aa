"""The tree-shape cost model: its arithmetic, the counted routing work, choose_shape on real Fashion-MNIST
vectors (a valid shape, every candidate priced, the costs steering the choice), the wiring into
Router.build / ``hsearch build --shape auto``, and its refusals."""
from __future__ import annotations

import math

import numpy as np
import pytest

from plugin.errors import RouterError
from plugin.router import kernels, shape
from plugin.router.modes import route
from plugin.router.shape import Costs, choose_shape, cost_model
from plugin.router.tree import build_tree

N = 1500  # Fashion-MNIST test images
SMALL = [(4, 2), (8, 2), (4, 3)]
#: Hand-set constants (µs), each term a different order of magnitude so no term hides in another.
HAND = Costs(dim=100, route_fixed_us=1.0, route_madd_us=0.01, engine_fixed_us=100.0, engine_point_us=0.1,
             engine_leaf_us=2.0, router_fixed_us=1000.0)
HAND_1280 = Costs(dim=1280, route_fixed_us=5.0, route_madd_us=1e-4, engine_fixed_us=130.0, engine_point_us=0.1,
                  engine_leaf_us=2.0, router_fixed_us=100.0)


@pytest.fixture(scope="module")
def vecs(mobilenet):
    from plugin.bench.data import fashion_mnist

    return fashion_mnist("test", mobilenet, limit=N, progress=False).vectors


def test_cost_model_adds_every_term():
    out = cost_model(HAND, n=10_000, dim=100, fraction=0.05, probed_leaves=4, evaluations=50)
    assert out["route_fixed_us"] == 1.0
    assert out["route_centroids_us"] == pytest.approx(0.01 * 100 * 50)  # 50: evaluations x dim madds
    assert out["engine_fixed_us"] == 100.0
    assert out["engine_points_us"] == pytest.approx(0.1 * 500)  # 5% of 10k points
    assert out["engine_leaves_us"] == pytest.approx(8.0)
    assert out["router_fixed_us"] == 1000.0
    assert out["ms"] == pytest.approx((1 + 50 + 100 + 50 + 8 + 1000) / 1e3)
    with pytest.raises(RouterError, match="measured for 100-d"):
        cost_model(HAND, n=10_000, dim=64, fraction=0.05, probed_leaves=4, evaluations=50)


def test_route_work_counts_what_routing_does(vecs):
    tree, _ = build_tree(vecs[:600], k=4, l=3, metric="cosine")
    f = tree.flatten()
    Q = np.ascontiguousarray(vecs[600:700] / np.linalg.norm(vecs[600:700], axis=1, keepdims=True))
    args = (f.centroids, f.child_offsets, f.children, f.leaf_of_node, f.metric)
    for mode, s2 in ((kernels.INTENSIVE, 0.0), (kernels.RELAXED, 0.05), (kernels.AUTO, 0.0)):
        evals, n_leaves = kernels.route_work_batch(Q, *args, mode, -math.inf, s2)
        _, counts = kernels.route_batch(Q, *args, mode, -math.inf, s2, f.n_leaves)
        assert (n_leaves == counts).all()
        if mode == kernels.INTENSIVE:  # one path: the root's children, then the chosen child's
            kids = np.diff(f.child_offsets)
            assert (evals >= kids[0]).all() and (evals <= kids[0] + kids[1:].max()).all()
    evals, n_leaves = kernels.route_work_batch(Q, *args, kernels.RELAXED, -math.inf, 1e30)
    assert (evals == len(f.centroids) - 1).all() and (n_leaves == f.n_leaves).all()  # every node but the root


def test_choose_shape_prices_every_candidate(vecs):
    (k, l, mls), st = choose_shape(vecs, recall=0.9, candidates=SMALL, sample=1000, queries=150, costs=HAND_1280)
    assert (k, l) in SMALL and mls is None
    rows = st["candidates"]
    assert [(r["k"], r["l"]) for r in rows] == SMALL and all("error" not in r for r in rows)
    assert min(rows, key=lambda r: r["predicted_ms"])["k"] == k == st["chosen"]["k"]
    for r in rows:
        assert r["recall"] >= 0.9 and 0 < r["fraction"] <= 1 and r["probed_leaves"] >= 1
        assert r["predicted_ms"] == pytest.approx(cost_model(HAND_1280, N, 1280, r["fraction"], r["probed_leaves"],
                                                             r["evaluations"])["ms"])
    assert st["sample"] == 1000 and st["queries"] == 150 and st["k_nn_sample"] == round(10 * 1000 / N)


def test_cheapest_s2_is_the_least_reaching_the_target(vecs):
    x = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    sub, Q = x[:1000], np.ascontiguousarray(x[1000:1150])
    tree, assign = build_tree(sub, 8, 2, "cosine")
    f = tree.flatten()
    truth = shape._exact_top(sub, Q, "cosine", 7)
    best = shape._cheapest_s2(f, Q, truth, assign, 0.9, lambda r: r["fraction"])
    assert best["recall"] >= 0.9 > shape._operands(f, Q, truth, assign, 0.0)["recall"]  # a target that binds
    assert shape._operands(f, Q, truth, assign, max(best["s2"] - 0.005, 0.0))["recall"] < 0.9
    leaves, _ = route(f, Q, "relaxed", {"s2": best["s2"]})  # leaf recall, counted the plain way
    plain = np.mean([np.mean([assign[t] in set(lv.tolist()) for t in truth[b]]) for b, lv in enumerate(leaves)])
    assert best["recall"] == pytest.approx(plain)
    assert best["fraction"] == pytest.approx(np.mean([np.isin(assign, lv).mean() for lv in leaves]))


def test_costs_steer_the_choice(vecs):
    """Centroids made dear pick the shape with the fewest evaluations; points made dear, the fewest points."""
    dear_centroids = Costs(1280, 0.0, 1.0, 0.0, 1e-9, 0.0, 0.0)
    dear_points = Costs(1280, 0.0, 1e-12, 0.0, 1.0, 0.0, 0.0)
    cands = [(4, 2), (16, 2)]
    (k1, _, _), st1 = choose_shape(vecs, recall=0.9, candidates=cands, sample=1000, queries=150, costs=dear_centroids)
    (k2, _, _), st2 = choose_shape(vecs, recall=0.9, candidates=cands, sample=1000, queries=150, costs=dear_points)
    assert k1 == min(st1["candidates"], key=lambda r: r["evaluations"])["k"] == 4
    assert k2 == min(st2["candidates"], key=lambda r: r["fraction"])["k"] == 16


def test_bad_input_is_refused(vecs):
    for bad in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(RouterError, match=r"recall target must be in \(0, 1\]"):
            choose_shape(vecs, recall=bad, candidates=SMALL, costs=HAND_1280)
    with pytest.raises(RouterError, match="at least 400 vectors"):
        choose_shape(vecs[:100], costs=HAND_1280)
    with pytest.raises(RouterError, match="2-d array"):
        choose_shape(vecs[0], costs=HAND_1280)
    x = vecs.copy()
    x[3, 5] = np.nan
    with pytest.raises(RouterError, match="NaN"):
        choose_shape(x, costs=HAND_1280)
    (k, l, _), st = choose_shape(vecs, recall=0.9, candidates=[(2000, 2), (4, 2)], sample=800, queries=100,
                                 costs=HAND_1280)
    assert (k, l) == (4, 2) and "asks for 2000 leaves" in st["candidates"][0]["error"]


def test_build_auto_and_cli(vecs, tmp_path, monkeypatch, capsys):
    from plugin.cli import main
    from plugin.router import Router
    from plugin.store.edge import EdgeStore

    monkeypatch.setattr(shape, "measure_costs", lambda store_or_dim, **kw: HAND_1280)
    n = 500  # 4 default candidates
    s = EdgeStore(tmp_path / "c", dim=1280)
    s.upsert(np.arange(n), vecs[:n], [{"leaf": -1} for _ in range(n)])
    r = Router.build(s, k="auto", shape_recall=0.9, relayout=False)
    ch = r.build_stats["shape"]["chosen"]
    assert (r.meta["k"], r.meta["l"]) == (ch["k"], ch["l"]) and r.meta["shape"]["s2"] == ch["s2"]
    assert r.describe()["leaves"] >= 2 and len(r.search(vecs[0], 5, mode="relaxed", s2=ch["s2"])) == 5
    with pytest.raises(RouterError, match="'auto'"):
        Router.build(s, k="big")
    s.close()
    code = main(["build", "--store", str(tmp_path), "--collection", "c", "--shape", "auto", "--shape-recall", "1.5"])
    assert code == 2 and "recall target" in capsys.readouterr().err
    with EdgeStore(tmp_path / "c") as s2:
        assert s2.get_meta()["router_id"] == r.meta["router_id"]  # the refused build changed nothing
    code = main(["build", "--store", str(tmp_path), "--collection", "c", "--shape", "auto", "--shape-recall", "0.9"])
    out = capsys.readouterr().out
    assert code == 0 and '"shape": {"k": ' in out and '"s2": ' in out


def test_measure_costs_measures_once_per_dim(monkeypatch):
    from plugin.config import cache_dir

    c = shape.measure_costs(8)
    assert c.dim == 8 and c.engine_point_us > 0 and c.route_madd_us > 0 and c.engine_fixed_us > 0
    assert len(c.info["engine_rows (points, leaves, us/query)"]) == len(shape.CAL_PROBES)
    monkeypatch.setattr(shape, "_time_engine", lambda *a, **kw: pytest.fail("re-measured a cached dim"))
    assert shape.measure_costs(8) == c
    assert any(cache_dir("shape").glob("costs-*.json"))
    with pytest.raises(pytest.fail.Exception, match="re-measured"):
        shape.measure_costs(9)  # another dim is measured anew
