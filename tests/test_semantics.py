"""WordNet semantics: hierarchical inference and CRM against hand-computed cases, the hierarchical loss
(gradient, CE limit), a short real training run, the head through create_encoder, and the semantic
search modes (only allowed synsets, reasons on every hit)."""
from __future__ import annotations

import numpy as np
import pytest

from plugin.semantics.inference import ProbabilityError, crm_predict, crm_scores, hierarchical_inference

W3 = np.array([[0.5, 0.3, 0.2], [0.25, 0.5, 0.25], [0.2, 0.2, 0.6]])  # rows sum to 1, not symmetric


def test_hierarchical_inference_hand_computed():
    p = np.array([[0.5, 0.2, 0.3]])
    # W p = [.25+.06+.06, .125+.10+.075, .10+.04+.18] = [.37, .30, .32]; s = p + 0.5 W p = [.685, .35, .46]
    s = np.array([0.685, 0.35, 0.46])
    np.testing.assert_allclose(hierarchical_inference(p, W3, alpha=0.5, T=1)[0], s / s.sum(), atol=1e-12)
    two = hierarchical_inference(hierarchical_inference(p, W3, 0.5, 1), W3, 0.5, 1)
    np.testing.assert_allclose(hierarchical_inference(p, W3, 0.5, 2), two, atol=1e-12)
    np.testing.assert_allclose(hierarchical_inference(p, W3, 0.5, 0), p)
    # without the diagonal: rows [0, .6, .4], [.5, 0, .5], [.5, .5, 0]; W'p = [.24, .40, .35]
    s2 = p[0] + 0.5 * np.array([0.24, 0.40, 0.35])
    np.testing.assert_allclose(hierarchical_inference(p, W3, 0.5, 1, include_self=False)[0], s2 / s2.sum())
    batch = np.array([[0.5, 0.2, 0.3], [0.1, 0.1, 0.8], [1.0, 0.0, 0.0]])
    rows = np.vstack([hierarchical_inference(r, W3, 0.3, 3) for r in batch])
    np.testing.assert_allclose(hierarchical_inference(batch, W3, 0.3, 3), rows, atol=1e-12)


def test_crm_matches_its_definition():
    # classes 1 and 2 are siblings (height 1), class 0 is far (height 3)
    C = np.array([[0, 3, 3], [3, 0, 1], [3, 1, 0]], float)
    C[2, 0] = 2  # not symmetric, so the test tells sum_j p_j C[j, k] from sum_j p_j C[k, j]
    p = np.array([[0.4, 0.35, 0.25], [0.9, 0.05, 0.05]])
    want = np.array([[sum(p[n, j] * C[j, k] for j in range(3)) for k in range(3)] for n in range(2)])
    np.testing.assert_allclose(crm_scores(p, C), -want)
    assert crm_predict(p, C).tolist() == [1, 0]  # flat argmax would say 0 for the first: CRM hedges


@pytest.mark.parametrize("bad,match", [
    (np.array([[0.5, np.nan, 0.5]]), "NaN"), (np.array([[0.5, 0.2, 0.2]]), "sum to 1"),
    (np.array([[1.5, -0.5, 0.0]]), "non-negative"), (np.array([[0.5, 0.5]]), "W|weight|2 classes")])
def test_inference_refuses_bad_probabilities(bad, match):
    with pytest.raises(ProbabilityError, match=match):
        hierarchical_inference(bad, W3)


def test_inference_refuses_bad_parameters():
    p = np.array([[0.5, 0.2, 0.3]])
    with pytest.raises(ProbabilityError, match="alpha"):
        hierarchical_inference(p, W3, alpha=-0.1)
    with pytest.raises(ProbabilityError, match="T must"):
        hierarchical_inference(p, W3, T=-1)
    with pytest.raises(ProbabilityError, match="T must"):
        hierarchical_inference(p, W3, T=1.5)
    with pytest.raises(ProbabilityError, match="cost matrix"):
        crm_predict(p, np.zeros((2, 2)))


