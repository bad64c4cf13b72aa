"""The committed benchmark results agree with the code and the Makefile that claim to make them."""
from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest

from plugin.bench.hkm import _row, cheapest, markdown, read_records, retention_row, summary

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
DATASETS = ["fashion-mnist", "imagenet-sample"]


def _bench_commands() -> dict:
    """The `make bench-hkm` recipe's commands, parsed by hsearch's own parser (so defaults count):
    {dataset: (argparse namespace, the file its output is tee'd to)}."""
    from plugin.cli import build_parser

    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("bench-hkm:"))
    out = {}
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        argv = shlex.split(line.split(";", 1)[-1])
        if "plugin.cli" not in argv:
            continue
        argv = argv[argv.index("plugin.cli") + 1:]
        log = argv[argv.index("tee") + 1] if "tee" in argv else None
        args = build_parser().parse_args(argv[:argv.index("2>&1")] if "2>&1" in argv else argv)
        out[args.dataset] = (args, log)
    return out


@pytest.mark.parametrize("dataset", DATASETS)
def test_make_bench_hkm_passes_the_arguments_of_the_committed_results(dataset):
    args, log = _bench_commands()[dataset]
    stem = f"docs/results/hkm-{dataset}"
    assert (args.json, args.md, args.plot, log) == tuple(f"{stem}.{ext}" for ext in ("json", "md", "png", "log"))
    recs = read_records(ROOT / args.json)
    trees = [tuple(int(x) for x in t.split("x")) for t in args.tree.split(",")]
    n_db = recs[0]["n_db"]
    built = [t for t in trees if t[0] ** (t[1] - 1) <= n_db]  # bench skips trees with more leaves than points
    seen = []
    for r in recs:
        if r["section"] == "search" and r["method"] == "hkm-router" and (r["k"], r["l"]) not in seen:
            seen.append((r["k"], r["l"]))
    assert seen == built
    assert {(r["k"], r["l"]) for r in recs if r["section"] == "levers"} == {built[0]}
    assert {(r["k"], r["l"]) for r in recs if r["section"] == "refine"} == {built[0]}
    assert {r["refine"] for r in recs if r["section"] == "refine"} == {0, 4}
    routed = [r for r in recs if r["method"] == "hkm-router" and r["section"] in ("search", "levers", "refine")
              and r["mode"] != "target"]
    assert {r["max_leaf_size"] for r in routed} == {args.max_leaf}
    if not args.skip_incremental:
        assert {(r["k"], r["l"]) for r in recs if r["section"] == "ingest"} == {built[0]}
    curve = sorted(r["n_points"] for r in recs if r["section"] == "curve")
    assert curve == sorted(int(x) for x in args.curve.split(",")) if args.curve else curve == []
    assert {r["n_queries"] for r in recs} == {args.queries}
    assert (args.limit, args.skip_baselines, args.encoder) == (None, False, recs[0]["encoder"])
    assert f"# {dataset}: {n_db} database vectors, {args.queries} queries" in (ROOT / log).read_text()


@pytest.mark.parametrize("dataset", DATASETS)
def test_committed_markdown_is_the_committed_records(dataset):
    recs = read_records(RESULTS / f"hkm-{dataset}.json")
    assert (RESULTS / f"hkm-{dataset}.md").read_text() == markdown(recs)


@pytest.mark.parametrize("dataset", DATASETS)
def test_not_applicable_figures_are_null_and_n_a(dataset):
    """HNSW counts no operands and faiss IVF / HNSW time no routing apart: null, shown n/a, never 0."""
    recs = read_records(RESULTS / f"hkm-{dataset}.json")
    hnsw = [r for r in recs if r["method"] == "qdrant-edge HNSW" and r["section"] == "search"]
    ivf = [r for r in recs if r["method"] == "faiss IVF-Flat" and r["section"] == "search"]
    assert hnsw and ivf
    assert all(r["operands_mean"] is None and r["operands_frac"] is None and r["route_ms"] is None for r in hnsw)
    assert all(r["route_ms"] is None and r["operands_frac"] > 0 for r in ivf)
    rows = {line.split(" | ")[1]: line.split(" | ") for line in markdown(recs).splitlines()
            if line.startswith("| qdrant-edge HNSW") or line.startswith("| faiss IVF-Flat")}
    assert all(cells[8] == "n/a" and cells[10] == "n/a" for mode, cells in rows.items() if mode.startswith("hnsw"))
    assert all(cells[8].endswith("%") and cells[10] == "n/a" for mode, cells in rows.items() if mode.startswith("ivf"))
    assert all("n/a" in _row(r).split()[-4] and "n/a" in _row(r).split()[-2] for r in hnsw)
    router = next(r for r in recs if r["method"] == "hkm-router" and r["section"] == "search")
    cells = next(line for line in markdown(recs).splitlines() if line.startswith("| hkm-router")).split(" | ")
    assert cells[8] == f"{100 * router['operands_frac']:.2f}%"  # a measured figure is still shown


