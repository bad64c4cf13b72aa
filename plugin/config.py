"""Where the plugin keeps things on disk. One root, ``$HSEARCH_HOME`` (default ``~/.cache/hsearch``):

    stores/<collection>/   embedded collections (qdrant-edge shard + router state)
    cache/embeddings/      embeddings keyed by content hash (never committed, safe to delete)
    cache/taxonomy/        WordNet matrices keyed by the class list
    nltk_data/             WordNet laid out the way nltk wants it
"""
from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("HSEARCH_HOME", Path.home() / ".cache" / "hsearch")).expanduser()


def stores_dir() -> Path:
    return home() / "stores"


def cache_dir(kind: str) -> Path:
    p = home() / "cache" / kind
    p.mkdir(parents=True, exist_ok=True)
    return p
