"""The WordNet hierarchy as a person reads it: one path from the root to a synset, the lowest common
ancestor of two synsets, and the collection's synsets as a tree with image counts.

WordNet is a DAG (a synset can have several hypernyms), so a *displayed* path is the shortest
hypernym path, ties broken by wnid: nltk's ``hypernym_paths()`` order varies between runs and a page
that reorders itself on reload would confuse. Counts come from ``Store.facet("synsets")``: every point
carries its class and all its ancestors, so a node's count is the number of images under it, whatever
path the tree shows it on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from plugin.errors import UnknownSynsetError
from plugin.taxonomy import label_of, synset_of, wnid_of
from plugin.taxonomy.taxonomy import WNID_RE, hypernym_depths

ROOT = "n00001740"  # entity.n.01


@lru_cache(maxsize=65536)
def label(wnid: str) -> str:
    return label_of(synset_of(wnid))


@lru_cache(maxsize=65536)
def path(wnid: str) -> tuple[str, ...]:
    """Wnids from WordNet's root down to ``wnid`` along the shortest hypernym path (deterministic)."""
    paths = synset_of(wnid).hypernym_paths()
    best = min(([wnid_of(s) for s in p] for p in paths), key=lambda p: (len(p), p))
    return tuple(best)


def lca(a: str, b: str) -> tuple[str, int, int]:
    """(lowest common ancestor, edges from ``a`` up to it, edges from ``b`` up to it).

    "Lowest" is the common hypernym on the shortest a-b path (nltk's shortest_path_distance, as
    ``plugin.taxonomy.Taxonomy`` uses), ties by the lower of the two heights, then by wnid.
    """
    da, db = hypernym_depths(synset_of(a)), hypernym_depths(synset_of(b))
    common = [(da[s] + db[s], max(da[s], db[s]), wnid_of(s), da[s], db[s]) for s in da.keys() & db.keys()]
    _, _, w, ha, hb = min(common)
    return w, ha, hb


def resolve_synsets(text: str, known: dict[str, int] | None = None) -> list[str]:
    """Wnids named in ``text``: comma-separated wnids (``n03419014``) or synset names (``garment``,
    ``gym shoe``) looked up among ``known`` (the collection's synsets), so a user need not know ids.

    Unknown or malformed names raise :class:`UnknownSynsetError` naming them.
    """
    out, bad = [], []
    for tok in (t.strip() for t in re.split(r"[,;]", text or "")):
        if not tok:
            continue
        if WNID_RE.match(tok):
            out.append(tok)
            continue
        want = tok.lower().replace("_", " ")
        match = sorted((w for w in (known or {}) if label(w).lower() == want), key=lambda w: -(known or {})[w])
        if match:
            out.append(match[0])
        else:
            bad.append(tok)
    if bad:
        raise UnknownSynsetError(
            f"unknown synset {', '.join(map(repr, bad))}: give a WordNet noun id like n03419014 or the name of "
            "a synset in this collection (see the Hierarchy tab)")
    return list(dict.fromkeys(out))


@dataclass
class Node:
    wnid: str
    label: str
    count: int
    children: list["Node"] = field(default_factory=list)


def build_tree(counts: dict[str, int]) -> Node | None:
    """The synsets of ``counts`` (wnid -> images under it) as a tree: each synset hangs under the
    next synset up its displayed :func:`path`. Children are ordered by count, then label."""
    if not counts:
        return None
    nodes = {w: Node(w, label(w), int(c)) for w, c in counts.items()}
    root = None
    for w, node in nodes.items():
        up = [a for a in path(w)[:-1] if a in nodes]
        if up:
            nodes[up[-1]].children.append(node)
        elif root is None or node.count > root.count:
            root = node
    for node in nodes.values():
        node.children.sort(key=lambda n: (-n.count, n.label))
    return root


def flatten(root: Node | None) -> list[tuple[int, Node]]:
    """(depth, node) in depth-first order: the order the hierarchy tab lists subtrees in."""
    out: list[tuple[int, Node]] = []

    def walk(n: Node, d: int) -> None:
        out.append((d, n))
        for c in n.children:
            walk(c, d + 1)

    if root is not None:
        walk(root, 0)
    return out
