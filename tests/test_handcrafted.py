"""Hand-made features on synthetic images whose answers are known, and the ``handcrafted:*`` encoders."""
from __future__ import annotations

import numpy as np
import pytest

from plugin.encoders import create_encoder
from plugin.errors import BadImageError, HSearchError, UnknownEncoderError
from plugin.signatures import features as F


def solid(rgb, size=F.WORK):
    return np.broadcast_to(np.asarray(rgb, np.uint8), (size, size, 3)).copy()


def colour_parts(img):
    """(global hist (68), global moments (9)) back out of the 462-d block (before block normalisation)."""
    v = F.color_feature(F.working_rgb(img))
    return v[:F.HIST_DIM] ** 2, v[F.HIST_DIM:F.HIST_DIM + F.MOMENT_DIM]


def test_pure_red_fills_hue_bin_zero():
    hist, mom = colour_parts(solid((255, 0, 0)))
    assert hist[0] == pytest.approx(1.0) and hist[1:].sum() == pytest.approx(0.0)
    np.testing.assert_allclose(mom, [0, 0, 0, 1, 0, 0, 1, 0, 0], atol=1e-9)  # H mean/std/skew, S..., V...


@pytest.mark.parametrize("rgb,bin_", [((0, 0, 255), 32), ((0, 255, 0), 16), ((255, 255, 0), 8)])
def test_primary_hues_land_in_their_bins(rgb, bin_):
    hist, _ = colour_parts(solid(rgb))
    assert int(np.argmax(hist)) == bin_ and hist[bin_] == pytest.approx(1.0)


def test_grey_pixels_count_by_intensity_only():
    hist, mom = colour_parts(np.full((40, 30), 128, np.uint8))  # a 2-d grey array, not square
    assert hist[:F.HUE_BINS].sum() == 0 and hist[F.HUE_BINS + 10] == pytest.approx(1.0)  # 128/255 -> bin 10
    assert mom[:3].tolist() == [0, 0, 0]  # no chromatic pixel: no hue moments


@pytest.mark.parametrize("rgb,bin_", [
    ((200, 170, 170), F.HUE_BINS + 15),  # washed-out pink: S 0.15 <= 1 - 0.8 * 0.78 -> intensity bin
    ((60, 20, 20), F.HUE_BINS + 4),  # dark red: S 0.67 <= 1 - 0.8 * 0.24 -> intensity bin
    ((200, 60, 60), 0),  # S 0.7 > 1 - 0.8 * 0.78: a red hue
])
def test_sural_threshold_decides_hue_or_intensity(rgb, bin_):
    hist, _ = colour_parts(solid(rgb))
    assert hist[bin_] == pytest.approx(1.0)


def test_hue_moments_are_circular():
    """Reds just below and above 0 degrees average to red (0), not cyan (0.5)."""
    img = solid((255, 0, 8))  # hue ~ 0.995
    img[:, ::2] = (255, 8, 0)  # hue ~ 0.005
    hist, mom = colour_parts(img)
    assert hist[0] == pytest.approx(1.0)
    assert min(mom[0], 1 - mom[0]) < 1e-3 and mom[1] == pytest.approx(0.0052, abs=1e-3)


def test_regions_see_the_centre_and_the_corners_apart():
    img = solid((0, 0, 255))
    c = F.WORK // 2
    img[c - 20:c + 20, c - 20:c + 20] = (255, 0, 0)  # red square well inside the ellipse
    v = F.color_feature(F.working_rgb(img))
    seg = F.HIST_DIM + F.MOMENT_DIM
    region_hists = [v[seg * (1 + r):seg * (1 + r) + F.HIST_DIM] ** 2 * F.N_REGIONS for r in range(F.N_REGIONS)]
    assert region_hists[0][0] > 0.2 and region_hists[0][32] > 0.2  # ellipse: red and blue
    for h in region_hists[1:]:  # four corners: only blue
        assert h[32] == pytest.approx(1.0) and h[0] == 0
    assert F.region_masks().sum(axis=0).max() == 1 and F.region_masks().any(axis=0).all()  # a partition


def grating(freq, theta, n=F.WORK):
    y, x = np.mgrid[0:n, 0:n].astype(float)  # x: columns, y: rows (down)
    g = 0.5 + 0.5 * np.cos(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)))
    return np.repeat(g[..., None], 3, axis=2)


@pytest.mark.parametrize("s", range(4))
@pytest.mark.parametrize("o", range(6))
def test_gabor_peaks_at_the_gratings_scale_and_orientation(s, o):
    v = F.texture_feature(grating(F.GABOR_FREQS[s], F.GABOR_THETAS[o]))
    means = v[0::2].reshape(4, 6)
    assert np.unravel_index(np.argmax(means), means.shape) == (s, o)
    assert means.max() > 3 * np.sort(means.ravel())[-2]


