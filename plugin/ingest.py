"""Loader -> encoder -> store (through the router when one is built), batched, idempotent, resumable.

**One point per distinct image.** Two images are the same when their bytes are identical (SHA-256 of
the file's bytes, or of the raw pixels for array datasets): the point id is the first 63 bits of that
hash, whatever the file is called or wherever it lies. The first source seen fills ``key`` and
``source``; every source the image arrives from is listed in ``sources`` (appended with
``set_payload`` when an already-stored image turns up under a new name; paths are never removed, so a
renamed file keeps its old path listed). Re-ingesting, renaming or copying files adds no point. A
re-encoded copy (other bytes, e.g. the same photo saved again as JPEG) is a different image.

Re-runs are cheap and an interrupted run resumes where it stopped: every finished batch is already
in the store and the next run skips what exists before decoding (an embedding is computed once per
content hash and cached). Bad images, unknown labels and symlinks leaving an ingested folder are
skipped, each reported once (above the progress bar, or as a log warning without one) and listed in
the summary's ``bad_items``; they never stop a long ingest.

**Collections made before content ids** (ids were ``sha256(key, content hash)``) keep their points
and ids. Their metadata lacks ``point_ids: "content"``, so each ingest into one first reads every
point's stored ``sha256`` payload (one payload-only scroll) and treats an image whose hash is already
there as stored: its new source is appended to the old point instead of a duplicate being added.
Images new to such a collection get content ids. Duplicates the old scheme already stored (the
same bytes under two keys) stay as they are.

**Signatures follow.** When the collection has visual signatures (``hsearch signatures build``), each
batch's new points join them (:meth:`~plugin.signatures.engine.SemanticsEngine.add`: in every synset
of the image, the dominant cluster with the nearest signature takes it; centroid signatures stay the
exact mean), so ``describe`` right after an ingest is not stale and counts the new images. The
re-clustering (:meth:`~plugin.signatures.engine.SemanticsEngine.sync`: one read of every vector,
clustering only the flagged synsets) runs once, at the end of the ingest, and only when a synset is
new to the signatures or has grown by more than the build's ``regrow`` fraction (25%) of the images
it was clustered from: below that a new image moves its cluster's mean, past it the clusters
themselves may no longer be the dominant ones. Otherwise the updated signatures are saved atomically.
The engine is the process's shared one (:mod:`plugin.signatures.shared`), so the ``semantic`` mode
and the demo see the additions at once. An ingest that stops midway saves what its finished batches
added and leaves the re-clustering to ``hsearch signatures build --sync``; signatures that cannot be
read are reported and left alone. The summary's ``signatures`` says what happened (None: the
collection has none).

``HSEARCH_TEST_STALL_AFTER_BATCHES=N`` (tests only: ``tests/test_ingest_crash.py``) makes the ingest
stop in the middle of batch N, after its points are written and before the batch is finished, print
``stalled`` to stderr and sleep, so a test can SIGKILL a real run at a known point.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from functools import lru_cache
from itertools import islice
from typing import Iterable

import numpy as np

from loaders.base import Item, content_hash
from plugin.embedding_cache import EmbeddingCache, encode_items_cached, encoder_cache_key
from plugin.errors import BadImageError, CollectionExistsError, HSearchError, UnknownSynsetError

log = logging.getLogger("hsearch.ingest")

#: Collection metadata ``point_ids`` value of collections whose ids derive from content only.
CONTENT_IDS = "content"


def point_id(chash: str) -> int:
    """The point id of an image: the first 63 bits of its content hash (hex SHA-256)."""
    return int(chash[:16], 16) >> 1


@lru_cache(maxsize=65536)
def _label_payload(wnid: str) -> dict:
    from plugin.taxonomy import synset_payload

    return synset_payload(wnid)


def item_payload(item: Item, chash: str) -> dict:
    """Payload of a new point: partition fields (``leaf``, ``synsets``) + label, sources and extras."""
    base = {"key": item.key, "source": item.source, "sources": [item.source], "sha256": chash, "leaf": -1,
            "wnid": None, "label": None, "synsets": []}
    if item.wnid:
        base.update(_label_payload(item.wnid))
    base.update(item.extra)
    return base


def sources_of(payload: dict) -> list[str]:
    """Every source a stored point came from (points stored before ``sources`` existed have one)."""
    return list(payload.get("sources") or ([payload["source"]] if payload.get("source") else []))


def _batches(it: Iterable, n: int):
    it = iter(it)
    while batch := list(islice(it, n)):
        yield batch


def _legacy_hashes(store) -> dict[str, int] | None:
    """``sha256 -> id`` of a collection filled before content ids; None when ids are content ids."""
    meta = store.get_meta()
    if meta.get("point_ids") == CONTENT_IDS:
        return None
    if store.count() == 0:
        store.update_meta(point_ids=CONTENT_IDS)
        return None
    by_hash: dict[str, int] = {}
    for page in store.scroll(with_vectors=False, payload_fields=["sha256"]):
        for r in page:
            if r.payload.get("sha256"):
                by_hash.setdefault(r.payload["sha256"], r.id)
    return by_hash


def _signatures_of(store):
    """The collection's shared semantics engine, or None when it has no signatures (or they cannot be
    read: reported, ingest goes on, describe will flag them)."""
    from plugin.signatures.state import state_path

    if not state_path(store).exists():
        return None
    from plugin.signatures.shared import engine_for

    try:
        return engine_for(store)
    except HSearchError as e:
        log.warning("the signatures of '%s' are not updated by this ingest: %s", store.name, e)
        return None


def _settle_signatures(store, eng, finished: bool) -> dict:
    """Save what the batches added; re-cluster first when the ingest finished and a synset is flagged."""
    from plugin.signatures.shared import remember

    out = {"synced": False}
    if finished and eng.stale:
        out.update(synced=True, **{k: v for k, v in eng.sync().items() if k in ("reclustered", "kept")})
    else:
        eng.save()
    remember(store, eng)
    out["stale"] = sorted(eng.stale)
    return out


def _stall_after() -> int | None:
    v = os.environ.get("HSEARCH_TEST_STALL_AFTER_BATCHES")
    return int(v) if v else None


def ingest(items: Iterable[Item], encoder, store, router=None, batch_size: int = 256, use_cache: bool = True,
           progress: bool = False, total: int | None = None) -> dict:
    """Add ``items`` to ``store`` (new points via ``router.add`` if given). Returns a summary dict:
    ``seen``, ``added`` (new points), ``existing`` (items whose image was already stored, by an earlier
    run or earlier in this one), ``new_sources`` (sources appended to stored images), ``bad``,
    ``unlabelled``, ``bad_items`` ([(source, reason)]), ``seconds``, ``points``, ``signatures`` (see the
    module docstring)."""
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
    legacy = _legacy_hashes(store)
    sigs = _signatures_of(store)
    sig_added = 0
    finished = False
    stall = _stall_after()
    cache = EmbeddingCache(encoder_cache_key(encoder), encoder.dim) if use_cache else None
    stats = {"seen": 0, "added": 0, "existing": 0, "new_sources": 0, "bad": 0, "unlabelled": 0, "bad_items": []}
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"ingest -> {store.name}", unit="img")

    def bad(item: Item, reason: str) -> None:
        stats["bad"] += 1
        stats["bad_items"].append((item.source, reason))
        if bar is not None:  # one line above the bar, not a log record drawn through it
            bar.write(f"skipped {item.source}: {reason}", file=sys.stderr)
        else:
            log.warning("skipped %s: %s", item.source, reason)

    try:
        for n_batch, batch in enumerate(_batches(items, batch_size), 1):
            stats["seen"] += len(batch)
            raw, keep = [], []
            for item in batch:
                if item.skip:
                    bad(item, item.skip)
                    continue
                try:
                    data = item.read()
                except OSError as e:
                    bad(item, f"cannot read: {e.strerror or e}")
                    continue
                raw.append(data)
                keep.append(item)
            hashes = [content_hash(d) for d in raw]
            ids = [legacy[h] if legacy and h in legacy else point_id(h) for h in hashes]
            stored = {r.id: r.payload for r in store.retrieve(sorted(set(ids)))} if ids else {}
            new: dict[int, dict] = {}  # id -> payload, in order of first appearance in the batch
            pairs = []
            grown: dict[int, list[str]] = {}  # stored id -> its sources with the ones this batch adds
            for item, data, h, pid in zip(keep, raw, hashes, ids):
                known = stored.get(pid) or new.get(pid)
                if known is not None and known.get("sha256", h) != h:  # 63-bit ids: ~never, but not silently
                    bad(item, f"its point id {pid} is taken by a different image (sha256 {known['sha256'][:12]}...)")
                    continue
                if pid in stored:
                    stats["existing"] += 1
                    srcs = grown.get(pid) or sources_of(stored[pid])
                    if item.source not in srcs:
                        grown[pid] = srcs + [item.source]
                    continue
                if pid in new:  # the same bytes twice in one batch
                    stats["existing"] += 1
                    if item.source not in new[pid]["sources"]:
                        new[pid]["sources"].append(item.source)
                    continue
                try:
                    payload = item_payload(item, h)
                    image = item.decode(data)
                except (BadImageError, UnknownSynsetError) as e:
                    bad(item, str(e))
                    continue
                stats["unlabelled"] += payload["wnid"] is None
                new[pid] = payload
                pairs.append((h, image))
            if new:
                vecs = encode_items_cached(pairs, encoder, cache)
                if router is not None:
                    router.add(np.asarray(list(new), np.int64), vecs, list(new.values()))
                else:
                    store.upsert(list(new), vecs, list(new.values()))
                stats["added"] += len(new)
                if sigs is not None:
                    sigs.add(list(new), vecs, list(new.values()))
                    sig_added += len(new)
            if stall is not None and n_batch == stall:
                store.flush()
                print("stalled", file=sys.stderr, flush=True)
                time.sleep(3600)
            for pid, srcs in grown.items():
                store.set_payload([pid], {"sources": srcs})
                stats["new_sources"] += len(srcs) - len(sources_of(stored[pid]))
            if bar is not None:
                bar.update(len(batch))
        finished = True
    finally:
        if bar is not None:
            bar.close()
        if cache is not None:
            cache.close()
        store.flush()
        if sig_added:
            try:
                stats["signatures"] = {"added": sig_added, **_settle_signatures(store, sigs, finished)}
            except Exception:
                if finished:
                    raise
                log.exception("could not save the signatures after a failed ingest")  # the first error goes on
    stats.setdefault("signatures", None if sigs is None else {"added": 0, "synced": False, "stale": sorted(sigs.stale)})
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    stats["points"] = store.count()
    return stats
