"""Hand-made colour, texture and shape features (the paper's Table 1), as plain NumPy functions.

Every image is first brought to one working size: RGB (grey images get their channel replicated,
:func:`plugin.encoders.base.to_rgb`), resized to ``WORK`` x ``WORK`` = 128 x 128 with Pillow's
antialiased bilinear filter (tiny images are upsampled, big ones shrunk; the aspect ratio is not
kept, so the five colour regions and the Gabor scales mean the same on every image).

**Colour** (462-d), after Sural et al. 2002 and Stricker & Orengo 1995, in HSV (scikit-image's
``rgb2hsv``: H, S, V in [0, 1]):

* *histogram*, 68 bins. A pixel is *chromatic* when ``S > 1 - 0.8 V`` (Sural's saturation threshold:
  dark or washed-out pixels have no reliable hue) and counts in one of 48 hue bins of 7.5 degrees,
  **centred** on multiples of 7.5 degrees (bin 0 is pure red, 345+-3.75 .. 3.75 degrees, so reds just
  below 360 and just above 0 share it); otherwise it is *achromatic* and counts in one of 20 intensity
  bins of V (bin 48 + floor(20 V)). Bins 0-47 hue, 48-67 intensity. Normalised to sum 1 (an empty
  region gives zeros).
* *moments*, 9 numbers: mean, standard deviation and signed cube root of the third central moment of
  H, S and V (in that order: H mean, H std, H skew, S mean, ...). Hue is an angle: its moments are
  taken over the chromatic pixels only (a grey pixel's hue is meaningless) around the circular mean,
  with deviations wrapped to [-0.5, 0.5), so a red patch whose hues straddle 0/1 has mean ~0, not 0.5.
  No chromatic pixel: the three hue moments are 0.
* *regions*: the whole image, then the central ellipse (semi-axes 0.375 of the width and height, i.e.
  axes 75% of the image, after Stricker & Dimai) and the four quadrants outside it (top-left,
  top-right, bottom-left, bottom-right).
* *layout*: ``[sqrt(hist_global) (68), moments_global (9)]`` then for each of the five regions
  ``[sqrt(hist_r) / sqrt(5), moments_r / sqrt(5)]``; 77 x 6 = 462. The square root turns histograms
  into unit vectors whose Euclidean distance is the Hellinger distance (times sqrt 2), a proper
  metric for histograms; the 1/sqrt(5) gives the five regions together the weight of the global
  part.

**Texture** (48-d), Manjunath & Ma 1996: Gabor filters from scikit-image (``gabor_kernel``, bandwidth 1
octave) at 4 scales, frequencies 0.05, 0.1, 0.2, 0.4 cycles/pixel (the ratio-2 ladder between U_l = 0.05
and U_h = 0.4), and 6 orientations k * 30 degrees, measured from the image's x axis (the columns)
towards its rows, i.e. clockwise on screen: a grating ``cos(2 pi f (x cos t + y sin t))`` peaks in
filter (f, t). They are applied to the mean-subtracted grey image through one FFT (reflect-padded, so
the border adds no edge). Layout ``[mean_(s,o), std_(s,o)]`` for s in scales, o in orientations:
feature ``2 (6 s + o)`` is the mean magnitude, ``2 (6 s + o) + 1`` its standard deviation. A uniform
image has no texture: all zeros.

**Shape** (21-d): magnitudes of the pseudo-Zernike moments ``|A_nm|``, 0 <= m <= n <= 5 (``|A_n,-m| =
|A_nm|`` for a real image, so these 21 are all there are up to order 5), ordered n then m, of the grey
image on 64 x 64 pixels mapped onto the unit disk (pixel centres at ``(2j + 1 - N) / N``; pixels outside
the disk ignored). No maintained library computes pseudo-Zernike moments (mahotas has Zernike only),
so the basis ``V_nm(r, theta) = R_nm(r) exp(i m theta)`` with the pseudo-Zernike radial polynomial
``R_nm(r) = sum_{s=0}^{n-m} (-1)^s (2n+1-s)! / (s! (n+m+1-s)! (n-m-s)!) r^(n-s)`` is tabulated once and
every image is one matrix product. ``|A_nm|`` does not change when the image is rotated about its centre
(tests/test_handcrafted.py checks 90-degree and 30-degree rotations).

Each block is L2-normalised on its own (:func:`l2_normalise_block`), so a block's scale (contrast,
image size) does not matter and no block outweighs another; the encoder then normalises the whole row.
"""
from __future__ import annotations

