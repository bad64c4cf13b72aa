"""The ImageNet evaluation sample in ``../shared/data/imagenet-sample`` (500 photos named
``<wnid>_<name>.jpg``, one per class). ImageNet terms apply: read in place, never copied."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from loaders.base import Item
from loaders.folder import folder_items


def sample_dir() -> Path | None:
    """``$HSEARCH_IMAGENET_SAMPLE``, else ``shared/data/imagenet-sample`` beside the project checkout."""
    env = os.environ.get("HSEARCH_IMAGENET_SAMPLE")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parents[1]
    candidates += [here.parent / "shared" / "data" / "imagenet-sample", Path.cwd().parent / "shared" / "data" / "imagenet-sample"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def imagenet_sample_items(limit: int | None = None) -> Iterator[Item]:
    d = sample_dir()
    if d is None:
        raise FileNotFoundError("ImageNet sample not found: set HSEARCH_IMAGENET_SAMPLE to its folder")
    for n, item in enumerate(folder_items(d, recursive=False, prefix="imagenet-sample")):
        if limit is not None and n >= limit:
            return
        yield item
