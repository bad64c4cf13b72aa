"""scikit-image's bundled sample pictures (astronaut, coffee, chelsea the cat, ...: ~30 files, BSD
licensed, installed with the project): a folder every new machine has, so the README's folder
example runs anywhere. Only the image files of ``skimage/data`` are offered (it also holds Python and
NumPy files); they are unlabelled."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterator

from loaders.base import Item
from loaders.folder import folder_items

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff")


def skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-image is not installed: pip install scikit-image")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def skimage_data_items(limit: int | None = None) -> Iterator[Item]:
    items = (it for it in folder_items(skimage_data_dir(), recursive=False, prefix="skimage-data")
             if it.key.lower().endswith(IMAGE_SUFFIXES))
    for n, item in enumerate(items):
        if limit is not None and n >= limit:
            return
        yield item
