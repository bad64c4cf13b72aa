"""A small real collection for the demo tests, built once per session under the tests' private
$HSEARCH_HOME: 400 Fashion-MNIST test images, four scikit-image photos saved as a labelled folder, and
every 12th ImageNet-sample photo when ../shared/data/imagenet-sample is present. The demo opens it the
way ``hsearch demo`` does (``DemoService.open``: it builds the router because none exists yet). A second,
smaller collection has visual signatures, for the semantics panel (``semantics_service``).

Import the fixtures into a test module (``from demo_collection import demo_service``) to use them; the
collection is built once (ingest is idempotent), the service opened and closed per module.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

COLLECTION = "demo-test"
N_FASHION = 400
#: scikit-image photos with their WordNet labels, saved as ``<wnid>_<name>.png`` (the folder loader's
#: ImageNet naming) so they are ingested labelled.
PHOTOS = {"chelsea": "n02123045", "coffee": "n03063599", "astronaut": "n09818022", "rocket": "n04099429"}
FOOTWEAR = "n03380867"  # sandal, gym shoe and boot in Fashion-MNIST
#: The collection with signatures (:func:`semantics_service`) and its size.
SIGNATURES_COLLECTION, N_SIGNATURES = "demo-signatures", 200


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def fashion_png(split: str, index: int) -> bytes:
    """A Fashion-MNIST image as a PNG file's bytes (what a visitor would upload)."""
    from PIL import Image

    from loaders.fashion_mnist import load_arrays

    return png_bytes(Image.fromarray(load_arrays(split)[0][index], mode="L"))


def fashion_label(split: str, index: int) -> str:
    from loaders.fashion_mnist import CLASSES, load_arrays

    return CLASSES[int(load_arrays(split)[1][index])][1]


def first_train_index(wnid: str) -> int:
    from loaders.fashion_mnist import CLASSES, load_arrays

    cls = [w for _, w in CLASSES].index(wnid)
    return int((load_arrays("train")[1] == cls).nonzero()[0][0])


@pytest.fixture(scope="session")
def photo_dir():
    import skimage.data
    from PIL import Image

    from plugin import config

    d = config.home() / "photos"
    d.mkdir(parents=True, exist_ok=True)
    for name, wnid in PHOTOS.items():
        p = d / f"{wnid}_{name}.png"
        if not p.exists():
            p.write_bytes(png_bytes(Image.fromarray(getattr(skimage.data, name)()).convert("RGB")))
    return d


@pytest.fixture(scope="module")
def demo_service(photo_dir, mobilenet):
    """The demo's service over the test collection, one per test module (as in the app, one opener: each
    module that imports this fixture gets its own definition, so a session scope would open it twice)."""
    from demo.service import DemoService
    from loaders import fashion_mnist_items, folder_items, imagenet_sample_items
    from loaders.imagenet_sample import sample_dir
    from plugin import config
    from plugin.ingest import ingest
    from plugin.store import open_store

    try:
        items = list(fashion_mnist_items("test", limit=N_FASHION))
    except FileNotFoundError as e:
        pytest.skip(str(e))
    items += list(folder_items(photo_dir))
    if sample_dir() is not None:
        items += [it for n, it in enumerate(imagenet_sample_items()) if n % 12 == 0]
    location = str(config.stores_dir())
    store = open_store(location, dim=mobilenet.dim, collection=COLLECTION)
    try:
        stats = ingest(items, mobilenet, store)
        assert stats["bad"] == 0, stats["bad_items"]
    finally:
        store.close()
    service = DemoService.open(location, COLLECTION, image_roots=[photo_dir], encoder=mobilenet, echo=lambda m: None)
    service.warm()
    yield service
    service.close()


@pytest.fixture(scope="module")
def semantics_service(mobilenet):
    """The demo's service over a second, smaller collection that has visual signatures (the semantics
    engine): the first :data:`N_SIGNATURES` Fashion-MNIST test images, signatures rebuilt per module
    (cap 64) so every module starts from signatures that match the collection."""
    from demo.service import DemoService
    from loaders import fashion_mnist_items
    from plugin import config
    from plugin.ingest import ingest
    from plugin.signatures.engine import SemanticsEngine
    from plugin.store import open_store

    try:
        items = list(fashion_mnist_items("test", limit=N_SIGNATURES))
    except FileNotFoundError as e:
        pytest.skip(str(e))
    location = str(config.stores_dir())
    store = open_store(location, dim=mobilenet.dim, collection=SIGNATURES_COLLECTION)
    try:
        ingest(items, mobilenet, store)
        SemanticsEngine.build(store, cap=64)
    finally:
        store.close()
    service = DemoService.open(location, SIGNATURES_COLLECTION, encoder=mobilenet, echo=lambda m: None)
    yield service
    service.close()


@pytest.fixture()
def upload_file(tmp_path):
    """``upload_file(name, data)`` -> a path holding ``data``, as a browser's upload would arrive."""

    def make(name: str, data: bytes | str) -> str:
        p = tmp_path / name
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(p)

    return make


def uploads_count() -> int:
    from plugin import config

    root = Path(config.home()) / "uploads"
    return sum(len(files) for _, _, files in os.walk(root)) if root.exists() else 0
