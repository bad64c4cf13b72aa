"""A classification head on frozen encoder features, and its checkpoint file.

The head reads the vectors the collection stores (L2-normalised encoder features), so it can be
trained from the collection alone, without touching an image again, and then attached to the encoder
(``create_encoder("mobilenet_v2", head="head.pt")``) to give ``predict_proba`` over the collection's
wnids. ``hidden=0`` is a linear classifier; otherwise one hidden layer (a projection) comes first.
The classifier rows are the class prototypes the hierarchical loss shapes (see ``loss.py``).
"""
from __future__ import annotations

import os

from plugin.errors import HSearchError, WeightsNotFoundError

FORMAT = "hsearch-head-1"


def make_head(in_dim: int, n_classes: int, hidden: int = 0):
    import torch

    class ClassifierHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Sequential(torch.nn.Linear(in_dim, hidden), torch.nn.ReLU()) if hidden else None
            self.classifier = torch.nn.Linear(hidden or in_dim, n_classes)

        def forward(self, x):
            return self.classifier(self.proj(x) if self.proj is not None else x)

        @property
        def prototypes(self):
            return self.classifier.weight

    return ClassifierHead()


def save_head(path, head, classes, encoder: str, in_dim: int, hidden: int, extra: dict | None = None) -> None:
    import io

    import torch

    from plugin.fsutil import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"format": FORMAT, "state_dict": head.state_dict(), "classes": list(classes), "encoder": encoder,
                "in_dim": int(in_dim), "hidden": int(hidden), **(extra or {})}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_head(path, encoder: str | None = None, dim: int | None = None):
    """(head module in eval mode, classes, checkpoint dict); checks it was trained on ``encoder``'s features."""
    import torch

    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"head file not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsNotFoundError(f"{path} is not a head checkpoint: {e}") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise WeightsNotFoundError(f"{path} is not a head checkpoint written by `hsearch train`")
    if encoder is not None and ck["encoder"] != encoder:
        raise HSearchError(f"head {path} was trained on '{ck['encoder']}' features, not '{encoder}'")
    if dim is not None and ck["in_dim"] != dim:
        raise HSearchError(f"head {path} takes {ck['in_dim']}-d features, the encoder gives {dim}-d")
    head = make_head(ck["in_dim"], len(ck["classes"]), ck["hidden"])
    head.load_state_dict(ck["state_dict"])
    return head.eval(), list(ck["classes"]), ck
