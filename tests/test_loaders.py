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
