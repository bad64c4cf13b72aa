"""Feature blocks: per-block normalisation, per-feature chord distances, eq. 2, bad vectors."""
from __future__ import annotations

import numpy as np
import pytest

from plugin.errors import BadVectorError
from plugin.signatures.blocks import Blocks


def test_blocks_normalise_separately_and_measure_chords():
    b = Blocks.of([("c", 0, 2), ("t", 2, 3)], 3)
    X = b.normalise([[3, 4, 0], [0, 2, -5]])
    np.testing.assert_allclose(X, [[0.6, 0.8, 0], [0, 1, -1]])  # a zero block stays zero
    D = b.distances(X, X)
    assert D.shape == (2, 2, 2)
    np.testing.assert_allclose(D[0, 0, 1], np.hypot(0.6, 0.2))
    np.testing.assert_allclose(D[1, 0, 1], 1.0)  # zero block vs unit block
    np.testing.assert_allclose(b.combined(D)[0, 1], (np.hypot(0.6, 0.2) + 1) / 2)  # equal weights


def test_blocks_refuse_bad_layouts_and_vectors():
    with pytest.raises(BadVectorError):
        Blocks.of([("a", 0, 2), ("b", 3, 4)], 4)  # a gap
    with pytest.raises(BadVectorError):
        Blocks.of([("a", 0, 2)], 3)  # does not cover the vector
    b = Blocks.single(3)
    with pytest.raises(BadVectorError, match="NaN"):
        b.normalise([[np.nan, 1, 0]])
    with pytest.raises(BadVectorError, match="shape"):
        b.normalise([[1, 0]])


def test_blocks_for_encoders():
    assert Blocks.for_encoder("handcrafted", 531).names == ("color", "texture", "shape")
    assert Blocks.for_encoder("handcrafted:shape", 21).names == ("shape",)
    assert Blocks.for_encoder("mobilenet_v2", 1280).names == ("deep",)
    assert Blocks.for_encoder(None, 7).names == ("deep",)
