"""Property test: random sequences of adds (new ids and re-upserts), deletes, saves and crash-reopens,
with splits and merges along the way, against a brute-force model of what the collection holds."""
from __future__ import annotations

import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin.router import Router
from plugin.store import open_store

POOL = 300  # vectors of the fmnist_small fixture
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, POOL - 1), st.integers(1, 60), st.integers(0, POOL - 1)),
        st.tuples(st.just("delete"), st.integers(0, POOL - 1), st.integers(1, 60), st.just(0)),
        st.tuples(st.just("save"), st.just(0), st.just(0), st.just(0)),
        st.tuples(st.just("crash"), st.just(0), st.just(0), st.just(0)),
    ),
    min_size=1, max_size=7)


def _brute_top(model: dict, q: np.ndarray, k: int) -> list[int]:
    ids = np.fromiter(model, np.int64)
    m = np.vstack([model[i] for i in ids])
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    s = m @ (q / np.linalg.norm(q))
    return ids[np.argsort(-s, kind="stable")[:k]].tolist(), np.sort(s)[::-1][:k]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_random_maintenance_matches_brute_force(fmnist_small, ops):
    vecs, _, _ = fmnist_small
    tmp = tempfile.TemporaryDirectory(prefix="hsearch-prop-")  # hypothesis reruns the body: no tmp_path per example
    path = tmp.name + "/c"
    store = open_store(path, dim=vecs.shape[1])
    model = {i: vecs[i] for i in range(60)}
    store.upsert(np.arange(60), vecs[:60])
    r = Router.build(store, k=2, l=2, split_bound=30, merge_bound=6)
    try:
        for op, start, n, src in ops:
            ids = np.arange(start, min(start + n, POOL))
            if op == "add":  # ids may exist already (re-upsert with another image)
                new = vecs[(src + np.arange(len(ids))) % POOL]
                r.add(ids, new)
                model.update({int(i): v for i, v in zip(ids, new)})
            elif op == "delete":
                r.delete(ids)
                for i in ids:
                    model.pop(int(i), None)
            elif op == "save":
                r.save()
            else:  # the process dies: nothing since the last save reached router.npz
                r.store.close()
                r = Router.open(path)
            assert r.store.count() == len(model)
            chk = r.check()
            assert chk["consistent"], chk
            if len(r.tree.leaf_ids()) > 1:
                sizes = r.leaf_counts[r.tree.leaf_ids()]
                assert sizes.max() <= 30 and sizes.min() >= 6, sorted(sizes.tolist())
            if not model:
                continue
            for qi in list(model)[:: max(1, len(model) // 4)]:
                want, want_s = _brute_top(model, model[qi], 5)
                for kw in ({"mode": "exact"}, {"mode": "relaxed", "s1": 10.0, "s2": 10.0}):
                    got = r.search(model[qi], k=5, **kw)
                    np.testing.assert_allclose([h.score for h in got], want_s, atol=1e-4)
                    assert got.stats["operands"] == len(model)
    finally:
        r.store.close()
        tmp.cleanup()
