"""``hsearch``: one entry point for ingesting, building, searching and inspecting collections.

Every failure the plugin anticipates (:class:`HSearchError`, missing files) prints one line to stderr
and exits with status 2; nothing already stored is touched by a failed command.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from plugin import config
from plugin.errors import HSearchError

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _store_location(args) -> str:
    return args.store or os.environ.get("QDRANT_URL") or str(config.stores_dir())


def open_collection(args, dim: int | None = None):
    from plugin.store import open_store

    return open_store(_store_location(args), dim=dim, collection=args.collection)


def _add_common(p):
    p.add_argument("--collection", default="images", help="collection name (default: images)")
    p.add_argument("--store", default=None,
                   help="directory of embedded collections, or a Qdrant URL (default: $QDRANT_URL or "
                        "$HSEARCH_HOME/stores)")


def _add_encoder(p):
    p.add_argument("--encoder", default=None, help="encoder name (default: the collection's, else mobilenet_v2)")
    p.add_argument("--weights", default="default", help="weights tag or local file (default: the offline ones)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")


def _encoder(args, store=None):
    from plugin.encoders import create_encoder

    name = args.encoder or (store.get_meta().get("encoder") if store is not None else None) or "mobilenet_v2"
    weights = args.weights
    if weights == "default" and store is not None and store.get_meta().get("encoder") == name:
        weights = store.get_meta().get("weights", "default")
    head = getattr(args, "head", None)
    if head and not os.path.isfile(head) and store is not None:  # a name: a head `hsearch train` saved
        named = os.path.join(store.state_dir(), "heads", head, "head.pt")
        if not os.path.isfile(named):
            raise HSearchError(f"no head file {head} and no head named '{head}' in {store.state_dir()}/heads "
                               "(train one with `hsearch train`)")
        head = named
    return create_encoder(name, pretrained=None if weights == "none" else weights, device=args.device,
                          **({"head": head} if head else {}))


def cmd_ingest(args) -> int:
    from itertools import chain

    from loaders import open_loader
    from plugin.ingest import ingest

    enc = _encoder(args)
    items = iter(open_loader(args.source, limit=args.limit, follow_symlinks=args.follow_symlinks))
    # loaders are lazy: take the first item now, so a missing folder or dataset fails before a collection
    # is created for it
    first = next(items, None)
    items = chain([first] if first is not None else [], items)
    total = args.limit
    if args.source.startswith("fashion-mnist") and total is None:
        total = 60000 if args.source.endswith("train") else 10000
    store = open_collection(args, dim=enc.dim)
    router = _open_router_if_built(store)
    with store:
        stats = ingest(items, enc, store, router=router, batch_size=args.batch_size, use_cache=not args.no_cache,
                       progress=not args.quiet, total=total)
        if router is not None:
            router.save()
    stats.pop("bad_items")  # each was reported once as it was skipped (above the progress bar)
    print(json.dumps(stats))
    return 0


def _open_router_if_built(store):
    from plugin.router import Router

    return Router.open(store) if Router.exists(store) else None


def _query_vector(args, store, enc):
    from loaders import open_image_file, open_loader

    if args.id is not None:
        recs = store.retrieve([args.id], with_vectors=True)
        if not recs:
            raise HSearchError(f"no point with id {args.id} in collection '{store.name}'")
        p = recs[0].payload
        return recs[0].vector, p.get("label"), p.get("source"), None, p.get("wnid")
    if args.image:
        img = open_image_file(args.image)
        return enc.encode([img])[0], None, args.image, img, None
    spec, _, index = args.sample.rpartition(":")
    if not spec or not index.isdigit():
        raise HSearchError("--sample takes LOADER:INDEX, e.g. fashion-mnist:train:17")
    items = list(open_loader(spec, limit=int(index) + 1))
    if len(items) <= int(index):
        raise HSearchError(f"{spec} has only {len(items)} items")
    item = items[int(index)]
    label = None
    if item.wnid:
        from plugin.taxonomy import synset_payload

        label = synset_payload(item.wnid)["label"]
    img = item.load()
    return enc.encode([img])[0], label, item.source, img, None


#: modes that reason about the query's class (plugin.semantics.modes)
CLASS_MODES = ("weighted", "category_first")


def _query_class_params(args, store, enc, image, stored_wnid) -> dict:
    """How a class-aware mode learns the query's class: --query-class, a stored point's own label, or the
    classifier's probabilities on the query image (the collection's encoder, or --head)."""
    if args.query_class:
        return {"query_class": args.query_class}
    if image is None:
        if not stored_wnid:
            raise HSearchError(f"point {args.id} has no label: give --query-class WNID for mode '{args.mode}'")
        return {"query_class": stored_wnid}
    enc = enc or _encoder(args, store)
    probs = enc.predict_proba([image])
    return {"probs": probs[0], "classes": enc.classes}


def cmd_search(args) -> int:
    store = open_collection(args)
    with store:
        enc = _encoder(args, store) if args.id is None else None
        vec, qlabel, qsource, image, stored_wnid = _query_vector(args, store, enc)
        router = _open_router_if_built(store)
        params = {}
        if args.mode in CLASS_MODES:
            params.update(_query_class_params(args, store, enc, image, stored_wnid))
        if args.s1 is not None:
            params["s1"] = args.s1
        if args.s2 is not None:
            params["s2"] = args.s2
        if args.recall is not None:
            params["recall"] = args.recall
        if args.nprobe is not None:
            params["nprobe"] = args.nprobe
        if router is not None:
            hits = router.search(vec, k=args.k, mode=args.mode, within=args.within, spill=args.spill, **params)
            stats = hits.stats
        else:
            from plugin.router.router import restriction

            if args.mode not in ("exact", "auto") or args.spill:
                raise HSearchError(f"mode '{args.mode}'{' with --spill' if args.spill else ''} needs a router: "
                                   "run `hsearch build` first")
            hits = store.search(vec, k=args.k, exact=True, filter=restriction(args.within))
            stats = {"mode": "exact (no router built)", "within": args.within}
    print(f"query: {qsource}" + (f"  [{qlabel}]" if qlabel else ""))
    print(f"{'rank':>4}  {'score':>7}  {'id':<19}  {'label':<18} {'wnid':<10} source")
    for r, h in enumerate(hits, 1):
        p = h.payload
        more = len(p.get("sources") or ()) - 1  # the same image also came from these
        print(f"{r:>4}  {h.score:7.4f}  {h.id:<19}  {str(p.get('label')):<18} {str(p.get('wnid')):<10} "
              f"{p.get('source')}" + (f"  (+{more} more)" if more > 0 else ""))
    shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in stats.items() if k != "leaves"}
    print("stats: " + json.dumps(shown))
    return 0


def cmd_build(args) -> int:
    from plugin.router import Router

    store = open_collection(args)
    with store:
        if args.if_missing and Router.exists(store):
            print(json.dumps({"router": "exists", **Router.open(store).describe()}))
            return 0
        router = Router.build(store, k="auto" if args.shape == "auto" else args.branching, l=args.levels,
                              max_leaf_size=args.max_leaf_size, min_leaf_size=args.min_leaf_size, seed=args.seed,
                              shape_recall=args.shape_recall, spill=args.spill,
                              **({} if args.refine is None else {"refine": args.refine}))
        shape = router.build_stats.pop("shape", None)
        print(json.dumps({**router.describe(), **{k: round(v, 2) for k, v in router.build_stats.items()},
                          **({"shape": router.meta["shape"]} if shape else {})}))
    return 0


def cmd_calibrate(args) -> int:
    """Calibrate search mode ``target`` on points sampled from the collection (plugin.router.target)."""
    from plugin.router import Router

    store = open_collection(args)
    with store:
        if not Router.exists(store):
            raise HSearchError(f"collection '{store.name}' has no router: run `hsearch build` first")
        cal = Router.open(store).calibrate(n_queries=args.queries, s2_wide=args.s2_wide,
                                           max_candidates=args.max_candidates, seed=args.seed)
    print(json.dumps(cal.stats))
    return 0


def cmd_train(args) -> int:
    """Train a classification head on the collection's stored vectors and labels (no image is re-read)."""
    import numpy as np

    from plugin.semantics.trainer import train_head

    if args.finetune:
        return _finetune(args)
    store = open_collection(args)
    with store:
        ids, vecs, pls = store.all_vectors(payload_fields=["wnid"])
        meta = store.get_meta()
        out = args.out or os.path.join(store.state_dir(), "heads", args.name or ("hier" if args.lam else "ce"))
    labelled = [i for i, p in enumerate(pls) if p.get("wnid")]
    if len(labelled) < 2:
        raise HSearchError(f"collection '{args.collection}' has {len(labelled)} labelled points: need labels to train")
    wnids = [pls[i]["wnid"] for i in labelled]
    classes = sorted(set(wnids))
    if len(classes) < 2:
        raise HSearchError("all labelled points have the same class: nothing to learn")
    y = np.asarray([classes.index(w) for w in wnids])
    _, hist = train_head(vecs[labelled], y, classes, encoder=meta.get("encoder", "unknown"), out_dir=out,
                         lam=args.lam, margin=args.margin, weight_scale=args.weight_scale, hidden=args.hidden,
                         epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         device=args.device, progress=not args.quiet)
    print(json.dumps({"head": os.path.join(out, "head.pt"), "classes": len(classes), "points": len(labelled),
                      "epochs": hist["epoch"][-1], "loss": hist["loss"][-1], "train_acc": hist["train_acc"][-1],
                      "plot": os.path.join(out, "loss.png")}))
    return 0


