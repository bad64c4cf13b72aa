"""clip:<arch> (open_clip) and unicom:<arch> encoders: shapes, normalisation, grey images, errors, and
strict round-tripping of UNICOM checkpoints. Random-init models only (no network), smallest archs."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
skdata = pytest.importorskip("skimage.data")

from plugin.encoders import create_encoder  # noqa: E402
from plugin.errors import HSearchError, UnknownEncoderError, WeightsNotFoundError  # noqa: E402


@pytest.fixture(scope="module")
def images():
    colour = skdata.chelsea()[::2, ::2]  # (150, 225, 3) uint8
    grey = skdata.camera()[::4, ::4]  # (128, 128) uint8, single channel
    return [colour, grey]


@pytest.fixture(scope="module")
def clip_b32():
    torch.manual_seed(0)
    return create_encoder("clip:ViT-B-32", pretrained=None, device="cpu")


@pytest.fixture(scope="module")
def unicom_b32():
    torch.manual_seed(0)
    return create_encoder("unicom:ViT-B/32", pretrained=None, device="cpu")


def _check_vectors(x, n, dim):
    assert x.shape == (n, dim)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


# clip ----------------------------------------------------------------------------------------------
def test_clip_random_init_vectors(clip_b32, images):
    assert clip_b32.dim == 512 and clip_b32.device == "cpu" and clip_b32.name == "clip:ViT-B-32"
    assert clip_b32.classes is None
    x = clip_b32.encode(images)
    _check_vectors(x, 2, 512)
    assert not np.allclose(x[0], x[1])
    probs = clip_b32.encode_with_probs(images[:1])[1]
    assert probs is None
    with pytest.raises(HSearchError):
        clip_b32.predict_proba(images[:1])


def test_clip_grey_image_equals_replicated_rgb(clip_b32, images):
    grey = images[1]
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_allclose(clip_b32.encode([grey]), clip_b32.encode([rgb]), atol=1e-6)


def test_clip_default_means_random_init_with_warning():
    with pytest.warns(UserWarning, match="randomly initialised"):
        enc = create_encoder("clip:ViT-B-32", device="cpu")
    assert enc.dim == 512 and enc.weights == "default"


def test_clip_unknown_arch():
    with pytest.raises(UnknownEncoderError, match="ViT-Q-99"):
        create_encoder("clip:ViT-Q-99", pretrained=None, device="cpu")


def test_clip_missing_file_and_unknown_tag(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        create_encoder("clip:ViT-B-32", pretrained=str(tmp_path / "nope.pt"), device="cpu")
    with pytest.raises(WeightsNotFoundError, match="laion2b_s34b_b79k"):  # lists the known tags, no download
        create_encoder("clip:ViT-B-32", pretrained="no_such_tag", device="cpu")


def test_clip_tag_download_failure_is_weights_not_found(monkeypatch):
    import open_clip.factory

    def offline(*a, **k):
        raise OSError("Name or service not known")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(WeightsNotFoundError, match="internet"):
        create_encoder("clip:ViT-B-32", pretrained="laion2b_s34b_b79k", device="cpu")


def test_clip_unreadable_checkpoint(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsNotFoundError, match="cannot load CLIP checkpoint"):
        create_encoder("clip:ViT-B-32", pretrained=str(p), device="cpu")


# unicom --------------------------------------------------------------------------------------------
def test_unicom_random_init_vectors(unicom_b32, images):
    assert unicom_b32.dim == 512 and unicom_b32.device == "cpu" and unicom_b32.name == "unicom:ViT-B/32"
    x = unicom_b32.encode(images)
    _check_vectors(x, 2, 512)
    assert not np.allclose(x[0], x[1])
    assert unicom_b32.encode_with_probs(images)[1] is None


def test_unicom_grey_image_equals_replicated_rgb(unicom_b32, images):
    grey = images[1]
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_allclose(unicom_b32.encode([grey]), unicom_b32.encode([rgb]), atol=1e-6)


def test_unicom_preprocess_matches_upstream(unicom_b32, images):
    from PIL import Image

    t = unicom_b32.preprocess(Image.fromarray(images[0]))
    assert t.shape == (3, 224, 224) and t.dtype == torch.float32
    names = [type(s).__name__ for s in unicom_b32.preprocess.transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert tuple(unicom_b32.preprocess.transforms[-1].mean) == (0.48145466, 0.4578275, 0.40821073)


def test_unicom_state_dict_keys_match_upstream(unicom_b32):
    keys = set(unicom_b32.model.state_dict())
    for k in ["patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "blocks.0.norm1.weight",
              "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias", "blocks.0.norm2.bias", "blocks.0.mlp.fc1.weight",
              "blocks.11.mlp.fc2.bias", "norm.weight", "feature.0.weight", "feature.1.running_var",
              "feature.2.weight", "feature.3.num_batches_tracked"]:
        assert k in keys, k
    assert "blocks.0.attn.qkv.bias" not in keys and "feature.0.bias" not in keys and "cls_token" not in keys
    sd = unicom_b32.model.state_dict()
    assert tuple(sd["pos_embed"].shape) == (1, 49, 768)  # 7x7 patches, no class token
    assert tuple(sd["feature.0.weight"].shape) == (768, 49 * 768)  # flattened patch tokens
    assert tuple(sd["feature.3.running_mean"].shape) == (512,)


@pytest.mark.parametrize("arch", ["ViT-B-32", "vit-b/32"])
def test_unicom_dash_form_accepted(arch):
    from plugin.encoders.clip import unicom_arch

    assert unicom_arch(arch) == "ViT-B/32"
    assert unicom_arch("ViT-L-14-336px") == "ViT-L/14@336px"
    assert unicom_arch("ViT-L/14") == "ViT-L/14"


def test_unicom_checkpoint_roundtrip_strict(unicom_b32, images, tmp_path):
    path = tmp_path / "unicom_b32.pt"
    torch.save(unicom_b32.model.state_dict(), path)
    loaded = create_encoder("unicom:ViT-B/32", pretrained=str(path), device="cpu")
    assert loaded.weights == str(path)
    assert set(loaded.model.state_dict()) == set(unicom_b32.model.state_dict())
    np.testing.assert_array_equal(loaded.encode(images), unicom_b32.encode(images))


def test_unicom_fp16_release_format(unicom_b32, images, tmp_path):
    # the upstream release files (FP16-ViT-B-32.pt ...) are plain state dicts stored in fp16
    path = tmp_path / "FP16-ViT-B-32.pt"
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in unicom_b32.model.state_dict().items()},
               path)
    half = create_encoder("unicom:ViT-B-32", pretrained=str(path), device="cpu")
    assert all(p.dtype == torch.float32 for p in half.model.parameters())
    x = half.encode(images)
    _check_vectors(x, 2, 512)
    assert (x * unicom_b32.encode(images)).sum(1).min() > 0.99  # same vectors up to fp16 rounding


def test_unicom_wrapped_prefixed_and_torchscript_checkpoints(tmp_path):
    from plugin.encoders.clip import load_unicom_state_dict

    sd = {"pos_embed": torch.randn(1, 4, 8), "norm.weight": torch.randn(8).half(),
          "feature.1.num_batches_tracked": torch.tensor(7)}
    cases = {
        "plain.pt": sd,
        "ddp.pt": {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
        # upstream retrieval.py saves WarpModule(model).state_dict(), i.e. "model."-prefixed keys
        "warp.pt": {f"model.{k}": v for k, v in sd.items()},
        "nested.pt": {"model": {f"module.model.{k}": v for k, v in sd.items()}},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        got = load_unicom_state_dict(str(tmp_path / name))
        assert set(got) == set(sd), name
        assert got["norm.weight"].dtype == torch.float32 and got["feature.1.num_batches_tracked"].item() == 7
        torch.testing.assert_close(got["pos_embed"], sd["pos_embed"])

    lin = torch.nn.Linear(3, 2)
    with warnings.catch_warnings():  # torch.jit is deprecated upstream; old checkpoints still use it
        warnings.simplefilter("ignore")
        torch.jit.trace(lin, torch.zeros(1, 3)).save(str(tmp_path / "jit.pt"))
    got = load_unicom_state_dict(str(tmp_path / "jit.pt"))
    assert set(got) == {"weight", "bias"}
    torch.testing.assert_close(got["weight"], lin.weight.detach())


def test_unicom_unknown_arch():
    with pytest.raises(UnknownEncoderError, match="ViT-H/14"):
        create_encoder("unicom:ViT-H/14", pretrained=None, device="cpu")


def test_unicom_missing_checkpoint(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        create_encoder("unicom:ViT-B/32", pretrained=str(tmp_path / "missing.pt"), device="cpu")


def test_unicom_wrong_keys_raise_clear_error(unicom_b32, tmp_path):
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in unicom_b32.model.state_dict().items()}
    sd["head.weight"] = sd.pop("feature.2.weight")
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    with pytest.raises(WeightsNotFoundError, match=r"missing keys: feature\.2\.weight.*unexpected keys: head\.weight"):
        create_encoder("unicom:ViT-B/32", pretrained=str(bad), device="cpu")


def test_unicom_checkpoint_of_other_arch_is_named(tmp_path):
    from plugin.encoders.clip import UNICOM_ARCHS, _build_unicom_vit

    size, patch, width, emb, _, heads = UNICOM_ARCHS["ViT-B/16"]
    small = _build_unicom_vit(size, patch, width, emb, 1, heads).to_empty(device="cpu")  # 1 block: fast
    p = tmp_path / "b16.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in small.state_dict().items()}, p)
    with pytest.raises(WeightsNotFoundError, match=r"shape mismatch.*looks like unicom:ViT-B/16"):
        create_encoder("unicom:ViT-B/32", pretrained=str(p), device="cpu")


def test_unicom_not_a_checkpoint(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(b"this is not a torch file")
    with pytest.raises(WeightsNotFoundError, match="cannot read"):
        create_encoder("unicom:ViT-B/32", pretrained=str(p), device="cpu")
