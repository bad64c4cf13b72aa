"""Spilling (SOAR, Sun et al., NeurIPS 2023) measured on our trees before it was built: how many points a
routed query must score to reach a recall@10 when boundary points are filed under a second leaf too.
(It is built now, as this measurement designed it: :mod:`plugin.router.spill`, ``Router.build(spill=True)``,
``router.search(..., spill=True)``; its own rows are in ``make bench-hkm``. This module still puts its
spilled collection together by hand, as it did when it ran, so that it regenerates its committed file.)

    python -m plugin.bench.spill --md docs/results/spill-fashion-mnist.md --json docs/results/spill-fashion-mnist.json

Issue 15 lists spilling as a lever: a point near a leaf boundary is also filed under its second leaf
(an integer-array ``leaf`` payload, which a ``MatchAny`` filter matches by either value), so a query
whose true neighbours sit across the boundary finds them in fewer leaves. This module measures what
that buys on the real trees (60k Fashion-MNIST, MobileNetV2, the trees ``make bench-hkm`` builds)
*without* changing the store: the router's own ``probe`` kernel routes each query; the candidates are
the points whose primary leaf, or spilled second leaf, is routed; they are scored exactly (float dot
products) and compared with the exact top-10.

Points are not milliseconds: the engine scores an int8 copy laid out by primary leaf
(``Store.cluster_by``), so a spilled point is read out of its neighbours' order, and the filter grows.
So the *engine* table puts the spilled index in the engine as it would be built: a second collection
with the same points, the routed layout by primary ``leaf``, and an integer-indexed ``spill`` payload
holding the second leaf; a query's filter is ``leaf ∈ L OR spill ∈ L`` (two ``MatchAny`` conditions
under ``should``). A separate field rather than an array ``leaf`` keeps ``leaf`` the single truth
every maintenance path reads (a stale ``spill`` after a split names a retired leaf id, which no route
contains, so it can only miss, never strand a point). Both collections answer the same routes through
``store.search_leaves`` (int8, 2x float rescoring, the router's default), one query at a time, in
interleaved passes (best pass), at the nprobe values around each target.

Second leaf, two rules: ``nearest``, the nearest other leaf centroid; ``soar``, SOAR's spilled
assignment, among the 8 nearest other leaves the ``c'`` minimising ``||r'||^2 + lam * <r, r'>^2 /
||r||^2`` (``r = x - c``, ``r' = x - c'``, ``lam = 1``): a second leaf whose residual is orthogonal to
the first's, so a query that the first leaf misrepresents is unlikely to be misrepresented by both.
Which points spill: all of them (SOAR spills every point), or only the fraction with the smallest gap
between their first and second leaf's similarity (the boundary points), which bounds the extra index.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from plugin.router.spill import SOAR_CANDIDATES, leaf_centroids, second_leaves  # noqa: F401 (tests read them here)


def leaf_members(primary: np.ndarray, n_leaves: int, second: np.ndarray | None = None,
                 spilled: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets, rows) of each leaf's points: every row under its primary leaf and, where
    ``spilled``, under ``second`` too."""
    leaf, row = primary, np.arange(len(primary))
    if second is not None:
        extra = np.flatnonzero(spilled)
        leaf, row = np.concatenate([leaf, second[extra]]), np.concatenate([row, extra])
    order = np.argsort(leaf, kind="stable")
    offsets = np.zeros(n_leaves + 1, np.int64)
    np.cumsum(np.bincount(leaf, minlength=n_leaves), out=offsets[1:])
    return offsets, row[order]


def routed_recall(routes, members: tuple[np.ndarray, np.ndarray], X: np.ndarray, Q: np.ndarray,
                  truth: np.ndarray, k: int = 10) -> dict:
    """Mean recall@k and points scored per query when query ``b`` scores, exactly, every point filed
    under one of its routed leaf ids ``routes[b]`` (a point under two routed leaves is scored once)."""
    offsets, rows = members
    found = scored = 0
    for b, leaves in enumerate(routes):
        leaves = np.asarray(leaves, np.int64)
        parts = [rows[offsets[lf]:offsets[lf + 1]] for lf in leaves[leaves >= 0]]
        cand = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        scored += len(cand)
        if len(cand):
            sc = X[cand] @ Q[b]
            top = cand[np.argpartition(-sc, min(k, len(cand)) - 1)[:k]]
            found += len(np.intersect1d(top, truth[b, :k]))
    return {"recall_at_10": found / (k * len(routes)), "points": scored / len(routes)}


