"""Shared fixtures: a private $HSEARCH_HOME, both store backends, small real embeddings."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_HOME = Path(os.environ.get("HSEARCH_TEST_HOME") or tempfile.mkdtemp(prefix="hsearch-test-"))
if not os.environ.get("HSEARCH_TEST_HOME"):  # a home we made is ours to remove (the symlinked cache is not followed)
    atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["HSEARCH_HOME"] = str(_HOME)
# embeddings are content-addressed: sharing the user's cache across runs is safe and fast
_user_cache = Path.home() / ".cache" / "hsearch" / "cache" / "embeddings"
if not os.environ.get("HSEARCH_TEST_HOME") and _user_cache.is_dir():
    (_HOME / "cache").mkdir(parents=True, exist_ok=True)
    (_HOME / "cache" / "embeddings").symlink_to(_user_cache)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_TEMP_DIR", str(_HOME / "gradio"))  # uploads go with the home, not into /tmp/gradio

SHARED = Path(__file__).resolve().parents[2] / "shared"
IMAGENET_SAMPLE = SHARED / "data" / "imagenet-sample"


@pytest.fixture(params=["edge", "memory"])
def make_store(request, tmp_path):
    """Factory: ``make_store(dim)`` -> a new empty collection on the parametrised backend."""
    from plugin.store import open_store

    opened = []

    def make(dim: int, name: str = "c"):
        if request.param == "edge":
            s = open_store(tmp_path / name, dim=dim)
        else:
            s = open_store(":memory:", dim=dim, collection=name)
        opened.append(s)
        return s

    make.backend = request.param
    yield make
    for s in opened:
        try:
            s.close()
        except Exception:
            pass


@pytest.fixture(scope="session")
def mobilenet():
    from plugin.encoders import create_encoder

    return create_encoder("mobilenet_v2", device="cpu")


@pytest.fixture(scope="session")
def fmnist_small(mobilenet):
    """300 real Fashion-MNIST test images: (vectors (300, 1280), wnids, items)."""
    from loaders import fashion_mnist_items
    from loaders.base import content_hash
    from plugin.embedding_cache import EmbeddingCache, encode_items_cached, encoder_cache_key

    items = list(fashion_mnist_items("test", limit=300))
    cache = EmbeddingCache(encoder_cache_key(mobilenet), mobilenet.dim)
    vecs = encode_items_cached([(content_hash(i.read()), i.load()) for i in items], mobilenet, cache)
    cache.close()
    return vecs, [i.wnid for i in items], items
