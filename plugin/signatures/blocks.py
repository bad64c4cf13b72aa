"""Features as blocks of one stored vector, and the per-feature distances every other module uses.

A collection stores one vector per image. The paper measures three features apart (colour, texture,
shape) and combines them (eq. 2: ``d = w_C d_C + w_T d_T + w_S d_S``, equal weights). Here a vector is
cut into the *blocks* its encoder declares (``encoder.blocks`` of the ``handcrafted`` family: colour
0:462, texture 462:510, shape 510:531); any other encoder (MobileNetV2, CLIP, ...) is one block,
``deep``, so deep features run through exactly the same code with F = 1 feature.

Per-feature distance: each block is rescaled to unit length (a zero block, "no signal", stays zero)
and ``d_f(a, b) = ||a_f - b_f||``, the chord distance, in [0, 2]. It is a metric (the VP-trees'
pruning relies on the triangle inequality) and orders pairs exactly as the store's cosine does
(``||a - b||^2 = 2 - 2 cos``), so the engine and the store agree on what is near. The combined
distance is ``sum_f w_f d_f`` with ``w_f = 1 / F``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plugin.errors import BadVectorError


@dataclass(frozen=True)
class Blocks:
    names: tuple[str, ...]
    starts: np.ndarray  # (F,) int64
    stops: np.ndarray  # (F,) int64
    weights: np.ndarray  # (F,) float64, sums to 1

    @staticmethod
    def of(spec, dim: int) -> "Blocks":
        """From ``[(name, start, stop), ...]`` covering ``0:dim`` in order (checked)."""
        spec = [(str(n), int(a), int(b)) for n, a, b in spec]
        pos = 0
        for n, a, b in spec:
            if a != pos or b <= a:
                raise BadVectorError(f"feature blocks must tile the vector in order; got {spec}")
            pos = b
        if pos != dim:
            raise BadVectorError(f"feature blocks cover {pos} of {dim} dimensions: {spec}")
        f = len(spec)
        return Blocks(tuple(n for n, _, _ in spec), np.array([a for _, a, _ in spec], np.int64),
                      np.array([b for _, _, b in spec], np.int64), np.full(f, 1.0 / f))

    @staticmethod
    def single(dim: int, name: str = "deep") -> "Blocks":
        return Blocks.of([(name, 0, dim)], dim)

    @staticmethod
    def for_encoder(name: str | None, dim: int) -> "Blocks":
        """The blocks of vectors made by encoder ``name`` (registry name); one block for any encoder
        that declares none. Building a hand-made encoder is cheap (no model), so ask it."""
        if name and (name == "handcrafted" or name.startswith("handcrafted:")):
            from plugin.encoders import create_encoder

            enc = create_encoder(name)
            if enc.dim == dim:
                return Blocks.of(enc.blocks, dim)
        return Blocks.single(dim)

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return int(self.stops[-1])

    def spec(self) -> list:
        return [[n, int(a), int(b)] for n, a, b in zip(self.names, self.starts, self.stops)]

    def normalise(self, X) -> np.ndarray:
        """(N, dim) float32 copy with every block at unit length (zero blocks stay zero). NaN/inf or a
        wrong dimension is a :class:`BadVectorError`."""
        X = np.asarray(X, np.float32)
        if X.ndim == 1:
            X = X[None]
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise BadVectorError(f"expected (N, {self.dim}) vectors, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise BadVectorError("feature vectors contain NaN or inf")
        out = np.empty_like(X)
        for a, b in zip(self.starts, self.stops):
            blk = X[:, a:b]
            n = np.linalg.norm(blk, axis=1, keepdims=True)
            out[:, a:b] = np.where(n > 0, blk / np.where(n > 0, n, 1), 0)
        return np.ascontiguousarray(out)

    def distances(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        """(F, len(A), len(B)) per-feature chord distances between block-normalised rows."""
        out = np.empty((self.n, len(A), len(B)), np.float64)
        for f, (a, b) in enumerate(zip(self.starts, self.stops)):
            x, y = A[:, a:b].astype(np.float64), B[:, a:b].astype(np.float64)
            d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
            out[f] = np.sqrt(np.maximum(d2, 0.0))
        return out

    def combined(self, per_feature: np.ndarray) -> np.ndarray:
        """Eq. 2: the weighted sum over the first axis of :meth:`distances`' output."""
        return np.tensordot(self.weights, per_feature, axes=1)
