"""Loaders yield stable keys and labels; untrusted bytes are refused with a clear reason."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from loaders import fashion_mnist_items, folder_items, imagenet_sample_items, open_image_bytes, open_loader
from loaders.fashion_mnist import CLASSES, load_arrays
from plugin.errors import BadImageError
from tests.conftest import IMAGENET_SAMPLE


def _jpeg(size=(64, 48), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def test_fashion_mnist_splits_and_labels():
    imgs, labels = load_arrays("test")
    assert imgs.shape == (10000, 28, 28) and labels.max() == 9
    items = list(fashion_mnist_items("train", limit=5))
    assert [i.key for i in items] == [f"fashion-mnist:train:{k}" for k in range(5)]
    assert items[0].wnid == CLASSES[int(load_arrays("train")[1][0])][1]
    im = items[0].load()
    assert im.size == (28, 28) and im.mode == "L"
    with pytest.raises(ValueError, match="split"):
        load_arrays("val")


def test_folder_layouts_give_labels(tmp_path):
    (tmp_path / "n02084071").mkdir()
    (tmp_path / "n02084071" / "a.jpg").write_bytes(_jpeg())
    (tmp_path / "n02121620_kitty.jpg").write_bytes(_jpeg())
    (tmp_path / "holiday.jpg").write_bytes(_jpeg())
    (tmp_path / ".hidden.jpg").write_bytes(_jpeg())
    items = list(folder_items(tmp_path))
    got = {i.key.split(":", 1)[1]: i.wnid for i in items}
    assert got == {"holiday.jpg": None, "n02084071/a.jpg": "n02084071", "n02121620_kitty.jpg": "n02121620"}
    assert [i.key for i in folder_items(tmp_path)] == [i.key for i in items]  # deterministic order
    assert items[0].load().size == (64, 48)
    with pytest.raises(FileNotFoundError):
        list(folder_items(tmp_path / "missing"))


def test_bad_bytes_are_refused_with_reasons():
    good = _jpeg()
    with pytest.raises(BadImageError, match="not an image"):
        open_image_bytes(b"hello, I am a text file")
    with pytest.raises(BadImageError, match="empty"):
        open_image_bytes(b"")
    with pytest.raises(BadImageError, match="truncated|corrupt"):
        open_image_bytes(good[: len(good) // 2])
    buf = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buf, "PNG")  # 144 MP, a few hundred KB compressed
    with pytest.raises(BadImageError, match="MP"):
        open_image_bytes(buf.getvalue())
    assert open_image_bytes(good).size == (64, 48)


def test_big_jpeg_is_decoded_at_reduced_scale():
    im = open_image_bytes(_jpeg(size=(4000, 3000)))
    assert max(im.size) < 4000 and min(im.size) >= 512


@pytest.mark.skipif(not IMAGENET_SAMPLE.is_dir(), reason="../shared/data/imagenet-sample not present")
def test_imagenet_sample():
    items = list(imagenet_sample_items(limit=5))
    assert len(items) == 5 and all(i.wnid and i.wnid.startswith("n") for i in items)
    assert items[0].load().mode == "RGB"
    assert len(list(open_loader("imagenet-sample"))) == 500


def _png_bomb(w: int, h: int) -> bytes:
    """A valid greyscale PNG of ``w`` x ``h`` black pixels: ~390 KB for 20000x20000 (400 MP)."""
    import struct
    import zlib

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    z = zlib.compressobj(9)
    row = bytes(w + 1)  # filter byte + w zero pixels
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_decompression_bomb_is_too_large_with_its_size():
    # 400 MP is over 2x PIL's MAX_IMAGE_PIXELS: Image.open itself raises DecompressionBombError
    bomb = _png_bomb(20000, 20000)
    assert len(bomb) < 1_000_000
    with pytest.raises(BadImageError, match=r"^image too large: 20000x20000 pixels = 400 megapixels, over the 80 MP"):
        open_image_bytes(bomb)


def _spy_opens(monkeypatch) -> list[str]:
    """Record every path opened through ``os.open`` or ``io.open`` (what Path.read_bytes uses)."""
    import builtins
    import os as _os

    opened: list[str] = []
    real_os_open, real_io_open = _os.open, io.open

    def os_open(path, *a, **kw):
        opened.append(_os.path.realpath(path))
        return real_os_open(path, *a, **kw)

    def io_open(file, *a, **kw):
        if isinstance(file, (str, bytes, _os.PathLike)):
            opened.append(_os.path.realpath(file))
        return real_io_open(file, *a, **kw)

    monkeypatch.setattr(_os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    monkeypatch.setattr(builtins, "open", io_open)
    return opened


def _symlink_tree(tmp_path):
    outside = tmp_path / "outside"
    (outside / "album").mkdir(parents=True)
    (outside / "secret.jpg").write_bytes(_jpeg(color=(1, 2, 3)))
    (outside / "album" / "far.jpg").write_bytes(_jpeg(color=(4, 5, 6)))
    root = tmp_path / "pics"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(_jpeg())
    (root / "sub" / "b.jpg").write_bytes(_jpeg(color=(9, 9, 9)))
    (root / "link_in.jpg").symlink_to(root / "a.jpg")  # stays inside: read like a file
    (root / "link_out.jpg").symlink_to(outside / "secret.jpg")
    (root / "album_out").symlink_to(outside / "album")
    (root / "sub_again").symlink_to(root / "sub")  # stays inside: sub's files are walked where they live
    (root / "sub" / "loop").symlink_to(root)  # a cycle
    return root, outside


def test_symlinks_leaving_the_folder_are_skipped_unread(tmp_path, monkeypatch):
    root, outside = _symlink_tree(tmp_path)
    opened = _spy_opens(monkeypatch)
    items = list(folder_items(root))
    read = {i.key.split(":", 1)[1]: i.read() for i in items if not i.skip}
    skipped = {i.key.split(":", 1)[1]: i.skip for i in items if i.skip}
    assert sorted(read) == ["a.jpg", "link_in.jpg", "sub/b.jpg"]
    assert read["link_in.jpg"] == read["a.jpg"]
    assert skipped == {"album_out": f"symlink to outside the folder: {outside / 'album'}",
                       "link_out.jpg": f"symlink to outside the folder: {outside / 'secret.jpg'}"}
    assert not [p for p in opened if p.startswith(str(outside))]  # targets never opened to decide
    with pytest.raises(OSError, match="outside the folder"):
        next(i for i in items if i.skip).read()


def test_follow_symlinks_reads_outside_links_once(tmp_path):
    root, outside = _symlink_tree(tmp_path)
    items = list(open_loader(str(root), follow_symlinks=True))
    assert not [i for i in items if i.skip]
    assert sorted(i.key.split(":", 1)[1] for i in items) == [
        "a.jpg", "album_out/far.jpg", "link_in.jpg", "link_out.jpg", "sub/b.jpg"]
    assert next(i for i in items if i.key.endswith("link_out.jpg")).read() == (outside / "secret.jpg").read_bytes()


def test_special_files_are_named_not_read(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.jpg")  # reading a fifo would block the ingest forever
    (tmp_path / "ok.jpg").write_bytes(_jpeg())
    items = {i.key.split(":", 1)[1]: i for i in folder_items(tmp_path)}
    assert items["pipe.jpg"].skip == "not a regular file (fifo, socket or device)"
    assert items["ok.jpg"].skip is None and items["ok.jpg"].load().size == (64, 48)


def test_skimage_data_is_a_folder_every_install_has():
    items = list(open_loader("skimage-data"))
    assert len(items) >= 20 and all(not i.skip for i in items)
    assert "skimage-data:chelsea.png" in [i.key for i in items]
    assert items[0].load().size[0] > 0
