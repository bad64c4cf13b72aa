"""``Store.facet`` on both backends: per-value point counts from the engine's payload index (or a scroll
for an unindexed field), checked against counts taken directly from the payloads that were written."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from plugin.errors import HSearchError
from plugin.store import Filter

N = 400


@pytest.fixture(scope="module")
def labelled_payloads():
    """Payloads of the first N Fashion-MNIST test images with their real WordNet synsets."""
    from loaders.fashion_mnist import CLASSES, load_arrays
    from plugin.taxonomy import synset_payload

    try:
        _, labels = load_arrays("test")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    out = []
    for i, c in enumerate(labels[:N]):
        name, wnid = CLASSES[int(c)]
        out.append({**synset_payload(wnid), "leaf": i % 7, "class_name": name})
    return out


def _filled(make_store, payloads):
    store = make_store(8)
    vecs = np.random.default_rng(0).standard_normal((len(payloads), 8)).astype(np.float32)
    store.upsert(np.arange(len(payloads)), vecs, payloads)
    return store


def _expected(payloads, key, keep=lambda p: True):
    c = Counter()
    for p in payloads:
        if keep(p):
            v = p[key]
            c.update(set(v) if isinstance(v, list) else [v])
    return dict(c)


def test_facet_counts_every_synset_of_an_array_field(make_store, labelled_payloads):
    store = _filled(make_store, labelled_payloads)
    got = store.facet("synsets", limit=10_000)
    want = _expected(labelled_payloads, "synsets")
    assert got == want
    assert got["n00001740"] == N  # entity: every point's synsets reach WordNet's root
    counts = list(got.values())
    assert counts == sorted(counts, reverse=True)  # most frequent first


def test_facet_on_an_integer_field_keeps_int_values(make_store, labelled_payloads):
    store = _filled(make_store, labelled_payloads)
    got = store.facet("leaf")
    assert got == _expected(labelled_payloads, "leaf")
    assert all(type(v) is int for v in got)


def test_facet_respects_the_filter(make_store, labelled_payloads):
    store = _filled(make_store, labelled_payloads)
    got = store.facet("synsets", filter=Filter.of(leaf_in=[2, 5]), limit=10_000)
    assert got == _expected(labelled_payloads, "synsets", keep=lambda p: p["leaf"] in (2, 5))
    shoes = store.facet("synsets", filter=Filter.of(synsets_any=["n03472535"]))  # gym shoe subtree: sneakers only
    assert shoes["n03472535"] == sum(p["wnid"] == "n03472535" for p in labelled_payloads) > 0


def test_facet_limit_keeps_the_most_frequent(make_store, labelled_payloads):
    store = _filled(make_store, labelled_payloads)
    want = _expected(labelled_payloads, "synsets")
    top = store.facet("synsets", limit=3)
    assert len(top) == 3
    assert min(top.values()) >= sorted(want.values(), reverse=True)[2]
    assert all(want[v] == n for v, n in top.items())


def test_facet_on_a_field_without_index_counts_by_scroll(make_store, labelled_payloads):
    store = _filled(make_store, labelled_payloads)
    assert "class_name" not in ("leaf", "synsets")  # no payload index on it
    assert store.facet("class_name") == _expected(labelled_payloads, "class_name")
    # the scroll fallback and the engine agree on an indexed field too
    assert store._facet_scroll("synsets", None) == store.facet("synsets", limit=10_000)


def test_facet_bad_limit_and_empty_collection(make_store):
    store = make_store(8)
    assert store.facet("synsets") == {}
    with pytest.raises(HSearchError, match="limit"):
        store.facet("synsets", limit=0)
