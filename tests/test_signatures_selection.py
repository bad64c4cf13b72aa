"""The searched hierarchy, branch selection, Extended OR-Inc pruning and CombSUM on hand-made
hierarchies whose outcome is worked out in the comments (distances in sixteenths: exact in binary)."""
from __future__ import annotations

import numpy as np
import pytest

from plugin.signatures import fusion
from plugin.signatures.hierarchy import Hierarchy
from plugin.signatures.selection import branch_select, extended_or, inc_keeps, pick, prune, specific

W3 = np.full(3, 1 / 3)


# ---- hierarchy ----------------------------------------------------------------------------------------
PARENT = {"root": None, "a": "root", "b": "root", "a1": "a", "a2": "a", "b1": "b", "c": "root", "c1": "c",
          "c2": "c1", "e": "root"}
COUNTS = {"root": 100, "a": 60, "a1": 30, "a2": 30, "b": 20, "b1": 10, "c": 20, "c1": 20, "c2": 20, "e": 0}
DIRECT = {"a1": 30, "a2": 30, "b": 10, "b1": 10, "c2": 20}


def test_hierarchy_drops_collapses_and_expands():
    # e: no child, no image -> dropped. c -> c1 -> c2 (20, 20, 20; images only at c2) -> searched as c2.
    # top level: [a (60), b (20), c2 (20)]; a holds 60% > 50% and has no image of its own -> a1, a2.
    # b has images of its own: never expanded.
    h = Hierarchy.from_parents(PARENT, COUNTS, DIRECT)
    assert h.wnids == ["a1", "a2", "b", "c2", "b1"]
    assert h.parent.tolist() == [-1, -1, -1, -1, 2] and h.level.tolist() == [1, 1, 1, 1, 2]
    assert h.counts.tolist() == [30, 30, 20, 20, 10] and h.total == 100
    assert set(h.above) == {"root", "a", "c", "c1"}
    assert h.children(2).tolist() == [4] and h.children(0).tolist() == [] and h.top.tolist() == [0, 1, 2, 3, 2]
    assert h.path(4) == [2, 4]
    # a bigger share allowed: a stays whole
    h = Hierarchy.from_parents(PARENT, COUNTS, DIRECT, max_share=0.7)
    assert h.wnids == ["a", "b", "c2", "a1", "a2", "b1"] and h.level.tolist() == [1, 1, 1, 2, 2, 2]
    # more top-level subtrees wanted than can be had: stops when nothing is expandable
    assert Hierarchy.from_parents(PARENT, COUNTS, DIRECT, min_top=9).n_top == 4


def test_fashion_mnist_hierarchy_from_wordnet():
    from loaders.fashion_mnist import CLASSES
    from plugin.taxonomy import synset_payload

    synsets, direct = {}, {}
    for _, w in CLASSES:
        direct[w] = 6000
        for s in synset_payload(w)["synsets"]:
            synsets[s] = synsets.get(s, 0) + 6000
    h = Hierarchy.from_counts(synsets, direct)
    labels = {w: synset_payload(w)["label"] if w in direct else w for w in h.wnids}
    top = [h.wnids[i] for i in h.top_level]
    # bag (n02774152), dress (n03236735), footwear (n03380867), garment (n03419014): clothing (60%)
    # was expanded; woman's clothing -> dress collapsed to dress
    assert top == ["n02774152", "n03236735", "n03380867", "n03419014"]
    assert len(h) == 13 and h.total == 60000 and h.level.max() == 3
    jersey = h.index["n03595614"]  # T-shirt: jersey under shirt under garment
    assert [h.wnids[i] for i in h.path(jersey)] == ["n03419014", "n04197391", "n03595614"], labels


# ---- fusion -------------------------------------------------------------------------------------------
def test_ranks_ties_share_the_better_rank_and_combsum_orders():
    D = np.array([[0.1, 0.5], [0.1, 0.2], [0.3, 0.2], [0.4, 0.9]])
    R = fusion.ranks(D)
    assert R.tolist() == [[1, 3], [1, 1], [3, 1], [4, 4]]
    assert fusion.combsum(R).tolist() == [4, 2, 4, 8]
    # rows 0 and 2 tie at CombSUM 4: weighted distance 0.3 vs 0.25 -> row 2 first
    assert fusion.order(D, np.array([0.5, 0.5])).tolist() == [1, 2, 0, 3]


# ---- pruning rules ------------------------------------------------------------------------------------
def test_extended_or_by_hand():
    # [1, 2, 3, 10]: mean 4, mean |dev| 3 -> 7; median 2.5, median |dev| 1 -> 3.5: 10 goes
    assert extended_or(np.array([1.0, 2, 3, 10])).tolist() == [True, True, True, False]
    # [0, 0, 1, 1, 2]: mean 0.8 + 0.64 = 1.44 drops 2, median 1 + 1 = 2 keeps it: OR keeps it
    assert extended_or(np.array([0.0, 0, 1, 1, 2])).all()
    assert extended_or(np.array([7.0])).tolist() == [True]
    # two nodes: the larger distance is the extended mean and median; round-off must not drop it (a real
    # query's colour distances to garment and coat, Fashion-MNIST hand-made features)
    assert extended_or(np.array([0.20586479, 0.19042122])).all()
    assert extended_or(np.array([0.1, 0.2, 0.30000000000000004])).all()