def _finetune(args) -> int:
    """Full ResNet-50 fine-tuning with the hierarchical loss on a folder of labelled images (needs a GPU
    for real runs; --max-steps makes a CPU smoke run)."""
    import numpy as np

    from loaders import folder_items
    from plugin.semantics.trainer import finetune_resnet50

    if args.finetune != "resnet50":
        raise HSearchError(f"--finetune supports resnet50, not {args.finetune}")
    if not args.images:
        raise HSearchError("--finetune needs --images DIR (a folder of <wnid>_*.jpg or <wnid>/*.jpg images)")
    items = [it for it in folder_items(args.images) if it.wnid]
    if not items:
        raise HSearchError(f"no labelled images in {args.images}")
    classes = sorted({it.wnid for it in items})
    y = np.asarray([classes.index(it.wnid) for it in items])
    out = args.out or os.path.join(str(config.home()), "heads", "resnet50-hier")
    path, hist = finetune_resnet50([it.load() for it in items], y, classes, out, lam=args.lam, margin=args.margin,
                                   weight_scale=args.weight_scale, epochs=args.epochs, lr=args.lr,
                                   batch_size=args.batch_size, seed=args.seed, device=args.device,
                                   pretrained=None if args.weights == "none" else args.weights,
                                   progress=not args.quiet, max_steps=args.max_steps)
    print(json.dumps({"checkpoint": path, "classes": len(classes), "images": len(items), "steps": len(hist["loss"]),
                      "loss": hist["loss"][-1], "use": f"create_encoder('resnet50', pretrained='{path}')"}))
    return 0