def _rec(method, recall, ms, **kw):
    return {"section": "search", "method": method, "mode": kw.pop("mode", "m"), "recall_at_10": recall,
            "ms_per_query": ms, "retention": kw.pop("retention", 1.0), **kw}


def test_cheapest_and_summary_pick_the_fastest_row_reaching_the_target():
    recs = [_rec("hkm-router", 0.96, 0.30, k=16, l=3, s2=0.02, mode="relaxed"),
            _rec("hkm-router", 0.94, 0.10, k=16, l=3, s2=0.01, mode="relaxed"),
            _rec("hkm-router", 0.995, 0.50, k=16, l=3, s2=0.05, mode="relaxed"),
            _rec("hkm-router", 0.97, 0.25, k=8, l=3, s2=0.03, mode="relaxed"),
            _rec("faiss IVF-Flat", 0.951, 0.40, mode="ivf256 nprobe=8"),
            _rec("faiss IVF-Flat", 0.99, 0.80, mode="ivf256 nprobe=16"),
            _rec("qdrant-edge HNSW", 0.96, 0.20, mode="hnsw m=16 ef=16", retention=0.5),
            {"section": "levers", "method": "hkm-router", "recall_at_10": 0.99, "ms_per_query": 0.01}]
    assert cheapest(recs, "hkm-router", 0.95)["ms_per_query"] == 0.25
    assert cheapest(recs, "qdrant-edge HNSW", 0.99) is None
    s95, s99 = summary(recs)
    assert s95["router_vs_faiss IVF-Flat"] == pytest.approx(0.40 / 0.25)
    assert s95["router_vs_qdrant-edge HNSW"] == pytest.approx(0.20 / 0.25)
    assert s99["hkm-router"]["config"] == "16x3 relaxed s2=0.05" and s99["router_vs_qdrant-edge HNSW"] is None
    assert retention_row(recs)["ms_per_query"] == 0.10  # levers rows and other methods do not count


@pytest.mark.parametrize("target", ["0.95", "0.99"])
def test_committed_anatomy_is_its_records_and_the_makefile_arguments(target):
    """Each docs/results/anatomy-*.md is ``plugin.bench.anatomy.markdown`` of its committed records, made
    with the arguments its `make bench-anatomy` line passes; every method has its whole-search row."""
    from plugin.bench import anatomy

    lines = [line for line in (ROOT / "Makefile").read_text().splitlines() if "plugin.bench.anatomy" in line]
    argv = next(a for a in (shlex.split(line.split(";", 1)[-1]) for line in lines)
                if a[a.index("--recall") + 1] == target)
    recs = read_records(ROOT / argv[argv.index("--json") + 1])
    assert (ROOT / argv[argv.index("--md") + 1]).read_text() == anatomy.markdown(recs)
    assert {r["recall_target"] for r in recs} == {float(target)}
    assert {r["method"] for r in recs if "whole" in r["layer"]} == {"router", "hnsw", "faiss"}
    assert all(r["recall_at_10"] >= r["recall_target"] for r in recs)
    if "--tree" in argv:
        assert all(r["config"].startswith(argv[argv.index("--tree") + 1] + " ") for r in recs if r["method"] == "router")


@pytest.mark.parametrize("bare_ms, verdict", [(0.60, "no glue of ours beats HNSW: the route's floor misses it by 20%"),
                                               (0.40, "HNSW is beaten here once our layers cost under 0.100 ms")])