def test_inc_rule_needs_more_than_half_of_the_features():
    assert inc_keeps([1, 1, 5], [2, 2, 2])  # grew in 1 of 3
    assert not inc_keeps([3, 3, 1], [2, 2, 2])  # grew in 2 of 3
    assert inc_keeps([2, 2, 2], [2, 2, 2])  # equal is not growth
    assert not inc_keeps([3], [2]) and inc_keeps([1], [2])  # one feature (deep): any growth drops it
    assert inc_keeps([3, 1], [2, 2])  # 1 of 2 is not more than half


# ---- branch selection on a hand-made hierarchy --------------------------------------------------------
#        A            B         C    D
#      A1   A2      B1  B2
#    A1a A1b
FOREST = Hierarchy(["A", "B", "C", "D", "A1", "A2", "B1", "B2", "A1a", "A1b"],
                   np.array([-1, -1, -1, -1, 0, 0, 1, 1, 4, 4]), np.ones(10, np.int64), np.ones(10, np.int64), 10)
DIST = {  # (colour, texture, shape), in sixteenths
    "A": (2, 8, 8), "B": (5, 3, 3), "C": (4, 5, 5), "D": (15, 15, 15),
    "A1": (1, 6, 6), "A2": (8, 10, 10), "B1": (6, 1, 5), "B2": (7, 9, 1),
    "A1a": (0, 7, 7), "A1b": (5, 5, 5),
}
TABLE = np.array([DIST[w] for w in FOREST.wnids], np.float64) / 16


def node_dist(nodes):
    return TABLE[nodes]


def test_branch_selection_picks_by_best_rank_then_combsum():
    # level 1 (N 4, fraction 1/2 -> 2): ranks A (1,3,3) B (3,1,1) C (2,2,2) D (4,4,4). A and B are first
    # in some feature; C never is, though its CombSUM (6) beats A's (7): picked B (5), A (7).
    # level 2 candidates B1, B2, A1, A2 -> 2: every one but A2 is first somewhere; CombSUM B1 5, A1 6, B2 7.
    # level 3: A1a (1,2,2) vs A1b (2,1,1) -> 1: A1b.
    sel = branch_select(FOREST, node_dist, W3, fraction=0.5)
    name = lambda xs: [FOREST.wnids[x] for x in xs]
    assert name(sel.general) == ["B", "A"]
    assert [name(s) for _, s in sel.levels] == [["B", "A"], ["B1", "A1"], ["A1b"]]
    assert name(sel.scored) == ["A", "B", "C", "D", "B1", "B2", "A1", "A2", "A1a", "A1b"]
    assert sel.dominant_feature == {0: 0, 1: 1, 2: 0, 3: 0}  # A colour, B texture, ties -> first
    # a quarter: one per level, B then B1 (B1 first in colour and texture)
    sel = branch_select(FOREST, node_dist, W3, fraction=0.25)
    assert [name(s) for _, s in sel.levels] == [["B"], ["B1"]]
    assert [name(s) for _, s in branch_select(FOREST, node_dist, W3, n=3).levels][0] == ["B", "A", "C"]
    with pytest.raises(ValueError):
        branch_select(FOREST, node_dist, W3, fraction=0)
    assert pick(TABLE[:4], 2, W3).tolist() == [1, 0]


def test_pruning_and_specific_semantics():
    sel = branch_select(FOREST, node_dist, W3, fraction=0.5)
    pr = prune(FOREST, sel)
    name = lambda xs: [FOREST.wnids[x] for x in xs]
    # Ext OR, subtree B by texture: B 3, B1 1 -> mean 2 + 1 = 3: both stay.
    # subtree A by colour: A 2, A1 1, A1b 5 -> mean 8/3 + 14/9 = 4.22, median 2 + 1 = 3: A1b goes.
    assert name(pr.after_or) == ["B", "B1", "A", "A1"]
    # Inc: B1 (6,1,5) vs B (5,3,3) grew in colour and shape (2 of 3): B1 goes; A1 vs A shrank everywhere
    assert name(pr.survivors) == ["B", "A", "A1"]
    # CombSUM over B (5,3,3), A (2,8,8), A1 (1,6,6): ranks B (3,1,1) A (2,3,3) A1 (1,2,2):
    # B 5, A1 5 (tie: weighted 11/48 < 13/48 -> B first), A 8
    assert name(specific(sel, pr.survivors, W3)) == ["B", "A1", "A"]
    assert name(specific(sel, pr.survivors, W3, n_specific=1)) == ["B"]
    assert specific(sel, [], W3) == []


def test_pruning_never_empties_the_search_space():
    # one subtree, everything selected (fraction 1): T (8,2,2), C1 (1,3,3), C2 (1,3,3) in sixteenths.
    # Ext OR by colour (T's dominant feature: its only rank is 1 everywhere, first wins): [8, 1, 1] ->
    # mean 10/3 + 28/9 = 6.44, median 1 + 0 -> T goes. Inc: both children grew in texture and shape -> go.
    # Nothing would be left: the Ext OR set stands.
    h = Hierarchy(["T", "C1", "C2"], np.array([-1, 0, 0]), np.ones(3, np.int64), np.ones(3, np.int64), 3)
    table = np.array([[8, 2, 2], [1, 3, 3], [1, 3, 3]], np.float64) / 16
    sel = branch_select(h, lambda nodes: table[nodes], W3, fraction=1.0)
    assert sel.selected == [0, 1, 2]
    pr = prune(h, sel)
    assert pr.after_or == [1, 2] and pr.survivors == [1, 2] and pr.fallback
    assert specific(sel, pr.survivors, W3) == [1, 2]
    assert not prune(FOREST, branch_select(FOREST, node_dist, W3, fraction=0.5)).fallback