from functools import lru_cache
from math import factorial

import numpy as np

#: Bump when any extractor's output changes: it keys the embedding cache (``handcrafted@features-vN``).
VERSION = 1
WORK = 128
SHAPE_WORK = 64
HUE_BINS, GREY_BINS = 48, 20
HIST_DIM = HUE_BINS + GREY_BINS  # 68
MOMENT_DIM = 9
N_REGIONS = 5
COLOR_DIM = (HIST_DIM + MOMENT_DIM) * (1 + N_REGIONS)  # 462
GABOR_FREQS = (0.05, 0.1, 0.2, 0.4)
GABOR_THETAS = tuple(k * np.pi / 6 for k in range(6))
TEXTURE_DIM = 2 * len(GABOR_FREQS) * len(GABOR_THETAS)  # 48
PZ_ORDER = 5
SHAPE_DIM = (PZ_ORDER + 1) * (PZ_ORDER + 2) // 2  # 21
DIMS = {"color": COLOR_DIM, "texture": TEXTURE_DIM, "shape": SHAPE_DIM}
KINDS = ("color", "texture", "shape")


# ---- preprocessing ---------------------------------------------------------------------------------
def working_rgb(image, size: int = WORK) -> np.ndarray:
    """(size, size, 3) float64 RGB in [0, 1] from a PIL image or uint8 array (grey replicated)."""
    from PIL import Image

    from plugin.encoders.base import to_rgb

    im = to_rgb(image)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.float64) / 255.0


def grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as scikit-image's ``rgb2gray`` weights it."""
    return rgb @ np.array([0.2125, 0.7154, 0.0721])


def l2_normalise_block(v: np.ndarray) -> np.ndarray:
    """``v / ||v||``; an all-zero block (no signal) stays zero."""
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


# ---- colour ----------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def region_masks(size: int = WORK) -> np.ndarray:
    """(5, size, size) bool: central ellipse, then top-left, top-right, bottom-left, bottom-right outside it."""
    c = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    ax = 0.375 * size
    inside = ((x - c) / ax) ** 2 + ((y - c) / ax) ** 2 <= 1.0
    top, left = y < c, x < c
    out = ~inside
    return np.stack([inside, out & top & left, out & top & ~left, out & ~top & left, out & ~top & ~left])


