"""Hierarchical classification and retrieval metrics, vectorised over samples / queries.

Everything takes plain arrays. Class indices index ``(C, C)`` matrices from
``plugin.taxonomy.Taxonomy(wnids)`` (``.lca_height``: int, 0 on the diagonal; ``.distance``;
``.path_similarity``), so a metric never needs WordNet itself.

Classification (``scores`` ``(N, C)``, labels ``(N,)``):

* :func:`top_k_accuracy` - scikit-learn's ``top_k_accuracy_score``.
* :func:`mistake_severity` - mean LCA height of the wrong top-1 predictions (Bertinetto et al., CVPR 2020).
* :func:`hierarchical_distance_at_k` - average hierarchical distance@k (Bertinetto et al. 2020, as
  reported by CRM, Karthik et al., ICLR 2021).
* :func:`per_group_accuracy` - accuracy on classes with few / medium / many training samples (the
  hierarchical-loss paper's Table VII).

Retrieval (``query_class`` ``(Q,)``, ``retrieved_class`` ``(Q, K)`` in ranked order, ``-1`` = no item
at that rank):

* :func:`mean_average_precision` - binary relevance, normalised by the relevant items in the list or
  in the whole database.
* :func:`hierarchical_ndcg` - nDCG with graded gains from the hierarchy (:func:`hierarchy_gain`).
* :func:`hierarchical_precision_at_k` / :func:`mahp_at_k` - Deng et al.'s hierarchical precision and
  Barz & Denzler's mean average hierarchical precision.

Uncertainty: :func:`bootstrap_ci` (percentile bootstrap, seeded).

Conventions shared by all retrieval metrics: a query whose ideal score is 0 (nothing relevant in the
list / database) scores 0, as scikit-learn's ``average_precision_score`` and ``ndcg_score`` do; top-k
ties between equal scores are broken as scikit-learn's ``top_k_accuracy_score`` breaks them (a stable
ascending sort, reversed: of equal scores the higher class index ranks first), so top-k accuracy and
hd@k look at the same k classes. Bad input (shapes, NaN, k out of range, labels out of range) raises
:class:`MetricError`.
"""
from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import top_k_accuracy_score

from plugin.errors import HSearchError

__all__ = [
    "CI", "MetricError", "Severity", "bootstrap_ci", "hierarchical_distance_at_k", "hierarchical_ndcg",
    "hierarchical_precision_at_k", "hierarchy_gain", "mahp_at_k", "mean_average_precision",
    "mistake_severity", "per_group_accuracy", "top_k_accuracy", "top_k_classes",
]


class MetricError(HSearchError, ValueError):
    """A metric was given inputs it cannot score: mismatched shapes, NaN, k or labels out of range."""


class Severity(NamedTuple):
    """:func:`mistake_severity`'s result: mean LCA height of the mistakes and how many there were."""
    mean: float
    n_mistakes: int


class CI(NamedTuple):
    """:func:`bootstrap_ci`'s result: the point estimate and the percentile interval."""
    mean: float
    lo: float
    hi: float


