"""Where one routed query's time goes, against faiss IVF-Flat and the engine's HNSW at the same recall.

    python -m plugin.bench.anatomy --json docs/results/anatomy-fashion-mnist.json --md docs/results/anatomy-fashion-mnist.md

``bench hkm`` times whole searches; this takes one router configuration and one configuration of each
baseline reaching recall@10 >= ``--recall`` on 60k Fashion-MNIST and times the layers of a query one by
one, in the same process, on the same 1000 test queries (each layer best of ``--passes`` interleaved
passes, since a 2-vCPU VM drifts):

* the router: ``router.search`` whole; routing alone (``router.route``); the query check and
  normalisation (``router.prepare_queries``); the probe kernel on the int8
  codes it routes on and on the float centroids; the store call it makes (``store.search_leaves``) and
  the generic one with the leaf filter already made (``store.search_batch``); the engine's ``query``
  with every request object built
  beforehand (what the engine itself costs for these points); the same request filtered to no point
  (the fixed cost of any engine call); building the request objects alone; the bare routed query (the
  kernel and the binding's calls with nothing of ours between them: the floor of this design);
* the engine's HNSW: ``store.search``, the engine's ``query`` with prebuilt requests, and its bare query
  (the binding's calls only, as a user of the binding makes it);
* faiss IVF-Flat: ``index.search`` (its Python call included);
* the engine's search pool (``EdgeStore(max_search_threads=...)``): both stores reopened alternately with
  one thread, our default, and with the engine's own default, and their whole searches and engine calls
  timed under each.

Beside the timings: the engine's cost of the routed points fitted as fixed + per point + per leaf, the
centroids the probe kernel evaluates a query (``kernels.probe_work_batch``), and from them the floor of
this design: engine scoring + probe kernel + the binding's request objects, against HNSW's whole query.

The router and HNSW configurations are the cheapest of small sweeps here (``--nprobe`` x ``--s2``,
``--ef``); faiss the cheapest ``nprobe`` of an nlist-1024 index, the list count ``bench hkm`` found
fastest at 0.95. Records are one JSON object per line.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _best_ms(fns: dict, n: int, passes: int) -> dict:
    """Per callable ``fn(i)``: the best over interleaved passes of the mean ms over ``i`` in range(n)."""
    best = {name: float("inf") for name in fns}
    for _ in range(passes):
        for name, fn in fns.items():
            for i in range(min(n, 20)):  # warm-up
                fn(i)
            t = time.perf_counter()
            for i in range(n):
                fn(i)
            best[name] = min(best[name], (time.perf_counter() - t) / n * 1e3)
    return best


def engine_cost_fit(shard, requests, points, leaves, passes: int) -> dict:
    """The engine's cost of the routed requests as fixed + per point + per leaf (least squares over the
    queries' own requests, each timed alone, best of ``passes``): what the engine charges for the points
    a route hands it, whatever our code around it does. ``points`` / ``leaves``: per request."""
    times = np.full(len(requests), np.inf)
    for _ in range(passes):
        for i, req in enumerate(requests):
            t = time.perf_counter()
            shard.query(req)
            times[i] = min(times[i], time.perf_counter() - t)
    pts, lvs = np.asarray(points, float), np.asarray(leaves, float)
    A = np.c_[np.ones(len(pts)), pts, lvs]
    coef, *_ = np.linalg.lstsq(A, times * 1e6, rcond=None)
    pred = A @ coef
    ss = float(((times * 1e6 - pred) ** 2).sum())
    r2 = 1.0 - ss / float(((times * 1e6 - times.mean() * 1e6) ** 2).sum())
    return {"fixed_us": float(coef[0]), "per_point_us": float(coef[1]), "per_leaf_us": float(coef[2]),
            "r2": r2, "mean_points": float(pts.mean()), "mean_leaves": float(lvs.mean()),
            "mean_ms": float(times.mean() * 1e3)}


def scan_per_point(shard, qe, queries, params, n_points: int, passes: int) -> float:
    """µs per point of the engine scanning every point with the routed layout's int8 copy and no filter:
    the per-point cost without the filter's."""
    reqs = [qe.QueryRequest(limit=10, query=qe.Query.Nearest(memoryview(q)), with_payload=False, params=params)
            for q in queries]
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        for r in reqs:
            shard.query(r)
        best = min(best, (time.perf_counter() - t) / len(reqs))
    return best * 1e6 / n_points


