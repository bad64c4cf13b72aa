"""What the demo does, without the page: one store, router and encoder per process, shared by every
browser tab (Gradio runs handlers on worker threads).

The embedded engine allows one opener per collection directory, so the page cannot open a store per
request: :class:`DemoService` opens it once, loads the encoder, WordNet and the numba kernels once
(:meth:`warm`), and every search and add goes through the same ``Router.search`` / ``ingest`` the
library and the CLI use. The router lets searches run side by side and takes adds alone; the service
also serialises adds among themselves, so two tabs uploading the same picture store it once.

Everything here returns data (dataclasses, dicts); ``demo/views.py`` turns it into Markdown and
gallery items, ``demo/app.py`` wires it to Gradio. Tests call this module without a browser.
"""
from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from demo import hierarchy
from demo.examples import Example, collection_examples, photo_examples
from demo.images import Pictures
from loaders.base import Item, open_image_bytes
from plugin import config
from plugin.errors import BadImageError, CollectionNotFoundError, HSearchError, UnknownSynsetError
from plugin.store import Filter

log = logging.getLogger("hsearch.demo")

#: The collection ``make run`` builds; the demo builds it itself when it is missing.
DEFAULT_COLLECTION = "fashion-mnist"
#: Largest upload accepted (the page's ``max_file_size`` refuses bigger files before they are sent).
MAX_UPLOAD_BYTES = 10 * 2**20
#: Largest image accepted, in pixels, checked from the header before decoding (a 10 MB PNG can
#: declare a gigapixel image).
MAX_UPLOAD_PIXELS = 40_000_000
#: Facet page size for the synset counts (more synsets than any collection here has).
FACET_LIMIT = 100_000
K_MAX = 50


@dataclass
class HitView:
    id: int
    score: float
    label: str | None
    wnid: str | None
    synsets: list[str]
    source: str | None
    picture: object = None  # PIL image, or None when it cannot be shown
    why: dict | None = None  # what a semantic mode says about the hit (query class, LCA, weighted distance)


@dataclass
class Outcome:
    """One search as the page shows it."""

    hits: list[HitView]
    stats: dict  # Router.search stats: operands, operands_frac, leaves, n_leaves, ms, ...
    mode: str
    k: int
    within: list[str] | None
    n_points: int
    n_leaves: int
    encode_ms: float
    total_ms: float
    exact: dict | None  # the same query under exact search: ms, operands, overlap with its top-k
    predictions: list[tuple[str, str, float]]  # encoder's top-5: (wnid, label, probability)
    query_wnid: str | None  # the query's predicted class (or the stored label of a point without picture)
    query: str  # what was searched, for people
    query_picture: object = None
    query_id: int | None = None
    #: what the semantics engine says the query shows, when the collection has signatures
    #: (:meth:`DemoService.semantics_of`); None: the page shows the encoder's top-5 classes instead
    semantics: dict | None = None


@dataclass
class AddRow:
    name: str
    status: str  # added | already present | rejected
    reason: str = ""
    id: int | None = None


@dataclass
class Explanation:
    hit: HitView
    path: tuple[str, ...]
    query_wnid: str | None
    lca: str | None = None
    up_from_hit: int = 0
    up_from_query: int = 0
    lca_count: int = 0
    query_path: tuple[str, ...] = field(default_factory=tuple)


def read_upload(path: str | os.PathLike) -> bytes:
    """An uploaded file's bytes, refused before reading when over :data:`MAX_UPLOAD_BYTES`."""
    size = os.path.getsize(path)
    if size > MAX_UPLOAD_BYTES:
        raise BadImageError(f"file is {size / 2**20:.1f} MiB, over the {MAX_UPLOAD_BYTES // 2**20} MiB limit")
    with open(path, "rb") as f:
        return f.read()


def pick_tree(n: int) -> tuple[int, int]:
    """Branching and height for a router over ``n`` points when the demo has to build one: ``make run``'s
    8x3 for a collection of its size, smaller trees (~10+ points a leaf) for small collections."""
    for k, l in ((8, 3), (4, 3), (4, 2), (2, 2)):
        if k ** (l - 1) * 10 <= n:
            return k, l
    return 2, 2


