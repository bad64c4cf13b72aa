"""The ImageNet-1k class list (wnids in logit order, with lemmas), read offline from timm's data files.

timm ships ``imagenet_synsets.txt`` and ``imagenet_synset_to_lemma.txt``; we read them through
``importlib`` without importing timm (which would import torch).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from plugin.errors import HSearchError


def _info_dir() -> Path:
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise HSearchError("the ImageNet class list comes from the 'timm' package: pip install --no-deps timm")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "_info"


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in the standard class-index order."""
    wnids = (_info_dir() / "imagenet_synsets.txt").read_text().split()
    if len(wnids) != 1000:
        raise HSearchError(f"expected 1000 ImageNet wnids, found {len(wnids)}")
    return wnids


@functools.lru_cache(maxsize=1)
def imagenet_lemmas() -> dict[str, str]:
    """wnid -> human-readable lemma list (``'n02084071' -> 'dog, domestic dog, ...'``)."""
    out = {}
    for line in (_info_dir() / "imagenet_synset_to_lemma.txt").read_text().splitlines():
        if "\t" in line:
            wnid, lemma = line.split("\t", 1)
            out[wnid] = lemma
    return out
