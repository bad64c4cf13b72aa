"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (70k 28x28 grey images, MIT).

Classes map to WordNet 3.0 noun synsets (garment / footwear / container subtrees).
"""
from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from loaders.base import Item

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
#: class index -> (name, wnid)
CLASSES = [
    ("T-shirt/top", "n03595614"),  # jersey.n.03 (T-shirt)
    ("Trouser", "n04489008"),  # trouser.n.01
    ("Pullover", "n04370048"),  # sweater.n.01
    ("Dress", "n03236735"),  # dress.n.01
    ("Coat", "n03057021"),  # coat.n.01
    ("Sandal", "n04133789"),  # sandal.n.01
    ("Shirt", "n04197391"),  # shirt.n.01
    ("Sneaker", "n03472535"),  # gym_shoe.n.01
    ("Bag", "n02774152"),  # bag.n.04
    ("Ankle boot", "n02872752"),  # boot.n.01
]
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def data_dir() -> Path:
    d = Path(os.environ.get("HSEARCH_FASHION_MNIST_DIR", DEFAULT_DIR))
    if not (d / _FILES["test"][0]).is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {d}: sudo apt-get install dataset-fashion-mnist "
            "(or set HSEARCH_FASHION_MNIST_DIR)")
    return d


@lru_cache(maxsize=2)
def load_arrays(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) for ``train`` (60k) or ``test`` (10k)."""
    if split not in _FILES:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    d = data_dir()
    img_f, lab_f = _FILES[split]
    with gzip.open(d / img_f, "rb") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(d / lab_f, "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def _decode(data: bytes):
    from PIL import Image

    return Image.fromarray(np.frombuffer(data, np.uint8).reshape(28, 28), mode="L")


def fashion_mnist_items(split: str = "test", limit: int | None = None, start: int = 0) -> Iterator[Item]:
    images, labels = load_arrays(split)
    stop = len(images) if limit is None else min(len(images), start + limit)
    for i in range(start, stop):
        name, wnid = CLASSES[int(labels[i])]
        key = f"fashion-mnist:{split}:{i}"
        yield Item(key=key, source=key, wnid=wnid, read=lambda i=i: images[i].tobytes(), decode=_decode,
                   extra={"class_name": name})
