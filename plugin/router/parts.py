"""A batch's routes computed a part at a time, when the store asks for that part.

The embedded store scores a large batch in chunks shared with read replicas (:mod:`plugin.store.replicas`).
Routed up front, the whole batch's routing ran before the first chunk went out, and the replica waited
through it: 18 ms of a 1000-query batch of 130-160 ms (60k Fashion-MNIST, 16x3 tree, probe nprobe=32;
scratch timeline). :class:`RoutedParts` is the leaf-list sequence the store slices instead: the slice a
chunk takes is routed then, so a replica's first chunk leaves after that chunk's routing alone and the
rest of the routing overlaps its scoring. In the batched rows of docs/results/hkm-fashion-mnist.md one
replica now adds 1.50x to the router at batch 1000 (0.95: 8803 against 5856 q/s; faiss 5790 on 2
threads); routed whole, it added 1.14x in the run on 0579237.

Only modes that route each query on its own (registered with ``rowwise=True``: the tree modes) are
routed by part; the parts' answers are the whole batch's, row for row (tested).

A replica can route its chunks itself (:class:`RemoteRoute`): it is sent the snapshot once (the tree's
arrays, tens of MB for a 60k tree, again only after the tree changed) and, per chunk, the mode's name and
parameters, so the calling process no longer routes the replicas' share of the batch. Only the modes
this package registers go that way: a mode registered in the caller's own script is not importable in
a replica process, and is routed here. On 2 cores (one replica; 60k Fashion-MNIST, 16x3, probe
nprobe=28, batch 100) the caller's routing fell from 6.2-7.1 to 3.5-3.9 ms of a 20 ms batch, and the
throughput stayed within this VM's noise (20 alternating passes, medians 5317 against 5353 q/s; scratch
A/B): it is the caller's routing of every replica's share that would cap a batch with more replicas.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class RemoteRoute:
    """How a replica routes a chunk itself: ``fn(context, queries, *args) -> (leaf lists, result)``, with
    ``context`` (the snapshot) sent to each replica once; ``result`` goes to :meth:`RoutedParts.take`."""

    context: object
    fn: Callable
    args: tuple


class RoutedParts:
    """The store's leaf lists of ``n`` queries (each query's leaf ids plus ``unfiled``), routed by part.

    ``route(a, b)`` gives the leaf-id arrays of queries ``a..b-1``. Slicing routes the rows of the slice
    not routed yet (each row once); iterating routes the rest. Afterwards :attr:`ids` holds each query's
    sorted leaf ids, :attr:`operands` the points those leaves hold (``sizes[leaf]`` summed) and
    :attr:`seconds` the time spent routing, for the results' stats."""

    def __init__(self, route: Callable[[int, int], Sequence], n: int, sizes: Sequence[int], unfiled: int,
                 remote: RemoteRoute | None = None):
        self._route, self.n, self._sizes, self._unfiled = route, int(n), sizes, unfiled
        #: set: a store may have rows routed where they are scored (:meth:`take` files what came back)
        self.remote = remote
        self.ids: list = [None] * self.n
        self.operands: list = [0] * self.n
        self._leaves: list = [None] * self.n
        self.seconds = 0.0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            a, b, step = i.indices(self.n)
            if step != 1:
                raise IndexError("RoutedParts takes contiguous slices")
            self.fill(a, b)
            return self._leaves[a:b]
        j = range(self.n)[i]  # IndexError as a list gives it
        self.fill(j, j + 1)
        return self._leaves[j]

    def __iter__(self):
        self.fill(0, self.n)
        return iter(self._leaves)

    def fill(self, a: int = 0, b: int | None = None) -> None:
        """Route the rows of ``a..b-1`` (default: all) that are not routed yet, one call per run of them."""
        b = self.n if b is None else b
        ids = self.ids
        while a < b:
            if ids[a] is not None:
                a += 1
                continue
            end = a + 1
            while end < b and ids[end] is None:
                end += 1
            self._route_run(a, end)
            a = end

    def _route_run(self, a: int, b: int) -> None:
        t = time.perf_counter()
        for j, lv in zip(range(a, b), self._route(a, b)):
            self.ids[j], self._leaves[j], self.operands[j] = leaf_lists(lv, self._sizes, self._unfiled)
        self.seconds += time.perf_counter() - t

    def take(self, a: int, b: int, result) -> None:
        """File rows ``a..b-1`` routed elsewhere: ``result`` is what :func:`route_rows` returned beside
        their leaf lists (their sorted leaf ids, operands and routing seconds)."""
        ids, operands, seconds = result
        if len(ids) != b - a:
            raise ValueError(f"rows {a}..{b - 1} came back with {len(ids)} routes")
        for j, lids, ops in zip(range(a, b), ids, operands):
            self.ids[j], self._leaves[j], self.operands[j] = lids, lids + [self._unfiled], ops
        self.seconds += seconds


def route_rows(flat, Q, mode: str, used: dict, unfiled: int) -> tuple[list, tuple]:
    """A replica's routing of one chunk (the :class:`RemoteRoute` of a tree mode): the store's leaf lists,
    and (sorted leaf ids, operands, seconds) for :meth:`RoutedParts.take`. One thread: the replica holds
    one core."""
    from plugin.router.modes import ModeContext, get_mode

    t = time.perf_counter()
    routed = get_mode(mode).fn(ModeContext(flat, None, None, one_thread=True), Q, **used)
    rows = [leaf_lists(lv, flat.leaf_sizes, unfiled) for lv in routed]
    ids, operands = [r[0] for r in rows], [r[2] for r in rows]
    return [r[1] for r in rows], (ids, operands, time.perf_counter() - t)


def leaf_lists(leaf_ids, sizes: Sequence[int], unfiled: int) -> tuple[list, list, int]:
    """One query's routed leaf-id array as (its sorted leaf ids, the store's leaf list: those plus
    ``unfiled``, the points under them: ``sizes[leaf]`` summed). Python lists: a few dozen ids per
    query, for which the engine's ``MatchAny`` and the stats' sort and sum need no NumPy call."""
    lids = sorted(leaf_ids.tolist())
    return lids, lids + [unfiled], sum([sizes[x] for x in lids])
