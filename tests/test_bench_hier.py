"""`hsearch eval hier` on a tiny folder of real photos (scikit-image's, named with real wnids): the records'
fields, the numbers against an independent recomputation from the saved predictions, the out-of-fold
predictions against the hyperparameters each fold chose, and the committed results against the Makefile."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from plugin.bench.hier import LABELS, METRICS, markdown, read_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
ENCODERS = ("mobilenet_v2", "efficientnet_lite0")
METHODS = ("flat", "hier_inf", "crm", "decision")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Five labelled photos (one deliberately mislabelled: a mistake with a known LCA), one unlabelled file,
    one with a wnid outside ImageNet-1k; `eval hier` run on them once."""
    import skimage.data as d
    from PIL import Image

    from plugin.cli import main

    folder = tmp_path_factory.mktemp("photos")
    photos = {"n02123045_chelsea.jpg": d.chelsea(), "n07920052_coffee.jpg": d.coffee(),
              "n04266014_rocket.jpg": d.rocket(), "n04069434_camera.jpg": np.stack([d.camera()] * 3, -1),
              "n02129165_chelsea_as_lion.jpg": d.chelsea()[:, ::-1],  # a tabby labelled lion
              "astronaut.jpg": d.astronaut(),  # no wnid: left out
              "n02084071_astronaut.jpg": d.astronaut()[::-1]}  # dog.n.01 is not one of the 1000 classes
    for name, arr in photos.items():
        Image.fromarray(np.ascontiguousarray(arr)).save(folder / name, quality=90)
    out = tmp_path_factory.mktemp("out")
    argv = ["eval", "hier", "--images", str(folder), "--json", str(out / "r.json"), "--md", str(out / "r.md"),
            "--plot", str(out / "r.png"), "--folds", "2", "--boot", "50", "-q"]
    assert main(argv) == 0
    return folder, out, read_results(out / "r.json")


def test_records_have_every_field(tiny):
    folder, out, res = tiny
    assert res["meta"]["dataset"] == "images" and res["meta"]["folds"] == 2
    assert res["meta"]["n_files_left_out"] == {"unlabelled": 1, "unknown_class": 1, "skipped": 0}
    assert [Path(f).name for f in res["meta"]["left_out"]["unknown_class"]] == ["n02084071_astronaut.jpg"]
    files = res["photos"]["files"]
    assert len(files) == 5 and "astronaut.jpg" not in files
    assert sorted(set(res["photos"]["fold"])) == [0, 1]
    assert [(r["encoder"], r["method"]) for r in res["records"]] == [(e, m) for e in ENCODERS for m in METHODS]
    for r in res["records"]:
        assert r["label"] == LABELS[r["method"]] and r["n"] == 5
        assert np.asarray(r["top5"]).shape == (5, 5)
        for m in METRICS:
            ci = r["metrics"][m]
            assert set(ci) == {"mean", "lo", "hi"}
            if np.isfinite(ci["mean"]):
                assert ci["lo"] - 1e-9 <= ci["mean"] <= ci["hi"] + 1e-9
        hp = r["hyperparameters"]
        if r["method"] in ("hier_inf", "decision"):
            assert [c["fold"] for c in hp["per_fold"]] == [0, 1] and hp["all"]
        else:
            assert hp is None
    assert {(d["a"], d["b"]) for d in res["differences"]} == {("hier_inf", "flat"), ("crm", "flat"),
                                                              ("decision", "flat"), ("decision", "crm")}
    assert (out / "r.png").stat().st_size > 10_000
    assert (out / "r.md").read_text() == markdown(res)


def _recompute(top5, y, H) -> dict:
    """The five metrics from the saved ranked lists alone, written out longhand."""
    top5, y = np.asarray(top5), np.asarray(y)
    first = top5[:, 0]
    wrong = first != y
    return {"top1": float(np.mean(first == y)),
            "top5": float(np.mean([y[i] in top5[i] for i in range(len(y))])),
            "severity": float(np.mean([H[y[i], first[i]] for i in np.flatnonzero(wrong)])) if wrong.any() else np.nan,
            "hd1": float(np.mean([H[y[i], first[i]] for i in range(len(y))])),
            "hd5": float(np.mean([np.mean([H[y[i], c] for c in top5[i]]) for i in range(len(y))]))}


def _lca_and_labels(res):
    from plugin.taxonomy import Taxonomy, imagenet_wnids

    classes = imagenet_wnids()
    return Taxonomy(classes).lca_height, np.asarray([classes.index(w) for w in res["photos"]["wnids"]])


