"""Semantic search modes of hierarchical-loss-inference-retrieval §III.C, registered beside the tree modes:

* ``weighted``: fetch ``candidates`` neighbours (routed by the tree mode ``base``), then rank them by a
  distance stretched by how far each candidate's class lies from the query's predicted class in
  WordNet: ``d' = d * (1 + beta * h / H)``, ``d`` the vector distance (1 - cosine), ``h`` the LCA height
  of the two classes, ``H`` the largest height among the candidates (so the factor lies in
  [1, 1 + beta]). The paper only says "weights from the hierarchy, higher for related categories"; a
  multiplicative stretch keeps the vector ranking inside one class and needs no distance scale.
* ``category_first``: rank the collection's classes by WordNet path similarity to the predicted class,
  take the top ``categories``, search inside each (exact, through the ``wnid`` payload index), and
  merge all hits by the same weighted distance. Cost: the points of those classes.

Both need the query's class: ``router.search(vec, mode="weighted", probs=p, classes=wnids)`` with
``p`` from a classifier (``encoder.predict_proba``, optionally refined by ``hierarchical_inference``), or
``query_class="n0..."`` to give it directly. Every hit says why (``hit.why``: predicted class, the
hit's class, their lowest common ancestor and its height); ``stats["query_class"]`` names the class.
Unlabelled points have no class: they count as unrelated (``h = H``).
"""
from __future__ import annotations

import numpy as np

from plugin.errors import RouterError
from plugin.router.modes import Plan, Probe, as_plan, get_mode, register_mode
from plugin.store.base import Filter
from plugin.taxonomy import label_of, synset_of, synsets_of
from plugin.taxonomy.taxonomy import pair_relation

FACET_LIMIT = 100_000


def query_classes(ctx, n: int, query_class: str | None) -> list[str]:
    if query_class is not None:
        synsets_of([query_class])
        return [query_class] * n
    if ctx.probs is None:
        raise RouterError("this search mode needs the query's class: pass probs= and classes= "
                          "(encoder.predict_proba and encoder.classes) or query_class='n0...'")
    return [ctx.classes[i] for i in np.argmax(ctx.probs, axis=1)]


def _distance(metric: str, score: float) -> float:
    """Store score -> a distance (smaller is closer) for the router's metric."""
    return 1.0 - score if metric == "cosine" else -score if metric == "dot" else score


def weighted_rank(hits, qclass: str, metric: str, beta: float, k: int) -> list:
    """Hits re-ranked by the hierarchy-stretched distance; each gets ``why``."""
    rel = [pair_relation(qclass, h.payload["wnid"]) if h.payload.get("wnid") else None for h in hits]
    H = max([r[1] for r in rel if r is not None] + [1])
    scored = []
    for h, r in zip(hits, rel):
        height = H if r is None else r[1]
        d = _distance(metric, h.score)
        wd = d * (1.0 + beta * height / H) if d >= 0 else d / (1.0 + beta * height / H)
        h.why = {"query_class": qclass, "class": h.payload.get("wnid"), "lca": None if r is None else r[2],
                 "lca_label": None if r is None else label_of(synset_of(r[2])), "lca_height": height,
                 "distance": round(d, 6), "weighted_distance": round(wd, 6)}
        scored.append((wd, -h.score, h.id, h))
    scored.sort(key=lambda t: t[:3])
    return [t[3] for t in scored[:k]]


def _info(qclasses):
    return [{"query_class": c, "query_label": label_of(synset_of(c))} for c in qclasses]


@register_mode("weighted", candidates=100, beta=1.0, base="relaxed", query_class=None)
def weighted(ctx, Q, candidates=100, beta=1.0, base="relaxed", query_class=None):
    """Candidates from a tree mode, re-ranked by distance stretched by WordNet distance to the query's class."""
    if int(candidates) < 1 or beta < 0:
        raise RouterError(f"weighted: candidates must be >= 1 and beta >= 0, got {candidates}, {beta}")
    if base in ("weighted", "category_first"):
        raise RouterError("weighted: base must be a tree mode (exact, intensive, relaxed, auto)")
    qclasses = query_classes(ctx, len(Q), query_class)
    base_plan = as_plan(get_mode(base).fn(ctx, Q), len(Q))
    probes = [Probe(p.query, p.leaves, p.filter, int(candidates)) for p in base_plan.probes]
    metric = ctx.router.tree.metric

    def merge(b, lists, k):
        hits = [h for hits in lists for h in hits]
        return weighted_rank(hits, qclasses[b], metric, beta, k)

    return Plan(probes, merge, _info(qclasses))


def collection_classes(store) -> dict[str, int]:
    """{wnid: number of points} of the labelled points (one facet on the ``wnid`` index)."""
    return {str(w): c for w, c in store.facet("wnid", limit=FACET_LIMIT).items() if w}


@register_mode("category_first", categories=3, beta=1.0, query_class=None)
def category_first(ctx, Q, categories=3, beta=1.0, query_class=None):
    """The ``categories`` classes most similar to the query's class in WordNet, searched one by one, merged."""
    if int(categories) < 1 or beta < 0:
        raise RouterError(f"category_first: categories must be >= 1 and beta >= 0, got {categories}, {beta}")
    qclasses = query_classes(ctx, len(Q), query_class)
    sizes = collection_classes(ctx.store)
    present = sorted(sizes)
    probes, info = [], _info(qclasses)
    for b, qc in enumerate(qclasses):
        ranked = sorted(present, key=lambda c: (pair_relation(qc, c)[0], c))[:int(categories)]
        info[b]["categories"] = [{"wnid": c, "label": label_of(synset_of(c)),
                                  "path_similarity": round(1.0 / (1 + pair_relation(qc, c)[0]), 4)} for c in ranked]
        probes += [Probe(b, None, Filter.of(wnid=c), operands=sizes[c]) for c in ranked]
    metric = ctx.router.tree.metric

    def merge(b, lists, k):
        return weighted_rank([h for hits in lists for h in hits], qclasses[b], metric, beta, k)

    return Plan(probes, merge, info)
