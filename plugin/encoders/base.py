"""What every encoder is: images in, L2-normalised float32 vectors out (plus class probabilities
where the model is a classifier).

Subclasses set ``name``, ``dim``, build ``self.model`` and ``self.preprocess`` (PIL -> CHW tensor),
and implement ``_forward(batch) -> (features, logits_or_None)``. Batching, device placement, grey-image
handling, progress and normalisation live here once.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from plugin.errors import BadImageError, HSearchError


def resolve_device(device: str = "auto") -> str:
    """``auto`` picks CUDA when torch sees a GPU, else CPU; ``cuda`` without a GPU is an error."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise HSearchError(f"device '{device}' requested but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    return str(device)


def to_rgb(image):
    """Any PIL image (grey, palette, RGBA, 16-bit) or HxW / HxWxC uint8 array -> RGB PIL image.

    Grey images (Fashion-MNIST) get their channel replicated, which is what ImageNet models expect.
    """
    from PIL import Image

    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            raise BadImageError(f"image arrays must be uint8, got {arr.dtype}")
        image = Image.fromarray(arr)
    if not isinstance(image, Image.Image):
        raise BadImageError(f"expected a PIL image or uint8 array, got {type(image).__name__}")
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I", "F"):
        arr = np.asarray(image, dtype=np.float32)
        rng = float(arr.max() - arr.min()) or 1.0
        image = Image.fromarray(((arr - arr.min()) / rng * 255).astype(np.uint8))
    return image.convert("RGB")


class Encoder:
    """Base class. Use :func:`plugin.encoders.create_encoder` to build one by name."""

    name: str = "encoder"
    dim: int = 0
    #: wnids of the classifier's classes, in logit order (ImageNet models); None if not a classifier.
    classes: list[str] | None = None
    default_batch_size: int = 16
    #: CNNs run ~2.5x faster on CPU in channels-last layout (measured: MobileNetV2 15 vs 40 ms/image)
    channels_last: bool = False
    #: a head from ``plugin.semantics.head`` replacing the model's own class probabilities, or None
    head = None

    def __init__(self, device: str = "auto"):
        self.device = resolve_device(device)
        self.model = None
        self.preprocess = None
        self.head = None

    def attach_head(self, head, classes) -> None:
        """Replace the class probabilities by a head trained on this encoder's normalised vectors
        (``plugin.semantics.head``); ``classes`` are its wnids in logit order."""
        self.head = head.to(self.device).eval()
        self.classes = list(classes)

    # subclasses -----------------------------------------------------------------------------------
    def _forward(self, batch):
        """(B, 3, H, W) tensor on ``self.device`` -> (features (B, dim), logits (B, C) or None)."""
        raise NotImplementedError

    # public ---------------------------------------------------------------------------------------
    def encode(self, images: Sequence, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """(N, dim) float32, each row L2-normalised."""
        return self.encode_with_probs(images, batch_size, progress, want_probs=False)[0]

    def predict_proba(self, images: Sequence, batch_size: int | None = None) -> np.ndarray:
        """(N, C) softmax class probabilities in the order of ``self.classes``."""
        if self.classes is None:
            raise HSearchError(f"encoder '{self.name}' is not a classifier: it has no class probabilities")
        return self.encode_with_probs(images, batch_size)[1]

    def encode_with_probs(self, images: Sequence, batch_size: int | None = None, progress: bool = False,
                          want_probs: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """One forward pass giving both the vectors and (for classifiers) the class probabilities."""
        import torch

        images = list(images)
        bs = batch_size or self.default_batch_size
        feats, probs = [], []
        batches = range(0, len(images), bs)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"encode {self.name}", unit="batch")
        self.model.eval()
        with torch.inference_mode():
            for s in batches:
                x = torch.stack([self.preprocess(to_rgb(im)) for im in images[s:s + bs]]).to(self.device)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                f, logits = self._forward(x)
                f = torch.nn.functional.normalize(f.float(), dim=1)
                if self.head is not None:
                    logits = self.head(f)
                feats.append(f.cpu().numpy())
                if want_probs and logits is not None:
                    probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        out = np.concatenate(feats).astype(np.float32) if feats else np.zeros((0, self.dim), np.float32)
        p = np.concatenate(probs).astype(np.float32) if probs else None
        return out, p

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, device={self.device!r})"