def run(limit=None, n_queries=1000, recall=0.95, tree=(16, 3), max_leaf=150, nprobes=(24, 28, 32, 40, 48),
        s2s=(0.05, 0.07), efs=(12, 16, 20, 24, 32), passes=3, log=print, nlist=1024,
        fprobes=(10, 12, 14, 15, 16, 18, 20)) -> list[dict]:
    import faiss
    import qdrant_edge as qe

    from plugin.bench.hkm import _recall10, load_dataset, machine
    from plugin.encoders import create_encoder
    from plugin.router import Router, kernels
    from plugin.router.router import UNFILED
    from plugin.store.base import Filter, leaf_condition, translate_filter
    from plugin.store.edge import EdgeStore

    enc = create_encoder("mobilenet_v2", device="cpu")
    dbv, dbl, qv, _ = load_dataset("fashion-mnist", enc, limit, n_queries)
    n = len(qv)
    unit = dbv / np.linalg.norm(dbv, axis=1, keepdims=True)
    qn = qv / np.linalg.norm(qv, axis=1, keepdims=True)
    truth = [np.argsort(-(unit @ q))[:10].tolist() for q in qn]
    env = machine()
    log(f"# anatomy: {len(dbv)} points, {n} queries, recall@10 >= {recall}; machine {json.dumps(env)}")
    work = Path(tempfile.mkdtemp(prefix="hsearch-anatomy-"))
    try:
        base = {"dataset": "fashion-mnist", "n_db": len(dbv), "n_queries": n, "recall_target": recall}
        records = []

        def pick(name, configs, search):
            """The cheapest config whose recall reaches the target (one timed pass each)."""
            ok = []
            for cfg in configs:
                ids = [search(q, cfg) for q in qv]
                rec = _recall10(ids, truth)
                ms = _best_ms({"x": lambda i: search(qv[i], cfg)}, n, 1)["x"]
                log(f"{name} {cfg}: recall@10 {rec:.4f}, {ms:.3f} ms")
                if rec >= recall:
                    ok.append((ms, cfg, rec))
            if not ok:
                raise SystemExit(f"{name}: no configuration reaches recall@10 {recall}")
            return min(ok, key=lambda x: x[0])

        # the router
        store = EdgeStore(work / "router", dim=enc.dim)
        store.upsert(np.arange(len(dbv)), dbv, [{"label": int(x), "leaf": -1} for x in dbl])
        router = Router.build(store, k=tree[0], l=tree[1], max_leaf_size=max_leaf)
        _, (nprobe, s2), r_rec = pick("router probe", [(p, s) for s in s2s for p in nprobes], lambda q, c: [
            h.id for h in router.search(q, k=10, mode="probe", nprobe=c[0], s2=c[1], with_payload=False)])
        leaves = [router.route(q, mode="probe", nprobe=nprobe, s2=s2)[0] for q in qv]
        filters = [Filter(leaf_in=tuple(lv.tolist()) + (UNFILED,)) for lv in leaves]
        leaf_lists = [np.append(lv, UNFILED) for lv in leaves]
        flat = router.flat
        topo = (flat.child_offsets, flat.children, flat.leaf_of_node, flat.metric)
        qprep = router.prepare_queries(qv)
        params = qe.SearchParams(exact=False, quantization=qe.QuantizationSearchParams(
            rescore=True, oversampling=router.oversampling))

        def request(i, f):
            return qe.QueryRequest(limit=10, query=qe.Query.Nearest(memoryview(qprep[i])),
                                   filter=translate_filter(qe, f), with_payload=False, params=params)

        prebuilt = [request(i, filters[i]) for i in range(n)]
        nothing = [request(i, Filter(leaf_in=(-12345,))) for i in range(n)]
        shard = store._shard
        points = float(np.mean([router.flat.leaf_counts[lv].sum() for lv in leaves]))

        # the engine's HNSW
        hstore = EdgeStore(work / "hnsw", dim=enc.dim, hnsw_m=16)
        hstore.upsert(np.arange(len(dbv)), dbv, [{"label": int(x)} for x in dbl])
        hstore.optimize()
        _, ef, h_rec = pick("hnsw m=16 ef", efs, lambda q, e: [h.id for h in hstore.search(q, k=10, hnsw_ef=e,
                                                                                           with_payload=False)])
        hparams = qe.SearchParams(hnsw_ef=ef)

        def hrequest(i):
            return qe.QueryRequest(limit=10, query=qe.Query.Nearest(memoryview(qv[i])), with_payload=False,
                                   params=hparams)

        hprebuilt = [hrequest(i) for i in range(n)]

        # faiss IVF-Flat, one thread like the engine
        faiss.omp_set_num_threads(1)
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(enc.dim), enc.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(dbv)
        ivf.add(dbv)

        def fsearch(q, p):
            ivf.nprobe = p
            return ivf.search(q[None], 10)[1][0].tolist()

        _, fprobe, f_rec = pick(f"faiss ivf{nlist} nprobe", fprobes, fsearch)
        ivf.nprobe = fprobe

        codes = flat.rows(quantized=True)

        def bare(i):
            """The routed query with nothing but what this design must do: unit row, probe kernel, leaf list,
            the binding's request objects, the engine's query, the hits; none of our checks, layers or
            stats. A reference for the floor, not a second implementation (search goes through Router)."""
            q, _ = kernels.unit_rows(qv[i:i + 1])
            out, counts = kernels.probe_batch(q, *codes, *topo, nprobe, s2)
            lv = out[0, :counts[0]].tolist()
            lv.append(UNFILED)
            res = shard.query(qe.QueryRequest(limit=10, query=qe.Query.Nearest(memoryview(q[0])),
                                              filter=qe.Filter(must=[leaf_condition(qe, lv)]), with_payload=False,
                                              params=params))
            return [(int(h.id), float(h.score)) for h in res]

        bare_recall = _recall10([[h[0] for h in bare(i)] for i in range(n)], truth)
        if abs(bare_recall - r_rec) > 1e-3:
            raise SystemExit(f"the bare routed query found recall@10 {bare_recall:.4f}, router.search {r_rec:.4f}: "
                             "it must score what the router scores")

        hshard = hstore._shard

        def hnsw_bare(i):
            """HNSW's query as a user of the binding makes it: the request objects, the query, the hits."""
            res = hshard.query(hrequest(i))
            return [(int(h.id), float(h.score)) for h in res]

        layers = {
            ("router", "router.search (whole)"): lambda i: router.search(qv[i], k=10, mode="probe", nprobe=nprobe,
                                                                         s2=s2, with_payload=False),
            ("router", "routing alone (router.route)"): lambda i: router.route(qv[i], mode="probe", nprobe=nprobe, s2=s2),
            ("router", "query check and normalisation (router.prepare_queries)"): lambda i: router.prepare_queries(
                qv[i:i + 1]),
            ("router", "probe kernel on int8 codes (what probe uses)"): lambda i: kernels.probe_batch(
                qprep[i:i + 1], *flat.rows(quantized=True), *topo, nprobe, s2),
            ("router", "probe kernel on float centroids"): lambda i: kernels.probe_batch(
                qprep[i:i + 1], *flat.rows(quantized=False), *topo, nprobe, s2),
            ("router", "store.search_leaves (what the router calls)"): lambda i: store.search_leaves(
                qprep[i:i + 1], 10, [leaf_lists[i]], oversampling=router.oversampling, with_payload=False),
            ("router", "store.search_batch, leaf filter made"): lambda i: store.search_batch(
                qprep[i:i + 1], 10, filter=[filters[i]], exact=True, oversampling=router.oversampling,
                with_payload=False),
            ("router", "engine query, request prebuilt"): lambda i: shard.query(prebuilt[i]),
            ("router", "engine query matching no point"): lambda i: shard.query(nothing[i]),
            ("router", "building the request objects"): lambda i: request(i, filters[i]),
            ("router", "bare routed query (kernel and binding calls only)"): bare,
            ("hnsw", "store.search (whole)"): lambda i: hstore.search(qv[i], k=10, hnsw_ef=ef, with_payload=False),
            ("hnsw", "engine query, request prebuilt"): lambda i: hstore._shard.query(hprebuilt[i]),
            ("hnsw", "bare query (binding calls only)"): hnsw_bare,
            ("faiss", "index.search (whole)"): lambda i: ivf.search(qv[i:i + 1], 10),
        }
        best = _best_ms(layers, n, passes)
        configs = {"router": f"{tree[0]}x{tree[1]} max leaf {max_leaf}, probe nprobe={nprobe} s2={s2:g}, "
                             f"{points:.0f} points ({points / len(dbv):.2%})",
                   "hnsw": f"m=16 ef={ef}", "faiss": f"IVF-Flat nlist={nlist} nprobe={fprobe}"}
        recalls = {"router": r_rec, "hnsw": h_rec, "faiss": f_rec}
        for (method, layer), ms in best.items():
            rec = {**base, "method": method, "config": configs[method], "recall_at_10": recalls[method],
                   "layer": layer, "ms_per_query": ms, **({"machine": env} if not records else {})}
            records.append(rec)
            log(f"{method:<7} {layer:<40} {ms:7.3f} ms")
        fit = engine_cost_fit(shard, prebuilt, [router.flat.leaf_counts[lv].sum() for lv in leaves],
                              [len(lv) for lv in leaves], passes)
        fit["scan_per_point_us"] = scan_per_point(shard, qe, qprep[:50], params, len(dbv), passes)
        records.append({**base, "method": "router", "config": configs["router"], "recall_at_10": r_rec,
                        "layer": "engine cost fit", "fit": fit})
        log(f"engine cost fit: {json.dumps(fit)}")
        evals = kernels.probe_work_batch(qprep, *codes, *topo, nprobe, s2)
        routing = {"centroids_evaluated": float(evals.mean()), "dim": int(enc.dim)}
        records.append({**base, "method": "router", "config": configs["router"], "recall_at_10": r_rec,
                        "layer": "probe kernel work", "work": routing})
        log(f"probe kernel work: {json.dumps(routing)}")
        for s in (store, hstore):
            s.close()
        # the engine's search pool: both stores reopened with one thread (our default) and with the engine's
        # own default, alternately, the same layers timed each time
        pool = {}
        for _ in range(passes):
            for threads in (1, 0):
                label = "1 thread (ours)" if threads else "engine default"
                rstore, hs = EdgeStore(work / "router", max_search_threads=threads), \
                    EdgeStore(work / "hnsw", max_search_threads=threads)
                rt = Router.open(rstore)
                got = _best_ms({
                    ("router", f"router.search (whole), search pool {label}"): lambda i: rt.search(
                        qv[i], k=10, mode="probe", nprobe=nprobe, s2=s2, with_payload=False),
                    ("router", f"engine query, request prebuilt, search pool {label}"):
                        lambda i: rstore._shard.query(prebuilt[i]),
                    ("router", f"engine query matching no point, search pool {label}"):
                        lambda i: rstore._shard.query(nothing[i]),
                    ("hnsw", f"store.search (whole), search pool {label}"): lambda i: hs.search(
                        qv[i], k=10, hnsw_ef=ef, with_payload=False),
                    ("hnsw", f"engine query, request prebuilt, search pool {label}"):
                        lambda i: hs._shard.query(hprebuilt[i]),
                }, n, 1)
                for key, ms in got.items():
                    pool[key] = min(pool.get(key, float("inf")), ms)
                rt.close()
                for s in (rstore, hs):
                    s.close()
        for (method, layer), ms in sorted(pool.items(), key=lambda kv: (kv[0][0] != "router", kv[0][1])):
            records.append({**base, "method": method, "config": configs[method], "recall_at_10": recalls[method],
                            "layer": layer, "ms_per_query": ms})
            log(f"{method:<7} {layer:<40} {ms:7.3f} ms")
        return records
    finally:
        shutil.rmtree(work, ignore_errors=True)


