"""The committed benchmark results agree with the code and the Makefile that claim to make them."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from plugin.bench.hkm import _row, markdown, read_records

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
        if r["method"] == "hkm-router" and (r["k"], r["l"]) not in seen:
            seen.append((r["k"], r["l"]))
    assert seen == built
    assert {(r["k"], r["l"]) for r in recs if r["method"] == "incremental"} == {built[1]}
    assert {r["n_queries"] for r in recs} == {args.queries}
    assert (args.limit, args.skip_incremental, args.skip_baselines, args.encoder) == (None, False, False,
                                                                                       recs[0]["encoder"])
    assert f"# {dataset}: {n_db} database vectors, {args.queries} queries" in (ROOT / log).read_text()


@pytest.mark.parametrize("dataset", DATASETS)
def test_committed_markdown_is_the_committed_records(dataset):
    recs = read_records(RESULTS / f"hkm-{dataset}.json")
    assert (RESULTS / f"hkm-{dataset}.md").read_text() == markdown(recs)


@pytest.mark.parametrize("dataset", DATASETS)
def test_not_applicable_figures_are_null_and_n_a(dataset):
    """HNSW counts no operands and faiss IVF / HNSW time no routing apart: null, shown n/a, never 0."""
    recs = read_records(RESULTS / f"hkm-{dataset}.json")
    hnsw = [r for r in recs if r["method"] == "qdrant-edge HNSW"]
    ivf = [r for r in recs if r["method"] == "faiss IVF-Flat"]
    assert hnsw and ivf
    assert all(r["operands_mean"] is None and r["operands_frac"] is None and r["route_ms"] is None for r in hnsw)
    assert all(r["route_ms"] is None and r["operands_frac"] > 0 for r in ivf)
    rows = {line.split(" | ")[1]: line.split(" | ") for line in markdown(recs).splitlines()
            if line.startswith("| qdrant-edge HNSW") or line.startswith("| faiss IVF-Flat")}
    assert all(cells[9] == "n/a" and cells[11] == "n/a" for mode, cells in rows.items() if mode.startswith("hnsw"))
    assert all(cells[9].endswith("%") and cells[11] == "n/a" for mode, cells in rows.items() if mode.startswith("ivf"))
    assert all("n/a" in _row(r).split()[-4] and "n/a" in _row(r).split()[-2] for r in hnsw)
    router = next(r for r in recs if r["method"] == "hkm-router")
    cells = next(line for line in markdown(recs).splitlines() if line.startswith("| hkm-router")).split(" | ")
    assert cells[9] == f"{100 * router['operands_frac']:.2f}%"  # a measured figure is still shown
