"""The searched hierarchy: a collection's WordNet synsets as one tree of top-level subtrees.

The paper searches a hand-picked tree (11 ImageNet categories, 365 synsets below them). A collection
gives WordNet instead: every image carries its class and all its hypernyms (the ``synsets`` payload),
which form a DAG with long single-child chains (entity → physical entity → object → whole →
artifact → ...). It becomes the searched tree in four documented steps:

1. **Nodes**: every synset holding at least one image (one facet of ``synsets``); a node's images are
   the points whose ``synsets`` contain it, exactly what the store's synset filter returns.
2. **One parent each**: among a node's WordNet hypernyms that are nodes, the one nearest the root
   (least ``min_depth``, ties by wnid), so e.g. clothing hangs under covering, not consumer goods.
   Nodes left with no child and no image of their own (consumer goods, commodity) are dropped:
   their images are all in another branch already.
3. **Chains collapse**: a node with one child and the same image count (no image of its own, no other
   DAG branch below it) *is* its child as far as images go; the chain keeps its most specific synset
   (instrumentality → container → bag is searched as ``bag``).
4. **Top level**: start from the root's children and expand the largest subtree (one without images
   of its own) into its children while there are fewer than ``min_top`` = 3 top-level subtrees or the
   largest holds more than ``max_share`` = 1/2 of the images. Fashion-MNIST gives bag, dress (woman's
   clothing collapsed), footwear, garment; the 500 ImageNet-sample photos give 14, from organism and
   instrumentality down to single-photo ones like teddy (docs/results/semantics-*.md list them); the
   paper's "general semantics" are these subtrees. Nodes above them (the root and the expanded ones)
   hold (nearly) everything and are not searched.

Levels count from 1 at the top level. ``parent`` is -1 for top-level nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_TOP = 3
MAX_SHARE = 0.5


@dataclass
class Hierarchy:
    """The searched forest, nodes in breadth-first order (top level first, then level 2, ...)."""

    wnids: list[str]
    parent: np.ndarray  # (n,) index of the parent node, -1 at the top level
    counts: np.ndarray  # (n,) images under the node (the synset filter's count)
    direct: np.ndarray  # (n,) images labelled with exactly this synset
    total: int  # images in the collection under the root
    above: list[str] = field(default_factory=list)  # collapsed / expanded nodes above the top level
    dropped: list[str] = field(default_factory=list)  # step 2: synsets whose images are all in another branch

    def __post_init__(self):
        self.parent = np.asarray(self.parent, np.int64)
        n = len(self.wnids)
        self.index = {w: i for i, w in enumerate(self.wnids)}
        self.level = np.ones(n, np.int64)
        for i in range(n):
            p = self.parent[i]
            if p >= n or p >= i:
                raise ValueError("hierarchy nodes must be in breadth-first order (parents first)")
            if p >= 0:
                self.level[i] = self.level[p] + 1
        self.top = np.empty(n, np.int64)  # the top-level node each node is under
        for i in range(n):
            self.top[i] = i if self.parent[i] < 0 else self.top[self.parent[i]]
        order = np.argsort(self.parent, kind="stable")
        self.child_offsets = np.searchsorted(self.parent[order], np.arange(-1, n + 1))[1:]  # after the -1s
        self.children_flat = order
        self.n_top = int((self.parent < 0).sum())

    def __len__(self) -> int:
        return len(self.wnids)

    def knows(self, wnid: str) -> bool:
        """Whether ``wnid`` was one of the collection's synsets when this hierarchy was made (searched,
        above the top level, or dropped as a duplicate branch)."""
        return wnid in self.index or wnid in self._others

    @property
    def _others(self) -> set:
        return set(self.above) | set(self.dropped)

    def children(self, i: int) -> np.ndarray:
        return self.children_flat[self.child_offsets[i]:self.child_offsets[i + 1]]

    @property
    def top_level(self) -> np.ndarray:
        return np.flatnonzero(self.parent < 0)

    def path(self, i: int) -> list[int]:
        """Node indices from the top level down to ``i``."""
        out = [i]
        while self.parent[out[-1]] >= 0:
            out.append(int(self.parent[out[-1]]))
        return out[::-1]

    @staticmethod
    def from_counts(synset_counts: dict, direct_counts: dict, min_top: int = MIN_TOP,
                    max_share: float = MAX_SHARE) -> "Hierarchy":
        """From ``{wnid: images under it}`` (a facet of ``synsets``) and ``{wnid: images labelled
        with it}`` (a facet of ``wnid``), through WordNet (module docstring)."""
        from plugin.taxonomy import synsets_of
        from plugin.taxonomy.taxonomy import wnid_of

        counts = {str(w): int(c) for w, c in synset_counts.items() if int(c) > 0}
        direct = {str(w): int(c) for w, c in direct_counts.items() if int(c) > 0}
        if not counts:
            raise ValueError("no images with WordNet labels: nothing to build a hierarchy from")
        wn = dict(zip(counts, synsets_of(list(counts))))
        depth = {w: s.min_depth() for w, s in wn.items()}
        parent: dict[str, str | None] = {}
        for w, s in wn.items():
            ps = sorted({wnid_of(p) for p in s.hypernyms() + s.instance_hypernyms()} & counts.keys(),
                        key=lambda p: (depth[p], p))
            parent[w] = ps[0] if ps else None
        return Hierarchy.from_parents(parent, counts, direct, min_top, max_share)

    @staticmethod
    def from_parents(parent: dict, counts: dict, direct: dict, min_top: int = MIN_TOP,
                     max_share: float = MAX_SHARE) -> "Hierarchy":
        """Steps 2-4 of the module docstring on a given one-parent-each tree (tests build these by hand)."""
        parent = dict(parent)
        kids: dict = {w: set() for w in parent}
        for w, p in parent.items():
            if p is not None:
                kids[p].add(w)
        # 2. drop childless nodes without images of their own, repeatedly
        todo = [w for w in parent if not kids[w] and not direct.get(w)]
        dropped = []
        while todo:
            w = todo.pop()
            dropped.append(w)
            p = parent.pop(w)
            kids.pop(w)
            if p is not None:
                kids[p].discard(w)
                if not kids[p] and not direct.get(p):
                    todo.append(p)
        roots = sorted(w for w, p in parent.items() if p is None)
        if len(roots) != 1:  # WordNet nouns share one root; a hand-made forest gets a virtual one
            parent = {w: (p if p is not None else "") for w, p in parent.items()}
            parent[""] = None
            kids[""] = set(roots)
            counts = {**counts, "": sum(counts[r] for r in roots)}
            roots = [""]

        # 3. collapse single-child chains whose counts agree: the child stands for the chain
        def collapse(w):
            above = []
            while len(kids[w]) == 1 and not direct.get(w) and counts[next(iter(kids[w]))] == counts[w]:
                above.append(w)
                w = next(iter(kids[w]))
            return w, above

        root, above = collapse(roots[0])
        total = counts[root]
        # 4. top level
        frontier = sorted(kids[root]) if kids[root] and not direct.get(root) else [root]
        if frontier != [root]:
            above.append(root)
        frontier = [collapse(w) for w in frontier]
        above += [a for _, ab in frontier for a in ab]
        frontier = [w for w, _ in frontier]
        while True:
            expandable = [w for w in frontier if kids[w] and not direct.get(w)]
            if not expandable:
                break
            big = max(expandable, key=lambda w: (counts[w], w))
            if len(frontier) >= min_top and counts[big] <= max_share * total:
                break
            frontier.remove(big)
            above.append(big)
            for c in sorted(kids[big]):
                c, ab = collapse(c)
                above += ab
                frontier.append(c)
        # breadth-first order below the top level, collapsing chains on the way
        wnids, par = [], []
        queue = [(w, -1) for w in sorted(frontier)]
        while queue:
            nxt = []
            for w, p in queue:
                me = len(wnids)
                wnids.append(w)
                par.append(p)
                for c in sorted(kids[w]):
                    c, _ = collapse(c)
                    nxt.append((c, me))
            queue = nxt
        return Hierarchy(wnids, np.asarray(par, np.int64), np.asarray([counts[w] for w in wnids], np.int64),
                         np.asarray([direct.get(w, 0) for w in wnids], np.int64), int(total),
                         [a for a in above if a], sorted(dropped))
