"""``hsearch eval semantics``: the metrics by hand, small real runs of both protocols, and the committed
results against the Makefile target that regenerates them."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from conftest import IMAGENET_SAMPLE
from plugin.bench import semantics as B

ROOT = Path(__file__).resolve().parents[1]


def test_interpolated_precision_recall_by_hand():
    # ranked relevance 1 0 1 0, two relevant: precision 1, .5, .667, .5 at recall .5, .5, 1, 1
    np.testing.assert_allclose(B.interpolated_pr(np.array([1, 0, 1, 0]), 2), [1] * 6 + [2 / 3] * 5)
    # four relevant in the collection, two reachable: recall stops at .5
    np.testing.assert_allclose(B.interpolated_pr(np.array([1, 0, 1, 0]), 4), [1, 1, 1] + [2 / 3] * 3 + [0] * 5)
    assert B.interpolated_pr(np.array([], bool), 3).tolist() == [0] * 11


def test_precision_at_counts_missing_hits_as_misses():
    assert B.precision_at(["a"] * 15 + ["b"] * 5, "a", (10, 20, 40)) == {10: 1.0, 20: 0.75, 40: 15 / 40}


def test_lca_heights():
    dog, cat, carnivore = "n02084071", "n02121620", "n02075296"
    assert B.lca_height(dog, dog) == 0
    assert B.lca_height(dog, cat) == 2  # dog -> canine -> carnivore <- feline <- cat
    assert B.lca_height(dog, carnivore) == 2 and B.lca_height(carnivore, dog) == 2


def test_fashion_protocol_small(tmp_path):
    rec = B.run_fashion(["handcrafted"], n_queries=20, cap=32, seed=0, sweep_caps=[16], workdir=tmp_path,
                        log=lambda *_: None, progress=False, train_limit=300, test_limit=40)
    assert [r["method"] for r in rec["runs"]] == ["clusters", "clusters-rep", "mean", "knn"]
    for r in rec["runs"]:
        assert r["queries"] == 20 and 0 <= r["general_acc"] <= 1 and 0 <= r["specific_top1"] <= r["specific_top3"] <= 1
        assert all(0 <= v <= 1 for v in r["p_at"].values()) and len(r["pr"]) == 11
        assert all(a >= b - 1e-9 for a, b in zip(r["pr"], r["pr"][1:]))  # interpolated: never rises
    knn = rec["runs"][-1]
    assert knn["share_images"] == 1.0 and knn["share_selected"] is None
    clusters = rec["runs"][0]
    assert clusters["store_numpy_top100_agreement"] == 1.0  # the store's exact search = numpy on the same vectors
    assert 0 < clusters["share_images"] < 1 and clusters["build"]["cap"] == 32
    assert rec["cap_sweep"][0]["cap"] == 16
    md = B.markdown(json.loads(json.dumps(rec)))
    assert "IndxCBSA (dominant clusters + VP-trees)" in md and "76.61%" in md
    B.plot(json.loads(json.dumps(rec)), str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 10_000


@pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason="ImageNet sample not present")
def test_imagenet_leave_one_out_small():
    rec = B.run_imagenet(["handcrafted"], str(IMAGENET_SAMPLE), cap=32, seed=0, log=lambda *_: None,
                         progress=False, limit=30)
    assert [r["method"] for r in rec["runs"]] == ["clusters", "mean", "knn"]
    for r in rec["runs"]:
        assert r["queries"] == 30 and len(r["per_query"]) == 30
        # the query's class is never in its own collection: no semantic or hit can be the class itself
        assert min(q["specific_lca_height"] for q in r["per_query"]) >= 1
        assert min(q["hits_lca_height"] for q in r["per_query"]) >= 1
        assert all(q["specific_lca_height"] >= q["oracle_lca_height"] for q in r["per_query"])
    assert "leave-one-out" in B.markdown(json.loads(json.dumps(rec)))


def _make_invocations():
    text = (ROOT / "Makefile").read_text()
    body = text.split("bench-semantics:", 1)[1].split("\n\n", 1)[0]
    return [shlex.split(re.sub(r"2>&1.*", "", line.split("eval semantics", 1)[1]))
            for line in body.splitlines() if "eval semantics" in line]


def test_makefile_target_matches_the_committed_results():
    calls = _make_invocations()
    assert len(calls) == 2
    for argv in calls:
        opts = dict(zip(argv[::2], argv[1::2]))
        path = ROOT / opts["--json"]
        if not path.exists():
            pytest.skip(f"{path.name} not generated yet")
        rec = json.loads(path.read_text())
        assert rec["cap"] == int(opts.get("--cap", 512)) and rec["seed"] == int(opts.get("--seed", 0))
        assert {r["encoder"] for r in rec["runs"]} == set(opts["--encoders"].split(","))
        if opts["--dataset"] == "fashion-mnist":
            assert rec["queries"] == int(opts["--queries"]) and rec["collection"].endswith("(60000)")
            assert [s["cap"] for s in rec["cap_sweep"]] == [int(c) for c in opts["--sweep-caps"].split(",")]
        md = (ROOT / opts["--md"]).read_text()
        assert md == B.markdown(rec)  # the committed tables are the committed records'
