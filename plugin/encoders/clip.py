"""Retrieval-oriented ViT encoders: the ``clip:<arch>`` family (open_clip image towers) and the
``unicom:<arch>`` family (UNICOM, deepglint/unicom).

clip:<arch>
    Any architecture in ``open_clip.list_models()`` (``clip:ViT-B-32``, ``clip:ViT-L-14`` ...); the
    embedding is ``model.encode_image`` (``model.visual.output_dim`` wide) and the preprocessing is the
    eval transform open_clip returns for that model/tag. ``pretrained`` is

    * an open_clip tag such as ``"laion2b_s34b_b79k"`` (see ``open_clip.list_pretrained_tags_by_model``):
      downloaded on first use, which needs internet access (Hugging Face hub);
    * a path to a local open_clip / OpenAI CLIP checkpoint file;
    * ``None``: random initialisation (plumbing tests only — the vectors mean nothing).

    ``"default"`` means ``None`` for this family: no CLIP weights ship offline, so a useful clip
    encoder always needs an explicit tag or file.

unicom:<arch>
    UNICOM — "Unicom: Universal and Compact Representation Learning for Image Retrieval" (An et al.,
    ICLR 2023, https://github.com/deepglint/unicom). Architectures ``ViT-B/32`` (512-d),
    ``ViT-B/16`` (768-d), ``ViT-L/14`` (768-d), ``ViT-L/14@336px`` (768-d); dash spellings such as
    ``ViT-B-32`` / ``ViT-L-14-336px`` are accepted. ``pretrained`` is a local checkpoint file — the
    released ``FP16-ViT-B-32.pt`` & co. from the upstream GitHub releases, or a checkpoint
    fine-tuned with upstream ``retrieval.py`` — or ``None`` (random init, for tests); ``"default"``
    means ``None`` because nothing can be downloaded here.

    The network is rebuilt here with upstream's module and parameter names so a real checkpoint loads
    with ``strict=True``: ``patch_embed.proj`` (Conv2d, kernel = stride = patch), ``pos_embed``
    (1, num_patches, width) — *no* class token; ``blocks.<i>`` pre-norm transformer blocks with
    ``norm1``, ``attn.qkv`` (no bias), ``attn.proj``, ``norm2``, ``mlp.fc1`` -> ReLU6 -> ``mlp.fc2``;
    a final LayerNorm ``norm``; then all patch tokens are *flattened* (B, num_patches * width) into
    the ``feature`` head: Linear(no bias) -> BatchNorm1d(eps=2e-5) -> Linear(no bias) ->
    BatchNorm1d(eps=2e-5). Input is 224 px (336 px for ``@336px``) with CLIP preprocessing: bicubic
    resize of the short side, centre crop, mean (0.48145466, 0.4578275, 0.40821073), std
    (0.26862954, 0.26130258, 0.27577711). Because the head flattens patch tokens, the input size is
    fixed by the checkpoint.

    Upstream ``unicom.load(path)`` bug (unicom/unicom/model.py): ``load(name)`` accepts a local file
    (``elif os.path.isfile(name): model_path = name``) but then builds the network with
    ``load_model_and_transform(name)`` — i.e. with the *file path* instead of an architecture name.
    No architecture branch matches a path, so it falls to a bare ``raise`` outside any ``except``
    and dies with ``RuntimeError: No active exception to reraise``; a local / offline / fine-tuned
    checkpoint can therefore never be loaded through upstream ``load``, only the four release names
    that it downloads from GitHub. The same function also converts the weights to fp32 into
    ``state_dict_fp32`` but then loads the unconverted dict (dead code), and never calls its own
    ``rm_module_from_state_dict``, so ``module.``-prefixed (DDP) checkpoints — and the
    ``model.``-prefixed ones upstream ``retrieval.py`` saves from its ``WarpModule`` wrapper — fail
    strict loading. Here the architecture comes from the encoder name and the weights from
    ``pretrained`` separately, the file is read with ``weights_only=True``, wrapped dicts
    (``{"state_dict": ...}``, ``{"model": ...}``), a common ``module.`` / ``model.`` prefix and
    TorchScript archives are unwrapped, tensors are cast to fp32, and then loading is strict.
"""
from __future__ import annotations

import inspect
import os
import re
import warnings
import zipfile

from plugin.encoders.base import Encoder
from plugin.encoders.registry import register_encoder
from plugin.errors import UnknownEncoderError, WeightsNotFoundError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _warn_random(name: str, what: str) -> None:
    warnings.warn(f"{name}: pretrained='default' has no offline weights, so the model is randomly initialised "
                  f"and its vectors are meaningless; pass pretrained= {what} (or None to silence this)",
                  UserWarning, stacklevel=4)


