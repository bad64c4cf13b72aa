"""The shape cost model against measurement on Fashion-MNIST: ``choose_shape`` on the 60k training
vectors, then a real router per shape (the chosen one and others across the predicted ranking), timed on
held-out test images with relaxed search at the ``s2`` the model picked for that shape.

    python -m plugin.bench.shape --json docs/results/shape-fashion-mnist.json --md docs/results/shape-fashion-mnist.md

Per shape it reports three times: *predicted* (the cost model on the subsample's operands, what
``choose_shape`` ranks by), *model on measured operands* (the same constants on the operands the full
tree actually had: separates the constants' error from the subsample's), and *measured* (CPU time of
``Router.search`` per query, best of ``--passes``; wall time beside it). Both, because on a shared
machine wall time also measures the other processes, and CPU time also counts this process' other
threads (the engine's, faiss') when they work during a query.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def cached_vectors(split: str, encoder, limit: int | None = None):
    """The split's vectors from the embedding cache only (never encodes): the longest cached prefix."""
    from loaders import fashion_mnist_items
    from loaders.base import content_hash
    from plugin.embedding_cache import EmbeddingCache, encoder_cache_key

    items = list(fashion_mnist_items(split, limit=limit))
    hashes = [content_hash(it.read()) for it in items]
    cache = EmbeddingCache(encoder_cache_key(encoder), encoder.dim)
    try:
        got = cache.get_many(hashes)
    finally:
        cache.close()
    n = next((i for i, h in enumerate(hashes) if h not in got), len(hashes))
    return np.stack([got[h] for h in hashes[:n]]).astype(np.float32) if n else np.zeros((0, encoder.dim), np.float32)


def _ranks(values) -> list[int]:
    order = np.argsort(values, kind="stable")
    r = np.empty(len(values), int)
    r[order] = np.arange(1, len(values) + 1)
    return r.tolist()


def _spearman(a, b) -> float:
    ra, rb = np.asarray(_ranks(a), float), np.asarray(_ranks(b), float)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _measure(router, queries, truth, s2: float, passes: int) -> dict:
    """Per query the least CPU and wall time of ``passes`` searches; recall@10 and operands of the last."""
    from plugin.router import kernels

    cpu = np.full(len(queries), np.inf)
    wall = np.full(len(queries), np.inf)
    rows = []
    router.search(queries[0], 10, mode="relaxed", s2=s2)  # warm
    for p in range(passes):
        for b, q in enumerate(queries):
            t, c = time.perf_counter(), time.process_time()
            hits = router.search(q, 10, mode="relaxed", s2=s2)
            cpu[b] = min(cpu[b], time.process_time() - c)
            wall[b] = min(wall[b], time.perf_counter() - t)
            if p == passes - 1:
                st = hits.stats
                rows.append((len(set(truth[b].tolist()) & {h.id for h in hits}) / len(truth[b]),
                             st["operands_frac"], st["n_leaves"], st["route_ms"], st["score_ms"]))
    f = router.flat
    Q = router.prepare_queries(queries)
    evals, _ = kernels.route_work_batch(Q, f.centroids, f.child_offsets, f.children, f.leaf_of_node, f.metric,
                                        kernels.RELAXED, -math.inf, float(s2))
    rec, frac, leaves, route_ms, score_ms = (np.array(x) for x in zip(*rows))
    return {"recall": float(rec.mean()), "fraction": float(frac.mean()), "probed_leaves": float(leaves.mean()),
            "evaluations": float(evals.mean()), "cpu_ms": float(cpu.mean() * 1e3),
            "cpu_ms_median": float(np.median(cpu) * 1e3), "wall_ms": float(wall.mean() * 1e3),
            "route_ms_stats": float(route_ms.mean()), "score_ms_stats": float(score_ms.mean())}


def pick_shapes(rows: list[dict], count: int) -> list[dict]:
    """The chosen shape and others spread over the predicted ranking (best to worst)."""
    ok = sorted((r for r in rows if "error" not in r), key=lambda r: r["predicted_ms"])
    if len(ok) <= count:
        return ok
    idx = sorted({round(i * (len(ok) - 1) / (count - 1)) for i in range(count)})
    return [ok[i] for i in idx]


