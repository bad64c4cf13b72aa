"""Ingest: idempotent, resumable after an interruption, bad files skipped and counted."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from loaders import fashion_mnist_items, folder_items
from plugin.errors import CollectionExistsError
from plugin.ingest import ingest, point_id
from plugin.store import Filter


def test_ingest_is_idempotent_and_labels_points(make_store, mobilenet):
    s = make_store(mobilenet.dim)
    items = list(fashion_mnist_items("test", limit=40))
    st = ingest(items, mobilenet, s, batch_size=16)
    assert (st["seen"], st["added"], st["existing"], st["bad"]) == (40, 40, 0, 0)
    again = ingest(items, mobilenet, s, batch_size=16)
    assert (again["added"], again["existing"], again["points"]) == (0, 40, 40)
    rec = s.retrieve([point_id(items[0].key, __import__("loaders").content_hash(items[0].read()))])[0]
    assert rec.payload["wnid"] == items[0].wnid and rec.payload["leaf"] == -1
    assert "n00001740" in rec.payload["synsets"] and rec.payload["source"] == "fashion-mnist:test:0"
    # footwear subtree: sandals, sneakers (gym shoes), boots all sit under footwear.n.02 (n03380867)
    n_foot = sum(i.wnid in {"n04133789", "n03472535", "n02872752"} for i in items)
    assert s.count(Filter.of(synsets_any=["n03380867"])) == n_foot
    assert s.get_meta()["encoder"] == "mobilenet_v2"


def test_interrupted_ingest_resumes_without_loss(make_store, mobilenet):
    s = make_store(mobilenet.dim)
    items = list(fashion_mnist_items("test", limit=50))

    def interrupted():
        for n, it in enumerate(items):
            if n == 35:
                raise KeyboardInterrupt
            yield it

    with pytest.raises(KeyboardInterrupt):
        ingest(interrupted(), mobilenet, s, batch_size=10)
    assert s.count() == 30  # three whole batches landed
    st = ingest(items, mobilenet, s, batch_size=10)
    assert (st["existing"], st["added"], st["points"]) == (30, 20, 50)


def test_bad_files_are_skipped_counted_and_named(tmp_path, make_store, mobilenet, caplog):
    def jpeg(color):
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), color).save(buf, "JPEG")
        return buf.getvalue()

    tmp_path = tmp_path / "images"
    tmp_path.mkdir()
    (tmp_path / "ok1.jpg").write_bytes(jpeg((255, 0, 0)))
    (tmp_path / "n02084071_ok2.jpg").write_bytes(jpeg((0, 255, 0)))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "trunc.jpg").write_bytes(jpeg((0, 0, 255))[:200])
    (tmp_path / "n99999999_unknown.jpg").write_bytes(jpeg((9, 9, 9)))
    s = make_store(mobilenet.dim)
    with caplog.at_level("WARNING"):
        st = ingest(folder_items(tmp_path), mobilenet, s)
    assert (st["added"], st["bad"], st["unlabelled"]) == (2, 3, 1)
    named = " ".join(src for src, _ in st["bad_items"])
    assert "notes.txt" in named and "trunc.jpg" in named and "n99999999_unknown.jpg" in named
    assert "notes.txt" in caplog.text
    assert s.count() == 2


def test_encoder_and_collection_must_agree(make_store, mobilenet):
    s = make_store(512)
    with pytest.raises(CollectionExistsError, match="1280-d"):
        ingest(fashion_mnist_items("test", limit=2), mobilenet, s)
    assert s.count() == 0