def markdown(records: list[dict]) -> str:
    r0 = records[0]
    out = [f"### Anatomy of one query: {r0['n_db']} Fashion-MNIST points, {r0['n_queries']} queries, "
           f"recall@10 >= {r0['recall_target']}", "",
           f"Machine: {', '.join(f'{k} {v}' for k, v in r0['machine'].items())}.", "",
           "| method | configuration | recall@10 | layer | ms/query |", "|---|---|---|---|---|"]
    for r in records:
        if "ms_per_query" in r:
            out.append(f"| {r['method']} | {r['config']} | {r['recall_at_10']:.4f} | {r['layer']} | "
                       f"{r['ms_per_query']:.3f} |")
    out += _floor_lines(records)
    return "\n".join(out) + "\n"


def _floor_lines(records: list[dict]) -> list[str]:
    """The engine's own cost of the routed points; what routing costs (centroids evaluated, each against an
    engine point); the parts no code of ours can drop, timed alone and together (the bare routed query),
    against the engine's HNSW at the same recall."""
    fits = [r["fit"] for r in records if "fit" in r]
    if not fits:
        return []
    f = fits[0]
    ms = {(r["method"], r["layer"]): r["ms_per_query"] for r in records if "ms_per_query" in r}
    whole, engine = ms.get(("router", "router.search (whole)")), ms.get(("router", "engine query, request prebuilt"))
    hnsw = ms.get(("hnsw", "store.search (whole)"))
    lines = ["", "#### The engine's cost of the routed points", "",
             f"Each routed request timed alone (best of the passes), fitted over the {records[0]['n_queries']} "
             f"queries as fixed + per point + per leaf (R² {f['r2']:.2f}): **{f['fixed_us']:.1f} µs + "
             f"{f['per_point_us']:.3f} µs a point + {f['per_leaf_us']:.2f} µs a leaf**; the routes average "
             f"{f['mean_points']:.0f} points in {f['mean_leaves']:.1f} leaves, {f['mean_ms']:.3f} ms. The same "
             f"int8 copy scanned whole without a filter: {f['scan_per_point_us']:.3f} µs a point, so the filter "
             f"makes a routed point {f['per_point_us'] / f['scan_per_point_us']:.2f}x as dear as a scanned one.", ""]
    if whole and engine and hnsw:
        lines.append(f"Against the engine's HNSW at the same recall ({hnsw:.3f} ms a query, whole): the engine's "
                     f"scoring of the routed points alone, requests prebuilt, is {engine:.3f} ms "
                     f"({engine / hnsw:.2f}x HNSW); the router's whole query {whole:.3f} ms ({whole / hnsw:.2f}x), "
                     f"so everything around the engine call (routing, the request objects, the hits) is "
                     f"{whole - engine:.3f} ms. HNSW is beaten only if that and the engine's part together fit "
                     f"in {hnsw:.3f} ms.")
    works = [r["work"] for r in records if "work" in r]
    kernel, build = ms.get(("router", "probe kernel on int8 codes (what probe uses)")), \
        ms.get(("router", "building the request objects"))
    if works and whole and engine and hnsw and kernel and build:
        w = works[0]
        per_eval = kernel * 1e3 / w["centroids_evaluated"]
        floor = engine + kernel + build
        lines += ["", "#### What routing costs, and the floor of this design", "",
                  f"The probe kernel evaluates {w['centroids_evaluated']:.0f} centroids a query ({w['dim']}-d int8 "
                  f"codes) in {kernel:.3f} ms: {per_eval:.3f} µs a centroid, {per_eval / f['per_point_us']:.1f}x "
                  f"the engine's {f['per_point_us']:.3f} µs a routed point, so the route costs what "
                  f"{kernel * 1e3 / f['per_point_us']:.0f} more routed points would.", "",
                  f"The parts of the router's query that no code of ours can drop on this engine and binding, "
                  f"for this route, each timed alone: the engine's scoring of the routed points ({engine:.3f} ms), "
                  f"the probe kernel ({kernel:.3f}) and the binding's request objects, the query vector included "
                  f"({build:.3f}; HNSW's whole query pays that vector too), sum to {floor:.3f} ms, "
                  f"{floor / hnsw:.2f}x HNSW's whole query."]
        bare = ms.get(("router", "bare routed query (kernel and binding calls only)"))
        if bare:
            lines += ["", f"Timed alone, those parts miss what they cost together: the bare routed query (unit row, "
                          f"probe kernel, leaf list, request objects, engine query, hits, and nothing of ours "
                          f"between them) takes **{bare:.3f} ms, {bare / hnsw:.2f}x HNSW's whole query** "
                          f"({bare - floor:+.3f} ms against their sum: run one after another on one core they "
                          f"share its caches), and our layers (checks, mode and store calls, "
                          f"stats) add {whole - bare:.3f} ms to it. "
                          + (f"So at this recall, on this machine, with the fastest route found here, no glue of "
                             f"ours beats HNSW: the route's floor misses it by {bare / hnsw - 1:.0%}."
                             if bare > hnsw else
                             f"So HNSW is beaten here once our layers cost under {hnsw - bare:.3f} ms.")]
            hnsw_bare = ms.get(("hnsw", "bare query (binding calls only)"))
            if hnsw_bare:
                lines[-1] += (f" HNSW's whole query above goes through our store; made as a user of the binding "
                              f"makes it (request objects, query, hits) it takes {hnsw_bare:.3f} ms, and against "
                              f"that the router's floor is {bare / hnsw_bare:.2f}x, its whole query "
                              f"{whole / hnsw_bare:.2f}x.")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--recall", type=float, default=0.95)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--tree", default="16x3", help="the router's k x l")
    p.add_argument("--nprobes", default="24,28,32,40,48")
    p.add_argument("--s2s", default="0.05,0.07")
    p.add_argument("--efs", default="12,16,20,24,32", help="HNSW (m=16) ef values to pick from")
    p.add_argument("--nlist", type=int, default=1024, help="faiss IVF-Flat list count")
    p.add_argument("--fprobes", default="10,12,14,15,16,18,20", help="faiss nprobe values to pick from")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    args = p.parse_args(argv)
    ints = lambda v: tuple(int(x) for x in v.split(","))  # noqa: E731
    k, l = (int(x) for x in args.tree.lower().split("x"))
    records = run(args.limit, args.queries, args.recall, tree=(k, l), nprobes=ints(args.nprobes),
                  s2s=tuple(float(x) for x in args.s2s.split(",")), efs=ints(args.efs), passes=args.passes,
                  nlist=args.nlist, fprobes=ints(args.fprobes))
    if args.json:
        Path(args.json).write_text("\n".join(json.dumps(r) for r in records) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
