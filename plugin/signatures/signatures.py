"""A synset's visual signatures: cluster its images, keep the dominant clusters, one signature each.

``method="clusters"`` (the paper): a seeded sample of at most ``cap`` of the node's images is clustered
(:func:`plugin.signatures.clustering.info_loss_clustering`), DC (eq. 5) picks the dominant clusters
(:func:`plugin.signatures.dominant.dominant`), and **every** image of the node (sampled or not) is filed
under its nearest representative, which gives each cluster's population and member sum.

A dominant cluster's *visual signature* is not defined by the paper, which names clusters by their
representative image (eq. 3) and gives a node without clustering (its predecessor) one signature, the
node's mean. ``signature="centroid"`` (default) makes it the cluster's mean, block-normalised: the
predecessor's signature applied per cluster, so the two systems differ only by clustering and
indexing (what the paper's Table 4 compares), and an added image updates it exactly.
``signature="representative"`` uses the representative image's own vector (a real image). Measured on
Fashion-MNIST (docs/results/semantics-fashion-mnist.md, rows "IndxCBSA" vs "IndxCBSA, representative
images"): the centroid is the better signature.

``method="mean"``: the predecessor system (Pandey et al. 2015, the paper's BSA baseline): one
signature per node, the block-normalised mean of all its images, no clustering, no VP-tree choice.

The sample is seeded per node (``seed`` and the wnid), so a rebuild is reproducible and a node whose
images did not change gets the same signatures. Clustering is O(cap^2) memory and up to O(cap^3)
time; the cost at the default cap is measured in docs/results/semantics-fashion-mnist.md.

Bad input: a node with one image has that image as its only signature; identical images form one
cluster (DC 0); vectors must be finite (the store never holds NaN; :meth:`Blocks.normalise` refuses it).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from plugin.signatures.blocks import Blocks
from plugin.signatures.clustering import assign_nearest, info_loss_clustering, pairwise
from plugin.signatures.dominant import dc_measure, dominant

CAP = 512
MAX_DOMINANT = 16
METHODS = ("clusters", "mean")
SIGNATURES = ("centroid", "representative")


@dataclass
class NodeSignatures:
    """Signatures of one node: ``reps`` (k, dim) block-normalised float32, their ``dc`` (k,), cluster
    ``sizes`` (k,) over all the node's images, ``sums`` (k, dim) float64 of the members' vectors (for
    incremental updates), and what it took: ``n_images``, ``n_sample``, ``n_clusters`` (before
    dominance), ``leftovers``, ``seconds``."""

    reps: np.ndarray
    dc: np.ndarray
    sizes: np.ndarray
    sums: np.ndarray
    n_images: int
    n_sample: int
    n_clusters: int
    leftovers: int = 0
    seconds: float = 0.0


def node_seed(seed: int, wnid: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(wnid.encode())])


def node_signatures(X: np.ndarray, blocks: Blocks, wnid: str = "", method: str = "clusters", cap: int = CAP,
                    seed: int = 0, max_dominant: int = MAX_DOMINANT, signature: str = "centroid") -> NodeSignatures:
    """Signatures of the node whose images' block-normalised vectors are ``X`` (n >= 1)."""
    import time

    t0 = time.perf_counter()
    n = len(X)
    if n == 0:
        raise ValueError(f"node {wnid or '?'} has no images")
    if method not in METHODS:
        raise ValueError(f"signature method must be one of {METHODS}, got {method!r}")
    if signature not in SIGNATURES:
        raise ValueError(f"signature must be one of {SIGNATURES}, got {signature!r}")
    if method == "mean":
        s = X.sum(axis=0, dtype=np.float64)
        rep = blocks.normalise(s[None])
        return NodeSignatures(rep, np.zeros(1), np.array([n]), s[None], n, n, 1, 0, time.perf_counter() - t0)
    if int(cap) < 2:
        raise ValueError(f"sample cap must be >= 2, got {cap}")
    idx = np.arange(n) if n <= cap else np.sort(node_seed(seed, wnid).choice(n, int(cap), replace=False))
    S = np.ascontiguousarray(X[idx], np.float64)
    D = pairwise(S, blocks)
    cl = info_loss_clustering(S, blocks, D)
    dc = dc_measure(D, cl.labels, cl.k)
    keep = dominant(dc, max_dominant)
    reps_all = S[cl.reps]
    # every image of the node joins its nearest representative (the sample's own labels stand)
    labels = np.empty(n, np.int64)
    labels[idx] = cl.labels
    rest = np.setdiff1d(np.arange(n), idx, assume_unique=True)
    if len(rest):
        labels[rest] = assign_nearest(X[rest], reps_all.astype(np.float32), blocks)[0]
    sizes = np.bincount(labels, minlength=cl.k)
    sums = np.stack([X[labels == c].sum(axis=0, dtype=np.float64) for c in keep])
    reps = blocks.normalise(sums) if signature == "centroid" else reps_all[keep].astype(np.float32)
    return NodeSignatures(reps, dc[keep], sizes[keep], sums, n, len(idx), cl.k,
                          cl.leftovers, time.perf_counter() - t0)