def test_loss_gradient_and_ce_limit():
    import torch

    from plugin.semantics.loss import HierarchicalLoss, pairwise_term, related_mask

    assert related_mask(W3).tolist() == [[True, False, False], [False, True, False], [False, False, True]]
    W = torch.tensor([[0.4, 0.35, 0.25], [0.35, 0.4, 0.25], [0.2, 0.2, 0.6]], dtype=torch.float64)
    rel = torch.as_tensor(related_mask(W.numpy()))
    assert rel[0, 1] and not rel[0, 2]
    protos = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: pairwise_term(f, W, rel, 0.2), (protos,))
    # related pairs pulled together: the term grows with their distance
    f = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64)
    g = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]], dtype=torch.float64)
    assert float(pairwise_term(f, W, rel, 0.2)) < float(pairwise_term(g, W, rel, 0.2))
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    flat, _ = HierarchicalLoss(W.numpy(), lam=0.0)(logits, y, protos.float())
    assert torch.isclose(flat, torch.nn.functional.cross_entropy(logits, y))
    hier, parts = HierarchicalLoss(W.numpy(), lam=0.5)(logits, y, protos.float())
    assert torch.isclose(hier, flat + 0.5 * parts["pair"], atol=1e-5) and parts["pair"] > 0


def _split(fmnist_small):
    vecs, wnids, items = fmnist_small
    classes = sorted(set(wnids))
    y = np.array([classes.index(w) for w in wnids])
    return vecs, y, classes, items


def test_training_lowers_loss_beats_chance_and_resumes(fmnist_small, tmp_path):
    from plugin.semantics.trainer import head_probabilities, train_head

    vecs, y, classes, _ = _split(fmnist_small)
    kw = dict(encoder="mobilenet_v2", lam=0.5, epochs=30, lr=2e-2, batch_size=64, seed=1, progress=False)
    head, hist = train_head(vecs[:200], y[:200], classes, out_dir=tmp_path / "a", **kw)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    acc = (head_probabilities(head, vecs[200:]).argmax(1) == y[200:]).mean()
    assert acc > 0.5  # 10 classes: chance is 0.1
    assert (tmp_path / "a" / "loss.png").stat().st_size > 5000
    # interrupted after 12 epochs, then resumed: the same weights as the uninterrupted run
    train_head(vecs[:200], y[:200], classes, out_dir=tmp_path / "b", **{**kw, "epochs": 12})
    resumed, hist_b = train_head(vecs[:200], y[:200], classes, out_dir=tmp_path / "b", **kw)
    assert hist_b["loss"] == hist["loss"]
    for a, b in zip(head.state_dict().values(), resumed.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy())
    # other data of the same size in the same folder starts afresh instead of resuming
    _, hist_c = train_head(vecs[100:300], y[100:300], classes, out_dir=tmp_path / "b", **{**kw, "epochs": 31})
    assert len(hist_c["loss"]) == 31 and hist_c["loss"][:30] != hist["loss"]


def test_head_loads_through_create_encoder(fmnist_small, tmp_path):
    from plugin.encoders import create_encoder
    from plugin.errors import HSearchError
    from plugin.semantics.trainer import train_head

    vecs, y, classes, items = _split(fmnist_small)
    train_head(vecs, y, classes, encoder="mobilenet_v2", out_dir=tmp_path, lam=0.0, epochs=20, lr=3e-3,
               batch_size=64, progress=False)
    enc = create_encoder("mobilenet_v2", device="cpu", head=str(tmp_path / "head.pt"))
    assert enc.classes == classes
    probs = enc.predict_proba([it.load() for it in items[:40]])
    assert probs.shape == (40, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == y[:40]).mean() > 0.8  # training images: the head fits them
    with pytest.raises(HSearchError, match="trained on 'mobilenet_v2'"):
        create_encoder("efficientnet_lite0", device="cpu", head=str(tmp_path / "head.pt"))


@pytest.fixture
def labelled_router(make_store, fmnist_small):
    from plugin.router import Router
    from plugin.taxonomy import synset_payload

    vecs, wnids, _ = fmnist_small
    s = make_store(vecs.shape[1])
    s.upsert(np.arange(300), vecs, [synset_payload(w) | {"leaf": -1} for w in wnids])
    return Router.build(s, k=3, l=2), vecs, wnids


