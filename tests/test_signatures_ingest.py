"""Ingestion keeps a collection's signatures current: new images join their synsets' signatures at once
(no stale describe), a synset new to them is clustered at the end of the ingest, and signatures that
cannot be read never stop an ingest. Real Fashion-MNIST images, MobileNetV2 vectors."""
from __future__ import annotations

import io
import logging
from contextlib import redirect_stderr, redirect_stdout

import pytest

from plugin.signatures.engine import SemanticsEngine
from plugin.signatures.state import state_path

BAG = "n02774152"


def _counts(eng) -> dict:
    h = eng.snap.hier
    return {w: int(h.counts[i]) for i, w in enumerate(h.wnids)}


def _under(items, w) -> int:
    from plugin.taxonomy import synset_payload

    return sum(w in synset_payload(it.wnid)["synsets"] for it in items)


@pytest.fixture()
def items():
    from loaders import fashion_mnist_items

    return list(fashion_mnist_items("test", limit=400, start=1000))


def test_ingest_updates_signatures_then_clusters_a_new_synset(tmp_path, mobilenet, items):
    from plugin.cli import main
    from plugin.ingest import ingest
    from plugin.router import Router
    from plugin.signatures.shared import _cache, engine_for
    from plugin.store import open_store

    first = [it for it in items[:300] if it.wnid != BAG]  # the collection starts without bags
    later = [it for it in items[300:340] if it.wnid != BAG]  # a few of every class: each grows < 25%
    bags = [it for it in items if it.wnid == BAG]
    store = open_store(tmp_path / "c", dim=mobilenet.dim)
    assert ingest(first, mobilenet, store)["signatures"] is None  # no signatures yet: nothing to follow
    built = SemanticsEngine.build(store, cap=64)
    before = _counts(built)
    sizes = {w: int(built.nodes[i].sizes.sum()) for i, w in enumerate(built.snap.hier.wnids)}
    router = Router.build(store, k=4, l=2, relayout=False)

    st = ingest(later, mobilenet, store, router=router)
    assert st["added"] == len(later) and st["signatures"] == {"added": len(later), "synced": False, "stale": []}
    shared = engine_for(store)  # the engine the ingest updated, kept as the shared one (no reload)
    on_disk = SemanticsEngine.open(store)  # and what it saved
    for eng in (shared, on_disk):
        assert eng.check()["consistent"], eng.check()
        assert eng.meta["n_points"] == len(first) + len(later)
        hier = eng.snap.hier
        for i, w in enumerate(hier.wnids):  # every synset counts its new images, which joined its clusters
            assert _counts(eng)[w] == before[w] + _under(later, w), w
            assert int(eng.nodes[i].sizes.sum()) == sizes[w] + _under(later, w), w
    assert sum(_counts(on_disk).values()) > sum(before.values())

    st = ingest(bags, mobilenet, store, router=router)  # a synset the signatures have never seen
    assert st["signatures"]["synced"] and st["signatures"]["stale"] == [] and st["signatures"]["reclustered"] >= 1
    eng = SemanticsEngine.open(store)
    assert BAG in eng.snap.hier.wnids and _counts(eng)[BAG] == len(bags) and eng.check()["consistent"]
    assert engine_for(store).snap.hier.wnids == eng.snap.hier.wnids
    router.save()
    loc, name = str(store.path.parent), store.path.name
    store.close()
    _cache.clear()

    out, err = io.StringIO(), io.StringIO()  # `hsearch describe` has nothing to flag
    with redirect_stdout(out), redirect_stderr(err):
        assert main(["describe", "--sample", f"fashion-mnist:test:{1000 + items.index(bags[0])}", "--collection",
                     name, "--store", loc, "-k", "3"]) == 0
    assert "specific semantics:" in out.getvalue() and "changed since" not in err.getvalue()


def test_unreadable_signatures_never_stop_an_ingest(tmp_path, mobilenet, items, caplog):
    from plugin.ingest import ingest
    from plugin.store import open_store

    store = open_store(tmp_path / "c", dim=mobilenet.dim)
    ingest(items[:40], mobilenet, store)
    path = state_path(store)
    path.write_bytes(b"not an npz file")
    with caplog.at_level(logging.WARNING, logger="hsearch.ingest"):
        st = ingest(items[40:60], mobilenet, store)
    assert st["added"] == 20 and st["signatures"] is None and store.count() == 60
    assert "not updated" in caplog.text and path.read_bytes() == b"not an npz file"  # left for a rebuild
    store.close()