def test_numbers_equal_an_independent_recomputation_from_the_saved_predictions(tiny):
    _, _, res = tiny
    H, y = _lca_and_labels(res)
    assert y[res["photos"]["files"].index("n02129165_chelsea_as_lion.jpg")] != y[
        res["photos"]["files"].index("n02123045_chelsea.jpg")]
    for r in res["records"]:
        want = _recompute(r["top5"], y, H)
        for m in METRICS:
            np.testing.assert_allclose(r["metrics"][m]["mean"], want[m], atol=1e-12, err_msg=f"{r['encoder']} {r['method']} {m}")
        assert r["metrics"]["n_mistakes"] == int((np.asarray(r["top5"])[:, 0] != y).sum())
    # the lion-labelled tabby is a mistake for every method whose answer is a cat: LCA height > 0 counted
    flat = next(r for r in res["records"] if r["method"] == "flat")
    assert flat["metrics"]["n_mistakes"] >= 1 and flat["metrics"]["severity"]["mean"] > 0
    for d in res["differences"]:
        a = next(r for r in res["records"] if r["encoder"] == d["encoder"] and r["method"] == d["a"])
        b = next(r for r in res["records"] if r["encoder"] == d["encoder"] and r["method"] == d["b"])
        for m in ("top1", "top5", "hd1", "hd5"):
            np.testing.assert_allclose(d["diff"][m]["mean"], a["metrics"][m]["mean"] - b["metrics"][m]["mean"], atol=1e-12)


def _topk(scores, k=5):
    return np.argsort(scores, axis=1, kind="stable")[:, ::-1][:, :k]  # scikit-learn's tie order


def test_out_of_fold_predictions_use_the_hyperparameters_chosen_without_them(tiny):
    """Re-derive every saved ranked list from the classifier's probabilities and the fold's chosen values."""
    from plugin.bench.hier import class_probabilities, labelled_photos
    from plugin.encoders import create_encoder
    from plugin.semantics.decision import hierarchical_decision
    from plugin.semantics.inference import crm_scores, hierarchical_inference
    from plugin.taxonomy import Taxonomy, imagenet_wnids

    folder, _, res = tiny
    classes = imagenet_wnids()
    H = Taxonomy(classes).lca_height.astype(float)
    W = Taxonomy(classes).weights(res["meta"]["weight_scale"]).astype(float)
    items, _ = labelled_photos(folder, classes)
    assert [Path(it.source).name for it in items] == res["photos"]["files"]
    fold = np.asarray(res["photos"]["fold"])
    for enc_name in ENCODERS:
        p, _, bad = class_probabilities(items, create_encoder(enc_name, device="cpu"), progress=False)
        assert not bad
        recs = {r["method"]: r for r in res["records"] if r["encoder"] == enc_name}
        assert (np.asarray(recs["flat"]["top5"]) == _topk(p)).all()
        assert (np.asarray(recs["crm"]["top5"]) == _topk(-(p @ H))).all()
        for c in recs["hier_inf"]["hyperparameters"]["per_fold"]:
            rows = fold == c["fold"]
            want = _topk(hierarchical_inference(p, W, c["alpha"], c["T"]))[rows]
            assert (np.asarray(recs["hier_inf"]["top5"])[rows] == want).all()
        for c in recs["decision"]["hyperparameters"]["per_fold"]:
            rows = fold == c["fold"]
            want = _topk(hierarchical_decision(p, H, c["gate"], c["gamma"], c["sharpen"], c["keep"]))[rows]
            assert (np.asarray(recs["decision"]["top5"])[rows] == want).all()


def test_missing_folder_is_skipped_with_a_message(tmp_path, capsys):
    from plugin.cli import main

    assert main(["eval", "hier", "--images", str(tmp_path / "nope"), "--json", str(tmp_path / "r.json")]) == 0
    assert "skipping" in capsys.readouterr().out and not (tmp_path / "r.json").exists()


# ---- the committed results ----------------------------------------------------------------------------
def _make_commands() -> dict:
    """`make bench-hier`'s commands parsed by hsearch's own parser: {dataset: (args, tee'd log)}."""
    from plugin.cli import build_parser

    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("bench-hier:"))
    out = {}
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        argv = shlex.split(line.split(";", 1)[-1])
        argv = argv[argv.index("plugin.cli") + 1:]
        log = argv[argv.index("tee") + 1]
        args = build_parser().parse_args(argv[:argv.index("2>&1")])
        out[args.dataset] = (args, log)
    return out


@pytest.mark.parametrize("dataset,stem", [("images", "hier-imagenet-sample"), ("fashion-mnist", "hier-fashion-mnist")])
def test_committed_results_are_what_make_bench_hier_writes(dataset, stem):
    args, log = _make_commands()[dataset]
    assert (args.json, args.md, args.plot, log) == tuple(f"docs/results/{stem}.{e}" for e in ("json", "md", "png", "log"))
    res = read_results(ROOT / args.json)
    assert (ROOT / args.md).read_text() == markdown(res)
    assert res["meta"]["seed"] == args.seed and res["meta"]["n_boot"] == args.boot
    if dataset == "images":
        assert res["meta"]["folds"] == args.folds
        assert list(dict.fromkeys(r["encoder"] for r in res["records"])) == args.encoders.split(",")
        assert len(res["photos"]["files"]) == len(res["records"][0]["top5"])
        H, y = _lca_and_labels(res)
        for r in res["records"]:  # the committed numbers are the committed predictions' numbers
            want = _recompute(r["top5"], y, H)
            for m in METRICS:
                np.testing.assert_allclose(r["metrics"][m]["mean"], want[m], atol=1e-12)
    else:
        assert res["meta"]["train_limit"] == args.train_limit and res["meta"]["epochs"] == args.epochs
        assert res["meta"]["n_queries"] == args.queries and res["meta"]["encoder"] == args.encoders.split(",")[0]
    assert json.loads((ROOT / args.json).read_text())  # valid JSON (NaN written as null)
