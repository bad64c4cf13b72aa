"""The semantics engine of semantics-image-retrieval-hierarchical-db: from an image (or its vector) to
general semantics, specific semantics and the images of those synsets.

    engine = SemanticsEngine.build(store)          # offline: signatures of every synset, saved
    engine = SemanticsEngine.open(store)           # later
    out = engine.describe(image_or_vector, k=10)   # general / specific semantics, share searched, hits
    engine.add(ids, vectors, payloads)             # new images join their synsets' signatures
    engine.sync()                                  # re-cluster only the synsets that changed a lot

**Build** reads every point's vector and ``synsets`` / ``wnid`` payload once, derives the searched
hierarchy (:mod:`plugin.signatures.hierarchy`), computes each synset's signatures
(:mod:`plugin.signatures.signatures`) and indexes them in VP-trees (:mod:`plugin.signatures.vptree`).
Unlabelled points (no ``synsets``) belong to no synset: they never shape a signature and, since
retrieval filters by synset, are never returned by it.

**Query** (:meth:`semantics`): branch selection, Extended OR-Inc pruning and CombSUM
(:mod:`plugin.signatures.selection`); **retrieval** is the store's exact search restricted by the
synset filter to the specific semantics (the paper's "linear matching" in the final search space).

**Incremental** (:meth:`add`, the paper's §6 "insertion ... updating the set of visual signatures and
the indexes of the node"): each new image joins, in every synset it belongs to, the dominant cluster
with the nearest signature; the cluster's count and member sum are updated, and so is its signature:
exactly for centroid signatures (the mean), and for representative signatures the new image becomes
the representative when it is nearer the new mean than the old one (eq. 3 over the members seen, as
the old members are not kept); the VP-trees are rebuilt (a few signatures per synset). A synset
the engine has never seen, or one that grew by more than ``regrow`` (25%) since it was clustered, is
flagged; :meth:`sync` re-reads the store and re-clusters exactly those, keeping every other synset's
signatures (a node whose members did not change is recognised by a fingerprint of its point ids).

**Concurrency**: a query reads one immutable snapshot (hierarchy + signature arrays + VP-trees),
swapped in whole by :meth:`add` / :meth:`sync`, like the router's ``FlatTree``.
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from plugin.errors import BadVectorError, HSearchError
from plugin.signatures import selection, state
from plugin.signatures.blocks import Blocks
from plugin.signatures.hierarchy import MAX_SHARE, MIN_TOP, Hierarchy
from plugin.signatures.signatures import CAP, MAX_DOMINANT, NodeSignatures, node_signatures
from plugin.signatures.vptree import build_forest, node_distances

BUILD_DEFAULTS = {"method": "clusters", "signature": "centroid", "cap": CAP, "seed": 0, "max_dominant": MAX_DOMINANT,
                  "min_top": MIN_TOP, "max_share": MAX_SHARE, "regrow": 0.25}
QUERY_DEFAULTS = {"fraction": selection.FRACTION, "n": None, "n_specific": selection.N_SPECIFIC,
                  "force_both": False}


def fingerprint(ids) -> str:
    return hashlib.sha1(np.sort(np.asarray(ids, np.int64)).tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Snapshot:
    hier: Hierarchy
    sigs: np.ndarray  # (S, dim) float32, block-normalised
    offsets: np.ndarray  # (n + 1,) signatures of node i: sigs[offsets[i]:offsets[i+1]]
    dc: np.ndarray
    forest: object


def check_params(params: dict, allowed: dict, what: str) -> dict:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise HSearchError(f"{what} does not take {', '.join(unknown)}; it takes "
                           f"{', '.join(f'{k}={v!r}' for k, v in allowed.items())}")
    out = {**allowed, **params}
    if "fraction" in out and not 0 < float(out["fraction"]) <= 1:
        raise HSearchError(f"fraction must be in (0, 1], got {out['fraction']}")
    if out.get("n") is not None and int(out["n"]) < 1:
        raise HSearchError(f"n must be >= 1, got {out['n']}")
    if "n_specific" in out and int(out["n_specific"]) < 1:
        raise HSearchError(f"n_specific must be >= 1, got {out['n_specific']}")
    if "cap" in out and int(out["cap"]) < 2:
        raise HSearchError(f"cap must be >= 2, got {out['cap']}")
    if "method" in out and out["method"] not in ("clusters", "mean"):
        raise HSearchError(f"method must be 'clusters' or 'mean', got {out['method']!r}")
    if "signature" in out and out["signature"] not in ("centroid", "representative"):
        raise HSearchError(f"signature must be 'centroid' or 'representative', got {out['signature']!r}")
    return out


class SemanticsEngine:
    def __init__(self, hier: Hierarchy, blocks: Blocks, nodes: list[NodeSignatures], fingerprints: list[str],
                 params: dict, meta: dict, store=None):
        if len(nodes) != len(hier):
            raise ValueError("one NodeSignatures per hierarchy node")
        self.blocks, self.params, self.meta, self.store = blocks, params, meta, store
        self.nodes, self.fingerprints = list(nodes), list(fingerprints)
        self.stale: set[str] = set()  # wnids that grew past `regrow` or are new since clustering
        self._lock = threading.Lock()  # writers only; queries read self.snap
        self._encoder = None
        self.snap = self._pack(hier)

    # ---- construction -------------------------------------------------------------------------------
    def _pack(self, hier: Hierarchy) -> Snapshot:
        sigs = np.concatenate([n.reps for n in self.nodes]).astype(np.float32) if self.nodes else \
            np.zeros((0, self.blocks.dim), np.float32)
        offsets = np.concatenate([[0], np.cumsum([len(n.reps) for n in self.nodes])]).astype(np.int64)
        dc = np.concatenate([n.dc for n in self.nodes]) if self.nodes else np.zeros(0)
        dc = np.where(np.isfinite(dc), dc, np.finfo(np.float64).max)
        return Snapshot(hier, np.ascontiguousarray(sigs), offsets, dc, build_forest(sigs, offsets, dc, self.blocks))

    @classmethod
    def from_arrays(cls, ids, vectors, synsets: list, wnids: list, blocks: Blocks, reuse: dict | None = None,
                    progress: bool = False, meta: dict | None = None, **params) -> "SemanticsEngine":
        """Build from in-memory points: ``synsets[i]`` is point i's synsets payload (its class and every
        hypernym; empty or None for unlabelled points), ``wnids[i]`` its class. ``reuse``: ``{wnid:
        (fingerprint, NodeSignatures)}`` of a previous build with the same parameters; a node whose member
        ids hash the same is not re-clustered."""
        p = check_params(params, BUILD_DEFAULTS, "signatures build")
        ids = np.asarray(ids, np.int64)
        t0 = time.perf_counter()
        counts, direct = Counter(), Counter(w for w in wnids if w)
        members: dict[str, list[int]] = {}
        for i, ss in enumerate(synsets):
            for s in ss or ():
                counts[s] += 1
                members.setdefault(s, []).append(i)
        if not counts:
            raise HSearchError("no point carries a WordNet label (synsets payload): nothing to describe with")
        hier = Hierarchy.from_counts(counts, direct, p["min_top"], p["max_share"])
        X = blocks.normalise(vectors)
        nodes, fps = [], []
        it = hier.wnids
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="signatures", unit="synset")
        reused = 0
        for w in it:
            m = np.asarray(members[w], np.int64)
            fp = fingerprint(ids[m])
            if reuse and w in reuse and reuse[w][0] == fp:
                nodes.append(reuse[w][1])
                reused += 1
            else:
                nodes.append(node_signatures(X[m], blocks, w, p["method"], p["cap"], p["seed"], p["max_dominant"],
                                             p["signature"]))
            fps.append(fp)
        meta = {**(meta or {}), "n_points": int(len(ids)), "n_labelled": int(sum(1 for s in synsets if s)),
                "build_s": round(time.perf_counter() - t0, 3), "reused_nodes": reused,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
        return cls(hier, blocks, nodes, fps, p, meta)

    @classmethod
    def build(cls, store, progress: bool = False, save: bool = True, reuse: dict | None = None,
              **params) -> "SemanticsEngine":
        """Signatures of every synset of ``store``'s collection (reads every vector once); saved in the
        collection's state directory unless ``save=False``."""
        t0 = time.perf_counter()
        ids, vecs, pls = store.all_vectors(payload_fields=["synsets", "wnid"])
        if len(ids) == 0:
            from plugin.errors import EmptyCollectionError

            raise EmptyCollectionError(f"collection '{store.name}' is empty: ingest images first")
        cmeta = store.get_meta()
        blocks = Blocks.for_encoder(cmeta.get("encoder"), store.dim)
        meta = {"collection": store.name, "encoder": cmeta.get("encoder"), "weights": cmeta.get("weights"),
                "dim": store.dim, "read_s": round(time.perf_counter() - t0, 3)}
        eng = cls.from_arrays(ids, vecs, [p.get("synsets") for p in pls], [p.get("wnid") for p in pls], blocks,
                              reuse=reuse, progress=progress, meta=meta, **params)
        eng.store = store
        if save:
            eng.save()
        return eng

    # ---- persistence --------------------------------------------------------------------------------
    def arrays(self) -> dict:
        h = self.snap.hier
        ns = self.nodes
        return {"hier_parent": h.parent, "hier_counts": h.counts, "hier_direct": h.direct,
                "sig_offsets": self.snap.offsets, "sig_reps": self.snap.sigs,
                "sig_dc": np.concatenate([n.dc for n in ns]), "sig_sizes": np.concatenate([n.sizes for n in ns]),
                "sig_sums": np.concatenate([n.sums for n in ns]),
                "node_stats": np.array([[n.n_images, n.n_sample, n.n_clusters, n.leftovers] for n in ns], np.int64),
                "node_seconds": np.array([n.seconds for n in ns])}

    def state_meta(self) -> dict:
        h = self.snap.hier
        return {**self.meta, "params": self.params, "blocks": self.blocks.spec(), "wnids": h.wnids,
                "above": h.above, "dropped": h.dropped, "total": h.total, "fingerprints": self.fingerprints,
                "stale": sorted(self.stale)}

    def save(self, path=None) -> None:
        if path is None:
            if self.store is None:
                raise HSearchError("this engine has no store: give save() a path")
            path = state.state_path(self.store)
        with self._lock:
            state.write(path, self.arrays(), self.state_meta())

    @classmethod
    def load(cls, path, store=None) -> "SemanticsEngine":
        a, meta = state.read(path)
        if store is not None and (meta.get("collection") != store.name or meta.get("dim") != store.dim):
            raise state.SignaturesError(
                f"signatures at {path} belong to collection '{meta.get('collection')}' ({meta.get('dim')}-d), "
                f"not '{store.name}' ({store.dim}-d): rebuild them with `hsearch signatures build`")
        hier = Hierarchy(meta["wnids"], a["hier_parent"], a["hier_counts"], a["hier_direct"], meta["total"],
                         meta["above"], meta["dropped"])
        blocks = Blocks.of(meta["blocks"], meta["dim"])
        off = a["sig_offsets"]
        nodes = []
        for i in range(len(hier)):
            s = slice(off[i], off[i + 1])
            st = a["node_stats"][i]
            nodes.append(NodeSignatures(a["sig_reps"][s], a["sig_dc"][s], a["sig_sizes"][s], a["sig_sums"][s],
                                        int(st[0]), int(st[1]), int(st[2]), int(st[3]), float(a["node_seconds"][i])))
        params, fps, stale = meta.pop("params"), meta.pop("fingerprints"), set(meta.pop("stale", []))
        for k in ("blocks", "wnids", "above", "dropped", "total", "format"):
            meta.pop(k, None)
        eng = cls(hier, blocks, nodes, fps, params, meta, store)
        eng.stale = stale
        return eng

    @classmethod
    def open(cls, store) -> "SemanticsEngine":
        return cls.load(state.state_path(store), store)

    @staticmethod
    def exists(store) -> bool:
        return state.state_path(store).exists()

    # ---- queries ------------------------------------------------------------------------------------
    def query_vector(self, x) -> np.ndarray:
        """A vector as given, or an image (PIL, uint8 array, path) encoded with the collection's encoder."""
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            v = np.asarray(x, np.float32)
            if v.ndim != 1:
                raise BadVectorError(f"describe takes one vector, got shape {v.shape}")
        else:
            if isinstance(x, str):
                from loaders import open_image_file

                x = open_image_file(x)
            v = self.encoder.encode([x])[0]
        if v.shape[0] != self.blocks.dim:
            raise BadVectorError(f"vector dimension {v.shape[0]} does not match the collection's {self.blocks.dim}")
        if not np.isfinite(v).all():
            raise BadVectorError("the query vector contains NaN or inf")
        return v

    @property
    def encoder(self):
        if self._encoder is None:
            from plugin.encoders import create_encoder

            name = self.meta.get("encoder")
            if not name:
                raise HSearchError("the collection does not say which encoder made it: pass vectors, not images")
            w = self.meta.get("weights") or "default"
            self._encoder = create_encoder(name, pretrained=w, device="cpu")
        return self._encoder

    def semantics(self, vec, **params) -> dict:
        """Branch selection, pruning and CombSUM for one vector: node indices and the search-space figures
        (no retrieval, no WordNet lookups: what evaluations and the search mode need)."""
        p = check_params(params, QUERY_DEFAULTS, "describe")
        snap = self.snap
        hier, f = snap.hier, snap.forest
        q = self.blocks.normalise(self.query_vector(vec))[0]
        visited_total = [0]
        t0 = time.perf_counter()

        def node_dist(nodes):
            nodes = np.asarray(nodes, np.int64)
            d = np.empty((len(nodes), self.blocks.n))
            best = np.empty(len(nodes), np.int64)
            vis = np.empty(len(nodes), np.int64)
            node_distances(q, snap.sigs, self.blocks.starts, self.blocks.stops, self.blocks.weights, f.sig, f.mu,
                           f.max_left, f.min_right, f.left, f.right, f.roots, nodes, bool(p["force_both"]), d, best,
                           vis)
            visited_total[0] += int(vis.sum())
            return d

        sel = selection.branch_select(hier, node_dist, self.blocks.weights, p["fraction"], p["n"])
        pr = selection.prune(hier, sel)
        spec = selection.specific(sel, pr.survivors, self.blocks.weights, int(p["n_specific"]))
        ms = (time.perf_counter() - t0) * 1e3
        n = len(hier)
        scored_sigs = int(sum(snap.offsets[x + 1] - snap.offsets[x] for x in sel.scored))
        space = self.images_under(spec, hier)
        return {"general": sel.general, "specific": spec, "survivors": pr.survivors, "selected": sel.selected,
                "after_or": pr.after_or, "dist": sel.dist, "dominant_feature": sel.dominant_feature,
                "searched": {"nodes": n, "scored": len(sel.scored), "selected": len(sel.selected),
                             "after_or": len(pr.after_or), "survivors": len(pr.survivors),
                             "share_selected": len(sel.selected) / n, "share_survivors": len(pr.survivors) / n,
                             "pruning_fallback": pr.fallback,
                             "clusters_visited": visited_total[0], "clusters_of_scored": scored_sigs,
                             "clusters_total": int(len(snap.sigs)), "images": space,
                             "share_images": space / max(hier.total, 1)},
                "params": p, "ms": ms}

    @staticmethod
    def images_under(nodes, hier: Hierarchy) -> int:
        """Images under any of ``nodes`` (in the searched tree, a node's images include its descendants')."""
        chosen = set(int(x) for x in nodes)
        tops = [x for x in chosen if not any(a in chosen for a in hier.path(x)[:-1])]
        return int(sum(hier.counts[x] for x in tops))

    def retrieve(self, vec, wnids, k: int = 10):
        """Top-``k`` stored points under ``wnids`` (the synset filter), exact scores."""
        from plugin.store.base import Filter

        if self.store is None:
            raise HSearchError("this engine has no store to retrieve from")
        if not wnids:
            return []
        return self.store.search(np.asarray(vec, np.float32), k=int(k), filter=Filter.of(synsets_any=list(wnids)),
                                 exact=True)

    def describe(self, image_or_vec, k: int = 10, retrieve: bool = True, **params) -> dict:
        """General and specific semantics (wnid, label, WordNet path, distances, rank), the share of the
        hierarchy searched, and the top-``k`` images of the specific semantics."""
        vec = self.query_vector(image_or_vec)
        r = self.semantics(vec, **params)
        hier = self.snap.hier
        names = self.blocks.names
        w = self.blocks.weights

        def entry(x, rank, extra=None):
            d = r["dist"][x]
            wn = hier.wnids[x]
            return {"rank": rank, "wnid": wn, "label": label(wn), "path": wordnet_path(wn),
                    "level": int(hier.level[x]), "images": int(hier.counts[x]), "score": float(d @ w),
                    "distances": {nm: float(v) for nm, v in zip(names, d)}, **(extra or {})}

        out = {"general": [entry(x, i + 1, {"dominant_feature": names[r["dominant_feature"][x]]})
                           for i, x in enumerate(r["general"])],
               "specific": [entry(x, i + 1) for i, x in enumerate(r["specific"])],
               "searched": r["searched"], "params": r["params"], "semantics_ms": r["ms"]}
        if retrieve:
            t0 = time.perf_counter()
            hits = self.retrieve(vec, [hier.wnids[x] for x in r["specific"]], k)
            out["retrieval_ms"] = (time.perf_counter() - t0) * 1e3
            out["hits"] = [{"id": h.id, "score": h.score, "wnid": h.payload.get("wnid"),
                            "label": h.payload.get("label"),
                            "source": h.payload.get("source")} for h in hits]
        return out

    # ---- incremental --------------------------------------------------------------------------------
    def add(self, ids, vectors, payloads) -> dict:
        """New points (already upserted into the store) join their synsets' signatures (module docstring).
        Returns which synsets changed and which now need :meth:`sync`."""
        ids = np.asarray(ids, np.int64)
        X = self.blocks.normalise(vectors)
        if len(payloads) != len(X) or len(ids) != len(X):
            raise HSearchError(f"got {len(ids)} ids, {len(X)} vectors and {len(payloads)} payloads")
        with self._lock:
            hier = self.snap.hier
            counts = hier.counts.copy()
            touched, new = set(), set()
            regrow = float(self.params.get("regrow", 0.25))
            for x, pl in zip(X, payloads):
                for s in pl.get("synsets") or ():
                    i = hier.index.get(s)
                    if i is None:
                        if not hier.knows(s):
                            new.add(s)
                        continue
                    counts[i] += 1
                    self._join(i, x)
                    touched.add(i)
                    if counts[i] > (1 + regrow) * max(self.nodes[i].n_images, 1):
                        self.stale.add(s)
            self.stale |= new
            self.meta["n_points"] = int(self.meta.get("n_points", 0)) + len(X)
            self.meta["n_labelled"] = int(self.meta.get("n_labelled", 0)) + sum(1 for pl in payloads if pl.get("synsets"))
            hier2 = Hierarchy(hier.wnids, hier.parent, counts, hier.direct, hier.total + len(X), hier.above,
                              hier.dropped)
            self.snap = self._pack(hier2)
        return {"added": int(len(X)), "synsets_updated": len(touched), "new_synsets": sorted(new),
                "needs_sync": sorted(self.stale)}

    def _join(self, i: int, x: np.ndarray) -> None:
        node = self.nodes[i]
        reps = node.reps
        d = self.blocks.combined(self.blocks.distances(x[None], reps))[0]
        c = int(np.argmin(d))
        sums, sizes, reps = node.sums.copy(), node.sizes.copy(), reps.copy()
        sums[c] += x
        sizes[c] += 1
        if self.params.get("signature", "centroid") == "centroid" or self.params.get("method") == "mean":
            reps[c] = self.blocks.normalise(sums[c][None])[0]  # the signature is the mean: exact
        else:
            mean = (sums[c] / sizes[c])[None]
            old, new = self.blocks.combined(self.blocks.distances(mean, np.stack([reps[c], x])))[0]
            if new < old:
                reps[c] = x
        self.nodes[i] = NodeSignatures(reps, node.dc, sizes, sums, node.n_images, node.n_sample, node.n_clusters,
                                       node.leftovers, node.seconds)

    def sync(self, progress: bool = False) -> dict:
        """Re-read the store; re-cluster the synsets that are new, stale or whose members changed beyond
        ``regrow``; keep every other synset's signatures. Saves."""
        if self.store is None:
            raise HSearchError("this engine has no store to sync with")
        keep = {}
        hier = self.snap.hier
        regrow = float(self.params.get("regrow", 0.25))
        for i, w in enumerate(hier.wnids):
            if w in self.stale:
                continue
            keep[w] = (self.fingerprints[i], self.nodes[i], self.nodes[i].n_images)
        old_meta = {k: v for k, v in self.meta.items() if k in ("collection", "encoder", "weights", "dim")}
        ids, vecs, pls = self.store.all_vectors(payload_fields=["synsets", "wnid"])
        members: dict[str, list[int]] = {}
        for j, pl in enumerate(pls):
            for s in pl.get("synsets") or ():
                members.setdefault(s, []).append(j)
        reuse = {}
        for w, (fp, node, n0) in keep.items():  # unchanged members, or grown within `regrow`: keep
            m = members.get(w, [])
            if m and (fingerprint(ids[m]) == fp or (len(m) >= n0 and len(m) <= (1 + regrow) * n0)):
                reuse[w] = (fingerprint(ids[m]), node)
        eng = SemanticsEngine.from_arrays(ids, vecs, [p.get("synsets") for p in pls], [p.get("wnid") for p in pls],
                                          self.blocks, reuse=reuse, progress=progress, meta=old_meta, **self.params)
        with self._lock:
            self.nodes, self.fingerprints, self.meta, self.stale = eng.nodes, eng.fingerprints, eng.meta, set()
            self.snap = eng.snap
        self.save()
        return {"synsets": len(self.snap.hier), "reclustered": len(self.snap.hier) - eng.meta["reused_nodes"],
                "kept": eng.meta["reused_nodes"]}

    def check(self, stored: dict | None = None) -> dict:
        """Compare the engine's per-synset counts with the store's (one facet of ``synsets``, or the
        ``stored`` counts of one the caller already has)."""
        if stored is None:
            stored = self.store.facet("synsets", limit=1_000_000)
        stored = {str(k): int(v) for k, v in stored.items()}
        hier = self.snap.hier
        differ = {w: (int(hier.counts[i]), stored.get(w, 0)) for i, w in enumerate(hier.wnids)
                  if int(hier.counts[i]) != stored.get(w, 0)}
        new = sorted(w for w in stored if not hier.knows(w))
        return {"consistent": not differ and not new and not self.stale, "count_mismatch": differ,
                "new_synsets": new, "stale": sorted(self.stale)}

    def describe_state(self) -> dict:
        """Build figures: synsets, levels, signatures, clustering cost."""
        h, ns = self.snap.hier, self.nodes
        secs = [n.seconds for n in ns]
        return {"collection": self.meta.get("collection"), "encoder": self.meta.get("encoder"),
                "features": list(self.blocks.names), "synsets": len(h), "top_level": int(h.n_top),
                "levels": int(h.level.max()) if len(h) else 0, "signatures": int(len(self.snap.sigs)),
                "signatures_per_synset_max": int(max(len(n.reps) for n in ns)) if ns else 0,
                "clusters_found": int(sum(n.n_clusters for n in ns)), "sampled_nodes":
                int(sum(1 for n in ns if n.n_sample < n.n_images)), "cluster_s": round(float(sum(secs)), 2),
                "cluster_s_max": round(float(max(secs)) if secs else 0.0, 2), **{k: self.params[k] for k in
                                                                               ("method", "signature", "cap",
                                                                                "max_dominant")},
                "points": self.meta.get("n_points"), "build_s": self.meta.get("build_s"),
                "stale": sorted(self.stale)}


@lru_cache(maxsize=4096)
def label(wnid: str) -> str:
    from plugin.taxonomy import label_of, synset_of

    return label_of(synset_of(wnid))


@lru_cache(maxsize=4096)
def wordnet_path(wnid: str) -> list[str]:
    """Labels from WordNet's root down to ``wnid`` along its shortest hypernym path (ties: by wnids)."""
    from plugin.taxonomy import label_of, synset_of
    from plugin.taxonomy.taxonomy import wnid_of

    paths = synset_of(wnid).hypernym_paths()
    best = min(paths, key=lambda p: (len(p), [wnid_of(s) for s in p]))
    return [label_of(s) for s in best]