def cheapest(rows: list[dict], variant: str, want: float) -> dict | None:
    """The row of ``variant`` scoring the fewest points among those reaching recall ``want``."""
    ok = [r for r in rows if r["variant"] == variant and r["recall_at_10"] >= want]
    return min(ok, key=lambda r: r["points"]) if ok else None


VARIANTS = (("none", None, None), ("nearest, all", "nearest", 1.0), ("soar, all", "soar", 1.0),
            ("soar, boundary half", "soar", 0.5), ("soar, boundary quarter", "soar", 0.25))


def run_tree(router, X: np.ndarray, Q: np.ndarray, truth: np.ndarray, nprobes, s2: float, log=print) -> tuple:
    """Every variant x nprobe on one built router (its store's ``leaf`` payloads are the primary leaves):
    (rows, primary leaves, SOAR second leaves)."""
    from plugin.router.modes import ModeContext, get_mode

    flat, store = router.flat, router.store
    primary = np.empty(len(X), np.int64)
    for page in store.scroll(batch_size=4096, with_vectors=False, payload_fields=["leaf"]):
        for rec in page:
            primary[rec.id] = rec.payload["leaf"]  # ids are row numbers
    C, live = leaf_centroids(flat)
    seconds = {rule: second_leaves(X, C, live, primary, rule) for rule in ("nearest", "soar")}
    index = {}
    for name, rule, frac in VARIANTS:
        if rule is None:
            index[name] = (leaf_members(primary, flat.next_leaf_id), 0.0)
            continue
        second, gap = seconds[rule]
        spilled = gap <= np.quantile(gap, frac) if frac < 1.0 else np.ones(len(X), bool)
        index[name] = (leaf_members(primary, flat.next_leaf_id, second, spilled), float(spilled.mean()))
    mode = get_mode("probe")
    ctx = ModeContext(flat, store, router, None, None)
    out = []
    Qp = router.prepare_queries(Q)
    for nprobe in nprobes:
        routes = mode.fn(ctx, Qp, **mode.resolve({"nprobe": nprobe, "s2": s2}))
        for name, (members, frac) in index.items():
            r = {"variant": name, "nprobe": nprobe, "s2": s2, "spilled": round(frac, 4),
                 **routed_recall(routes, members, X, Q, truth)}
            out.append(r)
        log(f"  nprobe {nprobe:3d}: " + "  ".join(f"{r['variant']} {r['recall_at_10']:.4f}/{r['points']:.0f}"
                                                  for r in out[-len(index):]))
    return out, primary, seconds["soar"][0]


def spill_filter(leaves) -> object:
    """The engine filter of a spilled query: ``leaf`` or ``spill`` is one of ``leaves``."""
    from plugin.store.edge import _qe

    qe = _qe()
    ids = [int(x) for x in leaves]
    return qe.Filter(should=[qe.FieldCondition(key="leaf", match=qe.MatchAny(any=ids)),
                             qe.FieldCondition(key="spill", match=qe.MatchAny(any=ids))])


def spilled_store(path: Path, vectors: np.ndarray, primary: np.ndarray, second: np.ndarray):
    """A routed-layout collection of ``vectors`` (ids = row numbers) filed under ``primary`` with every
    point's ``spill`` payload its ``second`` leaf: the spilled index as the router would build it. Its
    points carry no other payload (the timed queries read none)."""
    from plugin.store.edge import EdgeStore

    store = EdgeStore(path, dim=vectors.shape[1])
    store.create_payload_index("leaf", "integer")
    store.create_payload_index("spill", "integer")
    for a in range(0, len(vectors), 4096):
        b = min(a + 4096, len(vectors))
        store.upsert(np.arange(a, b), vectors[a:b], [{"leaf": int(p), "spill": int(q)}
                                                     for p, q in zip(primary[a:b], second[a:b])])
    store.cluster_by("leaf")
    return store