def test_anatomy_states_the_floor_from_the_bare_query(bare_ms, verdict):
    """The floor paragraphs: the probe kernel's cost a centroid against the engine's a point, the parts
    summed as timed alone, and the verdict from the bare routed query against HNSW's whole query."""
    from plugin.bench import anatomy

    base = {"n_db": 100, "n_queries": 10, "recall_target": 0.95, "recall_at_10": 0.96, "config": "c"}
    ms = {("router", "router.search (whole)"): 0.70, ("router", "engine query, request prebuilt"): 0.30,
          ("router", "probe kernel on int8 codes (what probe uses)"): 0.10,
          ("router", "building the request objects"): 0.05, ("hnsw", "store.search (whole)"): 0.50,
          ("router", "bare routed query (kernel and binding calls only)"): bare_ms,
          ("hnsw", "bare query (binding calls only)"): 0.40}
    recs = [{**base, "method": m, "layer": layer, "ms_per_query": v, "machine": {"cores": 2}}
            for (m, layer), v in ms.items()]
    recs.append({**base, "method": "router", "layer": "engine cost fit", "fit": {
        "fixed_us": 25.0, "per_point_us": 0.25, "per_leaf_us": 1.0, "r2": 0.9, "mean_points": 700.0,
        "mean_leaves": 30.0, "mean_ms": 0.3, "scan_per_point_us": 0.2}})
    recs.append({**base, "method": "router", "layer": "probe kernel work", "work": {"centroids_evaluated": 200.0,
                                                                                   "dim": 1280}})
    md = anatomy.markdown(recs)
    assert "in 0.100 ms: 0.500 µs a centroid, 2.0x the engine's 0.250 µs a routed point" in md
    assert "the route costs what 400 more routed points would" in md
    assert "sum to 0.450 ms, 0.90x HNSW's whole query" in md
    assert f"takes **{bare_ms:.3f} ms, {bare_ms / 0.5:.2f}x HNSW's whole query**" in md
    assert verdict in md
    assert f"it takes 0.400 ms, and against that the router's floor is {bare_ms / 0.4:.2f}x, its whole query 1.75x" in md
    assert "probe kernel work" not in md and "engine cost fit" not in md  # records, not table rows


def test_engine_cost_fit_recovers_fixed_per_point_and_per_leaf_costs(monkeypatch):
    """Requests whose engine time is 40 µs + 0.15 µs a point + 2 µs a leaf (a fake shard on a fake
    clock): the fit returns those three, and the best of the passes ignores one slow pass."""
    from plugin.bench import anatomy

    clock = [0.0]
    rng = np.random.default_rng(0)
    points, leaves = rng.integers(100, 4000, 200), rng.integers(5, 90, 200)
    calls = [0]

    class Shard:
        def query(self, i):
            calls[0] += 1
            slow = 3.0 if calls[0] > len(points) else 1.0  # the second pass is slow everywhere
            clock[0] += slow * (40 + 0.15 * points[i] + 2.0 * leaves[i]) * 1e-6

    monkeypatch.setattr(anatomy.time, "perf_counter", lambda: clock[0])
    fit = anatomy.engine_cost_fit(Shard(), list(range(len(points))), points, leaves, passes=2)
    assert fit["fixed_us"] == pytest.approx(40, rel=1e-6)
    assert fit["per_point_us"] == pytest.approx(0.15, rel=1e-6)
    assert fit["per_leaf_us"] == pytest.approx(2.0, rel=1e-6)
    assert fit["r2"] == pytest.approx(1.0)
    assert fit["mean_points"] == pytest.approx(points.mean())


def test_interleaved_passes_start_each_round_one_function_later(monkeypatch):
    from plugin.bench import hkm

    seen = []
    times = {"a": [3.0, 1.0, 2.0], "b": [2.0, 2.5, 0.5], "c": [1.5, 1.5, 1.5]}
    monkeypatch.setattr(hkm, "RETIME_PASSES", 3)
    monkeypatch.setattr(hkm, "_timed_pass", lambda fn, queries: (None, fn()))
    fns = {key: (lambda key=key: seen.append(key) or times[key][sum(k == key for k in seen) - 1]) for key in times}
    best = hkm._best_of_passes(fns, queries=None)
    assert seen == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert best == {"a": 1.0, "b": 0.5, "c": 1.5}


def test_retime_candidates_give_each_spill_family_its_fastest_row():
    from plugin.bench import hkm

    def row(ms, recall, spill=False, method="hkm-router"):
        return {"section": "search", "method": method, "ms_per_query": ms, "recall_at_10": recall,
                "spill": spill}

    spilled = [row(1.10, 0.992, True), row(1.15, 0.991, True), row(1.20, 0.993, True), row(1.30, 0.994, True)]
    plain = [row(1.24, 0.991), row(1.50, 0.995), row(0.50, 0.95)]  # the last misses the target
    faiss = [row(2.0, 0.991, method="faiss IVF-Flat"), row(1.0, 0.98, method="faiss IVF-Flat")]
    records = spilled + plain + faiss + [{**plain[0], "section": "retime"}]
    picks = hkm.retime_candidates(records, "hkm-router", 0.99)
    assert picks == spilled[:3] + [plain[0]]  # the three fastest, then the fastest unspilled one
    assert hkm.retime_candidates(records, "faiss IVF-Flat", 0.99) == [faiss[0]]
    assert hkm.retime_candidates(spilled[:1] + plain, "hkm-router", 0.99) == [spilled[0], plain[0], plain[1]]
