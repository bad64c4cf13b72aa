"""Durable file replacement: write a temporary file, fsync it, rename it over the target, fsync the directory.

A rename is atomic but not durable until the directory holding it is fsynced: after a power loss the
directory may still show the old name (or neither). Every write-then-rename in the project goes through
:func:`atomic_write` / :func:`atomic_write_bytes` (one file) or calls :func:`fsync_dir` after its own renames (directories).
"""
from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, so the renames, creations and deletions in it survive a power loss."""
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file and directory under ``path`` (and ``path`` itself), deepest first."""
    path = Path(path)
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(root)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (:func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: str | os.PathLike, write) -> None:
    """Replace ``path`` with what ``write(file)`` writes, atomically and durably.

    Writes ``<path>.tmp`` through ``write`` (a binary file object: large states are streamed, not built
    in memory first), fsyncs it, renames it over ``path`` and fsyncs the directory. On any failure the
    temporary file is removed and the previous ``path`` (if any) is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