def engine_rows(router, spilled, Q: np.ndarray, truth: np.ndarray, picks, s2: float, passes: int = 4,
                log=print) -> list[dict]:
    """ms per query and recall@10 of ``picks`` ((variant, nprobe): ``"none"`` on the router's own store,
    ``"soar, all"`` on ``spilled``, ``"soar, leaf only"`` on ``spilled`` with the filter on ``leaf``
    alone: what a query that does not want the spill pays for the collection having it), timed as
    ``bench hkm`` re-times (each query on its own after 20 warm-up queries, every configuration one pass
    per round, ``passes`` rounds, best pass); recall is counted outside the timed calls."""
    from plugin.bench.hkm import _rotated, _timed_pass
    from plugin.router.modes import ModeContext, get_mode
    from plugin.router.router import UNFILED

    mode = get_mode("probe")
    ctx = ModeContext(router.flat, router.store, router, None, None)
    Qp = router.prepare_queries(Q)
    routes = {}
    for _, nprobe in picks:
        if nprobe not in routes:
            got = mode.fn(ctx, Qp, **mode.resolve({"nprobe": nprobe, "s2": s2}))
            routes[nprobe] = [[int(x) for x in lv if x >= 0] + [UNFILED] for lv in got]
    os_ = router.oversampling

    def one(variant, nprobe, q, b):
        leaves = routes[nprobe][b]
        if variant == "none":
            return router.store.search_leaves(q, 10, [leaves], oversampling=os_, with_payload=False)[0]
        if variant == "soar, leaf only":
            return spilled.search_leaves(q, 10, [leaves], oversampling=os_, with_payload=False)[0]
        qe_filter = spill_filter(leaves)  # the store has no leaf-or-spill condition yet: its engine call, directly
        return spilled._query(q, 10, [qe_filter], spilled._params(oversampling=os_))[0]

    best, recall = {}, {}
    for r in range(passes):  # hkm's re-timing: one pass of each per round, each round starting one later
        for key in _rotated(picks, r):
            got, ms = _timed_pass(lambda b, key=key: one(*key, Qp[b:b + 1], b), range(len(Qp)))
            best[key] = min(ms, best.get(key, np.inf))
            recall[key] = sum(len({h.id for h in hits} & set(truth[b, :10].tolist()))
                              for b, hits in enumerate(got)) / (10 * len(Qp))
    out = [{"variant": v, "nprobe": n, "ms_per_query": round(best[(v, n)], 4),
            "recall_at_10": recall[(v, n)], "passes": passes} for v, n in picks]
    for o in out:
        log(f"  engine {o['variant']:<16} nprobe {o['nprobe']:3d}: {o['ms_per_query']:.3f} ms recall@10 "
            f"{o['recall_at_10']:.4f}")
    return out


def engine_picks(rows: list[dict], nprobes) -> list[tuple]:
    """(variant, nprobe) to time in the engine: for "none" and "soar, all", the cheapest grid row
    reaching each of 0.95 and 0.99 and the grid step on either side of it (recall is not smooth in
    nprobe, and the engine's cost per point differs between the two, so the cheapest by points need not
    be the fastest); "soar, leaf only" at the cheapest "none" rows."""
    grid = sorted(nprobes)
    out = []
    for variant in ("none", "soar, all"):
        for want in (0.95, 0.99):
            best = cheapest(rows, variant, want)
            if best is None:
                continue
            i = grid.index(best["nprobe"])
            for n in grid[max(i - 1, 0):i + 2]:
                if (variant, n) not in out:
                    out.append((variant, n))
            if variant == "none":
                out.append(("soar, leaf only", best["nprobe"]))
    return out


