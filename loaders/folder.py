"""Images from a folder tree. Labels come from the ImageNet layouts: ``<wnid>/*.jpg`` or files named
``<wnid>_*.jpg``; other images are unlabelled (``wnid=None``).

Every regular, non-hidden file is offered (sorted, so the order is deterministic): a file that turns
out not to be an image is skipped with a warning by the ingest, not silently ignored.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

from loaders.base import MAX_FILE_BYTES, Item

WNID_PREFIX = re.compile(r"^(n\d{8})(?:[_\-.]|$)")


def wnid_from_path(rel: Path) -> str | None:
    m = WNID_PREFIX.match(rel.name)
    if m:
        return m.group(1)
    if len(rel.parts) > 1 and re.fullmatch(r"n\d{8}", rel.parts[-2]):
        return rel.parts[-2]
    return None


def _reader(path: Path):
    def read() -> bytes:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:  # do not pull a huge file into memory just to refuse it
            return b"\0" * (MAX_FILE_BYTES + 1)
        return path.read_bytes()

    return read


def folder_items(root: str | os.PathLike, recursive: bool = True, prefix: str | None = None) -> Iterator[Item]:
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = root.rglob("*") if recursive else root.glob("*")
    for path in sorted(p for p in files if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        yield Item(key=f"{prefix or 'folder'}:{rel.as_posix()}", source=str(path), wnid=wnid_from_path(rel),
                   read=_reader(path))
