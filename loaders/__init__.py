"""Datasets and image folders as streams of :class:`Item` (stable key, raw bytes, WordNet label)."""
from __future__ import annotations

from typing import Iterator

from loaders.base import Item, content_hash, open_image_bytes, open_image_file
from loaders.fashion_mnist import fashion_mnist_items
from loaders.folder import folder_items
from loaders.imagenet_sample import imagenet_sample_items
from loaders.skimage_data import skimage_data_items


def open_loader(spec: str, limit: int | None = None, follow_symlinks: bool = False) -> Iterator[Item]:
    """Items from a loader spec: ``fashion-mnist[:train|:test]``, ``imagenet-sample``, ``skimage-data`` or
    a folder path (``follow_symlinks``: read links leaving the folder too, see :func:`folder_items`)."""
    name, _, arg = spec.partition(":")
    if name == "fashion-mnist":
        return fashion_mnist_items(arg or "test", limit=limit)
    if name == "imagenet-sample":
        return imagenet_sample_items(limit=limit)
    if spec == "skimage-data":
        return skimage_data_items(limit=limit)
    path = arg if name == "folder" else spec
    items = folder_items(path, follow_symlinks=follow_symlinks)
    if limit is None:
        return items
    return (it for n, it in zip(range(limit), items))


__all__ = ["Item", "content_hash", "fashion_mnist_items", "folder_items", "imagenet_sample_items", "open_image_bytes",
           "open_image_file", "open_loader", "skimage_data_items"]
