"""Ingest: idempotent, resumable after an interruption, bad files skipped and counted."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from loaders import Item, content_hash, fashion_mnist_items, folder_items
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
    rec = s.retrieve([point_id(content_hash(items[0].read()))])[0]
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


def _jpeg(color, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def _points(store) -> dict[int, dict]:
    return {r.id: r.payload for page in store.scroll(with_vectors=False) for r in page}


def test_one_point_per_distinct_image_with_every_source(tmp_path, make_store, mobilenet):
    red, blue = _jpeg((255, 0, 0)), _jpeg((0, 0, 255))
    root = tmp_path / "pics"
    (root / "sub").mkdir(parents=True)
    for name, data in [("a.jpg", red), ("b.jpg", red), ("c.jpg", blue), ("sub/d.jpg", red)]:
        (root / name).write_bytes(data)
    s = make_store(mobilenet.dim)
    # batch_size 2: a and b (same bytes) share a batch, d comes in a later one
    st = ingest(folder_items(root), mobilenet, s, batch_size=2)
    assert (st["added"], st["existing"], st["points"]) == (2, 2, 2)
    pts = _points(s)
    red_pt = pts[point_id(content_hash(red))]
    assert red_pt["sources"] == [str(root / "a.jpg"), str(root / "b.jpg"), str(root / "sub" / "d.jpg")]
    assert (red_pt["source"], red_pt["key"]) == (str(root / "a.jpg"), "folder:a.jpg")
    assert pts[point_id(content_hash(blue))]["sources"] == [str(root / "c.jpg")]
    # re-ingest: nothing added, nothing rewritten
    st = ingest(folder_items(root), mobilenet, s, batch_size=2)
    assert (st["added"], st["new_sources"], st["points"]) == (0, 0, 2)
    # rename and copy: still two points, the new paths are listed
    (root / "c.jpg").rename(root / "c2.jpg")
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "a-copy.jpg").write_bytes(red)
    st = ingest(list(folder_items(root)) + list(folder_items(copy)), mobilenet, s, batch_size=3)
    assert (st["added"], st["new_sources"], st["points"]) == (0, 2, 2)
    pts = _points(s)
    assert pts[point_id(content_hash(blue))]["sources"] == [str(root / "c.jpg"), str(root / "c2.jpg")]
    assert pts[point_id(content_hash(red))]["sources"][-1] == str(copy / "a-copy.jpg")


def test_duplicates_through_the_router_are_added_once(tmp_path, make_store, mobilenet, fmnist_small):
    from plugin.router import Router

    vecs, _, items = fmnist_small
    s = make_store(mobilenet.dim)
    ingest(items[:120], mobilenet, s)
    router = Router.build(s, k=3, l=2)
    twin = Item(key="elsewhere:0", source="elsewhere:0", wnid=items[130].wnid, read=items[130].read,
                decode=items[130].decode)
    st = ingest([items[130], twin, items[0]], mobilenet, s, router=router)
    assert (st["added"], st["existing"], st["points"]) == (1, 2, 121)
    p = s.retrieve([point_id(content_hash(items[130].read()))])[0].payload
    assert p["sources"] == ["fashion-mnist:test:130", "elsewhere:0"] and p["leaf"] != -1


def test_collection_with_pre_content_ids_is_not_duplicated(make_store, mobilenet):
    """Old collections keep their ids (sha256(key, content)); ingest finds their images by ``sha256``."""
    import hashlib

    from plugin.ingest import item_payload

    items = list(fashion_mnist_items("test", limit=6))
    s = make_store(mobilenet.dim)
    s.update_meta(encoder=mobilenet.name, weights="default")
    old_ids, payloads = [], []
    for it in items[:4]:  # what the old ingest wrote: key-dependent ids, no `sources`
        h = content_hash(it.read())
        old_ids.append(int.from_bytes(hashlib.sha256(f"{it.key}\0{h}".encode()).digest()[:8], "big") >> 1)
        payloads.append({k: v for k, v in item_payload(it, h).items() if k != "sources"})
    s.upsert(old_ids, np.random.default_rng(0).normal(size=(4, mobilenet.dim)), payloads)
    renamed = Item(key="moved:2", source="moved:2", wnid=items[2].wnid, read=items[2].read, decode=items[2].decode)
    st = ingest(items + [renamed], mobilenet, s, batch_size=4)
    assert (st["added"], st["existing"], st["new_sources"], st["points"]) == (2, 5, 1, 6)
    pts = _points(s)
    assert set(old_ids) <= set(pts)  # old points keep their ids
    assert pts[old_ids[2]]["sources"] == ["fashion-mnist:test:2", "moved:2"]
    assert point_id(content_hash(items[5].read())) in pts  # new images get content ids
    assert "point_ids" not in s.get_meta()  # still a mixed collection: the next ingest checks again
    assert ingest(items, mobilenet, s)["added"] == 0


def test_new_collection_is_marked_as_content_ids(make_store, mobilenet):
    s = make_store(mobilenet.dim)
    ingest(fashion_mnist_items("test", limit=2), mobilenet, s)
    assert s.get_meta()["point_ids"] == "content"


def test_id_collision_is_refused_not_merged(make_store, mobilenet, monkeypatch):
    import plugin.ingest

    monkeypatch.setattr(plugin.ingest, "point_id", lambda h: 7)  # force two images onto one id
    s = make_store(mobilenet.dim)
    st = ingest(fashion_mnist_items("test", limit=3), mobilenet, s)
    assert (st["added"], st["bad"], st["points"]) == (1, 2, 1)
    assert all("taken by a different image" in reason for _, reason in st["bad_items"])
    assert s.retrieve([7])[0].payload["sources"] == ["fashion-mnist:test:0"]


def test_each_skipped_file_is_reported_once(tmp_path, capsys, caplog):
    """Through the CLI with its progress bar: one line per skipped file, no log record repeating it."""
    from plugin.cli import main

    root = tmp_path / "pics"
    root.mkdir()
    (root / "ok.jpg").write_bytes(_jpeg((10, 200, 10)))
    (root / "notes.txt").write_text("not an image")
    (tmp_path / "elsewhere.jpg").write_bytes(_jpeg((1, 1, 1)))
    (root / "link.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    with caplog.at_level("WARNING"):
        code = main(["ingest", str(root), "--store", str(tmp_path / "stores"), "--collection", "p"])
    out = capsys.readouterr()
    everything = out.out + out.err + caplog.text
    assert code == 0 and '"added": 1' in out.out and '"bad": 2' in out.out
    assert everything.count("notes.txt") == 1 and "notes.txt: not an image" in out.err
    assert everything.count("link.jpg") == 1
    assert f"link.jpg: symlink to outside the folder: {tmp_path / 'elsewhere.jpg'}" in out.err


def test_without_progress_bar_skips_are_log_warnings(tmp_path, make_store, mobilenet, capsys, caplog):
    root = tmp_path / "pics"
    root.mkdir()
    (root / "notes.txt").write_text("not an image")
    with caplog.at_level("WARNING"):
        st = ingest(folder_items(root), mobilenet, make_store(mobilenet.dim))
    assert st["bad_items"] == [(str(root / "notes.txt"), "not an image (format not recognised)")]
    assert caplog.text.count("notes.txt") == 1 and "notes.txt" not in capsys.readouterr().err


def test_symlinks_follow_only_when_asked(tmp_path, capsys):
    from plugin.cli import main

    root = tmp_path / "pics"
    root.mkdir()
    (tmp_path / "elsewhere.jpg").write_bytes(_jpeg((1, 1, 1)))
    (root / "link.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    args = ["ingest", str(root), "--store", str(tmp_path / "stores"), "--collection", "p", "-q"]
    assert main(args) == 0 and '"added": 0' in capsys.readouterr().out
    assert main(args + ["--follow-symlinks"]) == 0 and '"added": 1' in capsys.readouterr().out


def test_missing_folder_fails_before_creating_a_collection(tmp_path, capsys):
    from plugin.cli import main

    stores = tmp_path / "stores"
    code = main(["ingest", str(tmp_path / "nope"), "--store", str(stores), "--collection", "p", "-q"])
    assert code == 2 and "image folder not found" in capsys.readouterr().err
    assert not (stores / "p").exists()
