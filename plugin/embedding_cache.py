"""Embeddings cached on disk by content hash, so re-ingesting or re-benchmarking a dataset does not
re-run the encoder (heavy one-time work; never committed).

One SQLite file per encoder+weights under ``$HSEARCH_HOME/cache/embeddings``; keys are the SHA-256 of
the image bytes. SQLite gives atomic batched writes (an interrupted run loses nothing already
written) without a new dependency.
"""
from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np

from plugin import config


class EmbeddingCache:
    def __init__(self, encoder_key: str, dim: int, root: Path | None = None):
        safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", encoder_key)
        root = Path(root) if root else config.cache_dir("embeddings")
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / f"{safe}.sqlite"
        self.dim = dim
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (hash TEXT PRIMARY KEY, vec BLOB NOT NULL)")

    def get_many(self, hashes: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for s in range(0, len(hashes), 900):  # SQLite's host-parameter limit
            chunk = hashes[s:s + 900]
            q = f"SELECT hash, vec FROM emb WHERE hash IN ({','.join('?' * len(chunk))})"
            for h, blob in self._db.execute(q, chunk):
                v = np.frombuffer(blob, np.float32)
                if v.size == self.dim:
                    out[h] = v
        return out

    def put_many(self, hashes: list[str], vectors: np.ndarray) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)",
                                 [(h, np.asarray(v, np.float32).tobytes()) for h, v in zip(hashes, vectors)])

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM emb").fetchone()[0])

    def close(self) -> None:
        self._db.close()


def encoder_cache_key(encoder) -> str:
    return f"{encoder.name}@{getattr(encoder, 'weights', 'default')}"


def encode_items_cached(items_bytes: list[tuple[str, object]], encoder, cache: EmbeddingCache | None,
                        batch_size: int | None = None) -> np.ndarray:
    """Vectors for ``(content_hash, image or image-returning callable)`` pairs, encoding only cache misses."""
    hashes = [h for h, _ in items_bytes]
    found = cache.get_many(hashes) if cache is not None else {}
    todo = [i for i, h in enumerate(hashes) if h not in found]
    out = np.zeros((len(hashes), encoder.dim), np.float32)
    for i, h in enumerate(hashes):
        if h in found:
            out[i] = found[h]
    if todo:
        # an entry is a PIL image or a zero-argument callable returning one (decoded only on a miss)
        images = [items_bytes[i][1]() if callable(items_bytes[i][1]) else items_bytes[i][1] for i in todo]
        vecs = encoder.encode(images, batch_size=batch_size)
        out[todo] = vecs
        if cache is not None:
            cache.put_many([hashes[i] for i in todo], vecs)
    return out
