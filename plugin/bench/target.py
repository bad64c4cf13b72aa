"""Search mode ``target`` on Fashion-MNIST: held-out recall against the target, points scored against
the cheapest fixed relaxed ``s2`` of the same mean recall (:func:`plugin.router.target.evaluate_target`).

    python -m plugin.bench.target --json docs/results/target-fashion-mnist.json

Database: the 60k training images (``--limit`` caps them); queries: the test images, shuffled with a
fixed seed, the first ``--cal`` calibrating the mode and the next ``--test`` held out. A second pass
calibrates on points sampled from the collection itself (what ``hsearch calibrate`` does) and reports the
same held-out queries, to show how far that calibration carries to unseen images.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "load_avg_at_start": os.getloadavg()[0]}
    for pkg in ("numpy", "scikit-learn", "numba", "faiss-cpu", "qdrant-edge-py", "qdrant-edge"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                       cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        pass
    return out


def run(limit: int | None = None, n_cal: int = 2000, n_test: int = 1000, k: int = 16, l: int = 3,
        targets=(0.9, 0.95, 0.99), seed: int = 0, sample_pass: bool = True, log=print) -> dict:
    from plugin.bench import data
    from plugin.encoders import create_encoder
    from plugin.router import Router
    from plugin.router.target import evaluate_target, exact_top
    from plugin.store.edge import EdgeStore

    env = _versions()
    t0 = time.perf_counter()
    enc = create_encoder("mobilenet_v2", device="cpu")
    db = data.fashion_mnist("train", enc, limit=limit, progress=False).vectors
    qs = data.fashion_mnist("test", enc, progress=False).vectors
    pick = np.random.default_rng(seed).permutation(len(qs))
    cal, test = qs[pick[:n_cal]], qs[pick[n_cal:n_cal + n_test]]
    log(f"# {len(db)} database vectors, {len(cal)} calibration / {len(test)} held-out queries")
    with tempfile.TemporaryDirectory(prefix="hsearch-target-") as tmp:
        store = EdgeStore(Path(tmp) / "db", dim=db.shape[1])
        store.upsert(np.arange(len(db)), db, [{"leaf": -1} for _ in range(len(db))])
        router = Router.build(store, k=k, l=l, seed=seed)
        log(f"# tree {k}x{l}: {router.describe()['leaves']} leaves, build {router.build_stats['total_s']:.1f}s")
        unit = db / np.linalg.norm(db, axis=1, keepdims=True)
        truth = exact_top(unit, router.prepare_queries(test), router.tree.metric)  # ids are row numbers
        router.search_batch(test[:2], mode="relaxed")  # jit warm-up
        out = {"dataset": "fashion-mnist", "encoder": enc.name, "n_db": len(db), "k": k, "l": l,
               "environment": env}
        out["given"] = evaluate_target(router, cal, test, truth, targets, seed=seed)
        for r in out["given"]["targets"]:
            log(json.dumps(r))
        if sample_pass:
            out["collection_sample"] = evaluate_target(router, None, test, truth, targets, n_queries=n_cal,
                                                       seed=seed)
            for r in out["collection_sample"]["targets"]:
                log(json.dumps(r))
        store.close()
    out["total_s"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m plugin.bench.target", description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the result here")
    ap.add_argument("--limit", type=int, default=None, help="database: the first N training images")
    ap.add_argument("--cal", type=int, default=2000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("-k", type=int, default=16)
    ap.add_argument("-l", type=int, default=3)
    ap.add_argument("--no-sample-pass", action="store_true")
    a = ap.parse_args(argv)
    out = run(a.limit, a.cal, a.test, a.k, a.l, sample_pass=not a.no_sample_pass)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