def _looks_like_path(s: str) -> bool:
    return (os.sep in s or "/" in s or s.startswith((".", "~"))
            or s.lower().endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt")))


# ------------------------------------------------------------------------------------------------
# clip:<arch> — open_clip
# ------------------------------------------------------------------------------------------------
class ClipEncoder(Encoder):
    """open_clip image tower; embedding = ``encode_image`` (no class probabilities)."""

    def __init__(self, arch: str, pretrained: str | None = None, device: str = "auto", cache_dir: str | None = None):
        super().__init__(device)
        import open_clip

        if arch not in open_clip.list_models():
            close = [m for m in open_clip.list_models() if arch.lower().replace("/", "-") in m.lower()][:8]
            hint = f" Did you mean: {', '.join(close)}?" if close else " See open_clip.list_models()."
            raise UnknownEncoderError(f"unknown CLIP architecture '{arch}' (open_clip {open_clip.__version__}).{hint}")

        if pretrained is not None:
            pretrained = str(pretrained)
            if os.path.isfile(os.path.expanduser(pretrained)):
                pretrained = os.path.expanduser(pretrained)
                kind = "file"
            elif _looks_like_path(pretrained):
                raise WeightsNotFoundError(f"CLIP checkpoint file not found: {pretrained}")
            else:
                kind = "tag"
                tags = open_clip.list_pretrained_tags_by_model(arch)
                if pretrained not in tags:
                    raise WeightsNotFoundError(
                        f"'{pretrained}' is neither a local file nor an open_clip pretrained tag for {arch}; "
                        f"known tags: {', '.join(tags) or '(none)'}")

        kwargs = {"device": "cpu", "cache_dir": cache_dir}
        if "pretrained_text" in inspect.signature(open_clip.create_model_and_transforms).parameters:
            kwargs["pretrained_text"] = False  # never fetch separate HF text-tower weights
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, **kwargs)
        except Exception as e:  # download errors come in many types (requests, huggingface_hub, OSError ...)
            if pretrained is None:
                raise
            if kind == "tag":
                raise WeightsNotFoundError(
                    f"could not download open_clip weights '{pretrained}' for {arch} (this needs internet access "
                    f"to the Hugging Face hub; or pass a local checkpoint file): {e}") from e
            raise WeightsNotFoundError(f"cannot load CLIP checkpoint {pretrained} into {arch}: {e}") from e

        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        visual = getattr(model, "visual", None)
        dim = getattr(visual, "output_dim", None)
        if not dim:
            embed = getattr(model, "embed_dim", None)
            dim = embed if isinstance(embed, int) else None
        if not dim:
            import torch

            size = getattr(visual, "image_size", 224)
            size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
            with torch.inference_mode():
                dim = int(model.encode_image(torch.zeros(1, 3, *size, device=self.device)).shape[-1])
        self.dim = int(dim)
        self.arch = arch

    def _forward(self, batch):
        return self.model.encode_image(batch), None


@register_encoder("clip:")
def clip_encoder(arch, pretrained="default", device="auto", cache_dir=None, **_):
    """CLIP image tower via open_clip (clip:ViT-B-32 ...); pretrained = open_clip tag (needs internet), local file, or None."""
    if pretrained == "default":
        pretrained = None  # no CLIP weights ship offline; pass a tag or a file for a useful model
        _warn_random(f"clip:{arch}", "an open_clip tag (e.g. 'laion2b_s34b_b79k') or a local checkpoint file")
    return ClipEncoder(arch, pretrained=pretrained, device=device, cache_dir=cache_dir)


# ------------------------------------------------------------------------------------------------
# unicom:<arch> — UNICOM ViT (architecture rebuilt with upstream's parameter names)
# ------------------------------------------------------------------------------------------------
#: canonical name -> (input_size, patch_size, width, embedding_size, depth, heads)
UNICOM_ARCHS = {
    "ViT-B/32": (224, 32, 768, 512, 12, 12),
    "ViT-B/16": (224, 16, 768, 768, 12, 12),
    "ViT-L/14": (224, 14, 1024, 768, 24, 16),
    "ViT-L/14@336px": (336, 14, 1024, 768, 24, 16),
}

