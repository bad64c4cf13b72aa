"""Hand-made features as encoders: ``handcrafted`` (colour + texture + shape, 531-d), ``handcrafted:color``
(462-d), ``handcrafted:texture`` (48-d), ``handcrafted:shape`` (21-d), or any ``+``-joined subset in
that order (``handcrafted:color+shape``). The extractors and their layouts are documented in
:mod:`plugin.signatures.features`.

A vector is the concatenation of its blocks, each L2-normalised on its own, then the row is
L2-normalised as every encoder's is: with all blocks non-zero each block has norm ``1/sqrt(B)``, so
the store's cosine between two rows is the mean of the per-block cosines (the paper's eq. 2 with
equal weights). ``encoder.blocks`` lists ``(kind, start, stop)``: the semantics engine measures each
feature apart (:mod:`plugin.signatures.blocks`).

No model, no torch, no weights: ``pretrained`` must be ``"default"``, None, or the current feature
version (``features-v1``, which ingestion records as the collection's weights). Runs on the CPU, one
image at a time (the 24 Gabor filtrations take most of the time); cache heavy runs
with :mod:`plugin.embedding_cache` as for any encoder.

Bad input: grey images are replicated to RGB (their colour is all achromatic: intensity bins only);
images of any size, down to 1 x 1, are resized to the working size; a block with no signal (the
texture of a uniform image) is zeros. A row that would be all zeros (``handcrafted:texture`` of a
uniform image) has no direction for cosine search and is refused with :class:`BadImageError` (ingest
skips and counts it).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from plugin.encoders.base import Encoder
from plugin.encoders.registry import register_encoder
from plugin.errors import BadImageError, HSearchError, UnknownEncoderError
from plugin.signatures import features


def parse_kinds(arch: str) -> tuple[str, ...]:
    """``handcrafted`` -> all three; ``color+shape`` -> ('color', 'shape'); kinds kept in canonical order."""
    if arch in ("handcrafted", "all"):
        return features.KINDS
    asked = [k.strip() for k in arch.split("+") if k.strip()]
    bad = [k for k in asked if k not in features.KINDS]
    if bad or not asked or len(set(asked)) != len(asked):
        raise UnknownEncoderError(
            f"handcrafted encoder '{arch}': give one or more of {', '.join(features.KINDS)} joined by '+' "
            "(e.g. handcrafted:color+shape), each once")
    return tuple(k for k in features.KINDS if k in asked)


class HandcraftedEncoder(Encoder):
    default_batch_size = 64

    @property
    def weights(self) -> str:
        """No weights: the feature definition's version stands in, so embeddings cached by
        ``name@weights`` (:mod:`plugin.embedding_cache`) are never reused across definitions."""
        return f"features-v{features.VERSION}"

    @weights.setter
    def weights(self, value) -> None:  # create_encoder records the weights it was given; there are none
        pass

    def __init__(self, kinds: Sequence[str]):
        # no torch: the base constructor would resolve a torch device
        self.device, self.model, self.preprocess, self.head = "cpu", None, None, None
        self.kinds = tuple(kinds)
        self.blocks, start = [], 0
        for k in self.kinds:
            self.blocks.append((k, start, start + features.DIMS[k]))
            start += features.DIMS[k]
        self.dim = start
        self.classes = None

    def encode(self, images: Sequence, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """(N, dim) float32, each block and the row L2-normalised (module docstring)."""
        images = list(images)
        it = images
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(images, desc=f"encode {self.name}", unit="image")
        out = np.zeros((len(images), self.dim), np.float32)
        for i, im in enumerate(it):
            v = features.extract(im, self.kinds)
            n = float(np.linalg.norm(v))
            if not np.isfinite(v).all() or n == 0:
                raise BadImageError(f"image {i} has no {'/'.join(self.kinds)} signal (a uniform image?): "
                                    "nothing to search by")
            out[i] = v / n
        return out

    def encode_with_probs(self, images: Sequence, batch_size: int | None = None, progress: bool = False,
                          want_probs: bool = True):
        return self.encode(images, batch_size, progress), None

    def predict_proba(self, images, batch_size=None):
        raise HSearchError(f"encoder '{self.name}' is not a classifier: it has no class probabilities")


def _factory(arch, pretrained="default", device="auto", **_):
    current = f"features-v{features.VERSION}"
    if pretrained not in ("default", None, current):
        raise HSearchError(f"hand-made features have no weights; got pretrained={pretrained!r} (a collection made "
                           f"with another feature definition than {current} needs re-ingesting)")
    return HandcraftedEncoder(parse_kinds(arch))


register_encoder("handcrafted", "hand-made colour + Gabor texture + pseudo-Zernike shape features, 531-d")(_factory)
register_encoder("handcrafted:", "one or more of color / texture / shape, e.g. handcrafted:color+shape")(_factory)
