"""The WordNet hierarchy induced by a collection's classes: ancestors, path distances, LCA heights and
the hierarchical-loss weight matrix.

Distances follow nltk's ``shortest_path_distance`` exactly (up to a common hypernym, then down), so
``dog``/``cat`` is 4 and their path similarity 1/(1+4) = 0.2. nltk computes one pair at a time
(~1 ms each, minutes for 1000 classes); we compute each class's hypernym-distance map once and take,
for every common ancestor ``c``, the outer sum of the distances of the classes below it — a min-plus
product that only visits (class, ancestor) pairs that exist. 1000 ImageNet classes take ~1-2 s, and
the matrices are cached on disk keyed by the class list.

``lca_height[i, j]``: WordNet is a DAG, so "the" lowest common ancestor is taken as the common
hypernym on the shortest path; its height is the larger of the two leaves' distances to it
(0 for the same class). Ties between equally short paths pick the lower height.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from functools import cached_property, lru_cache
from typing import Iterable, Sequence

import numpy as np

from plugin import config
from plugin.errors import UnknownSynsetError
from plugin.taxonomy.wordnet import wordnet

WNID_RE = re.compile(r"^n\d{8}$")


def wnid_of(synset) -> str:
    return f"{synset.pos()}{synset.offset():08d}"


def synset_of(wnid: str):
    """The nltk Synset of a noun wnid (``n02084071``), or :class:`UnknownSynsetError`."""
    return synsets_of([wnid])[0]


def synsets_of(wnids: Iterable[str]) -> list:
    wn = wordnet()
    out, bad = [], []
    for w in wnids:
        w = str(w)
        if not WNID_RE.match(w):
            bad.append(w)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # nltk warns and returns None for a missing offset
                syn = wn.synset_from_pos_and_offset("n", int(w[1:]))
        except Exception:
            syn = None
        if syn is None:
            bad.append(w)
        else:
            out.append(syn)
    if bad:
        raise UnknownSynsetError(
            f"unknown or malformed WordNet noun id(s): {', '.join(map(repr, bad[:10]))}"
            f"{' ...' if len(bad) > 10 else ''} (expected 'n' + 8-digit WordNet 3.0 offset, e.g. n02084071)")
    return out


def label_of(synset) -> str:
    return synset.lemmas()[0].name().replace("_", " ")


def hypernym_depths(synset) -> dict:
    """{ancestor synset (incl. itself): shortest number of hypernym edges up to it}."""
    best: dict = {}
    for s, d in synset.hypernym_distances():
        if d < best.get(s, 1 << 30):
            best[s] = d
    return best


@lru_cache(maxsize=65536)
def _depths_by_wnid(wnid: str) -> dict:
    return {wnid_of(a): d for a, d in hypernym_depths(synset_of(wnid)).items()}


def pair_relation(a: str, b: str) -> tuple[int, int, str]:
    """(path distance, LCA height, LCA wnid) of two noun wnids, by the same rule as :class:`Taxonomy`'s
    matrices (shortest path through a common hypernym; ties pick the lower height, then the wnid), for
    classes outside any fixed class list (a query's predicted ImageNet class against a collection's)."""
    da, db = _depths_by_wnid(a), _depths_by_wnid(b)
    best = None
    for c in da.keys() & db.keys():
        key = (da[c] + db[c], max(da[c], db[c]), c)
        if best is None or key < best:
            best = key
    if best is None:  # every noun reaches entity.n.01; only a malformed pair gets here
        raise UnknownSynsetError(f"{a} and {b} share no hypernym")
    return best


def synset_payload(wnid: str) -> dict:
    """Payload fields for a point labelled ``wnid``: its label and the ``synsets`` partition field
    (the wnid and every WordNet ancestor, sorted for determinism)."""
    s = synset_of(wnid)
    return {"wnid": wnid, "label": label_of(s), "synsets": sorted({wnid_of(a) for a in hypernym_depths(s)})}


class Taxonomy:
    """The hierarchy below WordNet's root down to ``wnids`` (the collection's classes, in order)."""

    def __init__(self, wnids: Sequence[str], cache: bool = True):
        wnids = [str(w) for w in wnids]
        if len(set(wnids)) != len(wnids):
            raise UnknownSynsetError("duplicate wnids in the class list")
        self.leaves = wnids
        self._synsets = synsets_of(wnids)
        self.index = {w: i for i, w in enumerate(wnids)}
        self._depths = [hypernym_depths(s) for s in self._synsets]
        self._cache = cache

    # ---- structure --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.leaves)

    def label(self, wnid: str) -> str:
        return label_of(synset_of(wnid))

    def ancestors(self, wnid: str) -> list[str]:
        """The wnid and all its ancestors, nearest first (ties by wnid), root last."""
        if wnid in self.index:
            d = self._depths[self.index[wnid]]
        else:
            d = hypernym_depths(synset_of(wnid))
        return [wnid_of(s) for s, _ in sorted(d.items(), key=lambda kv: (kv[1], wnid_of(kv[0])))]

    def payload(self, wnid: str) -> dict:
        return synset_payload(wnid)

    @cached_property
    def edges(self) -> list[tuple[str, str]]:
        """Sorted (parent, child) hypernym edges of the induced DAG (every node is an ancestor of a leaf)."""
        nodes = {s for d in self._depths for s in d}
        out = set()
        for s in nodes:
            for p in s.hypernyms() + s.instance_hypernyms():
                if p in nodes:
                    out.add((wnid_of(p), wnid_of(s)))
        return sorted(out)

    @cached_property
    def nodes(self) -> list[str]:
        """Every synset of the induced DAG, sorted by (min depth from root, wnid)."""
        depth = {}
        for s in {s for d in self._depths for s in d}:
            depth[wnid_of(s)] = s.min_depth()
        return sorted(depth, key=lambda w: (depth[w], w))

    # ---- matrices ---------------------------------------------------------------------------------
    @cached_property
    def _matrices(self) -> dict[str, np.ndarray]:
        key = hashlib.sha1("\n".join(self.leaves).encode()).hexdigest()[:16]
        path = config.cache_dir("taxonomy") / f"wordnet30-{key}.npz" if self._cache else None
        if path is not None and path.exists():
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        mats = self._compute_matrices()
        if path is not None:
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, **mats)
            tmp.replace(path)
        return mats

    def _compute_matrices(self) -> dict[str, np.ndarray]:
        n = len(self.leaves)
        below: dict = {}
        for i, d in enumerate(self._depths):
            for s, h in d.items():
                below.setdefault(s, ([], []))
                below[s][0].append(i)
                below[s][1].append(h)
        big = np.iinfo(np.int32).max // 4
        dist = np.full((n, n), big, np.int32)
        height = np.full((n, n), big, np.int32)
        for idx, h in below.values():
            idx, h = np.asarray(idx), np.asarray(h, np.int32)
            sub_d = h[:, None] + h[None, :]
            sub_h = np.maximum(h[:, None], h[None, :])
            cur_d, cur_h = dist[np.ix_(idx, idx)], height[np.ix_(idx, idx)]
            better = (sub_d < cur_d) | ((sub_d == cur_d) & (sub_h < cur_h))
            dist[np.ix_(idx, idx)] = np.where(better, sub_d, cur_d)
            height[np.ix_(idx, idx)] = np.where(better, sub_h, cur_h)
        return {"distance": dist, "lca_height": height}

    @property
    def distance(self) -> np.ndarray:
        """(n, n) int32 shortest hypernym-path distance between classes (nltk's shortest_path_distance)."""
        return self._matrices["distance"]

    @property
    def lca_height(self) -> np.ndarray:
        return self._matrices["lca_height"]

    @property
    def path_similarity(self) -> np.ndarray:
        """(n, n) float32 ``1 / (1 + distance)``, nltk's path_similarity."""
        return (1.0 / (1.0 + self.distance)).astype(np.float32)

    def weights(self, alpha: float = 0.3) -> np.ndarray:
        """Hierarchical-loss weights w_ij = softmax_j(-alpha * distance_ij) (hierarchical-loss paper, eq. 6);
        rows sum to 1."""
        z = -float(alpha) * self.distance.astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