def hsv_bins(hsv: np.ndarray) -> np.ndarray:
    """Histogram bin (0..67) of every pixel of an (..., 3) HSV array (module docstring: layout)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    chromatic = s > 1.0 - 0.8 * v
    hue_bin = np.floor(h * HUE_BINS + 0.5).astype(np.int64) % HUE_BINS
    grey_bin = HUE_BINS + np.minimum((v * GREY_BINS).astype(np.int64), GREY_BINS - 1)
    return np.where(chromatic, hue_bin, grey_bin)


def _central(n, s1, s2, s3):
    """mean, std, signed cube root of the third central moment from per-group raw sums (0 where n = 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(n > 0, s1 / n, 0.0)
        e2, e3 = np.where(n > 0, s2 / n, 0.0), np.where(n > 0, s3 / n, 0.0)
    var = e2 - m * m
    third = e3 - 3 * m * e2 + 2 * m ** 3
    var[var < 1e-12] = 0.0  # a constant region: exactly no spread, not round-off
    third[np.abs(third) < 1e-15] = 0.0
    return m, np.sqrt(var), np.cbrt(third)


def _group_sums(x, groups, n_groups):
    """Sums of x, x^2, x^3 per group, with the whole image as group 0 and regions as 1..n_groups."""
    out = []
    for p in (x, x * x, x * x * x):
        per = np.bincount(groups, weights=p, minlength=n_groups)
        out.append(np.concatenate([[p.sum()], per]))
    return out


def color_stats(hsv: np.ndarray, groups: np.ndarray, n_groups: int = N_REGIONS) -> tuple[np.ndarray, np.ndarray]:
    """Histograms (1 + n_groups, 68), each summing to 1 (zeros for an empty group), and moments
    (1 + n_groups, 9) of the whole image (row 0) and of each region ``groups`` labels (rows 1..)."""
    px = hsv.reshape(-1, 3)
    g = groups.ravel()
    counts = np.concatenate([[len(g)], np.bincount(g, minlength=n_groups)]).astype(np.float64)
    per = np.bincount(g * HIST_DIM + hsv_bins(px), minlength=n_groups * HIST_DIM).reshape(n_groups, HIST_DIM)
    hist = np.vstack([per.sum(axis=0), per]).astype(np.float64)
    hist /= np.maximum(counts, 1)[:, None]
    mom = np.zeros((1 + n_groups, MOMENT_DIM))
    for c, x in ((1, px[:, 1]), (2, px[:, 2])):  # S, V
        mom[:, 3 * c], mom[:, 3 * c + 1], mom[:, 3 * c + 2] = _central(counts, *_group_sums(x, g, n_groups))
    chromatic = px[:, 1] > 1.0 - 0.8 * px[:, 2]  # hue: an angle, over chromatic pixels only
    h, gc = px[chromatic, 0], g[chromatic]
    nc = np.concatenate([[len(h)], np.bincount(gc, minlength=n_groups)]).astype(np.float64)
    ang = 2 * np.pi * h
    sin, cos = (np.concatenate([[f.sum()], np.bincount(gc, weights=f, minlength=n_groups)])
                for f in (np.sin(ang), np.cos(ang)))
    mean = (np.arctan2(sin, cos) / (2 * np.pi)) % 1.0
    mean[nc == 0] = 0.0
    for row in range(1 + n_groups):
        sel = slice(None) if row == 0 else gc == row - 1
        d = (h[sel] - mean[row] + 0.5) % 1.0 - 0.5  # deviation from the circular mean, wrapped
        _, sd, sk = _central(nc[row:row + 1], np.array([d.sum()]), np.array([(d * d).sum()]),
                             np.array([(d * d * d).sum()]))
        mom[row, :3] = mean[row], sd[0], sk[0]
    return hist, mom


@lru_cache(maxsize=4)
def region_labels(size: int = WORK) -> np.ndarray:
    """(size, size) int: which of the five regions (:func:`region_masks` order) each pixel is in."""
    return np.argmax(region_masks(size), axis=0)


def color_feature(rgb: np.ndarray) -> np.ndarray:
    """462-d colour feature of a working-size (square) RGB array (layout in the module docstring)."""
    from skimage.color import rgb2hsv

    hist, mom = color_stats(rgb2hsv(rgb), region_labels(rgb.shape[0]))
    parts = [np.sqrt(hist[0]), mom[0]]
    scale = 1.0 / np.sqrt(N_REGIONS)
    for r in range(1, 1 + N_REGIONS):
        parts += [np.sqrt(hist[r]) * scale, mom[r] * scale]
    return np.concatenate(parts)


# ---- texture ---------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _gabor_bank(size: int):
    """(padding, FFTs of the 24 kernels on the padded grid), kernels centred at the origin."""
    from skimage.filters import gabor_kernel

    kernels = [gabor_kernel(f, theta=t, bandwidth=1) for f in GABOR_FREQS for t in GABOR_THETAS]
    from scipy.fft import next_fast_len

    pad = max(max(k.shape) for k in kernels) // 2
    n = next_fast_len(size + 2 * pad)
    pad_after = n - size - pad
    ffts = np.empty((len(kernels), n, n), np.complex64)
    for i, k in enumerate(kernels):
        grid = np.zeros((n, n), np.complex128)
        kh, kw = k.shape
        grid[:kh, :kw] = k
        grid = np.roll(grid, (-(kh // 2), -(kw // 2)), axis=(0, 1))  # kernel centre at (0, 0)
        ffts[i] = np.fft.fft2(grid)
    return pad, pad_after, ffts


def gabor_magnitudes(g: np.ndarray) -> np.ndarray:
    """(24, H, W) magnitudes of the Gabor responses of grey image ``g`` (square), scale-major."""
    from scipy import fft

    pad, pad_after, ffts = _gabor_bank(g.shape[0])
    x = np.pad((g - g.mean()).astype(np.float32), (pad, pad_after), mode="reflect")
    resp = fft.ifft2(fft.fft2(x)[None] * ffts, axes=(1, 2), workers=1)
    return np.abs(resp[:, pad:pad + g.shape[0], pad:pad + g.shape[1]])


def texture_feature(rgb: np.ndarray) -> np.ndarray:
    """48-d Gabor feature: mean and std of each filter's magnitude, interleaved (module docstring)."""
    mag = gabor_magnitudes(grey(rgb)).reshape(len(GABOR_FREQS) * len(GABOR_THETAS), -1)
    out = np.empty(TEXTURE_DIM)
    out[0::2], out[1::2] = mag.mean(axis=1), mag.std(axis=1)
    out[np.abs(out) < 1e-12] = 0.0  # a uniform image: exactly no texture, not FFT round-off
    return out


# ---- shape -----------------------------------------------------------------------------------------
def pz_radial(n: int, m: int, r: np.ndarray) -> np.ndarray:
    """Pseudo-Zernike radial polynomial R_nm(r), 0 <= m <= n."""
    out = np.zeros_like(r, dtype=np.float64)
    for s in range(n - m + 1):
        c = (-1) ** s * factorial(2 * n + 1 - s) / (factorial(s) * factorial(n + m + 1 - s) * factorial(n - m - s))
        out += c * r ** (n - s)
    return out


def pz_orders(order: int = PZ_ORDER) -> list[tuple[int, int]]:
    return [(n, m) for n in range(order + 1) for m in range(n + 1)]


@lru_cache(maxsize=4)
def pz_basis(size: int = SHAPE_WORK, order: int = PZ_ORDER) -> np.ndarray:
    """(2 * 21, size*size) float: real rows then imaginary rows of ``(n+1)/pi * conj(V_nm) * pixel area``
    on the unit disk, 0 outside (real, so one real matrix product gives every moment)."""
    c = (2 * np.arange(size) + 1 - size) / size
    x, y = np.meshgrid(c, -c)  # y up, so theta runs counter-clockwise as usual
    r, theta = np.hypot(x, y), np.arctan2(y, x)
    inside = r <= 1.0
    area = (2.0 / size) ** 2
    rows = []
    for n, m in pz_orders(order):
        v = pz_radial(n, m, r) * np.exp(-1j * m * theta) * (n + 1) / np.pi * area
        rows.append(np.where(inside, v, 0).ravel())
    b = np.stack(rows)
    return np.ascontiguousarray(np.concatenate([b.real, b.imag]))


def pseudo_zernike(g: np.ndarray, order: int = PZ_ORDER) -> np.ndarray:
    """Complex moments A_nm (0 <= m <= n <= order) of a square grey image on the unit disk."""
    ri = pz_basis(g.shape[0], order) @ g.ravel()
    half = ri.shape[0] // 2
    return ri[:half] + 1j * ri[half:]


def shape_feature(rgb: np.ndarray) -> np.ndarray:
    """21-d |A_nm| of the grey image at 64 x 64 (module docstring)."""
    from PIL import Image

    g8 = np.clip(grey(rgb) * 255 + 0.5, 0, 255).astype(np.uint8)
    g = np.asarray(Image.fromarray(g8).resize((SHAPE_WORK, SHAPE_WORK), Image.BILINEAR), np.float64) / 255.0
    return np.abs(pseudo_zernike(g))


EXTRACTORS = {"color": color_feature, "texture": texture_feature, "shape": shape_feature}


def extract(image, kinds=KINDS) -> np.ndarray:
    """Concatenated, per-block L2-normalised features of one image for ``kinds`` (in that order)."""
    rgb = working_rgb(image)
    return np.concatenate([l2_normalise_block(EXTRACTORS[k](rgb)) for k in kinds])
