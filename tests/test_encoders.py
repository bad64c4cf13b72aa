"""Every registry encoder: shape, unit norm, grey images, errors. Offline weights are checked on real photos."""
from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from plugin.encoders import create_encoder, list_encoders, resolve_device
from plugin.errors import HSearchError, UnknownEncoderError, WeightsNotFoundError

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def photos():
    return [data.chelsea(), data.coffee(), data.camera()]  # cat, espresso cup, grey photographer


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_offline_imagenet_encoders_are_real(name, photos):
    enc = create_encoder(name, device="cpu")
    vecs, probs = enc.encode_with_probs(photos)
    assert vecs.shape == (3, 1280) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert probs.shape == (3, 1000) and len(enc.classes) == 1000
    assert set(np.argsort(-probs[0])[:5]) & CAT_CLASSES, "chelsea should be a cat"
    assert enc.classes[int(probs[1].argmax())] == "n07920052"  # espresso
    np.testing.assert_allclose(enc.encode(photos[:1]), vecs[:1], atol=1e-5)  # deterministic


def test_resnet50_random_and_local_checkpoint_with_custom_head(tmp_path, photos):
    import torch

    enc = create_encoder("resnet50", pretrained=None, device="cpu")
    v = enc.encode(photos)
    assert v.shape == (3, 2048) and np.isfinite(v).all()
    sd = enc.model.state_dict()
    sd["fc.weight"], sd["fc.bias"] = torch.randn(3, 2048), torch.zeros(3)
    path = tmp_path / "hier.pth"
    torch.save({"state_dict": sd, "classes": ["n02084071", "n02121620", "n04370048"]}, path)
    enc2 = create_encoder("resnet50", pretrained=str(path), device="cpu")
    np.testing.assert_allclose(enc2.encode(photos), v, atol=1e-4)  # same backbone
    assert enc2.classes == ["n02084071", "n02121620", "n04370048"]
    assert enc2.predict_proba(photos).shape == (3, 3)


def test_registry_lists_families_and_refuses_unknown_names():
    names = list_encoders()
    assert {"mobilenet_v2", "efficientnet_lite0", "resnet50", "clip:", "unicom:"} <= set(names)
    with pytest.raises(UnknownEncoderError, match="unknown encoder 'vgg99'"):
        create_encoder("vgg99")


def test_missing_weights_are_clear(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="not found"):
        create_encoder("mobilenet_v2", pretrained=str(tmp_path / "missing.pth"), device="cpu")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsNotFoundError, match="cannot read"):
        create_encoder("resnet50", pretrained=str(bad), device="cpu")


def test_grey_and_odd_modes_are_handled(photos):
    from PIL import Image

    enc = create_encoder("mobilenet_v2", device="cpu")
    grey = Image.fromarray(photos[2])  # mode L
    rgba = Image.fromarray(photos[0]).convert("RGBA")
    small = Image.fromarray(np.zeros((28, 28), np.uint8))
    v = enc.encode([grey, rgba, small, photos[2]])
    assert v.shape == (4, 1280) and np.isfinite(v).all()
    np.testing.assert_allclose(v[0], v[3], atol=1e-5)  # PIL grey == array grey


def test_device_auto_falls_back_to_cpu_and_cuda_request_is_checked():
    import torch

    if torch.cuda.is_available():
        assert resolve_device("auto") == "cuda"
    else:
        assert resolve_device("auto") == "cpu"
        with pytest.raises(HSearchError, match="no CUDA"):
            resolve_device("cuda")