#: where upstream publishes the released checkpoints (downloaded by the user, loaded via ``pretrained=path``)
UNICOM_RELEASES = {
    "ViT-B/32": "https://github.com/deepglint/unicom/releases/download/b32/FP16-ViT-B-32.pt",
    "ViT-B/16": "https://github.com/deepglint/unicom/releases/download/b16/FP16-ViT-B-16.pt",
    "ViT-L/14": "https://github.com/deepglint/unicom/releases/download/l14/FP16-ViT-L-14.pt",
    "ViT-L/14@336px": "https://github.com/deepglint/unicom/releases/download/l14_336px/FP16-ViT-L-14-336px.pt",
}


def unicom_arch(arch: str) -> str:
    """``ViT-B-32`` / ``vit-b/32`` / ``ViT-L-14-336px`` ... -> canonical upstream name, or UnknownEncoderError."""
    key = re.sub(r"[/@_\-]+", "-", str(arch).strip().lower())
    for name in UNICOM_ARCHS:
        canon = re.sub(r"[/@_\-]+", "-", name.lower())
        if key in (canon, canon.replace("px", "")):
            return name
    raise UnknownEncoderError(f"unknown UNICOM architecture '{arch}'; known: {', '.join(UNICOM_ARCHS)} "
                              "(dash forms like ViT-B-32 are accepted)")


def unicom_transform(size: int):
    """Upstream's eval transform: bicubic short-side resize, centre crop, CLIP mean/std."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                      T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def _build_unicom_vit(input_size: int, patch_size: int, width: int, embedding_size: int, depth: int, heads: int):
    """Upstream's ``VisionTransformer`` (same ``state_dict`` keys and forward), built on the meta device:
    call ``.to_empty(device="cpu").init_weights()`` for a random model or ``load_state_dict(sd, assign=True)``."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class PatchEmbedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_patches = (input_size // patch_size) ** 2
            self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, width)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_heads = heads
            self.qkv = nn.Linear(width, 3 * width, bias=False)
            self.proj = nn.Linear(width, width)

        def forward(self, x):
            b, n, d = x.shape
            q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v)  # scale = head_dim ** -0.5
            return self.proj(out.transpose(1, 2).reshape(b, n, d))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(width, 4 * width)
            self.act = nn.ReLU6()
            self.fc2 = nn.Linear(4 * width, width)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(width)
            self.norm2 = nn.LayerNorm(width)
            self.attn = Attention()
            self.mlp = Mlp()

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class UnicomViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = PatchEmbedding()
            n = self.patch_embed.num_patches
            self.pos_embed = nn.Parameter(torch.zeros(1, n, width))
            self.blocks = nn.ModuleList([Block() for _ in range(depth)])
            self.norm = nn.LayerNorm(width)
            self.feature = nn.Sequential(
                nn.Linear(width * n, width, bias=False), nn.BatchNorm1d(width, eps=2e-5),
                nn.Linear(width, embedding_size, bias=False), nn.BatchNorm1d(embedding_size, eps=2e-5))

        def init_weights(self):
            """Upstream's init: N(0, 0.02) for Linear weights and pos_embed (its trunc_normal_ cuts at
            +-2, i.e. 100 sigma: a plain normal), zero Linear biases, default LayerNorm / BN / Conv."""
            nn.init.normal_(self.pos_embed, std=0.02)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.Conv2d, nn.LayerNorm, nn.BatchNorm1d)):
                    m.reset_parameters()
            return self

        def forward(self, x):
            b = x.shape[0]
            x = self.patch_embed(x) + self.pos_embed
            for blk in self.blocks:
                x = blk(x)
            x = self.norm(x)
            return self.feature(x.reshape(b, -1))

    with torch.device("meta"):  # no wasted default init: weights come from init_weights() or a checkpoint
        model = UnicomViT()
    return model


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _unwrap_state_dict(obj, path: str) -> dict:
    """Plain / wrapped / prefixed checkpoint object -> flat ``{name: tensor}`` without a common prefix."""
    import torch

    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    for _ in range(4):  # {"state_dict": {...}}, {"model": {...}}, {"module": {...}} ...
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in ("state_dict", "model_state_dict", "model", "module", "net", "ema")
                          if isinstance(obj.get(k), (dict, torch.nn.Module))), None)
            if inner is None:
                break
            obj = inner.state_dict() if isinstance(inner, torch.nn.Module) else inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsNotFoundError(f"{path} does not hold a UNICOM state dict (expected a mapping of parameter "
                                   f"names to tensors, got {type(obj).__name__})")
    sd = dict(obj)
    # strip a prefix shared by every key (DDP "module.", upstream retrieval.py's WarpModule "model." ...)
    while True:
        firsts = {k.split(".", 1)[0] for k in sd}
        if len(firsts) == 1 and all("." in k for k in sd) and not any(k.startswith("patch_embed.") for k in sd):
            pre = firsts.pop() + "."
            sd = {k[len(pre):]: v for k, v in sd.items()}
        else:
            return sd