# ---- input checks -----------------------------------------------------------------------------------
def _as_int(a, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != ndim:
        raise MetricError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        if arr.size:
            raise MetricError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise MetricError(f"{name} contains NaN or inf")
        if (arr != np.round(arr)).any():
            raise MetricError(f"{name} must hold integers, got non-integral values")
    return arr.astype(np.int64)


def _labels(a, n_classes: int, name: str, ndim: int = 1, allow_missing: bool = False) -> np.ndarray:
    arr = _as_int(a, name, ndim)
    low = -1 if allow_missing else 0
    bad = (arr < low) | (arr >= n_classes)
    if bad.any():
        v = arr[bad].ravel()[0]
        extra = " (or -1 for 'no item at this rank')" if allow_missing else ""
        raise MetricError(f"{name} holds class index {v}, outside [0, {n_classes}){extra}")
    return arr


def _scores(scores) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    if s.ndim != 2:
        raise MetricError(f"scores must be (N, C), got shape {s.shape}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise MetricError(f"scores must hold at least one sample and one class, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise MetricError("scores contain NaN or inf")
    return s


def _square(m, name: str, n: int | None = None, nonneg: bool = True) -> np.ndarray:
    a = np.asarray(m, np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise MetricError(f"{name} must be a square (C, C) matrix, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise MetricError(f"{name} is {a.shape[0]}x{a.shape[0]} but the scores have {n} classes")
    if not np.isfinite(a).all():
        raise MetricError(f"{name} contains NaN or inf")
    if nonneg and (a < 0).any():
        raise MetricError(f"{name} must be non-negative")
    return a


def _k(k, n: int, what: str = "classes") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise MetricError(f"k must be an integer, got {k!r}")
    if not 1 <= k <= n:
        raise MetricError(f"k must be in [1, {n}] (the number of {what}), got {k}")
    return int(k)


def _same_length(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape[0] != b.shape[0]:
        raise MetricError(f"{name_a} has {a.shape[0]} rows but {name_b} has {b.shape[0]}")
    if a.shape[0] == 0:
        raise MetricError(f"{name_a} is empty: nothing to score")


# ---- classification ---------------------------------------------------------------------------------
def top_k_classes(scores, k: int) -> np.ndarray:
    """(N, k) class indices by descending score, ties broken exactly as scikit-learn's
    ``top_k_accuracy_score`` does (stable ascending argsort, reversed: the higher index first)."""
    s = _scores(scores)
    k = _k(k, s.shape[1])
    return np.argsort(s, axis=1, kind="stable")[:, ::-1][:, :k]


def top_k_accuracy(scores, y, k: int = 1) -> float:
    """Fraction of samples whose true class is among the k highest-scoring classes.

    Definition and implementation: ``sklearn.metrics.top_k_accuracy_score(y, scores, k=k,
    labels=range(C))`` (so labels missing from ``y`` are fine, and ties follow scikit-learn). For
    C <= 2 scikit-learn switches to a thresholded binary mode, so there the same ranking is computed
    with :func:`top_k_classes`. ``k == C`` is allowed (trivially 1.0; scikit-learn's warning about it is
    silenced).
    """
    s = _scores(scores)
    n, c = s.shape
    y = _labels(y, c, "y")
    _same_length("scores", s, "y", y)
    k = _k(k, c)
    if c >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            return float(top_k_accuracy_score(y, s, k=k, labels=np.arange(c)))
    return float((top_k_classes(s, k) == y[:, None]).any(axis=1).mean())


def mistake_severity(pred, y, lca_height) -> Severity:
    """Mean LCA height between the predicted and true class over the *wrong* top-1 predictions only,
    and the number of mistakes.

    Definition: "average mistake severity" of Bertinetto et al., "Making Better Mistakes: Leveraging
    Class Hierarchies with Deep Networks", CVPR 2020 (Sec. 4: the height of the lowest common ancestor
    of the prediction and the ground truth, averaged over the top-1 mistakes), the metric CRM
    (Karthik et al., ICLR 2021) reports as "mistake severity". With no mistakes the mean is undefined:
    returns ``Severity(nan, 0)`` (check ``n_mistakes`` before comparing).
    """
    h = _square(lca_height, "lca_height")
    c = h.shape[0]
    pred = _labels(pred, c, "pred")
    y = _labels(y, c, "y")
    _same_length("pred", pred, "y", y)
    wrong = pred != y
    m = int(wrong.sum())
    if m == 0:
        return Severity(float("nan"), 0)
    return Severity(float(h[y[wrong], pred[wrong]].mean()), m)


def hierarchical_distance_at_k(scores, y, lca_height, k: int, per_sample: bool = False):
    """Average hierarchical distance@k: for each sample the mean LCA height between its true class and
    each of its k top-scoring classes (correct ones count 0), averaged over samples.

    Definition: Bertinetto et al., CVPR 2020 ("average hierarchical distance of top-k"), the hd@k that
    CRM (Karthik et al., "No Cost Likelihood Manipulation at Test Time", ICLR 2021, Table 1) reports.
    The top k follow :func:`top_k_classes` (scikit-learn's tie order). ``per_sample=True`` returns the
    ``(N,)`` per-sample values (for :func:`bootstrap_ci`).
    """
    s = _scores(scores)
    c = s.shape[1]
    h = _square(lca_height, "lca_height", n=c)
    y = _labels(y, c, "y")
    _same_length("scores", s, "y", y)
    top = top_k_classes(s, _k(k, c))
    per = h[y[:, None], top].mean(axis=1)
    return per if per_sample else float(per.mean())


def per_group_accuracy(pred, y, train_counts, edges=None) -> dict:
    """Top-1 accuracy of the test samples whose *true* class has few / medium / many training samples.

    Groups (the hierarchical-loss paper's Table VII: low < 1000, medium 1000-2000, high > 2000 training
    images): with ``edges=(a, b)`` a class is ``low`` if ``count < a``, ``medium`` if
    ``a <= count <= b``, ``high`` if ``count > b`` (the paper's ``edges=(1000, 2000)``). Without edges,
    ``a, b`` are the terciles of ``train_counts`` over classes (``np.quantile(train_counts, [1/3, 2/3])``,
    linear interpolation) with the same rule. Accuracy is over samples (micro), which equals the mean
    per-class accuracy on a class-balanced test set (ImageNet val, Fashion-MNIST test).

    Returns ``{"edges": [a, b], "low"|"medium"|"high": {"accuracy", "n_samples", "n_classes"}}``; a
    group without test samples has accuracy ``nan``.
    """
    counts = np.asarray(train_counts, np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise MetricError(f"train_counts must be (C,), got shape {counts.shape}")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise MetricError("train_counts must be finite and non-negative")
    c = counts.size
    pred = _labels(pred, c, "pred")
    y = _labels(y, c, "y")
    _same_length("pred", pred, "y", y)
    if edges is None:
        a, b = (float(v) for v in np.quantile(counts, [1 / 3, 2 / 3]))
    else:
        e = np.asarray(edges, np.float64)
        if e.shape != (2,) or not np.isfinite(e).all() or e[0] > e[1]:
            raise MetricError(f"edges must be two finite numbers a <= b, got {edges!r}")
        a, b = float(e[0]), float(e[1])
    group_of_class = np.where(counts < a, 0, np.where(counts <= b, 1, 2))
    g = group_of_class[y]
    correct = pred == y
    out: dict = {"edges": [a, b]}
    for gi, name in enumerate(("low", "medium", "high")):
        m = g == gi
        n = int(m.sum())
        out[name] = {"accuracy": float(correct[m].mean()) if n else float("nan"), "n_samples": n,
                     "n_classes": int((group_of_class == gi).sum())}
    return out


# ---- retrieval --------------------------------------------------------------------------------------
def mean_average_precision(relevance, n_relevant=None, per_query: bool = False):
    """Mean over queries of average precision of binary-relevance ranked lists.

    ``relevance`` ``(Q, M)``: 1 where the item at that rank is relevant (e.g.
    ``retrieved_class == query_class[:, None]``). Per query
    ``AP = (1 / R) * sum_i P@i * rel_i`` with ``P@i`` the precision of the first i items
    (Manning, Raghavan & Schütze, *Introduction to Information Retrieval*, 2008, Sec. 8.4):

    * ``n_relevant`` given (``(Q,)``, relevant items in the whole database): ``R = n_relevant`` - the
      standard retrieval AP; a list that stops before all relevant items are found is penalised, so a
      perfect list of M < R items scores M / R.
    * ``n_relevant`` omitted: ``R`` = relevant items within the list ("AP@M" as in many retrieval
      papers); equal to ``sklearn.metrics.average_precision_score(rel, -rank)`` per query.

    ``R = 0`` scores 0 (scikit-learn's convention). ``n_relevant`` smaller than the relevant count in
    the list is an error. Implemented here vectorised since scikit-learn scores one query at a time and
    only normalises within the list.
    """
    rel = np.asarray(relevance)
    if rel.ndim != 2 or rel.shape[0] == 0 or rel.shape[1] == 0:
        raise MetricError(f"relevance must be (Q, M) with Q, M >= 1, got shape {rel.shape}")
    relf = rel.astype(np.float64)
    if not np.isin(relf, (0.0, 1.0)).all():
        raise MetricError("relevance must be binary (0/1 or bool); NaN or graded values are not allowed")
    hits = relf.cumsum(axis=1)
    prec = hits / np.arange(1, rel.shape[1] + 1)
    in_list = hits[:, -1]
    if n_relevant is None:
        r = in_list
    else:
        r = _as_int(n_relevant, "n_relevant", 1).astype(np.float64)
        if r.shape[0] != rel.shape[0]:
            raise MetricError(f"n_relevant has {r.shape[0]} entries but relevance has {rel.shape[0]} queries")
        short = r < in_list
        if short.any():
            q = int(np.flatnonzero(short)[0])
            raise MetricError(f"query {q}: n_relevant={int(r[q])} but its list already holds {int(in_list[q])} relevant items")
    ap = np.divide((prec * relf).sum(axis=1), r, out=np.zeros(rel.shape[0]), where=r > 0)
    return ap if per_query else float(ap.mean())


def hierarchy_gain(lca_height) -> np.ndarray:
    """The default graded relevance for hierarchical retrieval: ``gain = 1 - lca_height / max(lca_height)``.

    1 for the query's own class, 0 for the classes that meet it only at the highest LCA. This is Barz &
    Denzler's (WACV 2019) LCS-height similarity with our ``Taxonomy.lca_height`` in place of the LCS
    node's height. A hierarchy of one class (max 0) gives all ones. Other choices:
    ``Taxonomy.path_similarity`` (1 / (1 + distance)).
    """
    h = _square(lca_height, "lca_height")
    top = h.max()
    return np.ones_like(h) if top == 0 else 1.0 - h / top


def _retrieval_inputs(query_class, retrieved_class, sim, sim_name: str):
    s = _square(sim, sim_name)
    c = s.shape[0]
    q = _labels(query_class, c, "query_class")
    r = _labels(retrieved_class, c, "retrieved_class", ndim=2, allow_missing=True)
    _same_length("query_class", q, "retrieved_class", r)
    if r.shape[1] == 0:
        raise MetricError("retrieved_class has no columns: nothing retrieved")
    g = np.where(r >= 0, s[q[:, None], np.maximum(r, 0)], 0.0)  # (Q, K) gain of each retrieved item
    return s, q, r, g


def _db_counts(db_class_counts, q: np.ndarray, r: np.ndarray, c: int) -> np.ndarray:
    counts = np.asarray(db_class_counts, np.float64)
    if counts.shape not in ((c,), (q.shape[0], c)):
        raise MetricError(f"db_class_counts must be (C,) = ({c},) or (Q, C) = ({q.shape[0]}, {c}), got {counts.shape}")
    if not np.isfinite(counts).all() or (counts < 0).any() or (counts != np.round(counts)).any():
        raise MetricError("db_class_counts must hold non-negative integers")
    counts = counts.astype(np.int64)
    # a list cannot hold more items of a class than the database has
    valid = r >= 0
    qi = np.broadcast_to(np.arange(r.shape[0])[:, None], r.shape)[valid]
    key, n = np.unique(qi * c + r[valid], return_counts=True)
    uq, uc = np.divmod(key, c)
    avail = counts[uc] if counts.ndim == 1 else counts[uq, uc]
    over = n > avail
    if over.any():
        i = int(np.flatnonzero(over)[0])
        raise MetricError(f"query {int(uq[i])} retrieved {int(n[i])} items of class {int(uc[i])} "
                          f"but db_class_counts says the database holds {int(avail[i])}")
    return counts


def _ideal_gains(sim: np.ndarray, q: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) gains of the best possible ranking of the database (class counts) for each query."""
    def row(srow, crow):
        order = np.argsort(-srow, kind="stable")
        vals = np.repeat(srow[order], np.minimum(crow[order], k))[:k]
        out = np.zeros(k)
        out[:vals.size] = vals
        return out

    if counts.ndim == 1:
        uq, inv = np.unique(q, return_inverse=True)
        rows = np.stack([row(sim[c], counts) for c in uq])
        return rows[inv.ravel()]
    return np.stack([row(sim[c], counts[i]) for i, c in enumerate(q)])


def hierarchical_ndcg(query_class, retrieved_class, gain, k: int | None = None, db_class_counts=None,
                      per_query: bool = False):
    """nDCG@k with graded gains from the hierarchy: ``gain[query_class, retrieved_class]``.

    ``DCG@k = sum_{i<=k} g_i / log2(i + 1)`` - linear gains, log2 discount (Järvelin & Kekäläinen,
    "Cumulated gain-based evaluation of IR techniques", ACM TOIS 2002; the form scikit-learn's
    ``ndcg_score`` uses). ``gain`` is any non-negative ``(C, C)`` matrix, typically
    :func:`hierarchy_gain` ``(taxonomy.lca_height)``; ``-1`` in ``retrieved_class`` (no item) gains 0.
    ``k`` defaults to the list length K.

    The ideal DCG:

    * ``db_class_counts`` given (``(C,)`` items per class in the database, or ``(Q, C)`` per query, e.g.
      minus the query itself): the best possible top-k of the whole database - lists that miss better
      items the database holds are penalised.
    * omitted: the best reordering of the retrieved list (its k largest gains out of all K), exactly
      ``sklearn.metrics.ndcg_score(gains, -rank, k=k)``; this only measures the order within the list.

    An ideal DCG of 0 scores 0 (scikit-learn's convention).
    """
    s, q, r, g = _retrieval_inputs(query_class, retrieved_class, gain, "gain")
    kk = r.shape[1] if k is None else _k(k, r.shape[1], "retrieved items per query")
    disc = 1.0 / np.log2(np.arange(2, kk + 2))
    dcg = g[:, :kk] @ disc
    if db_class_counts is None:
        ideal = -np.sort(-g, axis=1)[:, :kk]
    else:
        ideal = _ideal_gains(s, q, _db_counts(db_class_counts, q, r, s.shape[0]), kk)
    idcg = ideal @ disc
    nd = np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)
    return nd if per_query else float(nd.mean())


def _hp_curve(query_class, retrieved_class, similarity, db_class_counts, k):
    s, q, r, g = _retrieval_inputs(query_class, retrieved_class, similarity, "similarity")
    k = _k(k, r.shape[1], "retrieved items per query")
    best = np.cumsum(_ideal_gains(s, q, _db_counts(db_class_counts, q, r, s.shape[0]), k), axis=1)
    got = np.cumsum(g[:, :k], axis=1)
    return np.divide(got, best, out=np.zeros_like(got), where=best > 0), k


def hierarchical_precision_at_k(query_class, retrieved_class, similarity, db_class_counts, k: int,
                                per_query: bool = False):
    """Hierarchical precision HP@k = ``sum_{i<=k} sim(q, r_i) / sum_{i<=k} sim(q, best_i)``, ``best`` the
    k database items most similar to the query (the ideal ranking of ``db_class_counts``).

    Definition: Deng, Berg & Fei-Fei, "Hierarchical semantic indexing for large scale image
    retrieval", CVPR 2011 (Barz & Denzler's "hP@k"). 1.0 for an ideal top-k; ``-1`` items count 0; an
    all-zero ideal scores 0.
    """
    hp, k = _hp_curve(query_class, retrieved_class, similarity, db_class_counts, k)
    per = hp[:, k - 1]
    return per if per_query else float(per.mean())


def mahp_at_k(query_class, retrieved_class, similarity, db_class_counts, k: int, rule: str = "trapezoid",
              per_query: bool = False):
    """Mean Average Hierarchical Precision@k of Barz & Denzler, "Hierarchy-based Image Embeddings for
    Semantic Image Retrieval", WACV 2019: the area under the HP@i curve (:func:`hierarchical_precision_at_k`)
    for i = 1..k, averaged over queries.

    ``rule="trapezoid"`` (default) is the authors' definition as implemented in their code and stated by
    them (cvjena/semantic-embeddings issue #4): ``AHP@k = (1/k) * (sum_{i=1}^{k} HP@i - (HP@1 + HP@k)/2)``
    - the trapezoidal area over [1, k] divided by k, so an ideal ranking scores (k - 1) / k, not 1 (and
    k = 1 always gives 0). Use it to compare with published mAHP@250 numbers.
    ``rule="mean"`` is ``(1/k) * sum_{i=1}^{k} HP@i``: ideal ranking exactly 1.0.

    ``similarity`` is a non-negative ``(C, C)`` class similarity (Barz & Denzler use
    ``1 - LCS height / tree height``, i.e. :func:`hierarchy_gain`); ``db_class_counts`` as in
    :func:`hierarchical_ndcg` (``(Q, C)`` to drop each query from its own database).
    """
    if rule not in ("trapezoid", "mean"):
        raise MetricError(f"rule must be 'trapezoid' or 'mean', got {rule!r}")
    hp, k = _hp_curve(query_class, retrieved_class, similarity, db_class_counts, k)
    per = hp.mean(axis=1)
    if rule == "trapezoid":
        per = per - (hp[:, 0] + hp[:, k - 1]) / (2 * k)
    return per if per_query else float(per.mean())


# ---- uncertainty ------------------------------------------------------------------------------------
_CHUNK = 1 << 22  # indices drawn per block (32 MB of int64)


def _index_blocks(rng: np.random.Generator, n: int, n_boot: int):
    rows = max(1, _CHUNK // n)
    done = 0
    while done < n_boot:
        b = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def bootstrap_ci(data, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, n: int | None = None) -> CI:
    """Percentile bootstrap confidence interval (Efron & Tibshirani, *An Introduction to the Bootstrap*,
    1993, ch. 13): resample the N samples with replacement ``n_boot`` times, return
    ``CI(point, lo, hi)`` with ``lo, hi`` the ``alpha/2`` and ``1 - alpha/2`` quantiles of the resampled
    statistic.

    ``data`` is either

    * a 1-D array of per-sample values (e.g. ``hierarchical_distance_at_k(..., per_sample=True)`` or
      0/1 correctness): the statistic is their mean, ``point`` the mean of all values; or
    * a function ``statistic(indices) -> float`` together with ``n`` (the number of samples), for
      statistics that are not a mean of per-sample values, e.g.
      ``lambda i: mistake_severity(pred[i], y[i], H).mean``; ``point = statistic(arange(n))``.
      Resamples where it returns NaN (e.g. no mistakes drawn) are left out of the quantiles.

    Seeded (``numpy.random.default_rng(seed)``): the same call gives the same interval, and both forms
    draw the same resamples, so an array and ``lambda i: values[i].mean()`` agree.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise MetricError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise MetricError(f"alpha must be in (0, 1), got {alpha!r}")
    rng = np.random.default_rng(seed)
    if callable(data):
        if n is None or isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise MetricError("bootstrap_ci(statistic) needs n, the number of samples (a positive integer)")
        stat: Callable = data
        point = float(stat(np.arange(n)))
        boots = np.array([float(stat(idx)) for block in _index_blocks(rng, int(n), n_boot) for idx in block])
    else:
        v = np.asarray(data, np.float64)
        if v.ndim != 1 or v.size == 0:
            raise MetricError(f"values must be a non-empty 1-D array, got shape {v.shape}")
        if not np.isfinite(v).all():
            raise MetricError("values contain NaN or inf; drop undefined samples or pass a statistic function")
        if n is not None and n != v.size:
            raise MetricError(f"n={n} but {v.size} values were given")
        point = float(v.mean())
        boots = np.concatenate([v[block].mean(axis=1) for block in _index_blocks(rng, v.size, n_boot)])
    boots = boots[~np.isnan(boots)]
    if boots.size == 0:
        return CI(point, float("nan"), float("nan"))
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return CI(point, float(lo), float(hi))
