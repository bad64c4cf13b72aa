"""The store's one compiled check, in a module of its own so that importing the store does not import
numba (0.3 s here): ``check_vectors`` loads it on its first call."""
from __future__ import annotations

import math

import numba


@numba.njit(cache=True)
def first_non_finite_row(arr):
    """The first row of a C-contiguous float32 array holding a NaN or an inf, or -1: a row's float64 sum is
    finite exactly when every value is (float32 values cannot overflow it; a NaN, an inf or inf - inf
    makes it non-finite). One compiled call where the NumPy sum needed ``np.errstate`` to keep inf - inf
    quiet, and that context cost more than the sum: a query through ``store.search`` took 25-27 us less
    with this check (interleaved scratch A/B, 60k Fashion-MNIST HNSW, 1000 queries, best of 5 passes). In
    docs/results/anatomy-fashion-mnist.md our store's layers over HNSW's bare query (the binding's calls
    alone) were 0.101 ms a query in the run on 69ddf93, 0.036 in the run on 6aad76b (this check's first)
    and level in the committed run on 9d8158c (store.search 0.269 ms, bare query 0.273)."""
    for i in range(arr.shape[0]):
        s = 0.0
        for j in range(arr.shape[1]):
            s += arr[i, j]
        if not math.isfinite(s):
            return i
    return -1