def summarize(measured: list[dict], recall: float) -> dict:
    """Predicted vs measured ranks (CPU and wall time); ``measured[0]`` is the chosen shape."""
    pred = [r["predicted_ms"] for r in measured]
    out = {}
    for clock in ("cpu", "wall"):
        meas = [r["measured"][f"{clock}_ms"] for r in measured]
        for r, rp, rm in zip(measured, _ranks(pred), _ranks(meas)):
            r["predicted_rank"], r[f"measured_rank_{clock}"] = rp, rm
        out[clock] = {"ranking_matches": _ranks(pred) == _ranks(meas), "spearman": _spearman(pred, meas),
                      "chosen_is_fastest": measured[0][f"measured_rank_{clock}"] == 1}
    out["recall_target_met"] = [r["measured"]["recall"] >= recall for r in measured]
    return out


def run(limit: int | None = None, n_test: int = 300, recall: float = 0.95, sample: int = 20000,
        shapes: int = 4, passes: int = 3, seed: int = 0, log=print) -> dict:
    from plugin.bench.target import _versions
    from plugin.encoders import create_encoder
    from plugin.router import Router
    from plugin.router.shape import choose_shape, cost_model, measure_costs
    from plugin.router.target import exact_top
    from plugin.store.edge import EdgeStore

    env = _versions()
    t0 = time.perf_counter()
    enc = create_encoder("mobilenet_v2", device="cpu")
    db = cached_vectors("train", enc, limit)
    qs = cached_vectors("test", enc)
    if len(db) == 0 or len(qs) < n_test:
        raise SystemExit("embed Fashion-MNIST first: python -c 'from plugin.bench import data; ...'")
    test = qs[np.random.default_rng(seed).permutation(len(qs))[:n_test]]
    log(f"# {len(db)} database vectors, {len(test)} test queries")
    costs = measure_costs(db.shape[1])
    t = time.perf_counter()
    chosen, stats = choose_shape(db, recall=recall, sample=sample, seed=seed, costs=costs)
    stats["choose_s"] = round(time.perf_counter() - t, 1)
    log(f"# chose {chosen} in {stats['choose_s']}s")
    for r in stats["candidates"]:
        log(json.dumps({k: r.get(k) for k in ("k", "l", "leaves", "s2", "recall", "fraction", "probed_leaves",
                                               "evaluations", "predicted_ms", "build_s", "error")}))
    measured = []
    with tempfile.TemporaryDirectory(prefix="hsearch-shape-") as tmp:
        store = EdgeStore(Path(tmp) / "db", dim=db.shape[1])
        store.upsert(np.arange(len(db)), db, [{"leaf": -1} for _ in range(len(db))])
        unit = db / np.linalg.norm(db, axis=1, keepdims=True)
        for row in pick_shapes(stats["candidates"], shapes):
            # refine=0: the committed shape-* results predate refined leaves as the build default
            router = Router.build(store, k=row["k"], l=row["l"], max_leaf_size=row["max_leaf_size"], seed=seed,
                                  refine=0)
            truth = exact_top(unit, router.prepare_queries(test), router.tree.metric)
            m = _measure(router, test, truth, row["s2"], passes)
            on_measured = cost_model(costs, len(db), db.shape[1], m["fraction"], m["probed_leaves"], m["evaluations"])
            rec = {"k": row["k"], "l": row["l"], "max_leaf_size": row["max_leaf_size"], "s2": row["s2"],
                   "leaves": router.describe()["leaves"], "predicted_recall_sample": row["recall"],
                   "predicted_fraction": row["fraction"], "predicted_probed_leaves": row["probed_leaves"],
                   "predicted_evaluations": row["evaluations"], "predicted_ms": row["predicted_ms"],
                   "model_on_measured_operands_ms": on_measured["ms"], "measured": m,
                   "build_s": round(router.build_stats["total_s"], 1)}
            measured.append(rec)
            log(json.dumps(rec))
        store.close()
    summary = summarize(measured, recall)
    log(json.dumps(summary))
    return {"dataset": "fashion-mnist", "encoder": enc.name, "n_db": len(db), "n_test": len(test),
            "recall_target": recall, "passes": passes, "chosen": list(chosen), "choose_shape": stats,
            "measured": measured, "summary": summary, "environment": env,
            "load_avg_at_end": os.getloadavg()[0], "total_s": round(time.perf_counter() - t0, 1)}