def test_uniform_image_has_no_texture_and_texture_alone_refuses_it():
    assert not F.texture_feature(F.working_rgb(solid((90, 90, 90)))).any()
    with pytest.raises(BadImageError, match="no texture signal"):
        create_encoder("handcrafted:texture").encode([solid((90, 90, 90))])
    v = create_encoder("handcrafted").encode([solid((90, 90, 90))])[0]  # other blocks carry the row
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-6) and not v[462:510].any()


def test_pseudo_zernike_radial_polynomials_match_the_closed_forms():
    r = np.linspace(0, 1, 11)
    np.testing.assert_allclose(F.pz_radial(0, 0, r), 1)
    np.testing.assert_allclose(F.pz_radial(1, 0, r), 3 * r - 2)
    np.testing.assert_allclose(F.pz_radial(1, 1, r), r)
    np.testing.assert_allclose(F.pz_radial(2, 0, r), 10 * r**2 - 12 * r + 3)
    np.testing.assert_allclose(F.pz_radial(2, 1, r), 5 * r**2 - 4 * r)
    np.testing.assert_allclose(F.pz_radial(2, 2, r), r**2)
    # orthogonality on the disk: integral of R_nm R_n'm r dr = delta / (2(n+1))
    rr = np.linspace(0, 1, 200001)
    for m in range(3):
        for n in range(m, 5):
            for n2 in range(m, 5):
                val = np.trapezoid(F.pz_radial(n, m, rr) * F.pz_radial(n2, m, rr) * rr, rr)
                assert val == pytest.approx(1 / (2 * (n + 1)) if n == n2 else 0, abs=1e-6)


def test_pseudo_zernike_of_the_unit_disk():
    a = F.pseudo_zernike(np.ones((F.SHAPE_WORK, F.SHAPE_WORK)))
    assert abs(a[0]) == pytest.approx(1.0, abs=0.01)  # A_00 = (1/pi) * area of the disk
    assert len(a) == 21 and np.abs(a[1:]).max() < 0.03


def letter_l(n=F.SHAPE_WORK):
    y, x = np.mgrid[0:n, 0:n]
    return (((x > 20) & (x < 44) & (y > 14) & (y < 30)) | ((x > 20) & (x < 28) & (y > 14) & (y < 50))).astype(float)


def test_pseudo_zernike_magnitudes_survive_rotation_but_not_a_new_shape():
    from skimage.transform import rotate

    shape = letter_l()
    a = np.abs(F.pseudo_zernike(shape))
    np.testing.assert_allclose(np.abs(F.pseudo_zernike(np.rot90(shape))), a, atol=1e-12)  # exact on the grid
    for angle in (30, 45, 77):
        b = np.abs(F.pseudo_zernike(rotate(shape, angle, order=1)))
        assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.02
    bar = np.zeros_like(shape)
    bar[10:54, 28:36] = 1
    assert np.linalg.norm(a - np.abs(F.pseudo_zernike(bar))) / np.linalg.norm(a) > 0.3
    # through the whole extractor on an RGB image (working size 128, shape at 64)
    big = np.kron(shape, np.ones((2, 2)))
    rgb = (np.repeat(big[..., None], 3, 2) * 255).astype(np.uint8)
    f0, f1 = F.shape_feature(F.working_rgb(rgb)), F.shape_feature(F.working_rgb(np.rot90(rgb).copy()))
    np.testing.assert_allclose(f0, f1, atol=1e-9)


def test_encoders_layout_norms_and_odd_images():
    enc = create_encoder("handcrafted")
    assert enc.dim == 531 and enc.blocks == [("color", 0, 462), ("texture", 462, 510), ("shape", 510, 531)]
    assert create_encoder("handcrafted:shape+color").blocks == [("color", 0, 462), ("shape", 462, 483)]
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (50, 70, 3), dtype=np.uint8), np.zeros((1, 1), np.uint8),
            rng.integers(0, 256, (28, 28), dtype=np.uint8)]
    v = enc.encode(imgs)
    assert v.shape == (3, 531) and v.dtype == np.float32 and np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(enc.encode(imgs[:1]), v[:1])  # deterministic
    for k, a, b in enc.blocks[:1] + enc.blocks[2:]:  # every block of a textured image has the same norm
        assert np.linalg.norm(v[0, a:b]) == pytest.approx(1 / np.sqrt(3), abs=1e-5)


def test_encoder_names_and_weights_are_checked():
    for bad in ("handcrafted:colour", "handcrafted:color+color", "handcrafted:+"):
        with pytest.raises(UnknownEncoderError):
            create_encoder(bad)
    with pytest.raises(HSearchError, match="no weights"):
        create_encoder("handcrafted", pretrained="x.pth")
    with pytest.raises(HSearchError, match="not a classifier"):
        create_encoder("handcrafted").predict_proba([np.zeros((4, 4), np.uint8)])
