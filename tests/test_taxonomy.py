"""WordNet 3.0 offline: known facts, agreement with nltk, errors for bad ids."""
from __future__ import annotations

import numpy as np
import pytest

from plugin.errors import UnknownSynsetError
from plugin.taxonomy import Taxonomy, imagenet_wnids, synset_of, synset_payload, wordnet

DOG, CAT, ENTITY = "n02084071", "n02121620", "n00001740"


def test_dog_cat_known_facts():
    t = Taxonomy([DOG, CAT], cache=False)
    assert t.distance[0, 1] == 4 and t.distance[0, 0] == 0
    assert t.path_similarity[0, 1] == pytest.approx(0.2)
    assert t.lca_height[0, 1] == 2  # both are two hypernym steps below carnivore
    assert synset_of(DOG).name() == "dog.n.01" and synset_of(CAT).name() == "cat.n.01"


def test_imagenet_wnids_resolve_and_matrix_matches_nltk():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and wnids[0] == "n01440764"
    t = Taxonomy(wnids)
    rng = np.random.default_rng(0)
    syn = [synset_of(w) for w in wnids]
    for i, j in rng.integers(0, 1000, size=(60, 2)):
        assert t.distance[i, j] == syn[i].shortest_path_distance(syn[j])
    assert (t.distance == t.distance.T).all()
    t2 = Taxonomy(wnids)  # second build reads the disk cache
    assert (t2.distance == t.distance).all()


def test_weights_are_row_softmax_of_negative_distance():
    wnids = ["n02084071", "n02121620", "n02110063", "n04370048"]  # dog, cat, malamute, sweater
    t = Taxonomy(wnids, cache=False)
    w = t.weights(alpha=0.3)
    np.testing.assert_allclose(w.sum(1), 1, atol=1e-6)
    e = np.exp(-0.3 * t.distance)
    np.testing.assert_allclose(w, e / e.sum(1, keepdims=True), atol=1e-6)
    assert w[0, 2] > w[0, 1] > w[0, 3]  # dog is nearer malamute than cat, and cat than sweater


def test_ancestors_payload_and_induced_tree():
    p = synset_payload(DOG)
    assert p["label"] == "dog" and DOG in p["synsets"] and ENTITY in p["synsets"]
    assert "n02075296" in p["synsets"]  # carnivore
    t = Taxonomy([DOG, CAT], cache=False)
    anc = t.ancestors(DOG)
    assert anc[0] == DOG and anc[-1] == ENTITY and anc == t.ancestors(DOG)
    assert t.nodes[0] == ENTITY and ("n02075296", "n02083346") in t.edges  # carnivore -> canine


@pytest.mark.parametrize("bad", ["n99999999", "dog", "n0208407", "v02084071", ""])
def test_unknown_or_malformed_wnids_are_named(bad):
    with pytest.raises(UnknownSynsetError, match="unknown or malformed"):
        Taxonomy([DOG, bad])
    with pytest.raises(UnknownSynsetError):
        synset_payload(bad)


def test_wordnet_loads_offline():
    wn = wordnet()
    assert wn.get_version() == "3.0"