def run(trees=((16, 3), (32, 3)), max_leaf: int = 150, n_queries: int = 1000, limit: int | None = None,
        nprobes=(8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128), s2: float = 0.06,
        engine: bool = True, log=print) -> dict:
    import tempfile

    from plugin.bench.hkm import load_dataset
    from plugin.bench.target import _versions
    from plugin.encoders import create_encoder
    from plugin.router import Router
    from plugin.router.target import exact_top
    from plugin.store.edge import EdgeStore

    t0 = time.perf_counter()
    enc = create_encoder("mobilenet_v2", device="cpu")
    dbv, _, qv, _ = load_dataset("fashion-mnist", enc, limit, n_queries)
    X = dbv / np.linalg.norm(dbv, axis=1, keepdims=True)
    Q = qv / np.linalg.norm(qv, axis=1, keepdims=True)
    truth = exact_top(X, Q, "cosine")
    out = {"dataset": "fashion-mnist", "encoder": enc.name, "n_db": len(X), "n_queries": len(Q),
           "max_leaf": max_leaf, "s2": s2, "environment": _versions(), "trees": {}}
    log(f"# {len(X)} database vectors, {len(Q)} queries")
    with tempfile.TemporaryDirectory(prefix="hsearch-spill-") as tmp:
        store = EdgeStore(Path(tmp) / "db", dim=X.shape[1])
        store.upsert(np.arange(len(X)), dbv, [{"leaf": -1} for _ in range(len(X))])
        for k, l in trees:
            router = Router.build(store, k=k, l=l, max_leaf_size=max_leaf, relayout=engine)
            log(f"# tree {k}x{l}: {router.describe()['leaves']} leaves")
            rows, primary, second = run_tree(router, X, Q, truth, nprobes, s2, log)
            summary = []
            for want in (0.95, 0.99):
                base = cheapest(rows, "none", want)
                for name, *_ in VARIANTS:
                    best = cheapest(rows, name, want)
                    summary.append({"target": want, "variant": name, **({} if best is None else {
                        "nprobe": best["nprobe"], "points": best["points"], "recall_at_10": best["recall_at_10"],
                        "spilled": best["spilled"],
                        "points_vs_none": None if base is None else round(best["points"] / base["points"], 3)})})
            out["trees"][f"{k}x{l}"] = {"leaves": router.describe()["leaves"], "rows": rows, "summary": summary}
            if engine:
                t = time.perf_counter()
                spilled = spilled_store(Path(tmp) / f"spilled-{k}x{l}", dbv, primary, second)
                log(f"# spilled collection {k}x{l}: {time.perf_counter() - t:.1f}s")
                out["trees"][f"{k}x{l}"]["engine"] = engine_rows(router, spilled, Q, truth,
                                                                 engine_picks(rows, nprobes), s2, log=log)
                spilled.close()
        store.close()
    out["total_s"] = round(time.perf_counter() - t0, 1)
    return out


def markdown(out: dict) -> str:
    env = out["environment"]
    lines = [f"### Spilling on {out['dataset']}: {out['n_db']} database vectors, {out['n_queries']} queries, "
             f"{out['encoder']}", "",
             f"`python -m plugin.bench.spill` (commit {env.get('commit', '?')[:7]}, {out['total_s']:.0f} s). Routes: the "
             f"router's `probe` kernel, s2={out['s2']:g}, trees built as `make bench-hkm` builds them (max leaf "
             f"{out['max_leaf']}). Candidates scored exactly with floats: points and recall, not milliseconds "
             "(see the module docstring for what the engine path adds).", ""]
    for tree, t in out["trees"].items():
        lines += [f"#### {tree} ({t['leaves']} leaves): cheapest nprobe reaching each recall@10", "",
                  "| recall@10 ≥ | variant | points spilled | nprobe | recall@10 | points scored | vs none |",
                  "|---|---|---|---|---|---|---|"]
        for s in t["summary"]:
            if "points" not in s:
                lines.append(f"| {s['target']} | {s['variant']} | | not reached | | | |")
                continue
            vs = "" if s["points_vs_none"] is None else f"{s['points_vs_none']:.2f}x"
            lines.append(f"| {s['target']} | {s['variant']} | {s['spilled']:.0%} | {s['nprobe']} | "
                         f"{s['recall_at_10']:.4f} | {s['points']:.0f} | {vs} |")
        if t.get("engine"):
            lines += ["", f"Engine ({tree}): the same routes through the store, one query at a time, best of "
                      f"{t['engine'][0]['passes']} interleaved passes (`none`: the router's collection; `soar, all`: "
                      "the spilled collection, filter `leaf ∈ L OR spill ∈ L`; `soar, leaf only`: the spilled "
                      "collection, filter `leaf ∈ L`)", "",
                      "| variant | nprobe | recall@10 | ms/query |", "|---|---|---|---|"]
            lines += [f"| {e['variant']} | {e['nprobe']} | {e['recall_at_10']:.4f} | {e['ms_per_query']:.3f} |"
                      for e in t["engine"]]
        lines += ["", f"All rows ({tree}):", "", "| variant | nprobe | recall@10 | points scored |", "|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['nprobe']} | {r['recall_at_10']:.4f} | {r['points']:.0f} |" for r in t["rows"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m plugin.bench.spill", description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    ap.add_argument("--limit", type=int, default=None, help="database: the first N training images")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--no-engine", action="store_true", help="points and recall only (no spilled collection)")
    a = ap.parse_args(argv)
    out = run(n_queries=a.queries, limit=a.limit, engine=not a.no_engine)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    if a.md:
        Path(a.md).parent.mkdir(parents=True, exist_ok=True)
        Path(a.md).write_text(markdown(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
