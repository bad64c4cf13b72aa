"""``hsearch bench hkm``: the hkm-tree-retrieval Table 2 protocol on real images, in one process.

For each tree (k, l) and search mode: Recall@1 (top hit shares the query's label), its retention vs
exact search, recall@10 against exact top-10, operands (points scored), time per query and speedup
over exact search *on the same engine* (qdrant-edge, exact=True). Same run: faiss IVF-Flat (same
number of lists as the tree has leaves, nprobe swept), faiss exact (flat), and the engine's HNSW (ef
swept); then incremental ingestion (+20% data through ``Router.add``) against a full rebuild.
Queries run one at a time (what a user's search does); times include all Python overhead.
Where a figure does not apply it is ``null`` in the JSON records and ``n/a`` in the tables: operands for
HNSW (it scores graph neighbours, not a counted partition) and the routing share of faiss IVF and HNSW
(their coarse search is inside the library call, not timed apart).

``python -m plugin.bench.hkm md RECORDS.json OUT.md`` rewrites the markdown tables from saved records.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

RELAXED_SWEEP = [(0.0, 0.01), (0.0, 0.02), (0.0, 0.03), (0.0, 0.04), (0.0, 0.06), (0.0, 0.08), (0.0, 0.12), (1.0, 0.16)]


def load_dataset(name: str, encoder, limit: int | None, n_queries: int):
    """(db vectors, db labels, query vectors, query labels) of real embedded images."""
    from plugin.bench import data

    if name == "fashion-mnist":
        db = data.fashion_mnist("train", encoder, limit=limit)
        # a capped (small) run encodes only the queries it uses: the first n_queries test images
        qs = data.fashion_mnist("test", encoder, limit=None if limit is None else n_queries)
        dbv, dbl = db.vectors, db.labels
        rng = np.random.default_rng(0)
        pick = rng.choice(len(qs.vectors), size=min(n_queries, len(qs.vectors)), replace=False)
        return dbv, dbl, qs.vectors[pick], qs.labels[pick]
    if name == "imagenet-sample":
        views = 10
        e = data.imagenet_views(encoder, views=views)
        held = np.arange(len(e.labels)) % views == views - 1  # last view of each photo is the query
        return e.vectors[~held], e.labels[~held], e.vectors[held][:n_queries], e.labels[held][:n_queries]
    raise SystemExit(f"unknown dataset {name!r}: fashion-mnist | imagenet-sample")


def _timed_search(fn, queries):
    out, times = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q))
        times.append(time.perf_counter() - t)
    return out, float(np.mean(times) * 1e3)


def _recalls(hit_ids, exact_top, db_labels, q_labels):
    r1 = np.mean([len(h) > 0 and db_labels[h[0]] == q_labels[i] for i, h in enumerate(hit_ids)])
    r10 = np.mean([len(set(h[:10]) & set(exact_top[i][:10])) / max(1, len(exact_top[i][:10]))
                   for i, h in enumerate(hit_ids)])
    return float(r1), float(r10)


def run(dataset: str, encoder_name: str = "mobilenet_v2", device: str = "auto", n_queries: int = 1000,
        limit: int | None = None, trees=((3, 4), (8, 3), (4, 5)), incremental: bool = True,
        baselines: bool = True, log=print) -> list[dict]:
    from plugin.encoders import create_encoder
    from plugin.router import Router
    from plugin.store.edge import EdgeStore

    enc = create_encoder(encoder_name, device=device)
    dbv, dbl, qv, ql = load_dataset(dataset, enc, limit, n_queries)
    n_db, n_q = len(dbv), len(qv)
    log(f"# {dataset}: {n_db} database vectors, {n_q} queries, {enc.name} {enc.dim}-d")
    workdir = Path(tempfile.mkdtemp(prefix="hsearch-bench-"))
    store = EdgeStore(workdir / "db", dim=enc.dim)
    ids = np.arange(n_db)
    t = time.perf_counter()
    store.upsert(ids, dbv, [{"label": int(x), "leaf": -1} for x in dbl])
    log(f"upsert {n_db}: {time.perf_counter() - t:.1f}s")
    records: list[dict] = []
    base = {"dataset": dataset, "encoder": enc.name, "n_db": n_db, "n_queries": n_q}

    # exact baseline on the same engine (warm up once)
    store.search(qv[0], k=10, exact=True)
    exact_hits, exact_ms = _timed_search(lambda q: [h.id for h in store.search(q, k=10, exact=True)], qv)
    r1_exact, _ = _recalls(exact_hits, exact_hits, dbl, ql)
    records.append({**base, "method": "qdrant-edge exact", "mode": "exact", "k": None, "l": None, "s1": None,
                    "s2": None, "recall_at_1": r1_exact, "recall_at_1_exact": r1_exact, "retention": 1.0,
                    "recall_at_10": 1.0, "operands_mean": n_db, "operands_frac": 1.0, "ms_per_query": exact_ms,
                    "exact_ms_per_query": exact_ms, "speedup": 1.0, "route_ms": 0.0})

    def add_record(method, mode, k, l, s1, s2, hits, ms, operands, route_ms, extra=None):
        """``operands`` / ``route_ms`` None: not applicable to the method (null in the record, n/a in tables)."""
        r1, r10 = _recalls(hits, exact_hits, dbl, ql)
        ops = None if operands is None else float(np.mean(operands))
        rec = {**base, "method": method, "mode": mode, "k": k, "l": l, "s1": s1, "s2": s2, "recall_at_1": r1,
               "recall_at_1_exact": r1_exact, "retention": r1 / r1_exact if r1_exact else None,
               "recall_at_10": r10, "operands_mean": ops,
               "operands_frac": None if ops is None else ops / n_db, "ms_per_query": ms,
               "exact_ms_per_query": exact_ms, "speedup": exact_ms / ms, "route_ms": route_ms, **(extra or {})}
        records.append(rec)
        log(_row(rec))

    log(_header())
    log(_row(records[0]))
    routers = {}
    for k, l in trees:
        if k ** (l - 1) > n_db:
            continue
        router = Router.build(store, k=k, l=l)
        routers[(k, l)] = router
        desc = router.describe()
        log(f"# tree k={k} l={l}: {desc['leaves']} leaves, sizes {desc['leaf_size_min']}-{desc['leaf_size_max']}, "
            f"build {router.build_stats['total_s']:.1f}s")
        router.search(qv[0], k=10, mode="auto")  # jit warm-up
        configs = [("intensive", None, None), ("auto", None, None)] + [("relaxed", a, b) for a, b in RELAXED_SWEEP]
        for mode, s1, s2 in configs:
            params = {} if mode != "relaxed" else {"s1": s1, "s2": s2}
            res, ms = _timed_search(lambda q: router.search(q, k=10, mode=mode, **params), qv)
            add_record("hkm-router", mode, k, l, s1, s2, [[h.id for h in r] for r in res], ms,
                       [r.stats["operands"] for r in res], float(np.mean([r.stats["route_ms"] for r in res])),
                       {"leaves_mean": float(np.mean([len(r.stats["leaves"]) for r in res])),
                        "n_leaves": desc["leaves"], "build_s": router.build_stats["total_s"]})

    if baselines:
        _faiss_baselines(dbv, qv, add_record, trees, n_db, log)
    if incremental:
        _incremental(dbv, dbl, qv, exact_hits, trees, enc.dim, workdir, base, records, log)
    if baselines:  # HNSW last: optimize() builds the graph on this store
        t = time.perf_counter()
        store.optimize()
        log(f"# qdrant-edge HNSW build: {time.perf_counter() - t:.1f}s")
        for ef in (16, 32, 64, 128, 256):
            store.search(qv[0], k=10, hnsw_ef=ef)
            res, ms = _timed_search(lambda q: [h.id for h in store.search(q, k=10, hnsw_ef=ef)], qv)
            add_record("qdrant-edge HNSW", f"hnsw ef={ef}", None, None, None, None, res, ms, None, None,
                       {"hnsw_ef": ef})
    store.close()
    return records


def _faiss_baselines(dbv, qv, add_record, trees, n_db, log):
    import faiss

    faiss.omp_set_num_threads(1)  # one query at a time, like the router
    flat = faiss.IndexFlatIP(dbv.shape[1])
    flat.add(dbv)
    res, ms = _timed_search(lambda q: flat.search(q[None], 10)[1][0].tolist(), qv)
    add_record("faiss flat (exact)", "exact", None, None, None, None, res, ms, [n_db] * len(qv), 0.0)
    for nlist in sorted({k ** (l - 1) for k, l in trees if k ** (l - 1) <= n_db}):
        quant = faiss.IndexFlatIP(dbv.shape[1])
        ivf = faiss.IndexIVFFlat(quant, dbv.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(dbv)
        ivf.add(dbv)
        sizes = np.array([ivf.invlists.list_size(i) for i in range(nlist)])
        for nprobe in (1, 2, 4, 8, 16):
            if nprobe > nlist:
                continue
            ivf.nprobe = nprobe
            ops = []

            def one(q):
                _, I = ivf.search(q[None], 10)
                return I[0].tolist()

            res, ms = _timed_search(one, qv)
            _, lists = quant.search(qv, nprobe)
            ops = sizes[lists].sum(1)
            add_record("faiss IVF-Flat", f"ivf{nlist} nprobe={nprobe}", None, None, None, None, res, ms, ops, None,
                       {"nlist": nlist, "nprobe": nprobe})
    faiss.omp_set_num_threads(os.cpu_count() or 1)


def _incremental(dbv, dbl, qv, exact_hits, trees, dim, workdir, base, records, log):
    """Build on 5/6 of the database, add the last 1/6 (+20%) through Router.add, compare with a rebuild."""
    from plugin.router import Router
    from plugin.store.edge import EdgeStore

    k, l = trees[1] if len(trees) > 1 else trees[0]
    n = len(dbv)
    n0 = int(round(n / 1.2))
    order = np.random.default_rng(1).permutation(n)
    labels = np.unique(dbl)
    new_labels = labels[-max(1, int(round(len(labels) / 6))):]  # the last sixth of the classes is "new"
    drift = np.isin(dbl, new_labels)
    scenarios = {"random +20%": (order[:n0], order[n0:]),
                 f"{len(new_labels)} new labels +{drift.sum() / (~drift).sum():.0%}":
                     (np.flatnonzero(~drift), np.flatnonzero(drift))}
    modes = [("auto", {}), ("relaxed", {"s1": 0.0, "s2": 0.06})]
    for si, (scenario, (ids0, ids1)) in enumerate(scenarios.items()):
        store = EdgeStore(workdir / f"inc-{si}", dim=dim)
        store.upsert(ids0, dbv[ids0], [{"label": int(dbl[i]), "leaf": -1} for i in ids0])
        router = Router.build(store, k=k, l=l)
        router.assign(dbv[ids1[:1]])  # jit warm-up, as in a long-running process
        t = time.perf_counter()
        stats = {"splits": 0, "merges": 0, "reassigned": 0}
        for s in range(0, len(ids1), 1000):
            b = ids1[s:s + 1000]
            st = router.add(b, dbv[b], [{"label": int(dbl[i])} for i in b])
            for key in stats:
                stats[key] += st[key]
        router.save()
        add_s = time.perf_counter() - t
        results = {}
        for mode, params in modes:  # before the rebuild: it rewrites every leaf payload
            results[mode] = [[h.id for h in router.search(q, k=10, mode=mode, **params)] for q in qv]
        n_leaves_inc = router.tree.n_leaves
        rebuilt = Router.build(store, k=k, l=l, save=False)
        for mode, params in modes:
            r_reb = [[h.id for h in rebuilt.search(q, k=10, mode=mode, **params)] for q in qv]
            rec_inc = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(results[mode], exact_hits)]))
            rec_reb = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(r_reb, exact_hits)]))
            rec = {**base, "method": "incremental", "scenario": scenario, "mode": mode, **params, "k": k, "l": l,
                   "n_initial": len(ids0), "n_added": len(ids1), "add_s": add_s,
                   "rebuild_s": rebuilt.build_stats["total_s"], "time_ratio": add_s / rebuilt.build_stats["total_s"],
                   "rebuild_without_relayout_s": rebuilt.build_stats["total_s"] - rebuilt.build_stats["relayout_s"],
                   "time_ratio_without_relayout": add_s / (rebuilt.build_stats["total_s"]
                                                           - rebuilt.build_stats["relayout_s"]),
                   "recall_at_10_incremental": rec_inc, "recall_at_10_rebuild": rec_reb,
                   "recall_gap": rec_reb - rec_inc, **stats, "leaves_after_add": n_leaves_inc,
                   "leaves_rebuild": rebuilt.tree.n_leaves}
            records.append(rec)
            log(f"incremental [{scenario}] k={k} l={l} {mode} {params}: add {len(ids1)} to {len(ids0)} in "
                f"{add_s:.2f}s vs rebuild {rec['rebuild_s']:.2f}s ({rec['time_ratio']:.1%}; without the relayout "
                f"{rec['rebuild_without_relayout_s']:.2f}s, {rec['time_ratio_without_relayout']:.1%}); recall@10 "
                f"{rec_inc:.4f} vs {rec_reb:.4f} (gap {rec['recall_gap']:+.4f}); splits {stats['splits']} "
                f"merges {stats['merges']} reassigned {stats['reassigned']}; leaves {n_leaves_inc} vs "
                f"{rebuilt.tree.n_leaves}")
        store.close()


def _header() -> str:
    return (f"{'method':<20} {'mode':<16} {'k':>2} {'l':>2} {'s1':>4} {'s2':>5} {'R@1':>6} {'ret%':>6} {'R@10':>6} "
            f"{'ops%':>6} {'ms/q':>7} {'route%':>6} {'speedup':>7}")


def _pct(part, whole) -> float | None:
    """100 * part / whole, or None when ``part`` is n/a (None)."""
    return None if part is None else 100 * part / whole


def _row(r: dict) -> str:
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    na = lambda v, fmt: "n/a".rjust(int(fmt[1:].split(".")[0])) if v is None else format(v, fmt)  # noqa: E731
    return (f"{r['method']:<20} {r['mode']:<16} {f(r['k'], '>2')} {f(r['l'], '>2')} {f(r['s1'], '>4.2g')} "
            f"{f(r['s2'], '>5.2g')} {r['recall_at_1']:6.4f} {100 * r['retention']:6.2f} {r['recall_at_10']:6.4f} "
            f"{na(_pct(r['operands_frac'], 1), '>6.2f')} {r['ms_per_query']:7.3f} "
            f"{na(_pct(r['route_ms'], r['ms_per_query']), '>6.2f')} {r['speedup']:7.2f}")


def plot(records: list[dict], path: str, title: str) -> None:
    """recall@10 vs ms per query: one line per parameter sweep (relaxed s2, IVF nprobe, HNSW ef),
    single markers for intensive / auto / exact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    lines: dict = {}
    trees = sorted({(r["k"], r["l"]) for r in records if r.get("method") == "hkm-router"})
    tree_color = {t: f"C{i}" for i, t in enumerate(trees)}
    for r in records:
        if r.get("method") == "incremental" or "recall_at_10" not in r:
            continue
        if r["method"] == "hkm-router":
            key = f"router k={r['k']} l={r['l']} relaxed (s2 sweep)" if r["mode"] == "relaxed" else None
            if key is None:
                marker = {"intensive": "s", "auto": "^"}[r["mode"]]
                ax.scatter(r["ms_per_query"], r["recall_at_10"], marker=marker, s=40, zorder=3,
                           color=tree_color[(r["k"], r["l"])], edgecolors="k")
                continue
        elif r["method"] == "faiss IVF-Flat":
            key = f"faiss IVF-Flat nlist={r['nlist']} (nprobe sweep)"
        elif r["method"] == "qdrant-edge HNSW":
            key = "qdrant-edge HNSW (ef sweep)"
        else:
            ax.scatter(r["ms_per_query"], r["recall_at_10"], marker="*", s=120, zorder=3, label=r["method"])
            continue
        lines.setdefault(key, []).append(r)
    others = iter(f"C{i}" for i in range(len(trees), 20))
    for key, rs in sorted(lines.items()):
        rs = sorted(rs, key=lambda r: r["operands_frac"] if r["method"] != "qdrant-edge HNSW" else r["hnsw_ef"])
        style = "o-" if key.startswith("router") else ("d--" if "IVF" in key else "v:")
        color = tree_color[(rs[0]["k"], rs[0]["l"])] if key.startswith("router") else next(others)
        ax.plot([r["ms_per_query"] for r in rs], [r["recall_at_10"] for r in rs], style, label=key, ms=4, color=color)
    ax.scatter([], [], marker="s", color="0.5", edgecolors="k", label="router intensive")
    ax.scatter([], [], marker="^", color="0.5", edgecolors="k", label="router auto")
    ax.set_xscale("log")
    ax.set_xlabel("ms per query (one query at a time, 2-core CPU)")
    ax.set_ylabel("recall@10 against exact top-10")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(records: list[dict]) -> str:
    """The records as markdown tables (search, then incremental), for docs/results."""
    r0 = records[0]
    out = [f"### {r0['dataset']}: {r0['n_db']} database vectors, {r0['n_queries']} queries, {r0['encoder']}", "",
           "| method | mode | k | l | s1 | s2 | R@1 | retention | R@10 | operands | ms/query | route % | speedup |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, fmt: "" if v is None else format(v, fmt)  # noqa: E731
    for r in records:
        if r.get("method") == "incremental":
            continue
        ops, route = _pct(r["operands_frac"], 1), _pct(r["route_ms"], r["ms_per_query"])
        out.append(f"| {r['method']} | {r['mode']} | {f(r['k'], 'd')} | {f(r['l'], 'd')} | {f(r['s1'], 'g')} | "
                   f"{f(r['s2'], 'g')} | {r['recall_at_1']:.4f} | {100 * r['retention']:.2f}% | "
                   f"{r['recall_at_10']:.4f} | {'n/a' if ops is None else f'{ops:.2f}%'} | {r['ms_per_query']:.3f} | "
                   f"{'n/a' if route is None else f'{route:.1f}'} | {r['speedup']:.2f}x |")
    inc = [r for r in records if r.get("method") == "incremental"]
    if inc:
        out += ["", "| incremental scenario | k | l | mode | added | add s | rebuild s (w/o relayout) | time ratio "
                "(w/o relayout) | R@10 incremental | R@10 rebuild | gap | splits | reassigned | leaves inc / rebuild |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in inc:
            out.append(f"| {r['scenario']} | {r['k']} | {r['l']} | {r['mode']} {r.get('s2', '')} | {r['n_added']} "
                       f"to {r['n_initial']} | {r['add_s']:.2f} | {r['rebuild_s']:.2f} "
                       f"({r['rebuild_without_relayout_s']:.2f}) | {r['time_ratio']:.1%} "
                       f"({r['time_ratio_without_relayout']:.1%}) | {r['recall_at_10_incremental']:.4f} | "
                       f"{r['recall_at_10_rebuild']:.4f} | {r['recall_gap']:+.4f} | {r['splits']} | "
                       f"{r['reassigned']} | {r['leaves_after_add']} / {r['leaves_rebuild']} |")
    return "\n".join(out) + "\n"


def read_records(path: str | os.PathLike) -> list[dict]:
    """The JSON records a run wrote (one per line)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def main(args) -> int:
    trees = tuple(tuple(int(x) for x in t.lower().split("x")) for t in args.tree.split(","))
    records = run(args.dataset, args.encoder, args.device, args.queries, args.limit, trees,
                  incremental=not args.skip_incremental, baselines=not args.skip_baselines)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text("\n".join(json.dumps(r) for r in records) + "\n")
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(markdown(records))
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(records, args.plot, f"{args.dataset}: {records[0]['n_db']} db / {records[0]['n_queries']} queries")
    return 0


if __name__ == "__main__":  # python -m plugin.bench.hkm md RECORDS.json OUT.md: tables from saved records
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "md":
        raise SystemExit("usage: python -m plugin.bench.hkm md RECORDS.json OUT.md")
    Path(sys.argv[3]).write_text(markdown(read_records(sys.argv[2])))