def test_weighted_mode_reranks_by_hierarchy(labelled_router):
    from plugin.errors import RouterError

    r, vecs, wnids = labelled_router
    # a query whose plain neighbours mix classes (shirts among T-shirts and pullovers), so there is
    # something to re-rank
    qi = next(i for i in range(300) if len({h.payload["wnid"] for h in r.search(vecs[i], k=10, mode="relaxed")}) >= 3)
    q, qc = vecs[qi], wnids[qi]
    plain = r.search(q, k=10, mode="relaxed")
    same = r.search(q, k=10, mode="weighted", query_class=qc, beta=0.0)
    assert [h.id for h in same] == [h.id for h in plain]  # beta=0: the vector ranking
    res = r.search(q, k=10, mode="weighted", query_class=qc, beta=4.0)
    wd = [h.why["weighted_distance"] for h in res]
    assert wd == sorted(wd) and res.stats["query_class"] == qc
    assert all(h.why["lca_height"] >= 0 and h.why["query_class"] == qc for h in res)
    share = lambda hits: np.mean([h.payload["wnid"] == qc for h in hits])  # noqa: E731
    assert share(res) >= share(plain) and [h.id for h in res] != [h.id for h in plain]
    # the ranking is the candidates sorted by d * (1 + beta * h / H), computed here from the definition
    from plugin.taxonomy.taxonomy import pair_relation

    cands = r.search(q, k=100, mode="relaxed")
    h = np.array([pair_relation(qc, c.payload["wnid"])[1] for c in cands], float)
    wdist = (1 - np.array([c.score for c in cands])) * (1 + 4.0 * h / max(h.max(), 1))
    assert [h.id for h in res] == [cands[i].id for i in np.argsort(wdist, kind="stable")[:10]]
    probs = np.zeros(10)
    classes = sorted(set(wnids))
    probs[classes.index(qc)] = 1.0
    via_probs = r.search(q, k=10, mode="weighted", probs=probs, classes=classes, beta=4.0)
    assert [h.id for h in via_probs] == [h.id for h in res]
    with pytest.raises(RouterError, match="needs the query's class"):
        r.search(q, k=10, mode="weighted")
    with pytest.raises(RouterError, match="sum to 1"):
        r.search(q, k=10, mode="weighted", probs=probs * 2, classes=classes)


def test_category_first_returns_only_the_chosen_categories(labelled_router):
    from plugin.taxonomy.taxonomy import pair_relation

    r, vecs, wnids = labelled_router
    boot = "n02872752"
    res = r.search(vecs[0], k=15, mode="category_first", query_class=boot, categories=3)
    chosen = [c["wnid"] for c in res.stats["categories"]]
    assert chosen[0] == boot and len(chosen) == 3
    present = sorted(set(wnids))
    dist = sorted(pair_relation(boot, c)[0] for c in present)
    assert [pair_relation(boot, c)[0] for c in chosen] == dist[:3]  # the 3 nearest classes in WordNet
    assert len(res) == 15 and {h.payload["wnid"] for h in res} <= set(chosen)
    assert res.stats["operands"] == sum(w in chosen for w in wnids)
    sub = r.search(vecs[0], k=5, mode="category_first", query_class=boot, within="n03380867")
    assert all("n03380867" in h.payload["synsets"] for h in sub)  # and the subtree filter still holds


def test_cli_train_then_weighted_search(capsys, tmp_path):
    import json

    from plugin.cli import main

    store = str(tmp_path / "stores")
    common = ["--store", store, "--collection", "fm"]
    assert main(["ingest", "fashion-mnist:test", "--limit", "150", "-q", *common]) == 0
    assert main(["build", "-k", "3", "-l", "2", *common]) == 0
    capsys.readouterr()
    assert main(["train", "--epochs", "15", "-q", "--out", str(tmp_path / "h"), *common]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["classes"] == 10 and info["points"] == 150 and info["train_acc"] > 0.6
    for mode in ("weighted", "category_first"):
        code = main(["search", "--sample", "fashion-mnist:train:0", "-k", "5", "--mode", mode, "--head",
                     str(tmp_path / "h" / "head.pt"), *common])
        out = capsys.readouterr().out
        qc = json.loads(out.split("stats: ")[1])["query_class"]
        assert code == 0 and qc in {"n02872752", "n03472535", "n04133789"}, out  # an ankle boot: footwear
    assert main(["search", "--sample", "fashion-mnist:train:0", "--mode", "weighted", *common]) == 0
    assert '"query_class": "n' in capsys.readouterr().out  # ImageNet classifier's own prediction


def test_resnet50_finetune_smoke_run_on_cpu(fmnist_small, tmp_path):
    """The full fine-tuning path (meant for a GPU) runs end to end on CPU for two steps from random weights,
    and its checkpoint loads back through create_encoder with the collection's classes."""
    from plugin.encoders import create_encoder
    from plugin.semantics.trainer import finetune_resnet50

    _, y, classes, items = _split(fmnist_small)
    images = [it.load() for it in items[:8]]
    path, hist = finetune_resnet50(images, y[:8], classes, tmp_path, epochs=1, batch_size=4, pretrained=None,
                                   device="cpu", progress=False, max_steps=2)
    assert len(hist["loss"]) == 2 and all(np.isfinite(hist["loss"])) and hist["pair"][0] > 0
    enc = create_encoder("resnet50", pretrained=path, device="cpu")
    assert enc.classes == classes
    probs = enc.predict_proba(images[:3])
    assert probs.shape == (3, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
