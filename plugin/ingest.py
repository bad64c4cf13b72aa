"""Loader -> encoder -> store (through the router when one is built), batched, idempotent, resumable.

Point ids are derived from each item's key and content (``sha256(key + content hash)``, 63 bits), so
re-ingesting the same files adds nothing and a run interrupted at any point resumes where it stopped:
every finished batch is already in the store, and the next run skips what exists before decoding.
Bad images and unknown labels are skipped with a warning naming them and counted in the summary;
they never stop a long ingest.
"""
from __future__ import annotations

import hashlib
import logging
import time
from functools import lru_cache
from itertools import islice
from typing import Iterable

import numpy as np

from loaders.base import Item, content_hash
from plugin.embedding_cache import EmbeddingCache, encode_items_cached, encoder_cache_key
from plugin.errors import BadImageError, CollectionExistsError, UnknownSynsetError

log = logging.getLogger("hsearch.ingest")


def point_id(key: str, chash: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{key}\0{chash}".encode()).digest()[:8], "big") >> 1


@lru_cache(maxsize=65536)
def _label_payload(wnid: str) -> dict:
    from plugin.taxonomy import synset_payload

    return synset_payload(wnid)


def item_payload(item: Item, chash: str) -> dict:
    """Payload of a new point: partition fields (``leaf``, ``synsets``) + label, source and extras."""
    base = {"key": item.key, "source": item.source, "sha256": chash, "leaf": -1,
            "wnid": None, "label": None, "synsets": []}
    if item.wnid:
        base.update(_label_payload(item.wnid))
    base.update(item.extra)
    return base


def _batches(it: Iterable, n: int):
    it = iter(it)
    while batch := list(islice(it, n)):
        yield batch


def ingest(items: Iterable[Item], encoder, store, router=None, batch_size: int = 256, use_cache: bool = True,
           progress: bool = False, total: int | None = None) -> dict:
    """Add ``items`` to ``store`` (via ``router.add`` if given). Returns a summary dict."""
    if encoder.dim != store.dim:
        raise CollectionExistsError(
            f"encoder '{encoder.name}' gives {encoder.dim}-d vectors but collection '{store.name}' holds "
            f"{store.dim}-d vectors: use the encoder it was built with or another collection")
    meta = store.get_meta()
    if meta.get("encoder") and meta["encoder"] != encoder.name:
        raise CollectionExistsError(
            f"collection '{store.name}' was built with encoder '{meta['encoder']}', not '{encoder.name}'")
    if not meta.get("encoder"):
        store.update_meta(encoder=encoder.name, weights=str(getattr(encoder, "weights", "default")))
    cache = EmbeddingCache(encoder_cache_key(encoder), encoder.dim) if use_cache else None
    stats = {"seen": 0, "added": 0, "existing": 0, "bad": 0, "unlabelled": 0, "bad_items": []}
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"ingest -> {store.name}", unit="img")
    try:
        for batch in _batches(items, batch_size):
            stats["seen"] += len(batch)
            raw, keep = [], []
            for item in batch:
                try:
                    data = item.read()
                except OSError as e:
                    _bad(stats, item, f"cannot read: {e}")
                    continue
                raw.append(data)
                keep.append(item)
            hashes = [content_hash(d) for d in raw]
            ids = [point_id(it.key, h) for it, h in zip(keep, hashes)]
            existing = store.existing_ids(ids) if ids else set()
            stats["existing"] += sum(i in existing for i in ids)
            new_ids, pairs, payloads = [], [], []
            for item, data, h, pid in zip(keep, raw, hashes, ids):
                if pid in existing or pid in new_ids:
                    continue
                try:
                    payload = item_payload(item, h)
                    image = item.decode(data)
                except (BadImageError, UnknownSynsetError) as e:
                    _bad(stats, item, str(e))
                    continue
                stats["unlabelled"] += payload["wnid"] is None
                new_ids.append(pid)
                pairs.append((h, image))
                payloads.append(payload)
            if new_ids:
                vecs = encode_items_cached(pairs, encoder, cache)
                if router is not None:
                    router.add(np.asarray(new_ids, np.int64), vecs, payloads)
                else:
                    store.upsert(new_ids, vecs, payloads)
                stats["added"] += len(new_ids)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
        if cache is not None:
            cache.close()
        store.flush()
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    stats["points"] = store.count()
    return stats


def _bad(stats: dict, item: Item, reason: str) -> None:
    stats["bad"] += 1
    stats["bad_items"].append((item.source, reason))
    log.warning("skipped %s: %s", item.source, reason)