def load_unicom_state_dict(path: str, weights_only: bool = True) -> dict:
    """Read a UNICOM checkpoint file (plain / wrapped state dict or TorchScript) into fp32 tensors."""
    import torch

    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise WeightsNotFoundError(
            f"UNICOM checkpoint file not found: {path}. Download a release checkpoint (e.g. "
            f"{UNICOM_RELEASES['ViT-B/32']}) and pass its path as pretrained=")
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # unpickling errors, truncated files, not a torch file ...
        extra = (" (it holds non-tensor Python objects; if you trust the file, pass weights_only=False)"
                 if weights_only and "weights_only" in str(e) else "")
        raise WeightsNotFoundError(f"cannot read UNICOM checkpoint {path}{extra}: {e}") from None
    sd = _unwrap_state_dict(obj, path)
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def _guess_unicom_arch(sd: dict) -> str | None:
    w, pe = sd.get("patch_embed.proj.weight"), sd.get("pos_embed")
    if w is None or pe is None or w.dim() != 4 or pe.dim() != 3:
        return None
    for name, (size, patch, width, *_rest) in UNICOM_ARCHS.items():
        if w.shape[0] == width and w.shape[-1] == patch and pe.shape[1] == (size // patch) ** 2:
            return name
    return None


class UnicomEncoder(Encoder):
    """UNICOM ViT; embedding = the ``feature`` head output (no class probabilities)."""

    def __init__(self, arch: str, pretrained: str | None = None, device: str = "auto", weights_only: bool = True):
        super().__init__(device)
        self.arch = unicom_arch(arch)
        size, patch, width, emb, depth, heads = UNICOM_ARCHS[self.arch]
        sd = None if pretrained is None else load_unicom_state_dict(pretrained, weights_only=weights_only)
        model = _build_unicom_vit(size, patch, width, emb, depth, heads)
        if sd is None:
            model.to_empty(device="cpu").init_weights()
        else:
            self._load_strict(model, sd, str(pretrained))
        self.model = model.to(self.device).eval()
        self.preprocess = unicom_transform(size)
        self.dim = emb
        self.input_size = size

    def _load_strict(self, model, sd: dict, path: str):
        import torch

        # a BatchNorm step counter is irrelevant at inference; tolerate checkpoints that dropped it
        for k, v in model.state_dict().items():
            if k.endswith("num_batches_tracked") and k not in sd:
                sd[k] = torch.zeros((), dtype=v.dtype)
        expected = model.state_dict()
        missing = [k for k in expected if k not in sd]
        unexpected = [k for k in sd if k not in expected]
        wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in sd and sd[k].shape != v.shape]
        if missing or unexpected or wrong:
            guess = _guess_unicom_arch(sd)
            hint = (f" The checkpoint looks like unicom:{guess}." if guess and guess != self.arch else "")

            def short(xs):
                return ", ".join(xs[:6]) + (f" (+{len(xs) - 6} more)" if len(xs) > 6 else "")

            parts = [f"{name}: {short(xs)}" for name, xs in
                     (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", wrong)) if xs]
            raise WeightsNotFoundError(f"checkpoint {path} does not fit unicom:{self.arch} — " + "; ".join(parts)
                                       + "." + hint)
        try:
            model.load_state_dict(sd, strict=True, assign=True)  # model is on the meta device: take the tensors
        except RuntimeError as e:  # pragma: no cover - pre-checks above catch the usual causes
            raise WeightsNotFoundError(f"checkpoint {path} does not fit unicom:{self.arch}: {e}") from None

    def _forward(self, batch):
        return self.model(batch), None


@register_encoder("unicom:")
def unicom_encoder(arch, pretrained="default", device="auto", weights_only=True, **_):
    """UNICOM retrieval ViT (unicom:ViT-B/32 ...), ICLR 2023; pretrained = local checkpoint file or None."""
    if pretrained == "default":
        pretrained = None  # upstream weights are a GitHub download: the user supplies the file
        _warn_random(f"unicom:{arch}", "the path of a downloaded UNICOM checkpoint (e.g. FP16-ViT-B-32.pt)")
    return UnicomEncoder(arch, pretrained=pretrained, device=device, weights_only=weights_only)


__all__ = ["ClipEncoder", "UnicomEncoder", "clip_encoder", "unicom_encoder", "unicom_arch", "unicom_transform",
           "load_unicom_state_dict", "UNICOM_ARCHS", "UNICOM_RELEASES"]
