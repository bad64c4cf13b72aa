"""Images from a folder tree. Labels come from the ImageNet layouts: ``<wnid>/*.jpg`` or files named
``<wnid>_*.jpg``; other images are unlabelled (``wnid=None``).

Every regular, non-hidden file is offered (sorted, so the order is deterministic): a file that turns
out not to be an image is skipped with a warning by the ingest, not silently ignored.

Symlinks are judged by where they point (``os.path.realpath``: link metadata only, the target is
never opened to decide). A link whose target stays inside the folder is read like a file; one that
leaves the folder is offered as a skipped item ("symlink to outside the folder: <target>") unless
``follow_symlinks=True``: ingesting ``~/Pictures`` must not read ``/etc/shadow`` or a photo elsewhere
because a link points there. Linked directories inside the folder are not descended (their files
are walked where they live); with ``follow_symlinks`` outside ones are, each real directory once.
"""
from __future__ import annotations

import os
import re
import stat
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


def _reader(real: Path):
    """Read ``real`` (a resolved path) as a regular file, refusing a link swapped in since the walk."""

    def read() -> bytes:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # NONBLOCK: a fifo must not hang us
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{real} is not a regular file")
            if st.st_size > MAX_FILE_BYTES:  # do not pull a huge file into memory just to refuse it
                return b"\0" * (MAX_FILE_BYTES + 1)
            return f.read()

    return read


def _refuse(reason: str):
    def read() -> bytes:
        raise OSError(reason)

    return read


def folder_items(root: str | os.PathLike, recursive: bool = True, prefix: str | None = None,
                 follow_symlinks: bool = False) -> Iterator[Item]:
    """Items for the files under ``root``; see the module docstring for symlinks."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    pre = prefix or "folder"
    seen_dirs = {root}

    def skipped(path: Path, rel: Path, reason: str) -> Item:
        return Item(key=f"{pre}:{rel.as_posix()}", source=str(path), wnid=None, read=_refuse(reason), skip=reason)

    def walk(d: Path) -> Iterator[Item]:
        try:
            names = sorted(e.name for e in os.scandir(d))
        except OSError as e:
            yield skipped(d, d.relative_to(root), f"cannot list folder: {e.strerror}")
            return
        for name in names:
            if name.startswith("."):
                continue
            path = d / name
            rel = path.relative_to(root)
            real, is_link = path, path.is_symlink()
            if is_link:
                real = Path(os.path.realpath(path))
                if not real.is_relative_to(root) and not follow_symlinks:
                    yield skipped(path, rel, f"symlink to outside the folder: {real}")
                    continue
            try:
                st = os.stat(real)
            except OSError as e:
                yield skipped(path, rel, f"cannot read: {e.strerror} ({real})")
                continue
            if stat.S_ISDIR(st.st_mode):
                real_dir = Path(os.path.realpath(path))
                linked_inside = is_link and real_dir.is_relative_to(root)
                if recursive and not linked_inside and real_dir not in seen_dirs:
                    seen_dirs.add(real_dir)
                    yield from walk(path)
            elif stat.S_ISREG(st.st_mode):
                yield Item(key=f"{pre}:{rel.as_posix()}", source=str(path), wnid=wnid_from_path(rel),
                           read=_reader(real))
            else:
                yield skipped(path, rel, "not a regular file (fifo, socket or device)")

    yield from walk(root)
