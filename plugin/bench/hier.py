"""``hsearch eval hier``: does the WordNet hierarchy help at test time and in training?
(hierarchical-loss-inference-retrieval, Tables III, V, VI, VII; CRM, Karthik et al., ICLR 2021.)

**Photos** (``--images DIR``, default ``../shared/data/imagenet-sample``; any folder of
``<wnid>_*.jpg`` photos of ImageNet-1k classes). Each offline ImageNet classifier (MobileNetV2,
EfficientNet-Lite0) gives 1000-way probabilities; costs come from the 1000 classes' WordNet taxonomy
(LCA height). Methods: the flat argmax; the paper's hierarchical inference (eqs. 7-11, ``alpha`` and
``T`` swept, weights ``w_ij`` of eq. 6 at the paper's scale 0.3, diagonal included); CRM; and
``plugin.semantics.decision.hierarchical_decision`` (our attempt to go past both). Metrics: top-1,
top-5, mistake severity, hd@1, hd@5 (``plugin.semantics.metrics``), 95% percentile-bootstrap CIs, and
paired-bootstrap CIs of the differences.

*Protocol*: k-fold cross-validation inside the folder (seeded). For each fold, hyperparameters are
chosen on the other folds and applied to it, so every photo is scored with hyperparameters chosen
without it ("out-of-fold"); the tables report those out-of-fold numbers. Criteria, on the training folds:

* hierarchical inference: least hd@5 among (alpha, T) whose top-1 is within 0.5 point of flat
  (``alpha = 0`` is flat, so one always qualifies); ties: higher top-1, then the smaller setting.
* decision rule, in two stages: the top-1 rule (gate, gamma, sharpen) with the least mistake severity
  among those whose top-1 is within 0.5 point of flat; then ``keep`` with the least hd@5 among those
  whose top-5 is within 1 point of flat (if none, the best top-5).

The values chosen on the whole folder (what one would deploy) are printed and saved beside the per-fold ones.

**Fashion-MNIST** (``--dataset fashion-mnist``): frozen MobileNetV2 vectors (60k train, 10k test).
A seeded 10% of train is the validation split (inference hyperparameters, decision rule); heads are
trained on the other 90% with cross-entropy (``lam=0``) or the hierarchical loss (paper: lam=0.5,
m=0.2, scale 0.3). Table VI: flat / hierarchical loss / hierarchical inference / both (+ CRM and the
decision rule). Table VII: the same on long-tailed subsamples of the training split (class sizes
5000 ... 75, the paper's groups low < 1000 <= medium <= 2000 < high, three seeded assignments of sizes to
classes). Table V: the 10k test images in an embedded collection (qdrant-edge + router), 1000 seeded
test images as queries (each excluded from its own results), exact / weighted / category-first search
through ``Router.search``, the query's class from a trained head; mAP@100, hierarchical nDCG@100 and
mAHP@100.

``python -m plugin.bench.hier md RECORDS.json OUT.md`` rewrites the markdown from saved records.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

PROBS_CACHE = "probs"
WEIGHT_SCALE = 0.3  # eq. 6's scale, the paper's value
TOP1_SLACK, TOP5_SLACK = 0.005, 0.01
HI_GRID = [(0.0, 1)] + [(a, t) for a in (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0) for t in (1, 2, 3)]
DEC_TOP1_GRID = [(g, gm, sh) for g in (0.0, 0.2, 0.3, 0.4, 0.5, 0.7, 1.01) for gm in (1.0, 1.5, 2.0, 3.0)
                 for sh in (1.0, 0.5, 0.3)]
DEC_KEEP_GRID = [0.0, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 1.01]
METRICS = ("top1", "top5", "severity", "hd1", "hd5")
LABELS = {"flat": "flat (argmax)", "hier_inf": "hierarchical inference (paper eqs. 7-11)", "crm": "CRM",
          "decision": "decision rule (ours: gated CRM top-1, protected top-5)"}
# the paper's numbers (ResNet-50 on ImageNet val), quoted beside ours
PAPER_III = {"flat": (76.2, 92.9), "proposed (hier. loss + inference)": (79.3, 94.7)}
PAPER_VI = {"flat": 76.2, "hier_loss": 78.4, "hier_inf": 77.8, "hier_loss_inf": 79.3}
PAPER_VII = {"flat": (72.5, 76.8, 80.2), "hier_loss": (76.3, 79.7, 81.9), "hier_inf": (75.1, 78.9, 81.4),
             "hier_loss_inf": (77.2, 80.5, 82.6)}
PAPER_V = {"weighted": (75.8, 0.812), "category_first": (77.3, 0.831)}
LT_SIZES = (5000, 3500, 2500, 2000, 1500, 1000, 600, 300, 150, 75)


# ---- photos and their class probabilities -----------------------------------------------------------
def labelled_photos(folder, classes: list[str]):
    """Items of ``folder`` (not recursive) named ``<wnid>_*`` whose wnid is one of ``classes``, and what
    was left out: ``{"unlabelled": [...], "unknown_class": [...], "skipped": [(file, reason)]}``."""
    from loaders import folder_items

    index = set(classes)
    items, unlabelled, unknown, skipped = [], [], [], []
    for it in folder_items(folder, recursive=False):
        if it.skip:
            skipped.append((it.source, it.skip))
        elif it.wnid is None:
            unlabelled.append(it.source)
        elif it.wnid not in index:
            unknown.append(it.source)
        else:
            items.append(it)
    return items, {"unlabelled": unlabelled, "unknown_class": unknown, "skipped": skipped}


def class_probabilities(items, encoder, batch_size: int = 32, progress: bool = True):
    """((N, C) float64 class probabilities in ``encoder.classes`` order, content hashes, bad items).

    The embedding cache keeps vectors only, so probabilities get their own cache beside it
    (``$HSEARCH_HOME/cache/probs``, one SQLite file per encoder, keyed by image content hash; never
    committed); the vectors of a miss go to the embedding cache too. Images that cannot be read or
    decoded are left out and returned as ``bad`` ((index, reason), ...); their rows are NaN."""
    from loaders.base import content_hash
    from plugin import config
    from plugin.embedding_cache import EmbeddingCache, encoder_cache_key
    from plugin.errors import BadImageError

    n_cls = len(encoder.classes)
    pcache = EmbeddingCache(f"{encoder_cache_key(encoder)}#probs{n_cls}", n_cls, root=config.cache_dir(PROBS_CACHE))
    vcache = EmbeddingCache(encoder_cache_key(encoder), encoder.dim)
    out = np.full((len(items), n_cls), np.nan)
    hashes: list[str | None] = [None] * len(items)
    bad = []
    try:
        datas = {}
        for i, it in enumerate(items):
            try:
                datas[i] = it.read()
                hashes[i] = content_hash(datas[i])
            except OSError as e:
                bad.append((i, f"cannot read: {e}"))
        found = pcache.get_many([h for h in hashes if h])
        todo = []
        for i, h in enumerate(hashes):
            if h in found:
                out[i] = found[h]
            elif h:
                todo.append(i)
        rng = range(0, len(todo), batch_size)
        if progress and todo:
            from tqdm.auto import tqdm

            rng = tqdm(rng, desc=f"classify {encoder.name}", unit="batch")
        for s in rng:
            idx, images = [], []
            for i in todo[s:s + batch_size]:
                try:
                    images.append(items[i].decode(datas[i]))
                    idx.append(i)
                except BadImageError as e:
                    bad.append((i, str(e)))
            if not idx:
                continue
            vecs, probs = encoder.encode_with_probs(images, batch_size=batch_size)
            out[idx] = probs
            pcache.put_many([hashes[i] for i in idx], probs)
            vcache.put_many([hashes[i] for i in idx], vecs)
    finally:
        pcache.close()
        vcache.close()
    good = ~np.isnan(out).any(axis=1)
    out[good] /= out[good].sum(axis=1, keepdims=True)  # float32 softmax -> rows summing to 1 in float64
    return out, hashes, sorted(bad)


# ---- per-sample metrics and selection ---------------------------------------------------------------
class PerSample:
    """Per-sample outcomes of one ranking: top-5 classes, top-1/top-5 hits, LCA height of the top-1, hd@1, hd@5."""

    def __init__(self, scores, y, H):
        from plugin.semantics.metrics import hierarchical_distance_at_k, top_k_classes

        k = min(5, scores.shape[1])
        self.top5 = top_k_classes(scores, k)
        self.c1 = (self.top5[:, 0] == y).astype(float)
        self.c5 = (self.top5 == y[:, None]).any(axis=1).astype(float)
        self.lca1 = H[y, self.top5[:, 0]].astype(float)
        self.hd1 = hierarchical_distance_at_k(scores, y, H, 1, per_sample=True)
        self.hd5 = hierarchical_distance_at_k(scores, y, H, k, per_sample=True)

    def stats(self, idx=None) -> dict:
        idx = slice(None) if idx is None else idx
        wrong = self.c1[idx] == 0
        return {"top1": float(self.c1[idx].mean()), "top5": float(self.c5[idx].mean()),
                "severity": float(self.lca1[idx][wrong].mean()) if wrong.any() else float("nan"),
                "hd1": float(self.hd1[idx].mean()), "hd5": float(self.hd5[idx].mean())}


def _nan_last(v: float) -> float:
    return float("inf") if not np.isfinite(v) else v


def select_hier_inf(per: dict, flat: PerSample, idx) -> tuple:
    """(alpha, T) with the least hd@5 among those within TOP1_SLACK of flat top-1 on ``idx``."""
    f1 = flat.stats(idx)["top1"]
    best = None
    for n, cfg in enumerate(HI_GRID):
        s = per[cfg].stats(idx)
        if s["top1"] < f1 - TOP1_SLACK - 1e-12:
            continue
        key = (s["hd5"], -s["top1"], n)
        if best is None or key < best[0]:
            best = (key, cfg)
    return best[1]


def select_decision(top1_stats, keep_per, flat: PerSample, idx) -> tuple:
    """(gate, gamma, sharpen, keep): stage 1 least mistake severity with top-1 within TOP1_SLACK of flat;
    stage 2 least hd@5 with top-5 within TOP5_SLACK of flat (else the best top-5).
    ``top1_stats(cfg, idx)`` scores a top-1 rule; ``keep_per(cfg, keep)`` gives a PerSample."""
    fs = flat.stats(idx)
    best = None
    for n, cfg in enumerate(DEC_TOP1_GRID):
        top1, sev = top1_stats(cfg, idx)
        if top1 < fs["top1"] - TOP1_SLACK - 1e-12:
            continue
        key = (_nan_last(sev), -top1, n)
        if best is None or key < best[0]:
            best = (key, cfg)
    cfg = best[1]
    best = None
    for n, keep in enumerate(DEC_KEEP_GRID):
        s = keep_per(cfg, keep).stats(idx)
        ok = s["top5"] >= fs["top5"] - TOP5_SLACK - 1e-12
        key = (0, s["hd5"], n) if ok else (1, -s["top5"], n)
        if best is None or key < best[0]:
            best = (key, keep)
    return (*cfg, best[1])


def folds_of(n: int, k: int, seed: int) -> np.ndarray:
    """Fold id per sample: a seeded permutation dealt round-robin into ``k`` folds."""
    fold = np.empty(n, int)
    fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return fold


# ---- confidence intervals ---------------------------------------------------------------------------
def _ci(c) -> dict:
    return {"mean": c.mean, "lo": c.lo, "hi": c.hi}


def metric_cis(per: PerSample, y, H, n_boot: int, seed: int) -> dict:
    from plugin.semantics.metrics import bootstrap_ci, mistake_severity

    pred = per.top5[:, 0]
    out = {m: _ci(bootstrap_ci(getattr(per, a), n_boot=n_boot, seed=seed))
           for m, a in (("top1", "c1"), ("top5", "c5"), ("hd1", "hd1"), ("hd5", "hd5"))}
    out["severity"] = _ci(bootstrap_ci(lambda i: mistake_severity(pred[i], y[i], H).mean, n=len(y),
                                       n_boot=n_boot, seed=seed))
    out["n_mistakes"] = int((per.c1 == 0).sum())
    return out


def difference_cis(a: PerSample, b: PerSample, y, H, n_boot: int, seed: int) -> dict:
    """Paired bootstrap CIs of ``a - b`` (same resamples for both) for every metric."""
    from plugin.semantics.metrics import bootstrap_ci, mistake_severity

    out = {m: _ci(bootstrap_ci(getattr(a, at) - getattr(b, at), n_boot=n_boot, seed=seed))
           for m, at in (("top1", "c1"), ("top5", "c5"), ("hd1", "hd1"), ("hd5", "hd5"))}
    pa, pb = a.top5[:, 0], b.top5[:, 0]
    out["severity"] = _ci(bootstrap_ci(
        lambda i: mistake_severity(pa[i], y[i], H).mean - mistake_severity(pb[i], y[i], H).mean, n=len(y),
        n_boot=n_boot, seed=seed))
    return out


# ---- the photo evaluation ---------------------------------------------------------------------------
def evaluate_probs(p, y, H, W, folds: int, seed: int, n_boot: int, log=print) -> dict:
    """Flat / hierarchical inference / CRM / decision rule on (N, C) probabilities, out-of-fold."""
    from plugin.semantics.decision import decide, expected_cost
    from plugin.semantics.inference import crm_scores, hierarchical_inference

    n = len(y)
    fold = folds_of(n, folds, seed)
    flat = PerSample(p, y, H)
    crm = PerSample(crm_scores(p, H), y, H)
    hi_scores = {cfg: hierarchical_inference(p, W, cfg[0], cfg[1]) for cfg in HI_GRID}
    hi_per = {cfg: PerSample(s, y, H) for cfg, s in hi_scores.items()}
    risks: dict = {}

    def risk(sharpen, gamma):
        if (sharpen, gamma) not in risks:
            risks[(sharpen, gamma)] = expected_cost(p, H, sharpen, gamma)
        return risks[(sharpen, gamma)]

    pmax, parg = p.max(axis=1), p.argmax(axis=1)
    top1_cache: dict = {}

    def top1_pred(cfg):
        if cfg not in top1_cache:
            gate, gamma, sharpen = cfg
            top1_cache[cfg] = np.where(pmax >= gate, parg, risk(sharpen, gamma).argmin(axis=1))
        return top1_cache[cfg]

    def top1_stats(cfg, idx):
        pred = top1_pred(cfg)[idx]
        wrong = pred != y[idx]
        return float((~wrong).mean()), float(H[y[idx][wrong], pred[wrong]].mean()) if wrong.any() else float("nan")

    dec_cache: dict = {}

    def dec_scores(cfg, keep):
        gate, gamma, sharpen = cfg
        return decide(p, risk(sharpen, 1.0), risk(sharpen, gamma), gate, keep)

    def keep_per(cfg, keep):
        if (cfg, keep) not in dec_cache:
            dec_cache[(cfg, keep)] = PerSample(dec_scores(cfg, keep), y, H)
        return dec_cache[(cfg, keep)]

    chosen_hi, chosen_dec = [], []
    oof_hi = np.zeros_like(p)
    oof_dec = np.zeros_like(p)
    for f in range(folds):
        train, test = fold != f, fold == f
        if not test.any():
            continue
        hcfg = select_hier_inf(hi_per, flat, train)
        dcfg = select_decision(top1_stats, keep_per, flat, train)
        chosen_hi.append({"fold": f, "alpha": hcfg[0], "T": hcfg[1]})
        chosen_dec.append({"fold": f, **dict(zip(("gate", "gamma", "sharpen", "keep"), dcfg))})
        oof_hi[test] = hi_scores[hcfg][test]
        oof_dec[test] = dec_scores(dcfg[:3], dcfg[3])[test]
    all_idx = np.ones(n, bool)
    hall = select_hier_inf(hi_per, flat, all_idx)
    dall = select_decision(top1_stats, keep_per, flat, all_idx)
    for c in chosen_hi:
        log(f"  fold {c['fold']}: hierarchical inference alpha={c['alpha']:g} T={c['T']}")
    for c in chosen_dec:
        log(f"  fold {c['fold']}: decision gate={c['gate']:g} gamma={c['gamma']:g} sharpen={c['sharpen']:g} "
            f"keep={c['keep']:g}")
    log(f"  chosen on all {n} photos: hierarchical inference alpha={hall[0]:g} T={hall[1]}; decision "
        f"gate={dall[0]:g} gamma={dall[1]:g} sharpen={dall[2]:g} keep={dall[3]:g}")
    per = {"flat": flat, "hier_inf": PerSample(oof_hi, y, H), "crm": crm, "decision": PerSample(oof_dec, y, H)}
    hyper = {"flat": None, "crm": None,
             "hier_inf": {"per_fold": chosen_hi, "all": {"alpha": hall[0], "T": hall[1]}, "weight_scale": WEIGHT_SCALE,
                          "include_self": True},
             "decision": {"per_fold": chosen_dec, "all": dict(zip(("gate", "gamma", "sharpen", "keep"), dall))}}
    sweep = [{"method": "hier_inf", "alpha": a, "T": t, **hi_per[(a, t)].stats()} for a, t in HI_GRID]
    sweep += [{"method": "decision", "gate": dall[0], "gamma": dall[1], "sharpen": dall[2], "keep": kp,
               **keep_per(dall[:3], kp).stats()} for kp in DEC_KEEP_GRID]
    return {"fold": fold, "per": per, "hyper": hyper, "sweep": sweep}


def run_images(folder, encoders=("mobilenet_v2", "efficientnet_lite0"), folds: int = 5, seed: int = 0,
               n_boot: int = 1000, device: str = "cpu", progress: bool = True, log=print) -> dict | None:
    """The photo evaluation; None (with a message) when the folder is missing or holds no usable photo."""
    from plugin.encoders import create_encoder
    from plugin.taxonomy import Taxonomy, imagenet_wnids

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        log(f"skipping: images folder {folder} not found (pass --images DIR, a folder of <wnid>_*.jpg photos)")
        return None
    t0 = time.perf_counter()
    classes = imagenet_wnids()
    items, left_out = labelled_photos(folder, classes)
    for what, files in left_out.items():
        if files:
            log(f"left out {len(files)} file(s), {what.replace('_', ' ')}: "
                + ", ".join(str(f if isinstance(f, str) else f"{f[0]} ({f[1]})") for f in files[:5])
                + (" ..." if len(files) > 5 else ""))
    if len(items) < 2:
        log(f"skipping: {folder} holds {len(items)} photo(s) named <wnid>_* with an ImageNet-1k wnid; need at least 2")
        return None
    tax = Taxonomy(classes)
    H = tax.lca_height.astype(np.float64)
    W = tax.weights(WEIGHT_SCALE).astype(np.float64)
    k = min(folds, len(items))
    if k != folds:
        log(f"{len(items)} photos: using {k} folds instead of {folds}")
    out = {"meta": {"dataset": "images", "folder": str(folder), "n_files_left_out": {a: len(b) for a, b in left_out.items()},
                    "left_out": {a: [str(f if isinstance(f, str) else f[0]) for f in b] for a, b in left_out.items()},
                    "classes": "imagenet-1k (plugin.taxonomy.imagenet_wnids order)", "cost": "WordNet LCA height",
                    "folds": k, "seed": seed, "n_boot": n_boot, "top1_slack": TOP1_SLACK, "top5_slack": TOP5_SLACK,
                    "hier_inf_grid": [list(c) for c in HI_GRID], "decision_top1_grid": [list(c) for c in DEC_TOP1_GRID],
                    "decision_keep_grid": DEC_KEEP_GRID, "weight_scale": WEIGHT_SCALE},
           "records": [], "sweep": [], "differences": []}
    keys = None
    for name in encoders:
        t1 = time.perf_counter()
        enc = create_encoder(name, device=device)
        p, hashes, bad = class_probabilities(items, enc, progress=progress)
        for i, reason in bad:
            log(f"left out {items[i].source}: {reason}")
        good = ~np.isnan(p).any(axis=1)
        use = [it for it, g in zip(items, good) if g]
        if keys is None:
            keys = [Path(it.source).name for it in use]
            out["photos"] = {"files": keys, "wnids": [it.wnid for it in use]}
        elif keys != [Path(it.source).name for it in use]:
            raise RuntimeError("encoders disagree on which photos could be read")
        y = np.asarray([classes.index(it.wnid) for it in use])
        p = p[good]
        log(f"# {name}: {len(y)} photos, {len(set(y.tolist()))} classes, {k}-fold CV (seed {seed})")
        ev = evaluate_probs(p, y, H, W, k, seed, n_boot, log=log)
        out["photos"]["fold"] = ev["fold"].tolist()
        for m, per in ev["per"].items():
            rec = {"encoder": name, "method": m, "label": LABELS[m], "n": int(len(y)),
                   "metrics": metric_cis(per, y, H, n_boot, seed), "hyperparameters": ev["hyper"][m],
                   "top5": per.top5.tolist()}
            out["records"].append(rec)
            s = rec["metrics"]
            log(f"  {m:9s} top-1 {100 * s['top1']['mean']:5.1f}  top-5 {100 * s['top5']['mean']:5.1f}  "
                f"severity {s['severity']['mean']:.3f} ({s['n_mistakes']} mistakes)  hd@1 {s['hd1']['mean']:.3f}  "
                f"hd@5 {s['hd5']['mean']:.3f}")
        per = ev["per"]
        for a, b in (("hier_inf", "flat"), ("crm", "flat"), ("decision", "flat"), ("decision", "crm")):
            out["differences"].append({"encoder": name, "a": a, "b": b,
                                       "diff": difference_cis(per[a], per[b], y, H, n_boot, seed)})
        out["sweep"] += [{"encoder": name, **s} for s in ev["sweep"]]
        out["meta"].setdefault("seconds", {})[name] = round(time.perf_counter() - t1, 1)
    out["meta"]["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    return out


# ---- markdown and plot ------------------------------------------------------------------------------
def _fmt(ci: dict, pct: bool, digits: int | None = None) -> str:
    if ci["mean"] is None or not np.isfinite(ci["mean"]):
        return "n/a"
    d = digits if digits is not None else (1 if pct else 2)
    f = (lambda v: f"{100 * v:.{d}f}") if pct else (lambda v: f"{v:.{d}f}")
    return f"{f(ci['mean'])} [{f(ci['lo'])}, {f(ci['hi'])}]" if np.isfinite(ci["lo"]) else f(ci["mean"])


def _hyper_text(m: str, h) -> str:
    if not h:
        return "-"
    a = h["all"]
    if m == "hier_inf":
        folds = ", ".join(f"{c['alpha']:g}/{c['T']}" for c in h["per_fold"])
        return f"alpha={a['alpha']:g}, T={a['T']} (folds alpha/T: {folds})"
    folds = "; ".join(f"{c['gate']:g}/{c['gamma']:g}/{c['sharpen']:g}/{c['keep']:g}" for c in h["per_fold"])
    return (f"gate={a['gate']:g}, gamma={a['gamma']:g}, sharpen={a['sharpen']:g}, keep={a['keep']:g} "
            f"(folds gate/gamma/sharpen/keep: {folds})")


def _judge(d: dict, metric: str, better: str) -> str:
    """'better' / 'worse' / 'no clear difference' from a paired CI of a - b; ``better`` = 'lower'|'higher'."""
    lo, hi = d[metric]["lo"], d[metric]["hi"]
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "undefined"
    if (hi < 0 and better == "lower") or (lo > 0 and better == "higher"):
        return "better"
    if (lo > 0 and better == "lower") or (hi < 0 and better == "higher"):
        return "worse"
    return "no clear difference"


def markdown_images(res: dict) -> str:
    meta = res["meta"]
    n = len(res["photos"]["files"])
    out = [f"## Hierarchical inference vs CRM on {n} photos ({Path(meta['folder']).name})", "",
           f"Out-of-fold numbers: {meta['folds']}-fold cross-validation inside the folder (seed {meta['seed']}); each "
           "photo is scored with hyperparameters chosen on the other folds. Selection on the training folds: "
           f"hierarchical inference = least hd@5 with top-1 within {100 * meta['top1_slack']:g} point of flat; "
           f"decision rule = least mistake severity with top-1 within {100 * meta['top1_slack']:g} point, then least hd@5 "
           f"with top-5 within {100 * meta['top5_slack']:g} point of flat. Costs: LCA height in the WordNet "
           "taxonomy of the 1000 ImageNet classes. Brackets: 95% percentile bootstrap "
           f"({meta['n_boot']} resamples of the photos). Mistake severity = mean LCA height of the wrong top-1 "
           "answers (lower is better), hd@k = mean LCA height between the truth and each of the top k (lower is better).",
           ""]
    for enc in dict.fromkeys(r["encoder"] for r in res["records"]):
        out += [f"### {enc}", "",
                "| method | top-1 % | top-5 % | mistake severity (mistakes) | hd@1 | hd@5 | hyperparameters (all photos; per fold) |",
                "|---|---|---|---|---|---|---|"]
        for r in (r for r in res["records"] if r["encoder"] == enc):
            s = r["metrics"]
            out.append(f"| {r['label']} | {_fmt(s['top1'], True)} | {_fmt(s['top5'], True)} | "
                       f"{_fmt(s['severity'], False)} ({s['n_mistakes']}) | {_fmt(s['hd1'], False)} | "
                       f"{_fmt(s['hd5'], False)} | {_hyper_text(r['method'], r['hyperparameters'])} |")
        out += ["", "Paired differences (a - b, 95% paired bootstrap CI):", "",
                "| a - b | top-1 (points) | top-5 (points) | severity | hd@1 | hd@5 |", "|---|---|---|---|---|---|"]
        for d in (d for d in res["differences"] if d["encoder"] == enc):
            x = d["diff"]
            out.append(f"| {d['a']} - {d['b']} | {_fmt(x['top1'], True)} | {_fmt(x['top5'], True)} | "
                       f"{_fmt(x['severity'], False)} | {_fmt(x['hd1'], False)} | {_fmt(x['hd5'], False)} |")
        out.append("")
        out += _verdict_images(res, enc)
        out.append("")
    out += ["### The paper's Table III (ResNet-50, ImageNet val, 50k images) beside ours", "",
            "| paper row | top-1 % | top-5 % |", "|---|---|---|"]
    for k, (t1, t5) in PAPER_III.items():
        out.append(f"| {k} | {t1} | {t5} |")
    out.append("")
    return "\n".join(out) + "\n"


def _verdict_images(res: dict, enc: str) -> list[str]:
    rec = {r["method"]: r["metrics"] for r in res["records"] if r["encoder"] == enc}
    diff = {(d["a"], d["b"]): d["diff"] for d in res["differences"] if d["encoder"] == enc}
    hi, dec = diff[("hier_inf", "flat")], diff[("decision", "flat")]
    dc = diff[("decision", "crm")]
    f1 = rec["flat"]["top1"]["mean"]
    lines = [f"* Paper's claim (inference alone raises top-1, Table VI: +1.6 points): hierarchical inference changes "
             f"top-1 by {100 * hi['top1']['mean']:+.1f} points [{100 * hi['top1']['lo']:+.1f}, {100 * hi['top1']['hi']:+.1f}]"
             f" ({_judge(hi, 'top1', 'higher')}); it lowers hd@5 by {-hi['hd5']['mean']:.2f} "
             f"({_judge(hi, 'hd5', 'lower')}).",
             f"* CRM vs flat: top-1 {100 * diff[('crm', 'flat')]['top1']['mean']:+.1f}, top-5 "
             f"{100 * diff[('crm', 'flat')]['top5']['mean']:+.1f} points, hd@5 {diff[('crm', 'flat')]['hd5']['mean']:+.2f}, "
             f"severity {diff[('crm', 'flat')]['severity']['mean']:+.2f}."]
    t1_ok = rec["decision"]["top1"]["mean"] >= f1 - TOP1_SLACK - 1e-12
    t5_ok = rec["decision"]["top5"]["mean"] >= rec["flat"]["top5"]["mean"] - TOP5_SLACK - 1e-12
    hd_ok = rec["decision"]["hd5"]["mean"] < rec["crm"]["hd5"]["mean"]
    sev_ok = rec["decision"]["severity"]["mean"] < rec["crm"]["severity"]["mean"]
    met = all((t1_ok, t5_ok, hd_ok, sev_ok))
    lines.append(
        f"* Go past the paper (beat CRM on hd@5 and severity, top-1 within 0.5 and top-5 within 1 point of flat): "
        f"{'**met**' if met else '**not met**'} out of fold — top-1 {'ok' if t1_ok else 'misses'} "
        f"({100 * dec['top1']['mean']:+.1f} vs flat), top-5 {'ok' if t5_ok else 'misses'} "
        f"({100 * dec['top5']['mean']:+.1f} vs flat), hd@5 {'below' if hd_ok else 'not below'} CRM's "
        f"({dc['hd5']['mean']:+.2f} [{dc['hd5']['lo']:+.2f}, {dc['hd5']['hi']:+.2f}]), severity "
        f"{'below' if sev_ok else 'not below'} CRM's ({dc['severity']['mean']:+.2f} [{dc['severity']['lo']:+.2f}, "
        f"{dc['severity']['hi']:+.2f}]).")
    return lines


def plot_images(res: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    encs = list(dict.fromkeys(r["encoder"] for r in res["records"]))
    fig, axes = plt.subplots(2, len(encs), figsize=(5.5 * len(encs), 8), squeeze=False)
    colors = {"flat": "k", "hier_inf": "C0", "crm": "C3", "decision": "C2"}
    for j, enc in enumerate(encs):
        sweep = [s for s in res["sweep"] if s["encoder"] == enc]
        for i, metric in enumerate(("top1", "top5")):
            ax = axes[i][j]
            recs = [r for r in res["records"] if r["encoder"] == enc]
            low = min(100 * r["metrics"][metric]["lo"] for r in recs) - 4
            hs = [x for x in sweep if x["method"] == "hier_inf" and 100 * x[metric] >= low]
            ax.scatter([x["hd5"] for x in hs], [100 * x[metric] for x in hs], s=12, color="C0", alpha=0.3,
                       label="hier. inference alpha x T sweep (all photos, in-sample)")
            ds = sorted((x for x in sweep if x["method"] == "decision"), key=lambda x: x["keep"])
            ax.plot([x["hd5"] for x in ds], [100 * x[metric] for x in ds], ".:", color="C2", alpha=0.6,
                    label="decision rule, keep swept (in-sample)")
            for r in recs:
                m = r["metrics"]
                x, yv = m["hd5"], m[metric]
                ax.errorbar([x["mean"]], [100 * yv["mean"]], xerr=[[x["mean"] - x["lo"]], [x["hi"] - x["mean"]]],
                            yerr=[[100 * (yv["mean"] - yv["lo"])], [100 * (yv["hi"] - yv["mean"])]], fmt="o",
                            color=colors[r["method"]], capsize=3, label=f"{r['method']} (out-of-fold, 95% CI)")
            ax.set_ylim(low, min(100.5, max(100 * r["metrics"][metric]["hi"] for r in recs) + 3))
            ax.set_xlabel("hd@5 (mean LCA height of the top 5; lower is better)")
            ax.set_ylabel(f"{'top-1' if metric == 'top1' else 'top-5'} accuracy %")
            ax.set_title(f"{enc}: {'top-1' if metric == 'top1' else 'top-5'} vs hd@5")
            ax.grid(alpha=0.3)
            if i == 1 and j == 0:
                ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{len(res['photos']['files'])} photos, {res['meta']['folds']}-fold CV (sweep points far below "
                 "the axes not shown)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- Fashion-MNIST ----------------------------------------------------------------------------------
def _head_dir(tag: str, X, y, **cfg) -> Path:
    from plugin import config

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(X[:: max(1, len(X) // 2000)], np.float32).tobytes())
    h.update(np.asarray(y, np.int64).tobytes())
    h.update(json.dumps(cfg, sort_keys=True).encode())
    return config.cache_dir("eval-hier") / f"{tag}-{h.hexdigest()[:12]}"


def _train(X, y, classes, lam, tag, epochs, lr, seed, progress):
    from plugin.semantics.trainer import head_probabilities, train_head

    cfg = dict(lam=lam, margin=0.2, weight_scale=WEIGHT_SCALE, epochs=epochs, lr=lr, seed=seed)
    out = _head_dir(tag, X, y, **cfg)
    head, hist = train_head(X, y, classes, encoder="mobilenet_v2", out_dir=out, lam=lam, margin=0.2,
                            weight_scale=WEIGHT_SCALE, epochs=epochs, lr=lr, seed=seed, progress=progress)
    return (lambda Z: head_probabilities(head, Z).astype(np.float64)), hist


def _renorm(p):
    p = np.asarray(p, np.float64)
    return p / p.sum(axis=1, keepdims=True)


def select_hi_top1(p_val, y_val, W) -> tuple:
    """(alpha, T) with the best validation top-1 (the paper's claim is accuracy); ties: the smaller setting."""
    from plugin.semantics.inference import hierarchical_inference

    best = None
    for n, (a, t) in enumerate(HI_GRID):
        acc = float((hierarchical_inference(p_val, W, a, t).argmax(1) == y_val).mean())
        if best is None or (-acc, n) < best[0]:
            best = ((-acc, n), (a, t))
    return best[1]


def select_decision_val(p_val, y_val, H) -> tuple:
    """The decision rule's hyperparameters by the photo protocol's two-stage criterion on a validation split."""
    from plugin.semantics.decision import decide, expected_cost

    flat = PerSample(p_val, y_val, H)
    risks = {}

    def risk(sh, gm):
        if (sh, gm) not in risks:
            risks[(sh, gm)] = expected_cost(p_val, H, sh, gm)
        return risks[(sh, gm)]

    def top1_stats(cfg, idx):
        g, gm, sh = cfg
        pred = np.where(p_val.max(1) >= g, p_val.argmax(1), risk(sh, gm).argmin(1))
        wrong = pred != y_val
        return float((~wrong).mean()), float(H[y_val[wrong], pred[wrong]].mean()) if wrong.any() else float("nan")

    def keep_per(cfg, keep):
        g, gm, sh = cfg
        return PerSample(decide(p_val, risk(sh, 1.0), risk(sh, gm), g, keep), y_val, H)

    return select_decision(top1_stats, keep_per, flat, np.ones(len(y_val), bool))


def run_fashion(encoder_name: str = "mobilenet_v2", train_limit: int | None = None, val_frac: float = 0.1,
                n_queries: int = 1000, seed: int = 0, n_boot: int = 1000, epochs: int = 20, lr: float = 1e-2,
                lt_seeds: int = 3, device: str = "cpu", progress: bool = True, log=print) -> dict:
    from loaders import fashion_mnist_items
    from loaders.fashion_mnist import CLASSES
    from plugin.bench.data import embed_items
    from plugin.encoders import create_encoder
    from plugin.semantics.decision import hierarchical_decision
    from plugin.semantics.inference import crm_scores, hierarchical_inference
    from plugin.semantics.metrics import per_group_accuracy
    from plugin.taxonomy import Taxonomy

    t0 = time.perf_counter()
    classes = [w for _, w in CLASSES]
    names = [c for c, _ in CLASSES]
    enc = create_encoder(encoder_name, device=device)
    train_items = list(fashion_mnist_items("train"))
    rng = np.random.default_rng(seed)
    if train_limit is not None and train_limit < len(train_items):
        pick = np.sort(rng.choice(len(train_items), train_limit, replace=False))
        train_items = [train_items[i] for i in pick]
    tr = embed_items(train_items, enc, progress=progress)
    te = embed_items(fashion_mnist_items("test"), enc, progress=progress)
    cidx = {w: i for i, w in enumerate(classes)}
    ytr = np.asarray([cidx[w] for w in tr.wnids])
    yte = np.asarray([cidx[w] for w in te.wnids])
    tax = Taxonomy(classes)
    H = tax.lca_height.astype(np.float64)
    W = tax.weights(WEIGHT_SCALE).astype(np.float64)
    perm = np.random.default_rng(seed + 1).permutation(len(ytr))
    n_val = int(round(val_frac * len(ytr)))
    val, fit = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    log(f"# fashion-mnist: {len(ytr)} train vectors ({len(fit)} fit / {len(val)} validation), {len(yte)} test, "
        f"{enc.name} {enc.dim}-d; heads: {epochs} epochs, lr {lr}, seed {seed}")
    t_embed = time.perf_counter() - t0
    out = {"meta": {"dataset": "fashion-mnist", "encoder": encoder_name, "n_train": int(len(ytr)),
                    "train_limit": train_limit, "n_fit": int(len(fit)), "n_val": int(len(val)), "n_test": int(len(yte)),
                    "epochs": epochs, "lr": lr, "seed": seed, "n_boot": n_boot, "lam": 0.5, "margin": 0.2,
                    "weight_scale": WEIGHT_SCALE, "classes": classes, "class_names": names,
                    "lt_seeds": lt_seeds, "n_queries": n_queries,
                    "lca_height": H.astype(int).tolist()},
           "table_vi": [], "table_vii": [], "table_v": [], "table_v_differences": [], "hyperparameters": {}}
    heads = {}
    for lam, tag in ((0.0, "ce"), (0.5, "hier")):
        prob, hist = _train(tr.vectors[fit], ytr[fit], classes, lam, f"fmnist-{tag}", epochs, lr, seed, progress)
        heads[tag] = prob
        log(f"head {tag}: final train loss {hist['loss'][-1]:.4f}, train acc {hist['train_acc'][-1]:.4f}")
    pv = {t: _renorm(heads[t](tr.vectors[val])) for t in heads}
    pt = {t: _renorm(heads[t](te.vectors)) for t in heads}
    hi_cfg = {t: select_hi_top1(pv[t], ytr[val], W) for t in heads}
    dec_cfg = {t: select_decision_val(pv[t], ytr[val], H) for t in heads}
    for t in heads:
        log(f"chosen on validation ({t} head): hierarchical inference alpha={hi_cfg[t][0]:g} T={hi_cfg[t][1]}; "
            f"decision gate/gamma/sharpen/keep = {'/'.join(f'{v:g}' for v in dec_cfg[t])}")
    out["hyperparameters"] = {t: {"hier_inf": {"alpha": hi_cfg[t][0], "T": hi_cfg[t][1]},
                                  "decision": dict(zip(("gate", "gamma", "sharpen", "keep"), dec_cfg[t]))} for t in heads}
    rows = [("flat", "CE head", "ce", lambda p: p), ("hier_loss", "hierarchical-loss head", "hier", lambda p: p),
            ("hier_inf", "CE head + hierarchical inference", "ce",
             lambda p: hierarchical_inference(p, W, *hi_cfg["ce"])),
            ("hier_loss_inf", "hierarchical-loss head + hierarchical inference", "hier",
             lambda p: hierarchical_inference(p, W, *hi_cfg["hier"])),
            ("crm", "CE head + CRM", "ce", lambda p: crm_scores(p, H)),
            ("hier_loss_crm", "hierarchical-loss head + CRM", "hier", lambda p: crm_scores(p, H)),
            ("decision", "CE head + decision rule (ours)", "ce",
             lambda p: hierarchical_decision(p, H, *dec_cfg["ce"])),
            ("hier_loss_decision", "hierarchical-loss head + decision rule (ours)", "hier",
             lambda p: hierarchical_decision(p, H, *dec_cfg["hier"]))]
    per = {}
    for key, label, head, fn in rows:
        per[key] = PerSample(fn(pt[head]), yte, H)
        rec = {"config": key, "label": label, "metrics": metric_cis(per[key], yte, H, n_boot, seed)}
        out["table_vi"].append(rec)
        s = rec["metrics"]
        log(f"  {key:19s} top-1 {100 * s['top1']['mean']:5.2f}  severity {s['severity']['mean']:.3f}  "
            f"hd@1 {s['hd1']['mean']:.3f}  hd@5 {s['hd5']['mean']:.3f}")
    out["differences"] = [{"a": a, "b": b, "diff": difference_cis(per[a], per[b], yte, H, n_boot, seed)}
                          for a, b in (("hier_loss", "flat"), ("hier_inf", "flat"), ("hier_loss_inf", "flat"),
                                       ("crm", "flat"), ("decision", "flat"), ("decision", "crm"))]
    # Table VII: long-tailed training subsamples
    avail = int(np.bincount(ytr[fit], minlength=len(classes)).min())
    lt_scale = min(1.0, avail / max(LT_SIZES))  # a smaller training split shrinks sizes and group edges alike
    lt_sizes = np.maximum(1, np.round(np.asarray(LT_SIZES) * lt_scale)).astype(int)
    edges = (1000 * lt_scale, 2000 * lt_scale)
    out["meta"].update(lt_sizes=lt_sizes.tolist(), lt_edges=list(edges), lt_scale=lt_scale)
    for s in range(lt_seeds):
        r = np.random.default_rng(100 + s)
        sizes = lt_sizes[r.permutation(len(classes))]
        pick = np.concatenate([r.choice(fit[ytr[fit] == c], sizes[c], replace=False) for c in range(len(classes))])
        pick.sort()
        probs = {}
        for lam, tag in ((0.0, "ce"), (0.5, "hier")):
            prob, _ = _train(tr.vectors[pick], ytr[pick], classes, lam, f"fmnist-lt{s}-{tag}", epochs, lr, seed, progress)
            pval = _renorm(prob(tr.vectors[val]))
            cfg = select_hi_top1(pval, ytr[val], W)
            ptest = _renorm(prob(te.vectors))
            probs[tag] = (ptest, cfg)
        configs = {"flat": probs["ce"][0], "hier_loss": probs["hier"][0],
                   "hier_inf": hierarchical_inference(probs["ce"][0], W, *probs["ce"][1]),
                   "hier_loss_inf": hierarchical_inference(probs["hier"][0], W, *probs["hier"][1])}
        for key, sc in configs.items():
            g = per_group_accuracy(sc.argmax(1), yte, sizes, edges=edges)
            out["table_vii"].append({"lt_seed": s, "config": key, "sizes": sizes.tolist(),
                                     "hier_inf": {"ce": list(probs["ce"][1]), "hier": list(probs["hier"][1])},
                                     "overall": float((sc.argmax(1) == yte).mean()),
                                     **{k: g[k] for k in ("low", "medium", "high")}})
        log(f"  long-tail seed {s}: sizes {dict(zip(names, sizes.tolist()))}; " + ", ".join(
            f"{k} {100 * np.mean([x['low']['accuracy'] for x in out['table_vii'] if x['lt_seed'] == s and x['config'] == k]):.1f}"
            f"/{100 * np.mean([x['medium']['accuracy'] for x in out['table_vii'] if x['lt_seed'] == s and x['config'] == k]):.1f}"
            f"/{100 * np.mean([x['high']['accuracy'] for x in out['table_vii'] if x['lt_seed'] == s and x['config'] == k]):.1f}"
            for k in configs))
    # Table V: retrieval through the router's modes
    t1 = time.perf_counter()
    out["table_v"], out["table_v_differences"] = _retrieval(te.vectors, yte, classes, H, pt, hi_cfg, W, n_queries, seed, n_boot, log)
    out["meta"]["seconds"] = {"embed": round(t_embed, 1), "retrieval": round(time.perf_counter() - t1, 1),
                              "total": round(time.perf_counter() - t0, 1)}
    return out


def _retrieval(X, y, classes, H, pt, hi_cfg, W, n_queries, seed, n_boot, log, list_len: int = 100) -> list[dict]:
    import shutil
    import tempfile

    from plugin.router import Router
    from plugin.semantics.inference import hierarchical_inference
    from plugin.semantics.metrics import (bootstrap_ci, hierarchical_ndcg, hierarchy_gain, mahp_at_k,
                                          mean_average_precision)
    from plugin.store import open_store
    from plugin.taxonomy import synset_payload

    work = Path(tempfile.mkdtemp(prefix="hsearch-eval-hier-"))
    try:
        store = open_store(work / "fmnist-test", dim=X.shape[1])
        try:
            store.upsert(np.arange(len(X)), X, [synset_payload(classes[c]) | {"leaf": -1} for c in y])
            router = Router.build(store, k=8, l=3, seed=seed)
            q = np.sort(np.random.default_rng(seed + 2).choice(len(X), min(n_queries, len(X)), replace=False))
            counts = np.bincount(y, minlength=len(classes))
            db_counts = np.tile(counts, (len(q), 1))
            db_counts[np.arange(len(q)), y[q]] -= 1  # the query is not in its own database
            gain = hierarchy_gain(H)
            qprobs = {"ce": pt["ce"][q], "hier+inf": hierarchical_inference(pt["hier"][q], W, *hi_cfg["hier"])}
            runs = [("exact", None, {}), ("weighted", "ce", {"base": "exact", "candidates": 1000}),
                    ("weighted", "hier+inf", {"base": "exact", "candidates": 1000}),
                    ("category_first", "ce", {}), ("category_first", "hier+inf", {})]
            recs, per_query = [], {}
            for mode, src, params in runs:
                t = time.perf_counter()
                kw = {} if src is None else {"probs": qprobs[src], "classes": classes}
                res = router.search_batch(X[q], k=list_len + 1, mode=mode, **kw, **params)
                ms = (time.perf_counter() - t) / len(q) * 1e3
                got = np.full((len(q), list_len), -1)
                for i, hits in enumerate(res):
                    ids = [h.id for h in hits if h.id != q[i]][:list_len]
                    got[i, :len(ids)] = y[np.asarray(ids, int)]
                rel = got == y[q][:, None]
                m_ap = mean_average_precision(rel, n_relevant=np.minimum(list_len, db_counts[np.arange(len(q)), y[q]]),
                                              per_query=True)
                ndcg = hierarchical_ndcg(y[q], got, gain, k=list_len, db_class_counts=db_counts, per_query=True)
                mahp = mahp_at_k(y[q], got, gain, db_counts, k=list_len, per_query=True)
                rec = {"mode": mode, "query_class": src or "-", "params": params, "list_len": list_len,
                       "n_queries": int(len(q)), "ms_per_query": round(ms, 3),
                       "query_class_top1": None if src is None else float((qprobs[src].argmax(1) == y[q]).mean()),
                       "map": _ci(bootstrap_ci(m_ap, n_boot=n_boot, seed=seed)),
                       "ndcg": _ci(bootstrap_ci(ndcg, n_boot=n_boot, seed=seed)),
                       "mahp": _ci(bootstrap_ci(mahp, n_boot=n_boot, seed=seed))}
                recs.append(rec)
                per_query[(mode, rec["query_class"])] = {"map": m_ap, "ndcg": ndcg, "mahp": mahp}
                log(f"  retrieval {mode:14s} class from {rec['query_class']:8s} mAP@{list_len} {rec['map']['mean']:.4f}  "
                    f"nDCG@{list_len} {rec['ndcg']['mean']:.4f}  mAHP@{list_len} {rec['mahp']['mean']:.4f}  {ms:.1f} ms/query")
            diffs = []
            for src in ("ce", "hier+inf"):
                for a, b in ((("weighted", src), ("exact", "-")), (("category_first", src), ("exact", "-")),
                             (("category_first", src), ("weighted", src))):
                    diffs.append({"a": list(a), "b": list(b), "diff": {
                        m: _ci(bootstrap_ci(per_query[a][m] - per_query[b][m], n_boot=n_boot, seed=seed))
                        for m in ("map", "ndcg", "mahp")}})
            return recs, diffs
        finally:
            store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def markdown_fashion(res: dict) -> str:
    m = res["meta"]
    hp = res["hyperparameters"]
    out = [f"## Fashion-MNIST: heads on frozen {m['encoder']} vectors", "",
           f"{m['n_train']} training vectors ({m['n_fit']} to fit the heads, a seeded {m['n_val']} for validation), "
           f"{m['n_test']} test images. Heads: linear, {m['epochs']} epochs, Adam lr {m['lr']}, seed {m['seed']}; "
           f"hierarchical loss lam={m['lam']}, m={m['margin']}, w_ij scale {m['weight_scale']} (the paper's values). "
           "Hierarchical inference (alpha, T) chosen by validation top-1; the decision rule by the photo protocol's "
           "criterion on the validation split. Brackets: 95% percentile bootstrap over test images "
           f"({m['n_boot']} resamples). Chosen: CE head alpha={hp['ce']['hier_inf']['alpha']:g}, "
           f"T={hp['ce']['hier_inf']['T']}; hierarchical head alpha={hp['hier']['hier_inf']['alpha']:g}, "
           f"T={hp['hier']['hier_inf']['T']}; decision (CE head) "
           + ", ".join(f"{k}={v:g}" for k, v in hp['ce']['decision'].items()) + ".", "",
           "### Table VI (ablation): ours beside the paper's", "",
           "| configuration | top-1 % (ours) | paper top-1 % | top-5 % | mistake severity (mistakes) | hd@1 | hd@5 |",
           "|---|---|---|---|---|---|---|"]
    for r in res["table_vi"]:
        s = r["metrics"]
        paper = PAPER_VI.get(r["config"], "")
        out.append(f"| {r['label']} | {_fmt(s['top1'], True, 2)} | {paper} | {_fmt(s['top5'], True, 2)} | "
                   f"{_fmt(s['severity'], False, 3)} "
                   f"({s['n_mistakes']}) | {_fmt(s['hd1'], False, 3)} | {_fmt(s['hd5'], False, 3)} |")
    out += ["", "Paired differences on the test set (a - b, 95% paired bootstrap CI):", "",
            "| a - b | top-1 (points) | top-5 (points) | severity | hd@1 | hd@5 |", "|---|---|---|---|---|---|"]
    for d in res["differences"]:
        x = d["diff"]
        out.append(f"| {d['a']} - {d['b']} | {_fmt(x['top1'], True, 2)} | {_fmt(x['top5'], True, 2)} | "
                   f"{_fmt(x['severity'], False, 3)} | "
                   f"{_fmt(x['hd1'], False, 3)} | {_fmt(x['hd5'], False, 3)} |")
    out += ["", f"### Table VII: top-1 % by training-sample group (long-tailed training subsamples)", "",
            f"Class sizes {', '.join(map(str, m['lt_sizes']))} dealt to the 10 classes by {m['lt_seeds']} seeded "
            "permutations (each its own heads and validation choice of alpha, T); groups: low < "
            f"{m['lt_edges'][0]:g}, medium {m['lt_edges'][0]:g}-{m['lt_edges'][1]:g}, high > {m['lt_edges'][1]:g} "
            "training images" + (" (the paper's edges)" if m["lt_scale"] == 1 else
                                 f" (the paper's edges scaled by {m['lt_scale']:.3f}, as the sizes)")
            + ". Mean over the seeds (min-max in brackets). (On ImageNet-1k itself every class has 732-1300 "
            "training images, so the paper's medium and high groups cannot both hold classes as described.)", "",
            "| configuration | low (ours) | medium (ours) | high (ours) | all (ours) | paper low / medium / high |",
            "|---|---|---|---|---|---|"]
    for key in ("flat", "hier_loss", "hier_inf", "hier_loss_inf"):
        rs = [r for r in res["table_vii"] if r["config"] == key]
        cells = []
        for g in ("low", "medium", "high"):
            v = [100 * r[g]["accuracy"] for r in rs]
            cells.append(f"{np.mean(v):.1f} [{min(v):.1f}-{max(v):.1f}]")
        v = [100 * r["overall"] for r in rs]
        cells.append(f"{np.mean(v):.1f} [{min(v):.1f}-{max(v):.1f}]")
        out.append(f"| {key} | {' | '.join(cells)} | {' / '.join(map(str, PAPER_VII[key]))} |")
    out += ["", f"### Table V: retrieval on the {m['n_test']} test images ({m['n_queries']} of them as queries, each "
            "left out of its own results)", "",
            "Through `Router.search` on an embedded qdrant-edge collection (router k=8, l=3). `weighted`: the 1000 "
            "exact nearest neighbours re-ranked by the hierarchy-stretched distance (beta=1); `category_first`: the 3 "
            "classes nearest the query's predicted class in WordNet, searched one by one and merged (beta=1). "
            "mAP@100: binary relevance (same class), normalised by min(100, relevant images in the database); "
            "nDCG@100 and mAHP@100 (Barz & Denzler, trapezoid rule) with gain 1 - LCA height / max height, ideal "
            "ranking from the database's class counts.", "",
            "| mode | query class from | query class top-1 % | mAP@100 % | hier. nDCG@100 | mAHP@100 | ms/query | paper mAP % / nDCG |",
            "|---|---|---|---|---|---|---|---|"]
    for r in res["table_v"]:
        paper = PAPER_V.get(r["mode"])
        acc = "-" if r["query_class_top1"] is None else f"{100 * r['query_class_top1']:.1f}"
        out.append(f"| {r['mode']} | {r['query_class']} | {acc} | {_fmt(r['map'], True)} | "
                   f"{_fmt(r['ndcg'], False, 3)} | {_fmt(r['mahp'], False, 3)} | {r['ms_per_query']:.1f} | "
                   f"{'' if paper is None else f'{paper[0]} / {paper[1]}'} |")
    out += ["", "Paired differences between modes (a - b over the same queries, 95% paired bootstrap CI):", "",
            "| a - b | mAP@100 (points) | hier. nDCG@100 | mAHP@100 |", "|---|---|---|---|"]
    for d in res.get("table_v_differences", []):
        x = d["diff"]
        out.append(f"| {d['a'][0]} ({d['a'][1]}) - {d['b'][0]} ({d['b'][1]}) | {_fmt(x['map'], True)} | "
                   f"{_fmt(x['ndcg'], False, 3)} | {_fmt(x['mahp'], False, 3)} |")
    out += ["", *_verdict_fashion(res), ""]
    return "\n".join(out) + "\n"


def _verdict_fashion(res: dict) -> list[str]:
    d = {(x["a"], x["b"]): x["diff"] for x in res["differences"]}
    lines = ["### Where the paper's claims do and do not appear here", ""]
    for key, claim in (("hier_loss", "+2.2"), ("hier_inf", "+1.6"), ("hier_loss_inf", "+3.1")):
        x = d[(key, "flat")]["top1"]
        lines.append(f"* {key} vs flat top-1: {100 * x['mean']:+.2f} points [{100 * x['lo']:+.2f}, {100 * x['hi']:+.2f}] "
                     f"(paper: {claim}) - {_judge(d[(key, 'flat')], 'top1', 'higher')}.")
    lt = res["table_vii"]
    for key in ("hier_loss", "hier_inf", "hier_loss_inf"):
        parts = []
        for gi, g in enumerate(("low", "medium", "high")):
            gain = [100 * (r[g]["accuracy"] - f[g]["accuracy"]) for r in lt if r["config"] == key
                    for f in lt if f["config"] == "flat" and f["lt_seed"] == r["lt_seed"]]
            parts.append(f"{g} {np.mean(gain):+.1f} (seeds {', '.join(f'{v:+.1f}' for v in gain)}; paper "
                         f"{PAPER_VII[key][gi] - PAPER_VII['flat'][gi]:+.1f})")
        lines.append(f"* long tail, {key} vs flat, points by group: " + "; ".join(parts) + ".")
    for td in res.get("table_v_differences", []):
        if td["a"][1] != "hier+inf":
            continue
        x = td["diff"]
        lines.append(f"* retrieval, {td['a'][0]} - {td['b'][0]} (query class from the hierarchical head + inference): "
                     f"mAP {100 * x['map']['mean']:+.1f} points [{100 * x['map']['lo']:+.1f}, {100 * x['map']['hi']:+.1f}], "
                     f"nDCG {x['ndcg']['mean']:+.3f} [{x['ndcg']['lo']:+.3f}, {x['ndcg']['hi']:+.3f}]"
                     + (" (paper: category-first over weighted +1.5 mAP points, +0.019 nDCG)."
                        if td["b"][0] == "weighted" else "."))
    dc = d[("decision", "crm")]
    lines.append(f"* decision rule vs CRM (CE head): hd@5 {dc['hd5']['mean']:+.3f} [{dc['hd5']['lo']:+.3f}, "
                 f"{dc['hd5']['hi']:+.3f}], severity {dc['severity']['mean']:+.3f} [{dc['severity']['lo']:+.3f}, "
                 f"{dc['severity']['hi']:+.3f}], top-1 vs flat {100 * d[('decision', 'flat')]['top1']['mean']:+.2f} "
                 f"points, top-5 vs flat {100 * d[('decision', 'flat')]['top5']['mean']:+.2f} points.")
    return lines


def plot_fashion(res: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    vi = res["table_vi"]
    xs = np.arange(len(vi))
    t1 = [100 * r["metrics"]["top1"]["mean"] for r in vi]
    err = [[100 * (r["metrics"]["top1"]["mean"] - r["metrics"]["top1"]["lo"]) for r in vi],
           [100 * (r["metrics"]["top1"]["hi"] - r["metrics"]["top1"]["mean"]) for r in vi]]
    ax.bar(xs, t1, yerr=err, color="C0", capsize=3)
    ax.set_xticks(xs, [r["config"] for r in vi], rotation=35, ha="right", fontsize=8)
    ax.set_ylim(min(t1) - 2, max(t1) + 1)
    ax.set_ylabel("test top-1 %")
    ax.set_title("Table VI: top-1 (95% CI)")
    ax = axes[1]
    groups = ("low", "medium", "high")
    for i, key in enumerate(("flat", "hier_loss", "hier_inf", "hier_loss_inf")):
        rs = [r for r in res["table_vii"] if r["config"] == key]
        ax.bar(np.arange(3) + 0.2 * i, [100 * np.mean([r[g]["accuracy"] for r in rs]) for g in groups], width=0.2,
               label=key)
    ax.set_xticks(np.arange(3) + 0.3, [f"{g}" for g in groups])
    ax.set_ylabel("test top-1 % (mean over long-tail seeds)")
    ax.set_title("Table VII: by training-sample group")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax = axes[2]
    tv = res["table_v"]
    for i, metric in enumerate(("map", "ndcg", "mahp")):
        ax.bar(np.arange(len(tv)) + 0.27 * i, [r[metric]["mean"] for r in tv], width=0.27,
               yerr=[[r[metric]["mean"] - r[metric]["lo"] for r in tv], [r[metric]["hi"] - r[metric]["mean"] for r in tv]],
               capsize=2, label={"map": "mAP@100", "ndcg": "hier. nDCG@100", "mahp": "mAHP@100"}[metric])
    ax.set_xticks(np.arange(len(tv)) + 0.27, [f"{r['mode']}\n({r['query_class']})" for r in tv], fontsize=7)
    ax.set_title("Table V: retrieval (95% CI)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- entry points -----------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    return markdown_images(res) if res["meta"]["dataset"] == "images" else markdown_fashion(res)


def _json_safe(o):
    if isinstance(o, dict):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating, float)):
        return None if not np.isfinite(o) else float(o)
    return o


def restore(raw: dict) -> dict:
    """Results as saved (JSON ``null`` for undefined figures) with those figures back as NaN."""
    def fix(o):
        if isinstance(o, dict):
            return {k: fix(v) for k, v in o.items()}
        if isinstance(o, list):
            return [fix(v) for v in o]
        return float("nan") if o is None else o

    # only metric containers hold nulls for undefined values; flat's and CRM's hyperparameters stay None
    for r in raw.get("records", []):
        r["metrics"] = fix(r["metrics"])
    for d in raw.get("differences", []):
        d["diff"] = fix(d["diff"])
    for r in raw.get("table_vi", []):
        r["metrics"] = fix(r["metrics"])
    raw["table_vii"] = fix(raw.get("table_vii", []))
    raw["table_v_differences"] = fix(raw.get("table_v_differences", []))
    raw["sweep"] = fix(raw.get("sweep", []))
    return raw


def read_results(path) -> dict:
    """The results a run saved (``--json``)."""
    return restore(json.loads(Path(path).read_text()))


def main(args) -> int:
    log_lines = []

    def log(msg):
        print(msg, flush=True)
        log_lines.append(msg)

    if args.dataset == "fashion-mnist":
        res = run_fashion(args.encoders.split(",")[0], train_limit=args.train_limit, n_queries=args.queries,
                          seed=args.seed, n_boot=args.boot, epochs=args.epochs, device=args.device,
                          progress=not args.quiet, log=log)
    else:
        from loaders.imagenet_sample import sample_dir

        images = args.images or sample_dir() or Path("..") / "shared" / "data" / "imagenet-sample"
        res = run_images(images, tuple(args.encoders.split(",")), folds=args.folds, seed=args.seed,
                         n_boot=args.boot, device=args.device, progress=not args.quiet, log=log)
        if res is None:
            return 0
    text = json.dumps(_json_safe(res), separators=(",", ":"))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    res = restore(json.loads(text))  # tables and plot from exactly what was saved
    md = markdown(res)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(md)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        (plot_fashion if args.dataset == "fashion-mnist" else plot_images)(res, args.plot)
    print(md)
    return 0


if __name__ == "__main__":  # python -m plugin.bench.hier md RECORDS.json OUT.md
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "md":
        raise SystemExit("usage: python -m plugin.bench.hier md RECORDS.json OUT.md")
    Path(sys.argv[3]).write_text(markdown(read_results(sys.argv[2])))