class DemoService:
    def __init__(self, store, router, encoder, pictures: Pictures, echo=None):
        self.store, self.router, self.encoder, self.pictures = store, router, encoder, pictures
        self.uploads = pictures.uploads
        self.echo = echo or (lambda msg: log.info("%s", msg))
        self._add_lock = threading.Lock()
        self._counts: dict[str, int] | None = None
        self._counts_lock = threading.Lock()
        self._modes: list[str] | None = None
        self._examples: list[Example] | None = None
        self._router_takes_probs = "probs" in inspect.signature(router.search).parameters

    # ---- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str | None = None, collection: str = DEFAULT_COLLECTION, image_roots=(),
             build: bool = True, encoder=None, echo=print) -> "DemoService":
        """Open ``collection`` at ``location`` (a stores directory or a Qdrant URL; default
        ``$QDRANT_URL`` or ``$HSEARCH_HOME/stores``) with its router and encoder.

        The default collection is built when missing, as ``make run`` would (ingest the 10k
        Fashion-MNIST test images, ~4.5 min on 2 cores, with a progress bar on the console); any other
        missing collection is an error naming the command that makes it. A collection without a router
        gets one (:func:`pick_tree`).
        """
        from plugin.encoders import create_encoder
        from plugin.router import Router
        from plugin.store import open_store

        location = location or os.environ.get("QDRANT_URL") or str(config.stores_dir())
        try:
            store = open_store(location, collection=collection)
        except CollectionNotFoundError:
            if not build or collection != DEFAULT_COLLECTION:
                raise CollectionNotFoundError(
                    f"collection '{collection}' not found in {location}: create it with "
                    f"`hsearch ingest <folder> --collection {collection}` (or run `make run` for "
                    f"'{DEFAULT_COLLECTION}')") from None
            store = None
        try:
            meta = store.get_meta() if store is not None else {}
            if encoder is None:
                weights = meta.get("weights", "default")
                encoder = create_encoder(meta.get("encoder") or "mobilenet_v2",
                                         pretrained=None if weights == "none" else weights)
            if store is None:
                store = open_store(location, dim=encoder.dim, collection=collection)
            if store.count() == 0 and collection == DEFAULT_COLLECTION and build:
                cls._ingest_fashion_mnist(store, encoder, echo)
            if not Router.exists(store):
                if not build:
                    raise HSearchError(f"collection '{collection}' has no router: run `hsearch build --collection "
                                       f"{collection}`")
                k, l = pick_tree(store.count())
                echo(f"building the router of '{collection}' ({store.count()} points, k={k}, l={l}) ...")
                t0 = time.perf_counter()
                router = Router.build(store, k=k, l=l)
                echo(f"router built in {time.perf_counter() - t0:.1f} s")
            else:
                router = Router.open(store)
        except BaseException:
            if store is not None:
                store.close()
            raise
        roots = list(image_roots) + list(store.get_meta().get("source_roots") or [])
        return cls(store, router, encoder, Pictures(roots=roots), echo=echo)

    @staticmethod
    def _ingest_fashion_mnist(store, encoder, echo) -> None:
        from loaders import fashion_mnist_items
        from plugin.ingest import ingest

        echo(f"collection '{store.name}' is empty: ingesting the 10k Fashion-MNIST test images "
             "(~4.5 min on 2 CPU cores the first time; embeddings are cached) ...")
        stats = ingest(fashion_mnist_items("test"), encoder, store, progress=True, total=10000)
        echo(f"ingested: {stats['added']} added, {stats['existing']} already there, {stats['bad']} skipped")

    def close(self) -> None:
        self.store.close()

    # ---- warm-up ------------------------------------------------------------------------------
    def warm(self) -> dict:
        """Load everything a first search needs (torch, numba kernels, WordNet, counts, examples), so
        the first visitor waits no longer than the next. Returns seconds per step."""
        from PIL import Image

        t = {}
        t0 = time.perf_counter()
        vec, probs = self._encode(Image.new("RGB", (96, 96), (120, 130, 140)))
        t["encoder_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.modes(vec, probs)
        t["modes_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        counts = self.synset_counts()
        hierarchy.build_tree(counts)
        hierarchy.path(hierarchy.ROOT)
        t["wordnet_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.examples()
        t["examples_s"] = time.perf_counter() - t0
        return t

    def modes(self, probe=None, probe_probs=None) -> list[str]:
        """The registered search modes that work on this collection, tried once each with a probe query
        (and its class probabilities, which the semantic modes need): a mode that needs something this
        collection or encoder lacks is left out, and the reason logged."""
        if self._modes is None:
            from plugin.router import modes as registry

            try:
                registry.get_mode("exact")  # the first lookup loads modes that register themselves on import
            except HSearchError:
                pass
            if probe is None:
                probe = self.router.flat.centroids[0] if len(self.router.flat.centroids) else None
            ok = []
            for name in list(registry.MODES):
                try:
                    if probe is not None:
                        self.router.search(np.asarray(probe, np.float32), k=1, mode=name,
                                           **self._class_args(probe_probs))
                    ok.append(name)
                except Exception as e:  # noqa: BLE001 - any failure hides the mode; the reason is logged
                    log.warning("search mode '%s' left out of the demo: %s", name, e)
            self._modes = ok
        return list(self._modes)

    def signatures(self):
        """The collection's semantics engine (the process's shared one, which ingestion keeps current), or
        None when it has no signatures or they cannot be read (logged; the page falls back to the
        encoder's classes)."""
        from plugin.signatures.shared import engine_for, has_signatures

        if not has_signatures(self.store):
            return None
        try:
            return engine_for(self.store)
        except HSearchError as e:
            log.warning("signatures of '%s' not shown: %s", self.store.name, e)
            return None

    def semantics_of(self, vec) -> dict | None:
        """``engine.describe`` of a query vector (general and specific semantics, share of the hierarchy
        searched; no retrieval) and whether the signatures lag the collection: checked against the
        cached synset counts (refreshed after every add), so it costs no facet per search."""
        eng = self.signatures()
        if eng is None:
            return None
        out = eng.describe(np.asarray(vec, np.float32), retrieve=False)
        check = eng.check(self.synset_counts())
        out["stale"] = None if check["consistent"] else {
            "synsets_changed": len(check["count_mismatch"]), "new_synsets": len(check["new_synsets"]),
            "flagged": len(check["stale"]), "fix": f"hsearch signatures build --sync --collection {self.store.name}"}
        return out

    def default_mode(self) -> str:
        modes = self.modes()
        return "relaxed" if "relaxed" in modes else modes[0]

    # ---- collection facts ---------------------------------------------------------------------
    def synset_counts(self, refresh: bool = False) -> dict[str, int]:
        """wnid -> images under it, for every synset in the collection (one facet on ``synsets``)."""
        with self._counts_lock:
            if self._counts is None or refresh:
                self._counts = self.store.facet("synsets", limit=FACET_LIMIT)
            return dict(self._counts)

    def hierarchy(self, refresh: bool = False) -> hierarchy.Node | None:
        return hierarchy.build_tree(self.synset_counts(refresh))

    def info(self) -> dict:
        d = self.router.describe()
        return {"collection": self.store.name, "backend": type(self.store).__name__, "points": d["points"],
                "leaves": d["leaves"], "k": d["k"], "l": d["l"], "encoder": self.encoder.name}

    def leaf_plot(self, path: str | os.PathLike) -> str:
        """Draw the k-means tree (leaf sizes and labels) to ``path`` (PNG), as ``hsearch info --plot-tree``."""
        from plugin.router.plot import plot_tree

        plot_tree(self.router, str(path))
        return str(path)

    def examples(self) -> list[Example]:
        if self._examples is None:
            self._examples = photo_examples() + collection_examples(self.store, self.pictures)
        return list(self._examples)

    # ---- queries ------------------------------------------------------------------------------
    def load_upload(self, path: str | os.PathLike):
        """A query image from an uploaded file: size, type and pixel count checked before decoding."""
        return open_image_bytes(read_upload(path), max_pixels=MAX_UPLOAD_PIXELS)

    def parse_within(self, text: str | None) -> list[str] | None:
        """Subtree restriction from the page's text (wnids or synset names, comma-separated); None if empty."""
        wnids = hierarchy.resolve_synsets(text or "", self.synset_counts())
        return wnids or None

    def search_image(self, image, mode: str | None = None, k: int = 10, within: str | None = None,
                     compare: bool = True) -> Outcome:
        t0 = time.perf_counter()
        vec, probs = self._encode(image)
        enc_ms = (time.perf_counter() - t0) * 1e3
        return self._search(vec, probs, None, mode, k, within, compare, t0, enc_ms, "uploaded image", image)

    def search_upload(self, path: str | os.PathLike, mode=None, k: int = 10, within=None,
                      compare: bool = True) -> Outcome:
        """Search with an uploaded file (validated by :meth:`load_upload`); the status names the file."""
        out = self.search_image(self.load_upload(path), mode, k, within, compare)
        out.query = f"uploaded image {os.path.basename(str(path))}"
        return out

    def search_example(self, index: int, mode=None, k: int = 10, within=None, compare: bool = True) -> Outcome:
        ex = self.examples()
        if not 0 <= int(index) < len(ex):
            raise HSearchError(f"there is no example {index}")
        e = ex[int(index)]
        if e.point_id is not None:
            return self.search_point(e.point_id, mode, k, within, compare)
        out = self.search_image(e.image, mode, k, within, compare)
        out.query = f"example: {e.caption}"
        return out

    def search_point(self, point_id, mode=None, k: int = 10, within=None, compare: bool = True) -> Outcome:
        """Search with a stored point's vector (its picture, when it can be shown, gives the predictions)."""
        t0 = time.perf_counter()
        text = str(point_id).strip()
        if not text.isdigit() or int(text) >= 2**63:
            raise HSearchError(f"a point id is a whole number below 2**63, got {text[:40]!r}")
        recs = self.store.retrieve([int(text)], with_vectors=True)
        if not recs:
            raise HSearchError(f"no point with id {text} in collection '{self.store.name}'")
        rec = recs[0]
        picture = self.pictures.of(rec.payload)
        probs = self._encode(picture)[1] if picture is not None else None
        enc_ms = (time.perf_counter() - t0) * 1e3
        out = self._search(rec.vector, probs, rec.payload.get("wnid"), mode, k, within, compare, t0, enc_ms,
                           f"stored point {rec.id} ({rec.payload.get('label') or 'unlabelled'})", picture)
        out.query_id = rec.id
        return out

    def _encode(self, image):
        vecs, probs = self.encoder.encode_with_probs([image])
        return vecs[0], (None if probs is None else probs[0])

    def _top_classes(self, probs, n: int = 5) -> list[tuple[str, str, float]]:
        classes = getattr(self.encoder, "classes", None)
        if probs is None or not classes:
            return []
        top = np.argsort(-probs)[:n]
        out = []
        for i in top:
            w = classes[int(i)]
            try:
                lab = hierarchy.label(w)
            except UnknownSynsetError:
                lab = w
            out.append((w, lab, float(probs[int(i)])))
        return out

    def _class_args(self, probs) -> dict:
        """``probs=``/``classes=`` for ``Router.search`` when the encoder is a classifier: the semantic
        modes rank by the query's predicted class."""
        classes = getattr(self.encoder, "classes", None)
        if probs is None or not classes or not self._router_takes_probs:
            return {}
        return {"probs": probs, "classes": list(classes)}

    def _search(self, vec, probs, stored_wnid, mode, k, within_text, compare, t0, enc_ms, what,
                picture) -> Outcome:
        """``stored_wnid``: the label of a stored query point, the query's class when no probabilities."""
        preds = self._top_classes(probs)
        query_wnid = preds[0][0] if preds else stored_wnid
        mode = mode or self.default_mode()
        if mode not in self.modes():
            raise HSearchError(f"unknown search mode '{mode}'; this collection offers {', '.join(self.modes())}")
        k = int(k)
        if not 1 <= k <= K_MAX:
            raise HSearchError(f"k must be between 1 and {K_MAX}, got {k}")
        within = self.parse_within(within_text) if isinstance(within_text, str) or within_text is None \
            else list(within_text)
        res = self.router.search(vec, k=k, mode=mode, within=within, **self._class_args(probs))
        exact = None
        if compare and mode != "exact":
            ex = self.router.search(vec, k=k, mode="exact", within=within)
            ids = {h.id for h in ex}
            exact = {"ms": ex.stats["ms"], "operands": ex.stats["operands"],
                     "overlap": sum(h.id in ids for h in res), "of": len(ex)}
        hits = [HitView(h.id, h.score, h.payload.get("label"), h.payload.get("wnid"),
                        list(h.payload.get("synsets") or []), h.payload.get("source"), self.pictures.of(h.payload),
                        getattr(h, "why", None))
                for h in res]
        flat = self.router.flat
        return Outcome(hits, dict(res.stats), mode, k, within, int(flat.n_points), int(flat.n_leaves), enc_ms,
                       (time.perf_counter() - t0) * 1e3, exact, preds, query_wnid, what, picture,
                       semantics=self.semantics_of(vec))

    def explain(self, outcome: Outcome, index: int) -> Explanation:
        """Why a hit is where it is: its synset path, and the lowest common ancestor with the query's class."""
        hit = outcome.hits[int(index)]
        if not hit.wnid:
            return Explanation(hit, (), outcome.query_wnid)
        ex = Explanation(hit, hierarchy.path(hit.wnid), outcome.query_wnid)
        if outcome.query_wnid:
            w, up_hit, up_query = hierarchy.lca(hit.wnid, outcome.query_wnid)
            ex.lca, ex.up_from_hit, ex.up_from_query = w, up_hit, up_query
            ex.lca_count = self.synset_counts().get(w, 0)
            ex.query_path = hierarchy.path(outcome.query_wnid)
        return ex

    # ---- adding -------------------------------------------------------------------------------
    def add(self, files, label_text: str | None = None) -> list[AddRow]:
        """Add uploaded files (``[(name, path)]``) through the same ingestion as ``hsearch ingest``
        (incremental, via ``router.add``; they join the collection's signatures too, when it has them):
        searchable as soon as this returns.

        Each file gets a row: added (with its point id), already present (the same bytes are stored),
        or rejected with the reason (too large, not an image, too many pixels, unknown label). Nothing
        is written for a rejected file, and an unknown label rejects the whole batch before anything
        is written.
        """
        from plugin.ingest import ingest
        from plugin.taxonomy import synset_payload

        files = [(os.path.basename(str(n))[:200] or "upload", p) for n, p in files]
        wnid = None
        if label_text and label_text.strip():
            try:
                found = hierarchy.resolve_synsets(label_text, self.synset_counts())
                if len(found) != 1:
                    raise UnknownSynsetError(f"give one label for the batch, got {len(found)}")
                wnid = found[0]
                synset_payload(wnid)
            except UnknownSynsetError as e:
                return [AddRow(n, "rejected", f"label: {e}") for n, _ in files]
        rows, items, pending = [], [], {}
        for name, p in files:
            try:
                data = read_upload(p)
                open_image_bytes(data, max_pixels=MAX_UPLOAD_PIXELS)
            except (BadImageError, OSError) as e:
                rows.append(AddRow(name, "rejected", str(e)))
                continue
            row = AddRow(name, "added")
            rows.append(row)
            sha = self.uploads.put(data)
            pending.setdefault(sha, []).append(row)
            if len(pending[sha]) == 1:
                items.append(Item(key=f"upload:{sha}", source=f"upload:{name}", wnid=wnid,
                                  read=lambda data=data: data))
        if not items:
            return rows
        with self._add_lock:
            before = {sha: self._point_of(sha) for sha in pending}
            stats = ingest(items, self.encoder, self.store, router=self.router)
            self.router.save()
            bad = dict(stats["bad_items"])
            for item, (sha, group) in zip(items, pending.items()):
                pid, first = self._point_of(sha), group[0]
                first.id = pid
                if pid is None:
                    first.status, first.reason = "rejected", bad.get(item.source, "the ingest did not store it")
                elif before[sha] is not None:
                    first.status, first.reason = "already present", "the same picture is already stored"
                for row in group[1:]:
                    row.status = "rejected" if pid is None else "already present"
                    row.reason, row.id = f"same picture as {first.name} in this upload", pid
        self.synset_counts(refresh=True)
        return rows

    def _point_of(self, sha: str) -> int | None:
        for page in self.store.scroll(batch_size=1, with_vectors=False, filter=Filter.of(sha256=sha),
                                      payload_fields=[]):
            return page[0].id if page else None
        return None

