"""The demo's logic without a browser: search through the real router on a small real collection, what the
page says a query shows (the semantics engine's answer when the collection has signatures), subtree search, adding uploads through the real ingestion, bad input, serving
pictures only from where the collection came from, and several threads at once."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from demo_collection import (FOOTWEAR, N_FASHION, PHOTOS, SIGNATURES_COLLECTION, demo_service,  # noqa: F401
                             fashion_label, fashion_png, first_train_index, photo_dir, png_bytes, semantics_service,
                             upload_file, uploads_count)

from plugin.errors import HSearchError, UnknownSynsetError
from plugin.taxonomy import synset_payload


def _under(wnid: str, ancestor: str) -> bool:
    return ancestor in synset_payload(wnid)["synsets"]


def test_search_returns_k_hits_with_pictures_labels_and_costs(demo_service):
    from loaders.fashion_mnist import load_arrays
    from PIL import Image

    sneaker = first_train_index("n03472535")  # a training image: not in the collection
    img = Image.fromarray(load_arrays("train")[0][sneaker], mode="L")
    out = demo_service.search_image(img, "relaxed", k=7)
    assert len(out.hits) == 7
    assert all(h.picture is not None for h in out.hits)  # Fashion-MNIST pictures come back by index
    assert all(h.label and h.wnid for h in out.hits)
    assert out.hits[0].wnid == "n03472535"  # a sneaker's nearest neighbour is a sneaker
    assert [h.score for h in out.hits] == sorted((h.score for h in out.hits), reverse=True)
    # what it shows: the classifier's top-5 as WordNet ids with probabilities
    assert len(out.predictions) == 5 and all(w.startswith("n") and 0 <= p <= 1 for w, _, p in out.predictions)
    # the cost: routed search scores a part of the collection, exact scores all of it
    assert 0 < out.stats["operands"] < out.n_points
    assert out.exact["operands"] == out.n_points == demo_service.store.count()
    assert 0 <= out.exact["overlap"] <= 7


def test_photo_query_predicts_its_class_and_finds_the_same_photo(demo_service, photo_dir):
    from PIL import Image

    path = next(photo_dir.glob("*_chelsea.png"))
    out = demo_service.search_image(Image.open(path), "exact", k=3)
    assert any("cat" in lab for _, lab, _ in out.predictions[:3])  # MobileNetV2 sees a cat
    top = out.hits[0]
    assert top.wnid == PHOTOS["chelsea"] and top.score > 0.999
    assert top.picture is not None  # a folder item inside the given image root


def test_search_by_point_id_and_bad_ids(demo_service):
    rec = next(demo_service.store.scroll(batch_size=1, with_vectors=False))[0]
    out = demo_service.search_point(str(rec.id), "exact", k=1)
    assert out.hits[0].id == rec.id and out.query_id == rec.id
    with pytest.raises(HSearchError, match="no point with id"):
        demo_service.search_point("12345", "exact")
    with pytest.raises(HSearchError, match="whole number"):
        demo_service.search_point("12; drop", "exact")


def test_within_restricts_hits_to_the_subtree(demo_service):
    from PIL import Image

    from loaders.fashion_mnist import load_arrays

    bag = Image.fromarray(load_arrays("train")[0][first_train_index("n02774152")], mode="L")
    free = demo_service.search_image(bag, "relaxed", k=10)
    assert not all(_under(h.wnid, FOOTWEAR) for h in free.hits)  # a bag's neighbours are not all shoes
    for within in (FOOTWEAR, "footwear"):  # by id or by name
        out = demo_service.search_image(bag, "relaxed", k=10, within=within)
        assert out.within == [FOOTWEAR]
        assert len(out.hits) == 10 and all(_under(h.wnid, FOOTWEAR) for h in out.hits)


def test_within_unknown_and_empty_subtrees(demo_service):
    from PIL import Image

    img = Image.new("RGB", (64, 64), (90, 40, 200))
    with pytest.raises(UnknownSynsetError, match="n99999999"):
        demo_service.search_image(img, "relaxed", within="n99999999")
    with pytest.raises(UnknownSynsetError, match="no such thing"):
        demo_service.search_image(img, "relaxed", within="no such thing")
    counts = demo_service.synset_counts()
    absent = next(w for w in ("n02084071", "n07747607", "n04285008", "n03790512") if w not in counts)
    out = demo_service.search_image(img, "relaxed", within=absent)
    assert out.hits == []  # a real synset with no images here: no hits, not an error


def test_modes_are_the_registered_ones_that_work(demo_service):
    from demo.service import DemoService
    from plugin.router.modes import MODES, register_mode

    assert demo_service.modes() == [m for m in MODES if m in demo_service.modes()]
    assert {"exact", "relaxed"} <= set(demo_service.modes())

    @register_mode("needs_training")
    def needs_training(flat, Q):
        raise HSearchError("this mode needs a trained head")

    try:
        fresh = DemoService(demo_service.store, demo_service.router, demo_service.encoder, demo_service.pictures)
        assert "needs_training" not in fresh.modes() and "relaxed" in fresh.modes()
        with pytest.raises(HSearchError, match="offers"):
            fresh.search_point(str(next(demo_service.store.scroll(batch_size=1))[0].id), "needs_training")
    finally:
        del MODES["needs_training"]


def test_explain_gives_the_path_and_the_lowest_common_ancestor(demo_service):
    from demo import hierarchy

    idx = first_train_index("n04133789")  # a sandal
    from PIL import Image

    from loaders.fashion_mnist import load_arrays

    out = demo_service.search_image(Image.fromarray(load_arrays("train")[0][idx], mode="L"), "exact", k=5)
    out.query_wnid = "n03472535"  # say the query was classed a gym shoe
    hit = next(i for i, h in enumerate(out.hits) if h.wnid == "n04133789")
    ex = demo_service.explain(out, hit)
    assert ex.path[0] == hierarchy.ROOT and ex.path[-1] == "n04133789"
    assert ex.lca == "n04199027"  # shoe: sandal and gym shoe are both shoes in WordNet 3.0
    assert (ex.up_from_hit, ex.up_from_query) == (1, 1)
    assert ex.lca_count == demo_service.synset_counts()["n04199027"] > 0


def test_hierarchy_counts_come_from_the_facet(demo_service):
    from demo import hierarchy

    counts = demo_service.synset_counts()
    want: dict[str, int] = {}
    for page in demo_service.store.scroll(with_vectors=False, payload_fields=["synsets"]):
        for r in page:
            for w in set(r.payload.get("synsets") or []):
                want[w] = want.get(w, 0) + 1
    assert counts == want  # every synset in the collection, with the number of images under it
    root = demo_service.hierarchy()
    assert root.wnid == hierarchy.ROOT and root.count == demo_service.store.count()
    nodes = hierarchy.flatten(root)
    assert {n.wnid for _, n in nodes} == set(counts)
    for _, n in nodes:
        assert n.count == counts[n.wnid]
        assert all(c.count <= n.count for c in n.children)
    # every stored class's WordNet ancestry, worked out here from its wnid (the collection also holds the
    # scikit-image photos and, where present, ImageNet-sample photos: some of those are footwear too)
    wnids = [r.payload.get("wnid") for page in demo_service.store.scroll(with_vectors=False, payload_fields=["wnid"])
             for r in page]
    assert counts[FOOTWEAR] == sum(_under(w, FOOTWEAR) for w in wnids if w)
    labels = [fashion_label("test", i) for i in range(N_FASHION)]
    assert counts[FOOTWEAR] >= sum(_under(w, FOOTWEAR) for w in labels) > 0


def test_pictures_never_leave_the_collection_folders(demo_service, photo_dir, tmp_path):
    from demo.images import Pictures

    from loaders.base import content_hash

    pics = demo_service.pictures
    inside = next(photo_dir.glob("*_coffee.png"))
    good = {"key": f"folder:{inside.name}", "source": str(inside), "sha256": content_hash(inside.read_bytes())}
    assert pics.of(good) is not None
    # a picture outside every image root, even with its true hash
    outside = tmp_path / "outside.png"
    outside.write_bytes(inside.read_bytes())
    assert pics.of({**good, "source": str(outside)}) is None
    # a symlink inside the root pointing outside it
    link = photo_dir / "zz_link.png"
    link.symlink_to(outside)
    try:
        assert pics.of({**good, "source": str(link)}) is None
    finally:
        link.unlink()
    # relative paths, traversal in dataset keys, a file changed since ingestion
    assert pics.of({**good, "source": inside.name}) is None
    assert pics.of({**good, "source": str(photo_dir / ".." / "photos" / inside.name)}) is not None  # still inside
    assert pics.of({"key": "imagenet-sample:../photos/x.png", "sha256": good["sha256"]}) is None
    assert pics.of({"key": "upload:../../etc/passwd", "sha256": good["sha256"]}) is None
    assert pics.of({**good, "sha256": "0" * 64}) is None
    assert pics.of({"key": "fashion-mnist:test:99999999", "sha256": "0" * 64}) is None
    # a demo told of no roots shows no folder pictures at all
    assert Pictures(roots=[]).of(good) is None


def test_add_reports_each_file_and_finds_the_added_image(demo_service, upload_file):
    from PIL import Image

    idx = first_train_index("n02872752")  # an ankle boot from the train split: not in the collection
    new = upload_file("boot.png", fashion_png("train", idx))
    same = upload_file("boot-again.png", fashion_png("train", idx))
    text = upload_file("notes.png", "not an image at all")
    n0, tree0 = demo_service.store.count(), demo_service.router.flat.n_points
    rows = demo_service.add([("boot.png", new), ("boot-again.png", same), ("notes.png", text)], "boot")
    by = {r.name: r for r in rows}
    assert by["boot.png"].status == "added" and by["boot.png"].id is not None
    assert by["boot-again.png"].status == "already present" and "boot.png" in by["boot-again.png"].reason
    assert by["notes.png"].status == "rejected" and "not an image" in by["notes.png"].reason
    assert demo_service.store.count() == n0 + 1 and demo_service.router.flat.n_points == tree0 + 1
    # searchable at once, with its label and its picture (kept content-addressed under $HSEARCH_HOME)
    out = demo_service.search_image(Image.open(new), "relaxed", k=3)
    assert out.hits[0].id == by["boot.png"].id and out.hits[0].score > 0.999
    assert out.hits[0].wnid == "n02872752" and out.hits[0].picture is not None
    assert demo_service.synset_counts()["n02872752"] == sum(
        fashion_label("test", i) == "n02872752" for i in range(N_FASHION)) + 1
    # adding it again adds nothing
    again = demo_service.add([("boot.png", new)])
    assert again[0].status == "already present" and demo_service.store.count() == n0 + 1


def test_add_rejects_bad_labels_and_big_images_without_writing(demo_service, upload_file):
    from PIL import Image

    from demo.service import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS

    ok = upload_file("ok.png", fashion_png("train", 1))
    n0, files0 = demo_service.store.count(), uploads_count()
    rows = demo_service.add([("ok.png", ok)], "n99999999")
    assert rows[0].status == "rejected" and "n99999999" in rows[0].reason
    big_pixels = upload_file("huge.png", png_bytes(Image.new("L", (8000, 6000))))  # 48 MP, ~50 KB
    assert 8000 * 6000 > MAX_UPLOAD_PIXELS
    big_file = upload_file("big.jpg", b"\xff\xd8\xff" + b"\0" * (MAX_UPLOAD_BYTES + 1))
    rows = demo_service.add([("huge.png", big_pixels), ("big.jpg", big_file), ("empty.png", upload_file("e.png", b""))])
    reasons = {r.name: (r.status, r.reason) for r in rows}
    assert reasons["huge.png"][0] == "rejected" and "too large" in reasons["huge.png"][1]
    assert reasons["big.jpg"][0] == "rejected" and "MiB" in reasons["big.jpg"][1]
    assert reasons["empty.png"][0] == "rejected" and "empty" in reasons["empty.png"][1]
    assert demo_service.store.count() == n0 and uploads_count() == files0  # nothing stored
    with pytest.raises(HSearchError, match="too large"):
        demo_service.load_upload(big_pixels)


def test_two_threads_search_while_a_third_adds(demo_service, upload_file):
    """Gradio runs handlers on worker threads: searches from several tabs and an add must all succeed
    and each search must see a consistent collection."""
    from PIL import Image

    from loaders.fashion_mnist import load_arrays

    queries = [Image.fromarray(load_arrays("train")[0][i], mode="L") for i in range(20, 26)]
    adds = [upload_file(f"t{i}.png", fashion_png("train", 300 + i)) for i in range(6)]
    errors, results = [], []

    def searcher(mode):
        try:
            for q in queries:
                out = demo_service.search_image(q, mode, k=5)
                results.append(len(out.hits))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    def adder():
        try:
            for p in adds:
                demo_service.add([(p.rsplit("/", 1)[-1], p)])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    n0 = demo_service.store.count()
    threads = [threading.Thread(target=searcher, args=(m,)) for m in ("relaxed", "exact")]
    threads.append(threading.Thread(target=adder))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert results == [5] * 12
    assert demo_service.store.count() == n0 + 6 == demo_service.router.flat.n_points
    assert demo_service.router.check()["consistent"]


def test_shows_the_semantics_when_the_collection_has_signatures(semantics_service, demo_service):
    from PIL import Image

    from demo import views
    from loaders.fashion_mnist import load_arrays

    svc = semantics_service
    sneaker = "n03472535"
    img = Image.fromarray(load_arrays("train")[0][first_train_index(sneaker)], mode="L")
    out = svc.search_image(img, "exact", k=5)
    sem = out.semantics
    want = svc.signatures().describe(svc._encode(img)[0], retrieve=False)
    assert [e["wnid"] for e in sem["general"]] == [e["wnid"] for e in want["general"]]
    assert [e["wnid"] for e in sem["specific"]] == [e["wnid"] for e in want["specific"]]
    assert len({e["wnid"] for e in sem["specific"]}) == 3 and sem["stale"] is None
    assert any(e["wnid"] in synset_payload(sneaker)["synsets"] for e in sem["general"])  # a right subtree
    md = views.shows_md(out, svc.synset_counts())
    assert "General semantics" in md and "Specific semantics" in md and "top-5" not in md and "stale" not in md
    for e in sem["general"] + sem["specific"]:
        assert f"**{e['label']}** `{e['wnid']}`" in md and e["path"][-1] in md and f"{e['score']:.3f}" in md
    s = sem["searched"]
    assert f"{s['selected']} of {s['nodes']} synsets" in md and f"{s['images']:,} images ({s['share_images']:.0%}" in md
    plain = demo_service.search_image(img, "exact", k=5)  # a collection without signatures: the classifier's view
    assert plain.semantics is None
    assert "top-5 ImageNet classes" in views.shows_md(plain, demo_service.synset_counts())


def test_added_images_join_the_signatures_and_changes_around_them_are_flagged(semantics_service, upload_file):
    from PIL import Image

    from demo import views
    from loaders.fashion_mnist import load_arrays

    svc = semantics_service
    boot = "n02872752"
    count = lambda: int(svc.signatures().snap.hier.counts[svc.signatures().snap.hier.index[boot]])  # noqa: E731
    n0 = count()
    path = upload_file("boot.png", fashion_png("train", first_train_index(boot)))
    rows = svc.add([("boot.png", path)], "boot")  # the Add tab: through ingest, into the signatures too
    assert rows[0].status == "added" and count() == n0 + 1
    out = svc.search_image(Image.open(path), "exact", k=3)
    assert out.hits[0].id == rows[0].id and out.semantics["stale"] is None
    # a point written around the ingest (router.add alone does not know the signatures): the panel says so
    other = Image.fromarray(load_arrays("train")[0][first_train_index(boot) + 1], mode="L")
    svc.router.add([12345], svc._encode(other)[0][None], [{**synset_payload(boot), "leaf": -1}])
    svc.synset_counts(refresh=True)
    out = svc.search_image(other, "exact", k=3)
    assert out.semantics["stale"]["synsets_changed"] >= 1 and count() == n0 + 1
    assert f"hsearch signatures build --sync --collection {SIGNATURES_COLLECTION}" in views.shows_md(
        out, svc.synset_counts())
    svc.signatures().sync()  # what that command does
    assert svc.search_image(other, "exact", k=3).semantics["stale"] is None and count() == n0 + 2


def test_views_escape_user_text():
    from demo import views
    from demo.service import AddRow

    md = views.add_report_md([AddRow("[x](javascript:alert(1))|<img>.png", "rejected", "not an image")])
    assert "[x](javascript" not in md and "<img>" not in md
    assert "\\[x\\]" in md


def test_cli_demo_on_a_missing_collection_is_a_clear_error(capsys):
    from plugin import cli, config

    rc = cli.main(["demo", "--collection", "no-such-collection", "--port", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no-such-collection" in err and "hsearch ingest" in err
    assert not (config.stores_dir() / "no-such-collection").exists()  # nothing created


def test_pick_tree_fits_the_collection():
    from demo.service import pick_tree

    assert pick_tree(10_000) == (8, 3)
    for n in (2, 25, 100, 170, 700):
        k, l = pick_tree(n)
        assert k ** (l - 1) <= n


def test_query_vectors_match_the_ingest_encoder(demo_service):
    """The page's query path and the ingest share an encoder: a stored Fashion-MNIST point's picture,
    encoded as a query, gives back its stored vector."""
    rec = next(r for page in demo_service.store.scroll(batch_size=64, with_vectors=True) for r in page
               if str(r.payload.get("key", "")).startswith("fashion-mnist:"))
    vec, _ = demo_service._encode(demo_service.pictures.of(rec.payload))
    assert np.dot(vec, rec.vector) > 0.9999


def test_default_collection_is_built_when_missing_on_the_server_backend(monkeypatch, mobilenet):
    """What the docker-compose demo does against an empty Qdrant server (here qdrant-client's local mode,
    with the Fashion-MNIST ingest cut to 200 images): ingest, build the router, serve searches and facets."""
    import loaders

    from demo.service import DEFAULT_COLLECTION, DemoService

    real = loaders.fashion_mnist_items
    monkeypatch.setattr(loaders, "fashion_mnist_items", lambda split="test", limit=None: real(split, limit=200))
    said = []
    svc = DemoService.open(":memory:", DEFAULT_COLLECTION, encoder=mobilenet, echo=said.append)
    try:
        assert type(svc.store).__name__ == "ServerStore" and svc.store.count() == 200
        assert any("ingesting" in m for m in said) and any("building the router" in m for m in said)
        assert svc.router.flat.n_points == 200
        assert svc.synset_counts()["n00001740"] == 200
        out = svc.search_point(str(next(svc.store.scroll(batch_size=1))[0].id), "relaxed", k=5, within=FOOTWEAR)
        assert all(FOOTWEAR in h.synsets for h in out.hits)
    finally:
        svc.close()