def cmd_bench_hkm(args) -> int:
    from plugin.bench.hkm import main as bench_main

    return bench_main(args)


def cmd_bench_scaling(args) -> int:
    from plugin.bench.scaling import main as bench_main

    return bench_main(args)


def cmd_eval_hier(args) -> int:
    from plugin.bench.hier import main as eval_main

    return eval_main(args)


def cmd_signatures_build(args) -> int:
    from plugin.signatures.engine import SemanticsEngine

    store = open_collection(args)
    with store:
        if args.sync and SemanticsEngine.exists(store):
            eng = SemanticsEngine.open(store)
            stats = eng.sync(progress=not args.quiet)
        else:
            eng = SemanticsEngine.build(store, progress=not args.quiet, method=args.method, cap=args.cap,
                                        max_dominant=args.max_dominant, seed=args.seed, signature=args.signature)
            stats = {}
        print(json.dumps({**eng.describe_state(), **stats}))
    return 0


def cmd_describe(args) -> int:
    from plugin.signatures.engine import SemanticsEngine

    store = open_collection(args)
    with store:
        eng = SemanticsEngine.open(store)
        if not eng.check()["consistent"]:
            print(f"note: collection '{store.name}' changed since its signatures were built: run "
                  f"`hsearch signatures build --sync --collection {store.name}`", file=sys.stderr)
        params = {"fraction": args.fraction, "n_specific": args.n_specific}
        if args.image_path:
            args.image = args.image_path
        if sum(x is not None for x in (args.image, args.id, args.sample)) != 1:
            raise HSearchError("describe takes one query: an image file, --id or --sample")
        q = _query_vector(args, store, None if args.id is not None else eng.encoder)
        vec, source = q[0], q[2]
        out = eng.describe(vec, k=args.k, retrieve=args.k > 0, **params)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    s = out["searched"]
    print(f"query: {source}")
    for kind in ("general", "specific"):
        print(f"{kind} semantics:")
        for e in out[kind]:
            print(f"  {e['rank']}. {e['label']:<22} {e['wnid']}  score {e['score']:.4f}  "
                  f"{' > '.join(e['path'][-4:])}")
    print(f"searched: {s['selected']} of {s['nodes']} synsets selected, {s['survivors']} after pruning; "
          f"retrieval over {s['images']} images ({100 * s['share_images']:.1f}%)")
    for r, h in enumerate(out.get("hits", []), 1):
        print(f"{r:>4}  {h['score']:7.4f}  {str(h['label']):<18} {str(h['wnid']):<10} {h['source']}")
    return 0


