"""Getting a stored point's picture back, and keeping uploaded pictures so they can be shown later.

A point's payload says where its image came from (``key``, ``source``, ``sha256``). The page never
serves a path a user typed, and a payload path is only followed inside a folder this demo was told the
collection was ingested from:

* ``fashion-mnist:<split>:<i>``: pixels by index from the Debian dataset files;
* ``imagenet-sample:<name>``: the file ``<name>`` in the ImageNet sample folder (no ``..``, no subfolders);
* ``upload:<sha256>``: the content-addressed copy :class:`Uploads` kept under ``$HSEARCH_HOME``;
* anything else (``folder:<rel>``): one of the payload's ``sources`` paths, only when it resolves
  (symlinks followed) inside one of the image roots (``hsearch demo --image-root`` or the collection
  metadata's ``source_roots``).

Every picture is checked against the payload's ``sha256`` (a file changed since ingestion shows as
missing, not as someone else's picture) and decoded with the loaders' safe decoding.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from loaders.base import MAX_FILE_BYTES, content_hash, open_image_bytes
from plugin import config
from plugin.errors import BadImageError

SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class Uploads:
    """Uploaded images, content-addressed: ``<root>/<sha[:2]>/<sha>`` holds the exact bytes uploaded
    (after validation), so an added point shows its picture after the browser's temp file is gone and
    uploading the same picture twice stores it once."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else config.home() / "uploads"

    def path(self, sha: str) -> Path:
        if not SHA_RE.match(sha or ""):
            raise BadImageError(f"not a content hash: {sha!r}")
        return self.root / sha[:2] / sha

    def put(self, data: bytes) -> str:
        from plugin.fsutil import atomic_write_bytes

        sha = content_hash(data)
        p = self.path(sha)
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(p, data)
        return sha

    def read(self, sha: str) -> bytes | None:
        p = self.path(sha)
        return p.read_bytes() if p.is_file() else None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


class Pictures:
    """``of(payload)`` -> the point's picture (a PIL image) or None when it cannot be shown safely."""

    def __init__(self, roots=(), uploads: Uploads | None = None, imagenet_dir: str | os.PathLike | None = None):
        self.roots = [Path(r).expanduser().resolve() for r in roots if r]
        self.uploads = uploads or Uploads()
        if imagenet_dir is None:
            from loaders.imagenet_sample import sample_dir

            imagenet_dir = sample_dir()
        self.imagenet_dir = Path(imagenet_dir).resolve() if imagenet_dir else None

    def of(self, payload: dict):
        try:
            data = self.raw(payload)
            if data is None:
                return None
            if str(payload.get("key", "")).startswith("fashion-mnist:"):
                return _fashion_mnist_image(data)
            return open_image_bytes(data)
        except (BadImageError, OSError, ValueError):
            return None

    def raw(self, payload: dict) -> bytes | None:
        """The stored image's bytes, verified against the payload's ``sha256``; None if unavailable."""
        key, sha = str(payload.get("key") or ""), str(payload.get("sha256") or "")
        kind, _, rest = key.partition(":")
        if kind == "fashion-mnist":
            data = _fashion_mnist(rest)
        elif kind == "upload":
            data = self.uploads.read(rest) if SHA_RE.match(rest) else None
        elif kind == "imagenet-sample":
            data = self._file(self.imagenet_dir / rest, self.imagenet_dir) \
                if self.imagenet_dir and rest and "/" not in rest and rest not in (".", "..") else None
        else:
            data = self._folder_item(payload)
        if data is None or content_hash(data) != sha:
            return None
        return data

    def _folder_item(self, payload: dict) -> bytes | None:
        sources = payload.get("sources") or [payload.get("source")]
        for src in sources:
            if not isinstance(src, str) or not os.path.isabs(src):
                continue
            for root in self.roots:
                data = self._file(Path(src), root)
                if data is not None:
                    return data
        return None

    @staticmethod
    def _file(p: Path, root: Path) -> bytes | None:
        try:
            real = p.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not _inside(real, root) or not real.is_file() or real.stat().st_size > MAX_FILE_BYTES:
            return None
        return real.read_bytes()


def _fashion_mnist(rest: str) -> bytes | None:
    split, _, idx = rest.partition(":")
    if split not in ("train", "test") or not idx.isdigit():
        return None
    from loaders.fashion_mnist import load_arrays

    try:
        images, _ = load_arrays(split)
    except FileNotFoundError:
        return None
    i = int(idx)
    return images[i].tobytes() if i < len(images) else None



def _fashion_mnist_image(data: bytes):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.frombuffer(data, np.uint8).reshape(28, 28), mode="L")
