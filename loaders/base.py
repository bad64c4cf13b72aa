"""What a loader yields, and opening untrusted image bytes safely.

An :class:`Item` is cheap to create: it knows its stable ``key`` and how to read its raw bytes;
decoding happens only when the ingest needs the pixels (after it has checked the point is new).
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from typing import Callable

from plugin.errors import BadImageError

#: Files larger than this are refused before decoding (bytes).
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Images with more pixels than this are refused from their header, before decoding (decompression bombs).
MAX_PIXELS = 80_000_000


@dataclass
class Item:
    """One image to ingest.

    ``key``: stable identifier within its dataset (relative path, or ``fashion-mnist:test:17``).
    ``source``: where it came from, for people (absolute path or dataset id). ``wnid``: WordNet noun id
    label or None. ``read``: returns the raw bytes; ``decode``: bytes -> RGB/L PIL image.
    ``skip``: a reason the loader refuses the item without reading it (e.g. a symlink leaving the
    folder); the ingest reports it as a skipped file and never calls ``read``.
    """

    key: str
    source: str
    wnid: str | None
    read: Callable[[], bytes]
    decode: Callable[[bytes], object] = field(default=None)
    extra: dict = field(default_factory=dict)
    skip: str | None = None

    def __post_init__(self):
        if self.decode is None:
            self.decode = open_image_bytes

    def load(self):
        return self.decode(self.read())


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_image_bytes(data: bytes, max_pixels: int = MAX_PIXELS, draft_size: int = 512):
    """Decode untrusted bytes into a fully loaded PIL image, or raise :class:`BadImageError`.

    Refuses files over :data:`MAX_FILE_BYTES`, non-images, truncated files and images whose header
    declares more than ``max_pixels`` pixels. JPEGs are decoded at reduced scale (``draft``) when much
    larger than ``draft_size``: encoders resize to ~256 px anyway and this keeps big photos cheap.
    """
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_FILE_BYTES:
        raise BadImageError(f"file is {len(data) / 2**20:.0f} MiB, over the {MAX_FILE_BYTES / 2**20:.0f} MiB limit")
    if not data:
        raise BadImageError("file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImageError("not an image (format not recognised)") from None
    except Image.DecompressionBombError:  # header declares > 2x PIL's MAX_IMAGE_PIXELS
        raise _too_large(declared_size(data), max_pixels) from None
    except Exception as e:
        raise BadImageError(f"corrupt or truncated image: {e}") from None
    w, h = im.size
    if w * h > max_pixels:
        raise _too_large((w, h), max_pixels)
    if w < 1 or h < 1:
        raise BadImageError(f"image has no pixels ({w}x{h})")
    try:
        if im.format == "JPEG" and min(w, h) > 2 * draft_size:
            im.draft("RGB", (draft_size, draft_size))
        im.load()
    except Image.DecompressionBombError:
        raise _too_large(im.size, max_pixels) from None
    except Exception as e:  # truncated / corrupt data
        raise BadImageError(f"corrupt or truncated image: {e}") from None
    return im


def _too_large(size: tuple[int, int] | None, max_pixels: int) -> BadImageError:
    if size is None:
        return BadImageError(f"image too large: its header declares more than {max_pixels / 1e6:.0f} megapixels "
                             "(refused before decoding)")
    w, h = size
    return BadImageError(f"image too large: {w}x{h} pixels = {w * h / 1e6:,.0f} megapixels, over the "
                         f"{max_pixels / 1e6:.0f} MP limit (refused before decoding)")


def declared_size(data: bytes) -> tuple[int, int] | None:
    """Width and height an image header declares, without decoding and without PIL's size guard.

    ``Image.open`` refuses headers over 2x ``MAX_IMAGE_PIXELS`` with a message that gives neither
    width nor height; PIL's format plugins (what ``Image.open`` tries in turn) read only the header.
    """
    from PIL import Image

    Image.init()
    prefix = data[:16]
    for fmt in list(Image.ID):
        factory, accept = Image.OPEN[fmt]
        ok = accept(prefix) if accept is not None else True
        if not ok or isinstance(ok, str):  # a str is PIL's "looks like it, but unsupported"
            continue
        try:
            return tuple(factory(io.BytesIO(data), "").size)
        except Exception:
            continue
    return None


def open_image_file(path, max_pixels: int = MAX_PIXELS):
    import os

    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise BadImageError(f"{path}: cannot read ({e.strerror})") from None
    if size > MAX_FILE_BYTES:
        raise BadImageError(f"{path}: file is {size / 2**20:.0f} MiB, over the {MAX_FILE_BYTES / 2**20:.0f} MiB limit")
    with open(path, "rb") as f:
        data = f.read()
    try:
        return open_image_bytes(data, max_pixels)
    except BadImageError as e:
        raise BadImageError(f"{path}: {e}") from None