def markdown(out: dict) -> str:
    st = out["choose_shape"]
    c = st["costs"]
    lines = [f"### Tree shape from the cost model: fashion-mnist, {out['n_db']} vectors, {out['n_test']} test "
             f"queries, mobilenet_v2, recall@10 target {out['recall_target']}",
             "",
             f"Cost constants measured on this machine (`measure_costs`, CPU time, best of repeats): routing "
             f"{c['route_fixed_us']:.1f} µs a call + {c['route_madd_us'] * 1e3:.3f} ns a multiply-add "
             f"({c['route_madd_us'] * out['choose_shape']['dim']:.3f} µs a {st['dim']}-d centroid); engine "
             f"{c['engine_fixed_us']:.0f} µs a request + {c['engine_point_us']:.3f} µs a point + "
             f"{c['engine_leaf_us']:.2f} µs a leaf (routed layout, int8 + rescoring); the router's own work "
             f"{c['router_fixed_us']:.0f} µs a query. "
             f"`choose_shape`: {st['sample']}-point subsample, {st['queries']} held-out collection points as "
             f"queries, {st['choose_s']} s. Assumption: {st['assumption']}.",
             "",
             "Every candidate (predicted):",
             "",
             "| k | l | leaves | s2 | recall (sample) | fraction | probed leaves | centroids | predicted ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in st["candidates"] if "error" not in r), key=lambda r: r["predicted_ms"]):
        lines.append(f"| {r['k']} | {r['l']} | {r['leaves']} | {r['s2']:.4f} | {r['recall']:.3f} | "
                     f"{r['fraction']:.2%} | {r['probed_leaves']:.1f} | {r['evaluations']:.0f} | "
                     f"{r['predicted_ms']:.3f} |")
    lines += ["", "Measured (a real router over the whole collection, relaxed at the predicted s2; CPU ms a "
              f"query, best of {out['passes']} passes; wall ms beside it):", "",
              "| k | l | s2 | recall@10 | fraction | predicted ms | model on measured operands ms | measured CPU ms "
              "| wall ms | predicted rank | CPU rank | wall rank |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["measured"]:
        m = r["measured"]
        lines.append(f"| {r['k']} | {r['l']} | {r['s2']:.4f} | {m['recall']:.3f} | {m['fraction']:.2%} | "
                     f"{r['predicted_ms']:.3f} | {r['model_on_measured_operands_ms']:.3f} | {m['cpu_ms']:.3f} | "
                     f"{m['wall_ms']:.3f} | {r['predicted_rank']} | {r['measured_rank_cpu']} | "
                     f"{r['measured_rank_wall']} |")
    s = out["summary"]
    lines += ["", f"Chosen shape {tuple(out['chosen'])}. Predicted ranking matches the measured one: CPU time "
              f"{s['cpu']['ranking_matches']} (Spearman {s['cpu']['spearman']:.2f}), wall time "
              f"{s['wall']['ranking_matches']} (Spearman {s['wall']['spearman']:.2f}); the chosen shape is the "
              f"fastest measured by CPU time: {s['cpu']['chosen_is_fastest']}, by wall time: "
              f"{s['wall']['chosen_is_fastest']}. Load average at the end: {out['load_avg_at_end']:.1f}.", ""]
    if out.get("notes"):
        lines += [out["notes"], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle faiss threads must not spin into CPU time
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--recall", type=float, default=0.95)
    ap.add_argument("--sample", type=int, default=20000)
    ap.add_argument("--shapes", type=int, default=4)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    ap.add_argument("--render", default=None, help="re-summarise a result JSON (no measuring) into --json/--md")
    a = ap.parse_args(argv)
    if a.render:
        out = json.loads(Path(a.render).read_text())
        out["summary"] = summarize(out["measured"], out["recall_target"])
    else:
        out = run(a.limit, a.test, a.recall, a.sample, a.shapes, a.passes, a.seed)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=float))
    if a.md:
        Path(a.md).write_text(markdown(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