def cmd_eval_semantics(args) -> int:
    from plugin.bench.semantics import main as eval_main

    return eval_main(args)


def cmd_info(args) -> int:
    store = open_collection(args)
    with store:
        info = store.info()
        # ids are 63-bit content hashes: show a few, for `search --id` (search prints one per hit too)
        first = next(store.scroll(batch_size=3, with_vectors=False, payload_fields=["source"]), [])
        info["example_ids"] = {r.id: r.payload.get("source") for r in first[:3]}
        router = _open_router_if_built(store)
        if router is not None:
            info["router"] = router.describe()
            if args.plot_tree:
                from plugin.router.plot import plot_tree

                plot_tree(router, args.plot_tree)
                info["router"]["plot"] = args.plot_tree
        elif args.plot_tree:
            raise HSearchError("no router to plot: run `hsearch build` first")
    print(json.dumps(info, indent=1, default=str))
    return 0


def cmd_demo(args) -> int:
    from demo.app import serve

    serve(_store_location(args), args.collection, host=args.host, port=args.port, image_roots=args.image_root)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hsearch", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="encode images and add them to a collection (idempotent)")
    p.add_argument("source", help="fashion-mnist[:train|:test], imagenet-sample, or an image folder")
    _add_common(p)
    _add_encoder(p)
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-cache", action="store_true", help="do not use the embedding cache")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="also read symlinks that point outside the folder (skipped by default)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("search", help="nearest images to an image, a stored point or a dataset sample")
    _add_common(p)
    _add_encoder(p)
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", help="path of a query image")
    q.add_argument("--id", type=int, help="id of a stored point")
    q.add_argument("--sample", help="LOADER:INDEX, e.g. fashion-mnist:train:17")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--mode", default="auto", help="exact | intensive | relaxed | auto | probe | target | weighted | "
                   "category_first | semantic "
                   "(all but exact need `build`)")
    p.add_argument("--s1", type=float, default=None, help="relaxed search: absolute distance threshold (default: off; its scale depends on the metric)")
    p.add_argument("--s2", type=float, default=None, help="relaxed / probe search: threshold relative to the best node")
    p.add_argument("--nprobe", type=int, default=None, help="probe search: leaves scored (the nearest reached)")
    p.add_argument("--recall", type=float, default=None,
                   help="target search: mean recall@10 target (needs `hsearch calibrate`)")
    p.add_argument("--query-class", default=None, metavar="WNID",
                   help="weighted / category_first: the query's class (default: the classifier's prediction)")
    p.add_argument("--head", default=None, help="head file, or name (hier, ce) of one `hsearch train` saved, "
                   "giving the query's class probabilities over the collection's classes")
    p.add_argument("--within", action="append", default=None, metavar="WNID",
                   help="only images under this WordNet synset, e.g. n03380867 (footwear); repeat for several")
    p.add_argument("--spill", action="store_true",
                   help="score the routed leaves' spilled points too (a router built with --spill; high recall)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("build", help="build the hierarchical k-means router over a collection")
    _add_common(p)
    p.add_argument("-k", "--branching", type=int, default=3, help="children per node (paper: 3)")
    p.add_argument("-l", "--levels", type=int, default=4, help="tree height incl. the root (paper: 4)")
    p.add_argument("--max-leaf-size", type=int, default=None, help="split leaves larger than this further")
    p.add_argument("--min-leaf-size", type=int, default=None, help="fold clusters smaller than this into a sibling")
    p.add_argument("--shape", choices=["auto"], default=None,
                   help="auto: choose k, l and max leaf size from a cost model measured on this machine "
                        "(ignores -k/-l; prints the relaxed s2 that reaches --shape-recall)")
    p.add_argument("--shape-recall", type=float, default=0.95, help="recall@10 target of --shape auto")
    p.add_argument("--refine", type=int, default=None, help="flat Lloyd iterations over the leaves after the "
                   "top-down build (default 4, plugin.router.router.REFINE_ITERS; 0: the paper's tree as built)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spill", action="store_true", help="also file every point under a second leaf (SOAR), "
                   "for `search --spill` (plugin/router/spill.py)")
    p.add_argument("--if-missing", action="store_true", help="do nothing if a router is already built")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("calibrate", help="calibrate search mode target (a recall@10 target per query) after `build`")
    _add_common(p)
    p.add_argument("--queries", type=int, default=2000, help="collection points sampled as calibration queries")
    p.add_argument("--s2-wide", type=float, default=0.07,
                   help="band on internal nodes of the probe descent giving the candidate leaves")
    p.add_argument("--max-candidates", type=int, default=128, help="candidate leaves per query (the nearest met)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("bench", help="benchmarks (write JSON records, print tables, save plots)")
    bsub = p.add_subparsers(dest="bench", required=True)
    b = bsub.add_parser("hkm", help="hkm-tree-retrieval Table 2 protocol vs exact, faiss IVF and HNSW")
    b.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist | imagenet-sample")
    b.add_argument("--encoder", default="mobilenet_v2")
    b.add_argument("--device", default="auto")
    b.add_argument("--json", default=None, help="write one JSON record per (mode, params) here")
    b.add_argument("--plot", default=None, help="save the recall@10-vs-ms plot here (PNG)")
    b.add_argument("--md", default=None, help="write the tables as markdown here")
    b.add_argument("--queries", type=int, default=1000, help="number of queries timed")
    b.add_argument("--limit", type=int, default=None, help="database size cap (default: all)")
    b.add_argument("--tree", default="16x3,8x4,32x3", help="comma list of KxL trees to build (the first is "
                   "also measured in the plain layout and with float scoring, and grown in the ingest and cost "
                   "curve sections)")
    b.add_argument("--curve", default=None, help="comma list of collection sizes for the cost curve (e.g. "
                   "10000,30000,60000,69000); the largest may exceed the database (Fashion-MNIST adds test images)")
    b.add_argument("--max-leaf", type=int, default=None, help="every tree's max_leaf_size (leaves above it are "
                   "split further, below level l); default: the paper's fixed-height tree")
    b.add_argument("--skip-incremental", action="store_true")
    b.add_argument("--skip-baselines", action="store_true")
    b.set_defaults(func=cmd_bench_hkm)
    b = bsub.add_parser("scaling", help="the router's real routes replayed on 4-64 shards: custom sharding "
                        "placements vs broadcast, and a latency / throughput model at 10M-1B points")
    b.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist | imagenet-sample")
    b.add_argument("--encoder", default="mobilenet_v2")
    b.add_argument("--device", default="auto")
    b.add_argument("--tree", default="16x3,8x4", help="comma list of KxL trees to build")
    b.add_argument("--recall", default="0.95,0.99", help="target recall@10 values (relaxed s2 found for each)")
    b.add_argument("--shards", default="4,8,16,32,64", help="comma list of shard counts")
    b.add_argument("--queries", type=int, default=10000, help="number of queries routed")
    b.add_argument("--limit", type=int, default=None, help="database size cap (default: all)")
    b.add_argument("--seed", type=int, default=0, help="tree build and random placement seed")
    b.add_argument("--json", default=None, help="write the JSON records here")
    b.add_argument("--md", default=None, help="write the tables as markdown here")
    b.add_argument("--plot", default=None, help="save the shards-touched / balance / model plot here (PNG)")
    b.set_defaults(func=cmd_bench_scaling)

    p = sub.add_parser("eval", help="evaluations against the papers (write JSON records, markdown tables, plots)")
    esub = p.add_subparsers(dest="eval", required=True)
    e = esub.add_parser("hier", help="hierarchical inference vs CRM on photos; hierarchical loss, inference and "
                        "retrieval on Fashion-MNIST (hierarchical-loss-inference-retrieval Tables III, V-VII)")
    e.add_argument("--dataset", default="images", choices=["images", "fashion-mnist"],
                   help="images: a folder of <wnid>_*.jpg photos (--images); fashion-mnist: heads on frozen vectors")
    e.add_argument("--images", default=None, metavar="DIR",
                   help="folder of <wnid>_*.jpg photos of ImageNet-1k classes (default: $HSEARCH_IMAGENET_SAMPLE, else "
                        "../shared/data/imagenet-sample; skipped with a message when absent)")
    e.add_argument("--encoders", default="mobilenet_v2,efficientnet_lite0",
                   help="comma list of ImageNet classifiers (fashion-mnist uses the first)")
    e.add_argument("--folds", type=int, default=5, help="cross-validation folds inside the photo folder")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--boot", type=int, default=1000, help="bootstrap resamples for the confidence intervals")
    e.add_argument("--train-limit", type=int, default=None,
                   help="fashion-mnist: a seeded subset of the 60k training images (default: all)")
    e.add_argument("--epochs", type=int, default=20, help="fashion-mnist: head training epochs")
    e.add_argument("--queries", type=int, default=1000, help="fashion-mnist: retrieval queries")
    e.add_argument("--device", default="cpu")
    e.add_argument("--json", default=None, help="write the records here")
    e.add_argument("--md", default=None, help="write the markdown tables here")
    e.add_argument("--plot", default=None, help="save the plot here (PNG)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_eval_hier)
    e = esub.add_parser("semantics", help="semantics engine: general / specific semantics, share searched, "
                        "precision and PR curves vs its predecessor and k-NN (semantics-image-retrieval Tables 4, 7)")
    e.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "imagenet"],
                   help="fashion-mnist: 60k train collection, test queries; imagenet: photos, leave-one-out")
    e.add_argument("--images", default=None, metavar="DIR",
                   help="imagenet: folder of <wnid>_*.jpg photos (default: ../shared/data/imagenet-sample; skipped "
                        "with a message when absent)")
    e.add_argument("--encoders", default="handcrafted,mobilenet_v2", help="comma list of registry encoders")
    e.add_argument("--queries", type=int, default=2000, help="fashion-mnist: seeded sample of the test images")
    e.add_argument("--train-limit", type=int, default=None, help="fashion-mnist: first N training images only")
    e.add_argument("--limit", type=int, default=None, help="imagenet: first N photos only")
    e.add_argument("--cap", type=int, default=512, help="images clustered per synset")
    e.add_argument("--sweep-caps", default="", help="fashion-mnist: comma list of caps to rebuild at (last encoder)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", default=None, help="write the records here")
    e.add_argument("--md", default=None, help="write the markdown tables here")
    e.add_argument("--plot", default=None, help="save the plot here (PNG, fashion-mnist)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_eval_semantics)

    p = sub.add_parser("train", help="train a classification head (hierarchical loss or flat CE) on a collection")
    _add_common(p)
    p.add_argument("--lam", type=float, default=0.5, help="weight of the hierarchical term (0 = flat cross-entropy)")
    p.add_argument("--margin", type=float, default=0.2, help="margin m for unrelated classes (eq. 4)")
    p.add_argument("--weight-scale", type=float, default=0.3, help="alpha of the weights w_ij (eq. 6)")
    p.add_argument("--hidden", type=int, default=0, help="hidden projection width (0: linear head)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda (the head is small: CPU takes seconds)")
    p.add_argument("--name", default=None, help="head name (default: hier, or ce when --lam 0); "
                   "`search --head NAME` uses it")
    p.add_argument("--out", default=None, help="output folder instead of <collection state>/heads/NAME; "
                   "re-running resumes")
    p.add_argument("--finetune", default=None, metavar="ARCH",
                   help="instead of a head: fine-tune all of ARCH (resnet50) on --images with the same loss (GPU)")
    p.add_argument("--images", default=None, help="--finetune: a folder of <wnid>_*.jpg or <wnid>/*.jpg images")
    p.add_argument("--max-steps", type=int, default=None, help="--finetune: stop after N steps (a CPU smoke run)")
    p.add_argument("--weights", default="default", help="--finetune: starting weights, a torchvision tag (needs "
                   "internet), a local .pth, or none (random: smoke runs)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("signatures", help="visual signatures of every synset (semantics engine)")
    ssub = p.add_subparsers(dest="signatures", required=True)
    s = ssub.add_parser("build", help="cluster each synset's images, keep dominant clusters, index them in VP-trees")
    _add_common(s)
    s.add_argument("--method", default="clusters", choices=["clusters", "mean"],
                   help="clusters: the paper (dominant clusters); mean: one mean signature per synset (predecessor)")
    s.add_argument("--signature", default="centroid", choices=["centroid", "representative"],
                   help="a dominant cluster's signature: its mean (default) or its representative image")
    s.add_argument("--cap", type=int, default=512, help="images clustered per synset (seeded sample; default 512)")
    s.add_argument("--max-dominant", type=int, default=16, help="signatures kept per synset at most")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sync", action="store_true",
                   help="update existing signatures: re-cluster only new synsets and ones that changed")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_signatures_build)

    p = sub.add_parser("describe", help="general and specific semantics of an image, and its nearest images there")
    p.add_argument("image_path", nargs="?", metavar="IMAGE", help="image file (or give --image, --id or --sample)")
    p.add_argument("--image", help="path of a query image")
    p.add_argument("--id", type=int, help="id of a stored point")
    p.add_argument("--sample", help="LOADER:INDEX, e.g. fashion-mnist:train:17")
    _add_common(p)
    p.add_argument("-k", type=int, default=10, help="images to retrieve (0: semantics only)")
    p.add_argument("--fraction", type=float, default=0.25, help="share of subtrees kept per level (paper: 1/4)")
    p.add_argument("--n-specific", type=int, default=3, help="specific semantics to report (paper: 3)")
    p.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("info", help="collection statistics")
    _add_common(p)
    p.add_argument("--plot-tree", default=None, metavar="PNG", help="draw the router's tree with leaf labels")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("demo", help="the web demo: search by image, browse the WordNet hierarchy, add images")
    p.add_argument("--collection", default="fashion-mnist",
                   help="collection to serve (default: fashion-mnist, the one `make run` builds; built if missing)")
    p.add_argument("--store", default=None,
                   help="directory of embedded collections, or a Qdrant URL (default: $QDRANT_URL or "
                        "$HSEARCH_HOME/stores)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 serves the network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--image-root", action="append", default=[], metavar="DIR",
                   help="folder the collection was ingested from, whose files the page may show (repeatable)")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (HSearchError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: everything ingested so far is stored; re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
