"""Embedded evaluation datasets, cached by content hash (encoding 70k images once takes minutes on CPU)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loaders.base import content_hash
from plugin.embedding_cache import EmbeddingCache, encode_items_cached, encoder_cache_key


@dataclass
class Embedded:
    vectors: np.ndarray  # (N, dim) float32, L2-normalised
    labels: np.ndarray  # (N,) ints: class / instance id
    keys: list[str]
    wnids: list[str | None]


def embed_items(items, encoder, batch_size: int = 512, progress: bool = True, label_of=None) -> Embedded:
    """Encode ``items`` (using and filling the embedding cache)."""
    items = list(items)
    cache = EmbeddingCache(encoder_cache_key(encoder), encoder.dim)
    out = []
    rng = range(0, len(items), batch_size)
    if progress:
        from tqdm.auto import tqdm

        rng = tqdm(rng, desc=f"embed {encoder.name}", unit="batch")
    try:
        for s in rng:
            chunk = items[s:s + batch_size]
            pairs = []
            for it in chunk:
                data = it.read()
                pairs.append((content_hash(data), lambda it=it, data=data: it.decode(data)))
            out.append(encode_items_cached(pairs, encoder, cache))
    finally:
        cache.close()
    wnids = [it.wnid for it in items]
    if label_of is None:
        classes = {w: i for i, w in enumerate(sorted({w for w in wnids if w}))}
        labels = np.asarray([classes.get(w, -1) for w in wnids])
    else:
        labels = np.asarray([label_of(it) for it in items])
    return Embedded(np.concatenate(out) if out else np.zeros((0, encoder.dim), np.float32), labels,
                    [it.key for it in items], wnids)


def fashion_mnist(split: str, encoder, limit: int | None = None, progress: bool = True) -> Embedded:
    from loaders import fashion_mnist_items

    return embed_items(fashion_mnist_items(split, limit=limit), encoder, progress=progress)


AUG_VERSION = "v1"


def _augment(img, view: int, seed: int):
    """Deterministic photo augmentation: random resized crop (50-100% area), flip, colour jitter."""
    import torch
    from torchvision import transforms as T

    g = torch.Generator().manual_seed(seed * 1000 + view)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
    tf = T.Compose([T.RandomResizedCrop(224, scale=(0.5, 1.0), ratio=(0.75, 1.33)), T.RandomHorizontalFlip(),
                    T.ColorJitter(0.3, 0.3, 0.2, 0.02)])
    return tf(img.convert("RGB"))


def imagenet_views(encoder, views: int = 8, limit: int | None = None, progress: bool = True) -> Embedded:
    """Several augmented views of every ImageNet-sample photo (In-Shop style: label = photo id).

    Row ``p * views + v`` is view ``v`` of photo ``p``. Cached by (photo content hash, view, aug version).
    """
    import hashlib

    from loaders import imagenet_sample_items

    items = list(imagenet_sample_items(limit=limit))
    cache = EmbeddingCache(encoder_cache_key(encoder), encoder.dim)
    out, labels, keys, wnids = [], [], [], []
    rng = range(len(items))
    if progress:
        from tqdm.auto import tqdm

        rng = tqdm(rng, desc=f"embed imagenet views {encoder.name}", unit="photo")
    try:
        pairs = []
        for p in rng:
            it = items[p]
            data = it.read()
            h = content_hash(data)
            for v in range(views):
                key = hashlib.sha256(f"{h}:view{v}:{AUG_VERSION}".encode()).hexdigest()
                pairs.append((key, lambda it=it, data=data, v=v, p=p: _augment(it.decode(data), v, p)))
                labels.append(p)
                keys.append(f"{it.key}#view{v}")
                wnids.append(it.wnid)
            if len(pairs) >= 256:
                out.append(encode_items_cached(pairs, encoder, cache))
                pairs = []
        if pairs:
            out.append(encode_items_cached(pairs, encoder, cache))
    finally:
        cache.close()
    return Embedded(np.concatenate(out), np.asarray(labels), keys, wnids)
