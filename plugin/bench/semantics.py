"""``hsearch eval semantics``: the semantics engine (semantics-image-retrieval-hierarchical-db) on real images.

**Fashion-MNIST** (``--dataset fashion-mnist``): the 60k training images are the collection (an embedded
qdrant-edge store with WordNet payloads), a seeded sample of the 10k test images are the queries
(``--queries``). For each encoder (``--encoders``, default the hand-made colour/texture/shape features
and MobileNetV2) three systems answer every query:

* **IndxCBSA** (the paper): dominant-cluster signatures, VP-trees, branch selection, Extended OR-Inc
  pruning, CombSUM; retrieval = exact search in the specific semantics (synset filter);
* **BSA** (its predecessor, Pandey et al. 2015): the same with one mean signature per synset;
* **k-NN vote**: plain exact search over the whole collection; general semantics = the majority top-level
  subtree of the top-10 hits, specific = their majority class (no hierarchy, no pruning).

Measured per query and averaged: *general accuracy* (a chosen top-level subtree holds the query's
class), *specific top-1 / top-3* (the query's class is the first / among the specific semantics),
*on path* (the first specific semantic is the class or one of its WordNet hypernyms), the LCA height
of the first specific semantic to the class, the *share of the hierarchy* selected by branch selection
and left after pruning (synsets), the *share of images* scored by retrieval, precision@20..100 of the
store's hits (relevant = same class), the 11-point interpolated precision-recall curve of the full
ranking inside the retrieval space (recall over all the class's images in the collection; images
outside the space are never retrieved), and ms per query (semantics, then retrieval). The cost of
building the signatures (seconds, clusters, per-synset sample cap) is recorded, and ``--sweep-caps``
rebuilds at other caps on the last encoder.

**ImageNet photos** (``--dataset imagenet``, ``--images DIR``): one photo per class; each photo is a
query against a collection of all the others (leave-one-out), so its own class is absent. Each query's
engine is rebuilt from the others, re-clustering only the synsets the photo belonged to (the rest are
reused by fingerprint). Reported: does a chosen top-level subtree hold the photo's class (general), the
LCA height between the class and the first specific semantic (0 is impossible: the class is absent;
``oracle`` = the least height any synset of the searched hierarchy has, the best a specific semantic
could do), and the mean LCA height of the top-10
retrieved images' classes, against the k-NN vote.

``python -m plugin.bench.semantics md RECORDS.json OUT.md`` rewrites the tables from saved records.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

K_PRECISION = (20, 40, 60, 80, 100)
K_VOTE = 10
RECALL_LEVELS = np.linspace(0, 1, 11)
METHODS = {"clusters": "IndxCBSA (dominant clusters + VP-trees)",
           "clusters-rep": "IndxCBSA, representative images as signatures",
           "mean": "BSA (one mean signature per synset)", "knn": "exact k-NN + majority vote"}
BUILDS = {"clusters": {"method": "clusters"}, "clusters-rep": {"method": "clusters", "signature": "representative"},
          "mean": {"method": "mean"}}
PAPER = {
    "table4": {"BSA": {"accuracy": 0.6812, "search_space": 0.1285, "seconds": 19.26},
               "IndxCBSA": {"accuracy": 0.7661, "search_space": 0.1456, "seconds": 30.60},
               "after_pruning": 0.035, "note": "ImageNet subset, 11 top-level categories, 365 synsets, Set-1 "
               "queries; accuracy = the desired top-level subtree among the n = 3 selected"},
    "table7": {"precision_at_20": 0.78, "precision_at_100": 0.67, "note": "WANG (10 flat categories), every image "
               "a query (paper's highlights; Table 7's per-category values are not in the text we have)"},
}


# ---- WordNet helpers -------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _depths(wnid: str) -> dict:
    from plugin.taxonomy import synset_of
    from plugin.taxonomy.taxonomy import hypernym_depths, wnid_of

    return {wnid_of(s): d for s, d in hypernym_depths(synset_of(wnid)).items()}


@lru_cache(maxsize=None)
def lca_height(a: str, b: str) -> int:
    """Height of the lowest common ancestor of synsets a and b (the Taxonomy convention: along the
    shortest hypernym path; the larger of the two distances up to it; 0 when a == b)."""
    da, db = _depths(a), _depths(b)
    best = min(((da[c] + db[c], max(da[c], db[c])) for c in da.keys() & db.keys()), default=(0, 99))
    return best[1]


def synsets_payload(wnid: str) -> list[str]:
    from plugin.taxonomy import synset_payload

    return synset_payload(wnid)["synsets"]


# ---- retrieval metrics ------------------------------------------------------------------------------------
def interpolated_pr(relevant_sorted: np.ndarray, n_relevant: int) -> np.ndarray:
    """11-point interpolated precision (recall 0, 0.1, ..., 1) of one ranked list; 0 where unreachable."""
    if n_relevant == 0 or len(relevant_sorted) == 0:
        return np.zeros(len(RECALL_LEVELS))
    tp = np.cumsum(relevant_sorted)
    prec = tp / np.arange(1, len(tp) + 1)
    rec = tp / n_relevant
    # max precision at recall >= r: a suffix maximum over the list
    suffix = np.maximum.accumulate(prec[::-1])[::-1]
    out = np.zeros(len(RECALL_LEVELS))
    for i, r in enumerate(RECALL_LEVELS):
        j = np.searchsorted(rec, r - 1e-12)
        out[i] = suffix[j] if j < len(rec) else 0.0
    return out


def precision_at(hit_wnids: list, wnid: str, ks=K_PRECISION) -> dict:
    """Precision@K of a hit list; hits missing below K count as not relevant."""
    rel = np.array([w == wnid for w in hit_wnids], bool)
    return {k: float(rel[:k].sum()) / k for k in ks}


# ---- Fashion-MNIST ----------------------------------------------------------------------------------------
def _fashion_collection(encoder, workdir: Path, log, train_limit=None, test_limit=None, progress=True):
    from plugin.bench import data
    from plugin.store import open_store

    db = data.fashion_mnist("train", encoder, limit=train_limit, progress=progress)
    qs = data.fashion_mnist("test", encoder, limit=test_limit, progress=progress)
    store = open_store(workdir / f"fm-{encoder.name.replace(':', '_')}", dim=encoder.dim)
    store.update_meta(encoder=encoder.name, weights=str(getattr(encoder, "weights", "default")))
    pay = {w: {"wnid": w, "synsets": synsets_payload(w)} for w in set(db.wnids)}
    t0 = time.perf_counter()
    store.upsert(np.arange(len(db.vectors)), db.vectors, [pay[w] for w in db.wnids])
    store.ensure_partition_indexes()
    store.flush()
    log(f"[{encoder.name}] collection: {len(db.vectors)} points upserted in {time.perf_counter() - t0:.1f}s")
    return store, db, qs


def _engine_metrics(r: dict, hier, wnid: str, qsyn: set) -> dict:
    general = [hier.wnids[x] for x in r["general"]]
    spec = [hier.wnids[x] for x in r["specific"]]
    s = r["searched"]
    return {"general_acc": any(g in qsyn for g in general), "general_top1": bool(general) and general[0] in qsyn,
            "specific_top1": bool(spec) and spec[0] == wnid, "specific_top3": wnid in spec,
            "specific_on_path": bool(spec) and spec[0] in qsyn,
            "lca_height": lca_height(wnid, spec[0]) if spec else None,
            "share_selected": s["share_selected"], "share_survivors": s["share_survivors"],
            "share_images": s["share_images"], "clusters_visited": s["clusters_visited"],
            "clusters_of_scored": s["clusters_of_scored"], "pruning_fallback": s["pruning_fallback"],
            "semantics_ms": r["ms"]}


def _knn_semantics(hit_wnids: list, hier, top_of_class: dict) -> tuple[list, list]:
    """Majority top-level subtree and majority class of the first K_VOTE hits (ties: first seen)."""
    votes = hit_wnids[:K_VOTE]
    cls = Counter(votes).most_common(1)[0][0] if votes else None
    tops = Counter(top_of_class[w] for w in votes if top_of_class.get(w) is not None)
    top = tops.most_common(1)[0][0] if tops else None
    return ([top] if top else []), ([cls] if cls else [])


def _summarise(rows: list[dict]) -> dict:
    out = {}
    for key in rows[0]:
        vals = [r[key] for r in rows if r[key] is not None]
        if key in ("p_at",):
            out[key] = {k: float(np.mean([v[k] for v in vals])) for k in vals[0]}
        elif key == "pr":
            out[key] = np.mean(vals, axis=0).round(4).tolist()
        elif vals:
            out[key] = float(np.mean(vals))
        else:
            out[key] = None
    return out


def run_fashion(encoders, n_queries: int, cap: int, seed: int, sweep_caps, workdir: Path, log, progress,
                train_limit: int | None = None, test_limit: int | None = None) -> dict:
    from plugin.encoders import create_encoder
    from plugin.signatures.engine import SemanticsEngine

    runs, sweep, hier_info = [], [], None
    for name in encoders:
        enc = create_encoder(name, device="cpu")
        store, db, qs = _fashion_collection(enc, workdir, log, train_limit, test_limit, progress)
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(qs.vectors), size=min(n_queries, len(qs.vectors)), replace=False))
        engines, builds = {}, {}
        for method, kw in BUILDS.items():
            t0 = time.perf_counter()
            eng = SemanticsEngine.build(store, save=False, cap=cap, seed=seed, progress=progress, **kw)
            builds[method] = {**eng.describe_state(), "wall_s": round(time.perf_counter() - t0, 2)}
            engines[method] = eng
            log(f"[{name}] build {method}: {json.dumps(builds[method])}")
        hier = engines["clusters"].snap.hier
        hier_info = {"synsets": len(hier), "levels": int(hier.level.max()), "top_level":
                     [hier.wnids[i] for i in hier.top_level], "top_level_labels":
                     [_label(hier.wnids[i]) for i in hier.top_level], "total": hier.total}
        top_of_class = {w: next((hier.wnids[t] for t in hier.top_level if hier.wnids[t] in synsets_payload(w)), None)
                        for w in set(db.wnids)}
        Xn = db.vectors / np.linalg.norm(db.vectors, axis=1, keepdims=True)
        coll = np.asarray(db.wnids)
        class_size = Counter(db.wnids)
        member = {w: np.isin(coll, [c for c in class_size if w in synsets_payload(c)]) for w in hier.wnids}
        rows = {m: [] for m in METHODS}
        agree = []
        it = range(len(pick))
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"queries {name}", unit="q")
        for j in it:
            qi = pick[j]
            v, wnid = qs.vectors[qi], qs.wnids[qi]
            qsyn = set(synsets_payload(wnid))
            scores = Xn @ (v / np.linalg.norm(v))
            rel_all = coll == wnid
            for method, eng in engines.items():
                r = eng.semantics(v)
                m = _engine_metrics(r, hier, wnid, qsyn)
                spec = [hier.wnids[x] for x in r["specific"]]
                t0 = time.perf_counter()
                hits = eng.retrieve(v, spec, k=max(K_PRECISION))
                m["retrieval_ms"] = (time.perf_counter() - t0) * 1e3
                m["p_at"] = precision_at([h.payload.get("wnid") for h in hits], wnid)
                inside = np.zeros(len(coll), bool)
                for w in spec:
                    inside |= member[w]
                order = np.argsort(-scores[inside], kind="stable")
                m["pr"] = interpolated_pr(rel_all[inside][order], class_size[wnid])
                if j < 50 and method == "clusters" and hits:  # the store's exact search vs numpy, same vectors
                    # rank by rank, the same score (ids may swap within exact ties: duplicate images)
                    s_np = scores[inside][order[:len(hits)]]
                    agree.append(float(np.mean([abs(h.score - float(x)) <= 1e-4 for h, x in zip(hits, s_np)])))
                rows[method].append(m)
            t0 = time.perf_counter()
            hits = store.search(v, k=max(K_PRECISION), exact=True)
            ms = (time.perf_counter() - t0) * 1e3
            hw = [h.payload.get("wnid") for h in hits]
            general, spec = _knn_semantics(hw, hier, top_of_class)
            order = np.argsort(-scores, kind="stable")
            rows["knn"].append({"general_acc": bool(general) and general[0] in qsyn,
                                "general_top1": bool(general) and general[0] in qsyn,
                                "specific_top1": bool(spec) and spec[0] == wnid, "specific_top3": bool(spec) and
                                spec[0] == wnid, "specific_on_path": bool(spec) and spec[0] in qsyn,
                                "lca_height": lca_height(wnid, spec[0]) if spec else None, "share_selected": None,
                                "share_survivors": None, "share_images": 1.0, "clusters_visited": None,
                                "clusters_of_scored": None, "pruning_fallback": None, "semantics_ms": 0.0,
                                "retrieval_ms": ms,
                                "p_at": precision_at(hw, wnid),
                                "pr": interpolated_pr(rel_all[order], class_size[wnid])})
        for method, rs in rows.items():
            rec = {"encoder": name, "method": method, "system": METHODS[method], "queries": len(rs),
                   **_summarise(rs)}
            if method in builds:
                rec["build"] = builds[method]
            runs.append(rec)
            log(f"[{name}] {METHODS[method]}: general {rec['general_acc']:.4f} specific@1 {rec['specific_top1']:.4f} "
                f"@3 {rec['specific_top3']:.4f} P@20 {rec['p_at'][20]:.4f} P@100 {rec['p_at'][100]:.4f} "
                f"images {rec['share_images']:.4f}")
        next(r for r in runs if r["encoder"] == name and r["method"] == "clusters")[
            "store_numpy_top100_agreement"] = float(np.mean(agree)) if agree else None
        if sweep_caps and name == encoders[-1]:
            sweep += _cap_sweep(store, qs, pick[:min(len(pick), 1000)], sweep_caps, seed, log)
        store.close()
    return {"dataset": "fashion-mnist", "collection": f"Fashion-MNIST train ({len(db.vectors)})",
            "queries": int(len(pick)),
            "seed": seed, "cap": cap, "fraction": 0.25, "n_specific": 3, "hierarchy": hier_info, "runs": runs,
            "cap_sweep": sweep, "paper": PAPER}


def _cap_sweep(store, qs, pick, caps, seed, log) -> list[dict]:
    from plugin.signatures.engine import SemanticsEngine

    out = []
    for cap in caps:
        t0 = time.perf_counter()
        eng = SemanticsEngine.build(store, save=False, method="clusters", cap=cap, seed=seed)
        wall = time.perf_counter() - t0
        st = eng.describe_state()
        ok_g = ok_s = 0
        for qi in pick:
            wnid = qs.wnids[qi]
            qsyn = set(synsets_payload(wnid))
            r = eng.semantics(qs.vectors[qi])
            wn = eng.snap.hier.wnids
            ok_g += any(wn[x] in qsyn for x in r["general"])
            ok_s += bool(r["specific"]) and wn[r["specific"][0]] == wnid
        rec = {"encoder": store.get_meta().get("encoder"), "cap": cap, "build_wall_s": round(wall, 2),
               "cluster_s": st["cluster_s"], "cluster_s_max": st["cluster_s_max"], "signatures": st["signatures"],
               "clusters_found": st["clusters_found"], "queries": len(pick), "general_acc": ok_g / len(pick),
               "specific_top1": ok_s / len(pick)}
        log(f"cap sweep: {json.dumps(rec)}")
        out.append(rec)
    return out


def _label(wnid: str) -> str:
    from plugin.signatures.engine import label

    return label(wnid)


# ---- ImageNet photos, leave-one-out -------------------------------------------------------------------------
def run_imagenet(encoders, images: str | None, cap: int, seed: int, log, progress, limit: int | None = None) -> dict:
    from loaders import imagenet_sample_items
    from loaders.folder import folder_items
    from plugin.bench.data import embed_items
    from plugin.encoders import create_encoder
    from plugin.signatures.blocks import Blocks
    from plugin.signatures.engine import SemanticsEngine

    items = list(folder_items(images, recursive=False, prefix="images") if images else imagenet_sample_items())
    items = [it for it in items if it.wnid][:limit]
    runs = []
    hier_info = None
    for name in encoders:
        enc = create_encoder(name, device="cpu")
        E = embed_items(items, enc, progress=progress)
        n = len(E.vectors)
        ids = np.arange(n)
        syn = [synsets_payload(w) for w in E.wnids]
        blocks = Blocks.for_encoder(name, enc.dim)
        Xn = E.vectors / np.linalg.norm(E.vectors, axis=1, keepdims=True)
        rows = {m: [] for m in ("clusters", "mean", "knn")}
        for method in ("clusters", "mean"):
            t0 = time.perf_counter()
            full = SemanticsEngine.from_arrays(ids, E.vectors, syn, E.wnids, blocks, cap=cap, seed=seed, method=method)
            full_s = time.perf_counter() - t0
            hier = full.snap.hier
            hier_info = {"synsets": len(hier), "levels": int(hier.level.max()), "top_level_labels":
                         [_label(hier.wnids[i]) for i in hier.top_level], "photos": n}
            reuse = {w: (full.fingerprints[i], full.nodes[i]) for i, w in enumerate(hier.wnids)}
            it = range(n)
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(it, desc=f"leave-one-out {name} {method}", unit="photo")
            for q in it:
                keep = ids != q
                t0 = time.perf_counter()
                eng = SemanticsEngine.from_arrays(ids[keep], E.vectors[keep], [syn[i] for i in ids[keep]],
                                                  [E.wnids[i] for i in ids[keep]], blocks, reuse=reuse, cap=cap,
                                                  seed=seed, method=method)
                rebuild_s = time.perf_counter() - t0
                h = eng.snap.hier
                wnid, qsyn = E.wnids[q], set(syn[q])
                r = eng.semantics(E.vectors[q])
                general = [h.wnids[x] for x in r["general"]]
                spec = [h.wnids[x] for x in r["specific"]]
                inside = np.array([bool(set(syn[i]) & set(spec)) for i in ids[keep]])
                sc = Xn[keep][inside] @ Xn[q]
                top = [E.wnids[i] for i in ids[keep][inside][np.argsort(-sc)[:K_VOTE]]]
                rows[method].append({
                    "answerable": any(h.wnids[t] in qsyn for t in h.top_level),
                    "general_acc": any(g in qsyn for g in general),
                    "general_top1": bool(general) and general[0] in qsyn,
                    "specific_lca_height": lca_height(wnid, spec[0]) if spec else None,
                    "specific_best_of3_lca_height": min(lca_height(wnid, s) for s in spec) if spec else None,
                    "oracle_lca_height": min(lca_height(wnid, w) for w in h.wnids),
                    "hits_lca_height": float(np.mean([lca_height(wnid, w) for w in top])) if top else None,
                    "share_selected": r["searched"]["share_selected"],
                    "share_survivors": r["searched"]["share_survivors"],
                    "share_images": r["searched"]["share_images"],
                    "pruning_fallback": r["searched"]["pruning_fallback"],
                    "semantics_ms": r["ms"], "rebuild_s": rebuild_s})
            log(f"[{name}] {method}: full build {full_s:.1f}s; {json.dumps(_summarise(rows[method]))}")
        # k-NN vote over all other photos (oracle: the least height any synset of the query's collection has)
        oracle = [r["oracle_lca_height"] for r in rows["clusters"]]
        hier = full.snap.hier
        for q in range(n):
            keep = ids != q
            wnid, qsyn = E.wnids[q], set(syn[q])
            sc = Xn[keep] @ Xn[q]
            top = [E.wnids[i] for i in ids[keep][np.argsort(-sc)[:K_VOTE]]]
            top_of = {w: next((hier.wnids[t] for t in hier.top_level if hier.wnids[t] in synsets_payload(w)), None)
                      for w in top}
            general, spec = _knn_semantics(top, hier, top_of)
            rows["knn"].append({
                "answerable": any(hier.wnids[t] in qsyn for t in hier.top_level),
                "general_acc": bool(general) and general[0] in qsyn,
                "general_top1": bool(general) and general[0] in qsyn,
                "specific_lca_height": lca_height(wnid, spec[0]) if spec else None,
                "specific_best_of3_lca_height": lca_height(wnid, spec[0]) if spec else None,
                "oracle_lca_height": oracle[q],
                "hits_lca_height": float(np.mean([lca_height(wnid, w) for w in top])), "share_selected": None,
                "share_survivors": None, "share_images": 1.0, "pruning_fallback": None, "semantics_ms": 0.0,
                "rebuild_s": 0.0})
        for method, rs in rows.items():
            runs.append({"encoder": name, "method": method, "system": METHODS[method], "queries": len(rs),
                         **_summarise(rs), "per_query": [
                             {"wnid": w, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                                            if k in ("general_acc", "specific_lca_height", "oracle_lca_height",
                                                     "hits_lca_height")}} for w, r in zip(E.wnids, rs)]})
    return {"dataset": "imagenet-photos", "collection": "all other photos (leave-one-out)", "cap": cap, "seed": seed,
            "fraction": 0.25, "n_specific": 3, "hierarchy": hier_info, "runs": runs, "paper": PAPER}


# ---- output -----------------------------------------------------------------------------------------------
def _p(v, digits=1):
    return "n/a" if v is None else f"{100 * v:.{digits}f}%"


def _f(v, fmt=".2f"):
    return "n/a" if v is None else format(v, fmt)


def markdown(rec: dict) -> str:
    h = rec["hierarchy"] or {}
    out = []
    if rec["dataset"] == "fashion-mnist":
        out += [f"### Fashion-MNIST: collection {rec['collection']}, {rec['queries']} test queries "
                f"(seed {rec['seed']})",
                "",
                f"Searched hierarchy: {h.get('synsets')} synsets, {h.get('levels')} levels; top level: "
                f"{', '.join(h.get('top_level_labels', []))}. Branch selection keeps ceil(N/4) per level, "
                f"specific semantics = 3, signatures from a sample of at most {rec['cap']} images per synset.", "",
                "| features | system | general acc | specific top-1 | top-3 | on path | LCA height | synsets "
                "selected | after pruning | images scored | P@20 | P@40 | P@60 | P@80 | P@100 | ms semantics | "
                "ms retrieval |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rec["runs"]:
            p = r["p_at"]
            out.append(f"| {r['encoder']} | {r['system']} | {_p(r['general_acc'])} | {_p(r['specific_top1'])} | "
                       f"{_p(r['specific_top3'])} | {_p(r['specific_on_path'])} | {_f(r['lca_height'])} | "
                       f"{_p(r['share_selected'])} | {_p(r['share_survivors'])} | {_p(r['share_images'])} | "
                       + " | ".join(f"{p[str(k)] if str(k) in p else p[k]:.3f}" for k in K_PRECISION)
                       + f" | {_f(r['semantics_ms'])} | {_f(r['retrieval_ms'])} |")
        out += ["", "11-point interpolated precision at recall 0, 0.1, ..., 1 (full ranking in the retrieval space):",
                "", "| features | system | " + " | ".join(f"{x:.1f}" for x in RECALL_LEVELS) + " |",
                "|---|---|" + "---|" * len(RECALL_LEVELS)]
        for r in rec["runs"]:
            out.append(f"| {r['encoder']} | {r['system']} | " + " | ".join(f"{x:.3f}" for x in r["pr"]) + " |")
        out += ["", "Cost of building the signatures (60k images):", "",
                "| features | system | wall s | clustering s (all synsets) | slowest synset s | synsets sampled | "
                "signatures | clusters found | cap |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rec["runs"]:
            b = r.get("build")
            if b:
                out.append(f"| {r['encoder']} | {r['system']} | {b['wall_s']} | {b['cluster_s']} | "
                           f"{b['cluster_s_max']} | "
                           f"{b['sampled_nodes']} of {b['synsets']} | {b['signatures']} | {b['clusters_found']} | "
                           f"{b['cap']} |")
        if rec.get("cap_sweep"):
            out += ["", "Per-synset sample cap (IndxCBSA, first 1000 queries):", "",
                    "| features | cap | build wall s | clustering s | slowest synset s | signatures | general acc | "
                    "specific top-1 |", "|---|---|---|---|---|---|---|---|"]
            for s in rec["cap_sweep"]:
                out.append(f"| {s['encoder']} | {s['cap']} | {s['build_wall_s']} | {s['cluster_s']} | "
                           f"{s['cluster_s_max']} | {s['signatures']} | {_p(s['general_acc'])} | "
                           f"{_p(s['specific_top1'])} |")
    else:
        out += [f"### ImageNet photos, leave-one-out: {h.get('photos')} photos, one per class; each query's class is "
                "absent from its collection", "",
                f"Searched hierarchy (all photos): {h.get('synsets')} synsets, {h.get('levels')} levels; top level: "
                f"{', '.join(h.get('top_level_labels', []))}.", "",
                "| features | system | class under a top-level subtree | general acc | general top-1 | LCA height, "
                "first specific | best of 3 | oracle | LCA height of top-10 hits | synsets selected | after pruning | "
                "images scored | ms semantics | s rebuild per query |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rec["runs"]:
            out.append(f"| {r['encoder']} | {r['system']} | {_p(r['answerable'])} | {_p(r['general_acc'])} | "
                       f"{_p(r['general_top1'])} | {_f(r['specific_lca_height'])} | "
                       f"{_f(r['specific_best_of3_lca_height'])} | {_f(r['oracle_lca_height'])} | "
                       f"{_f(r['hits_lca_height'])} | {_p(r['share_selected'])} | {_p(r['share_survivors'])} | "
                       f"{_p(r['share_images'])} | {_f(r['semantics_ms'])} | {_f(r['rebuild_s'])} |")
    fb = [f"{r['encoder']} {r['system']} {_p(r['pruning_fallback'], 2)}" for r in rec["runs"]
          if r.get("pruning_fallback") is not None]
    if fb:
        out += ["", "Queries whose Ext OR-Inc pruning removed every node (the Ext OR set stands instead): "
                + "; ".join(fb) + "."]
    t4, t7 = rec["paper"]["table4"], rec["paper"]["table7"]
    out += ["", "The paper, for comparison:", "",
            "| system | accuracy (general) | search space (synsets) | after pruning | time / query |",
            "|---|---|---|---|---|",
            f"| BSA (Pandey et al. 2015), paper Table 4 | {_p(t4['BSA']['accuracy'], 2)} | "
            f"{_p(t4['BSA']['search_space'], 2)} | | {t4['BSA']['seconds']} s |",
            f"| IndxCBSA, paper Table 4 | {_p(t4['IndxCBSA']['accuracy'], 2)} | "
            f"{_p(t4['IndxCBSA']['search_space'], 2)} | "
            f"~{_p(t4['after_pruning'])} | {t4['IndxCBSA']['seconds']} s |", "",
            f"Paper Table 7 (WANG): P@20 {t7['precision_at_20']}, P@100 {t7['precision_at_100']}. {t7['note']}.", ""]
    return "\n".join(out) + "\n"


def plot(rec: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"clusters": "o-", "clusters-rep": "x-.", "mean": "s--", "knn": "^:"}
    encs = sorted({r["encoder"] for r in rec["runs"]})
    colors = {e: f"C{i}" for i, e in enumerate(encs)}
    for r in rec["runs"]:
        lab = f"{r['encoder']}: {r['system']}"
        axes[0].plot(RECALL_LEVELS, r["pr"], styles[r["method"]], color=colors[r["encoder"]], label=lab, ms=4)
        ks = list(K_PRECISION)
        axes[1].plot(ks, [r["p_at"][str(k)] if str(k) in r["p_at"] else r["p_at"][k] for k in ks], styles[r["method"]],
                     color=colors[r["encoder"]], label=lab, ms=4)
    axes[0].set_xlabel("recall")
    axes[0].set_ylabel("interpolated precision")
    axes[0].set_title("precision-recall in the retrieval space")
    axes[1].set_xlabel("images retrieved (K)")
    axes[1].set_ylabel("precision@K")
    axes[1].set_title("precision@K (relevant = same class)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_ylim(0, 1.02)
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{rec['dataset']}: semantics engine vs its predecessor and k-NN ({rec.get('queries')} queries)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args) -> int:
    import sys

    def log(msg: str) -> None:  # progress notes to stderr (the Makefile tees them into the .log)
        print(msg, file=sys.stderr, flush=True)

    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    progress = not args.quiet
    if args.dataset == "fashion-mnist":
        from plugin import config

        with tempfile.TemporaryDirectory(dir=config.cache_dir("eval")) as wd:
            rec = run_fashion(encoders, args.queries, args.cap, args.seed,
                              [int(c) for c in args.sweep_caps.split(",")] if args.sweep_caps else [], Path(wd), log,
                              progress, args.train_limit)
    else:
        from loaders.imagenet_sample import sample_dir

        images = args.images or (str(sample_dir()) if sample_dir() else None)
        if not images or not os.path.isdir(images):
            print(f"ImageNet photos not found ({images or 'no --images and no ../shared/data/imagenet-sample'}): "
                  "nothing to evaluate")
            return 0
        rec = run_imagenet(encoders, images, args.cap, args.seed, log, progress, args.limit)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rec, indent=1) + "\n")
    md = markdown(json.loads(json.dumps(rec)))
    if args.md:
        Path(args.md).write_text(md)
    print(md)
    if args.plot and rec["dataset"] == "fashion-mnist":
        plot(json.loads(json.dumps(rec)), args.plot)
    return 0


if __name__ == "__main__":  # python -m plugin.bench.semantics md RECORDS.json OUT.md
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "md":
        raise SystemExit("usage: python -m plugin.bench.semantics md RECORDS.json OUT.md")
    Path(sys.argv[3]).write_text(markdown(json.loads(Path(sys.argv[2]).read_text())))
