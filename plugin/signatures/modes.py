"""The ``semantic`` search mode: the semantics engine picks the synsets, the store scores their images.

    router.search(vec, k=10, mode="semantic")            # fraction=0.25, n_specific=3
    hits.stats["specific"], hits.stats["general"]        # why these hits: the synsets searched

Per query, :meth:`SemanticsEngine.semantics` runs branch selection, Extended OR-Inc pruning and CombSUM;
the plan is one store probe restricted (synset filter) to the specific semantics, scored exactly: the
paper's retrieval in the final search space. ``filter=`` and ``within=`` apply on top: a store
:class:`Filter` holds several synset conditions, so the hits lie under a specific semantic AND under
the subtree (none when the two are disjoint; no widening, the probe has no leaf routing). The engine
is the collection's shared one (:mod:`plugin.signatures.shared`: loaded once per state file, kept current
by ingestion); a collection without signatures is an error that says how to build them.
"""
from __future__ import annotations

from plugin.router.modes import Plan, Probe, register_mode
from plugin.signatures.engine import label
from plugin.signatures.selection import FRACTION, N_SPECIFIC
from plugin.signatures.shared import _cache, engine_for  # noqa: F401 - _cache: tests clear it
from plugin.store.base import Filter


@register_mode("semantic", fraction=FRACTION, n_specific=N_SPECIFIC)
def semantic(ctx, Q, fraction=FRACTION, n_specific=N_SPECIFIC):
    """Images of the specific semantics (branch selection, Ext OR-Inc pruning, CombSUM), scored exactly."""
    eng = engine_for(ctx.store)
    hier = eng.snap.hier
    probes, info = [], []
    for b, q in enumerate(Q):
        r = eng.semantics(q, fraction=fraction, n_specific=n_specific)
        spec = [hier.wnids[x] for x in r["specific"]]
        probes.append(Probe(b, filter=Filter.of(synsets_any=spec), operands=r["searched"]["images"]))
        info.append({"general": [hier.wnids[x] for x in r["general"]], "specific": spec,
                     "specific_labels": [label(w) for w in spec],
                     "synsets_selected": r["searched"]["selected"], "synsets_survivors": r["searched"]["survivors"],
                     "synsets_total": r["searched"]["nodes"], "semantics_ms": r["ms"]})
    return Plan(probes, info=info)
