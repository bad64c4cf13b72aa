"""Encoders built by name (open_clip / timm style): ``create_encoder("clip:ViT-B-32", pretrained=...)``.

A registered factory takes ``(arch, pretrained, device, **kwargs)``. Plain names (``mobilenet_v2``)
register one architecture; family names ending in ``:`` (``clip:``) take the architecture after the
colon. Architecture and weights are separate: ``pretrained`` is a tag, a local file, or None (random
init, for plumbing tests) — offline models default to the weights their package ships.
"""
from __future__ import annotations

from typing import Callable

from plugin.errors import UnknownEncoderError

_REGISTRY: dict[str, tuple[Callable, str]] = {}


def register_encoder(name: str, doc: str = ""):
    def deco(factory):
        _REGISTRY[name] = (factory, doc or (factory.__doc__ or "").strip().splitlines()[0])
        return factory

    return deco


def _ensure_loaded():
    # import for the side effect of registering; each module imports torch lazily
    from plugin.encoders import clip, handcrafted, torchvision_models  # noqa: F401


def list_encoders() -> dict[str, str]:
    """Registered names (families end with ``:``) and a one-line description each."""
    _ensure_loaded()
    return {k: v[1] for k, v in sorted(_REGISTRY.items())}


def create_encoder(name: str, pretrained: str | None = "default", device: str = "auto", **kwargs):
    """Build an encoder by registry name.

    ``pretrained="default"`` means the weights the registry knows for that name (the offline ones for
    mobilenet_v2 / efficientnet_lite*, none for families that need a user-provided checkpoint).
    ``head="file.pt"`` attaches a classification head trained with ``hsearch train`` on this encoder's
    vectors: ``predict_proba`` then gives probabilities over that head's wnids.
    """
    _ensure_loaded()
    if name in _REGISTRY:
        factory, arch = _REGISTRY[name][0], name
    elif ":" in name and name.split(":", 1)[0] + ":" in _REGISTRY:
        family, arch = name.split(":", 1)
        factory = _REGISTRY[family + ":"][0]
        if not arch:
            raise UnknownEncoderError(f"encoder '{name}' needs an architecture after the colon, e.g. clip:ViT-B-32")
    else:
        raise UnknownEncoderError(
            f"unknown encoder '{name}'. Known: {', '.join(list_encoders())} (families take an architecture, "
            "e.g. clip:ViT-B-32)")
    head = kwargs.pop("head", None)
    enc = factory(arch, pretrained=pretrained, device=device, **kwargs)
    enc.name = name
    if head is not None:  # a head trained by `hsearch train` on this encoder's vectors
        from plugin.semantics.head import load_head

        module, classes, _ = load_head(head, encoder=name, dim=enc.dim)
        enc.attach_head(module, classes)
    enc.weights = pretrained if pretrained != "default" else "default"
    return enc
