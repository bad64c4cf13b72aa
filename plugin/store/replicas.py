"""Read replicas: copies of an embedded collection opened by worker processes, so that one batch of
queries is scored on more than one core.

Why processes: qdrant-edge's binding holds the GIL for the whole of a query (a Python thread beside it
only runs between calls: two threads splitting a batch were slower than one), a second opener of the
same directory is refused (the WAL's lock), and the engine's search pool runs a query's segments in
parallel, not its points (a shard split into two equal optimized segments with a pool of two still
used one core's CPU time). So an embedded collection answers one query at a time per process, where
faiss IVF batches over every core. The batched rows of docs/results/hkm-fashion-mnist.md time both, and
the router and the engine's HNSW with a replica per other core.

A replica is a copy of the collection's ``collection.json`` and ``shard/`` (after a flush) under
``<collection>/replicas/<i>/``, opened by a fresh interpreter (``python -m plugin.store.replicas``)
that only reads it. Not ``multiprocessing``: fork would copy the engine's running threads, and spawn
and forkserver re-run the caller's main script in the child, which without a ``__main__`` guard
re-runs the caller's ingestion or deletions there. A batch is cut into chunks (:func:`_chunks`), shared
between the calling process and the replicas as each becomes free (:meth:`ReadReplicas.search`), and a
replica's hits come back as (id, score) pairs; payloads are read once, from the primary, for the final hits. A batch of a built-in tree mode is
routed where it is scored: each replica is sent the router's snapshot once (again after the tree
changed) and routes its own chunks (:class:`plugin.router.parts.RemoteRoute`), so the calling process
routes its share alone, not every process's.

Freshness: the store counts its writes (:attr:`EdgeStore.writes`). A batch that finds the count moved
since the replicas were copied copies them again first, so a replica never answers from older data
than the primary holds; the price is a copy (and a re-open) after every write burst, which a
read-mostly workload pays once. A replica process that died, or failed, is replaced by the calling
process scoring its part (with a warning), so a batch always gets its answer from the primary's data.

Memory: each replica holds its own copy of the vectors (the int8 copy in RAM, floats memory-mapped).
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from plugin.errors import HSearchError
from plugin.fsutil import fsync_dir

log = logging.getLogger(__name__)

#: batches smaller than this are scored by the calling process alone: each chunk handed to a replica
#: costs a message, a round trip and its hits sent back as pairs (what one replica adds at batch 100
#: and 1000 is in the batched rows of docs/results/hkm-fashion-mnist.md)
MIN_BATCH = 64
MIN_CHUNK, MAX_CHUNK = 8, 64  # queries per chunk (_chunks)
REPLICAS_DIR = "replicas"


def _worker(conn) -> None:
    """A replica process: open a copy, answer search requests, close it when told; exit on ``None``."""
    from plugin.store.edge import EdgeStore

    store, views, context = None, {}, None
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        if msg is None:
            break
        op, args = msg
        if op == "context":  # what "routed" chunks route on (the tree snapshot); no answer
            context = args
            continue
        try:
            if op == "open":
                store = EdgeStore(args, max_search_threads=1)
                conn.send(("ok", store.count()))
            elif op == "close":
                if store is not None:
                    store.close()
                    store = None
                conn.send(("ok", None))
            else:
                (path, a, b), *rest = args
                if path not in views:  # a new buffer: the caller grew it; older ones are gone
                    views.clear()
                    views[path] = np.load(path, mmap_mode="r")
                vectors = np.ascontiguousarray(views[path][a:b])
                routed = None
                if op == "routed":  # route the chunk here, then score its leaves
                    k, fn, fargs, *shared = rest
                    leaves, routed = fn(context, vectors, *fargs)
                    op, rest = "leaves", (k, leaves, *shared)
                out = [[(h.id, h.score) for h in hits] for hits in _score(store, op, (vectors, *rest))]
                conn.send(("ok", out if routed is None else (out, routed)))
        except Exception as e:  # sent back: the caller scores this part itself
            conn.send(("error", f"{type(e).__name__}: {e}"))
    if store is not None:
        store.close()


def _score(store, op: str, args: tuple):
    """One part of a batch, without payloads, through the store's own primitives."""
    if op == "leaves":
        vectors, k, leaves, oversampling, spill = args
        return store._leaves_here(vectors, k, leaves, oversampling, spill)
    vectors, k, filters, exact, hnsw_ef, oversampling = args
    return store._batch_here(vectors, k, filters, exact, hnsw_ef, oversampling)


class _Replica:
    """One worker process and its end of a socket pair (pickled messages, ``Connection`` framing)."""

    def __init__(self, path: Path):
        self.path = path
        mine, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])  # the checkout or site-packages holding ``plugin``
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        self.proc = subprocess.Popen([sys.executable, "-m", "plugin.store.replicas", str(theirs.fileno())],
                                     pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self.conn = Connection(mine.detach())
        self.context = None  # the routing context this process was sent last (ReadReplicas.search)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, op: str, args) -> tuple[str, object]:
        self.conn.send((op, args))
        return self.conn.recv()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.conn.close()


class ReadReplicas:
    """``n`` worker processes, each holding a copy of ``store``'s collection (see the module doc)."""

    def __init__(self, store, n: int):  # n >= 1, checked by EdgeStore.set_read_replicas
        self.store, self.n = store, int(n)
        self.root = Path(store.path) / REPLICAS_DIR
        self.synced = None  # the store's write count the copies hold; None: not copied yet
        self._live: list[_Replica] = []
        self._lock = threading.Lock()  # one batch at a time: a pipe carries one request at a time
        self.stats = {"refreshes": 0, "fallbacks": 0, "replica_chunks": 0, "replica_routed": 0}
        self._buf, self._buf_path, self._buf_gen = None, None, 0  # the shared query buffer (_share)

    # ---- lifecycle ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Copy the collection again into every replica and re-open it there."""
        for r in self._live:
            if r.alive():
                try:
                    r.call("close", None)
                except (OSError, EOFError):
                    pass
        for r in self._live:
            if not r.alive():
                r.stop()
        self._live = [r for r in self._live if r.alive()]
        used = {r.path.name for r in self._live}
        free = (str(i) for i in range(2 * self.n) if str(i) not in used)
        while len(self._live) < self.n:
            self._live.append(_Replica(self.root / next(free)))
        self.store.flush()
        src = Path(self.store.path)
        self.root.mkdir(exist_ok=True)
        for r in self._live:
            shutil.rmtree(r.path, ignore_errors=True)
            r.path.mkdir()
            shutil.copy2(src / "collection.json", r.path / "collection.json")
            shutil.copytree(src / "shard", r.path / "shard")
            fsync_dir(r.path)
        for r in self._live:
            status, value = r.call("open", str(r.path))
            if status != "ok" or value != self.store.count():
                raise HSearchError(f"a read replica of collection '{self.store.name}' could not open its copy: "
                                   f"{value if status != 'ok' else f'{value} points, not {self.store.count()}'}")
        self.synced = self.store.writes
        self.stats["refreshes"] += 1

    def close(self) -> None:
        with self._lock:
            for r in self._live:
                r.stop()
            self._live = []
            self._drop_buf()
            shutil.rmtree(self.root, ignore_errors=True)
            self.synced = None

    # ---- search -------------------------------------------------------------------------------
    def search(self, op: str, vectors: np.ndarray, k: int, per_query: list, shared: tuple, with_payload: bool):
        """Score a batch across the calling process and the replicas. ``per_query``: the leaves or
        filters of each query (cut with the queries); ``shared``: the rest of the primitive's arguments.

        The batch is cut into chunks (:func:`_chunks`). Each replica is kept at least two chunks ahead
        (``wanted``), taken from the front; this process scores chunks from the back, collects what
        the replicas finished after each of its own and sends them more before the next. The last chunk
        goes to a replica only if that replica holds none, so this process does not end the batch
        waiting for two of a replica's. A fixed split (half here, half there) left one
        side waiting for the other: this process also routes, sends and builds the hits. The queries
        go through a memory-mapped buffer (:meth:`_share`), so a chunk's message is its range and its
        leaves, small enough never to block on a full socket. ``per_query`` is sliced a chunk at a time,
        just before the chunk is sent or scored here: the router passes a
        :class:`~plugin.router.parts.RoutedParts`, which routes a chunk when it is sliced, so the first
        chunks leave after their own routing rather than the whole batch's."""
        with self._lock:
            if self.synced != self.store.writes or len(self._live) < self.n \
                    or not all(r.alive() for r in self._live):
                try:
                    self.refresh()
                except Exception as e:  # a full disk, a process that would not start: answer from here
                    log.warning("read replicas of collection '%s' could not be refreshed (%s): scoring the "
                                "batch here", self.store.name, e)
                    self.synced = None
                    self.stats["fallbacks"] += 1
                    out = _score(self.store, op, _args(vectors, k, per_query, shared))
                    return self.store.attach_payloads(out) if with_payload else out
            buf = self._share(vectors)
            todo = deque(_chunks(len(vectors), self.n))
            done: dict[tuple, list] = {}
            ahead = {id(r): deque() for r in self._live}
            live = list(self._live)

            remote = getattr(per_query, "remote", None) if op == "leaves" else None

            def send(r) -> None:
                a, b = todo.popleft()
                try:
                    if remote is None:
                        r.conn.send((op, ((buf, a, b), k, per_query[a:b], *shared)))
                    else:  # the replica routes the chunk (plugin.router.parts.RemoteRoute)
                        if r.context is not remote.context:
                            r.conn.send(("context", remote.context))
                            r.context = remote.context
                        r.conn.send(("routed", ((buf, a, b), k, remote.fn, remote.args, *shared)))
                    ahead[id(r)].append((a, b))
                except (OSError, ValueError):
                    log.warning("read replica %s died: scoring its part here", r.path.name)
                    self._lost(live, r, ahead, done, vectors, k, per_query, shared, op, (a, b))

            def collect(r) -> None:
                a, b = ahead[id(r)].popleft()
                try:
                    status, value = r.conn.recv()
                except (EOFError, OSError):
                    log.warning("read replica %s died: scoring its part here", r.path.name)
                    self._lost(live, r, ahead, done, vectors, k, per_query, shared, op, (a, b))
                    return
                if status != "ok":
                    log.warning("read replica %s failed (%s): scoring its part here", r.path.name, value)
                    self.stats["fallbacks"] += 1
                    done[(a, b)] = _score(self.store, op, _args(vectors[a:b], k, per_query[a:b], shared))
                    return
                self.stats["replica_chunks"] += 1
                if remote is not None:
                    value, routed = value
                    per_query.take(a, b, routed)
                    self.stats["replica_routed"] += 1
                done[(a, b)] = [[self.store.hit(i, sc) for i, sc in hits] for hits in value]

            def wanted(r) -> bool:
                """Whether ``r`` gets another chunk: the last chunk left only if it holds none (this
                process scores it rather than wait for two of the replica's; batch 100, scratch A/B:
                1.05x, and 1.09x with MIN_CHUNK 8 for 16); otherwise while it holds fewer than two, or
                fewer queries queued behind the one it is scoring than this process's next chunk: while
                this process is in the engine it cannot feed a replica (the binding holds the GIL), and
                chunks shrink toward the end (1.04x at batch 100 and 1000)."""
                held = ahead[id(r)]
                if not (r in live and todo and (len(todo) > 1 or not held)):
                    return False
                if len(held) < 2:
                    return True
                mine = todo[-1][1] - todo[-1][0]
                return sum(b - a for a, b in list(held)[1:]) < mine

            while todo:
                for r in list(live):  # before each chunk scored here (the first: the replicas' first chunks)
                    while wanted(r):
                        send(r)
                if not todo:
                    break
                a, b = todo.pop()
                done[(a, b)] = _score(self.store, op, _args(vectors[a:b], k, per_query[a:b], shared))
                for r in list(live):
                    while r in live and ahead[id(r)] and r.conn.poll():
                        collect(r)
            for r in list(live):
                while r in live and ahead[id(r)]:
                    collect(r)
            out = [hits for key in sorted(done) for hits in done[key]]
        return self.store.attach_payloads(out) if with_payload else out

    def _lost(self, live, r, ahead, done, vectors, k, per_query, shared, op, chunk) -> None:
        """A replica died mid-batch: this process scores the chunk it was given and every chunk it still
        held; the batch goes on without it (the next batch starts a new one)."""
        live.remove(r)
        for a, b in [chunk, *ahead[id(r)]]:
            self.stats["fallbacks"] += 1
            done[(a, b)] = _score(self.store, op, _args(vectors[a:b], k, per_query[a:b], shared))
        ahead[id(r)].clear()

    def _share(self, vectors: np.ndarray) -> str:
        """The batch's queries written into a memory-mapped file the replicas read (grown as needed)."""
        n, dim = vectors.shape
        if self._buf is None or self._buf.shape[0] < n or self._buf.shape[1] != dim:
            self._buf_gen += 1
            path = self._buf_dir() / f"hsearch-queries-{os.getpid()}-{id(self)}-{self._buf_gen}.npy"
            self._drop_buf()
            _remove_orphan_buffers(path.parent)
            self._buf = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                                  shape=(max(n, 1024), dim))
            self._buf_path = path
        self._buf[:n] = vectors
        return str(self._buf_path)

    def _buf_dir(self) -> Path:
        shm = Path("/dev/shm")
        return shm if shm.is_dir() and os.access(shm, os.W_OK) else self.root

    def _drop_buf(self) -> None:
        if self._buf is not None:
            del self._buf
            self._buf = None
            Path(self._buf_path).unlink(missing_ok=True)


def _remove_orphan_buffers(folder: Path) -> None:
    """Query buffers left by processes that died without closing their replicas (a crash, a kill)."""
    for f in folder.glob("hsearch-queries-*.npy"):
        try:
            pid = int(f.name.split("-")[2])
            os.kill(pid, 0)
        except ProcessLookupError:
            f.unlink(missing_ok=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def _chunks(n: int, replicas: int) -> list[tuple[int, int]]:
    """[start, stop) ranges covering ``n`` queries, in order. The replicas take chunks from the front and
    this process from the back, so the last chunks handed out lie where the two ends meet. Chunks are
    cut from both ends in that proportion (``replicas`` from the front for one from the back), each
    ``1 / (2 (replicas + 1))`` of the queries still between the ends, clamped to [:data:`MIN_CHUNK`,
    :data:`MAX_CHUNK`]: large at the ends, where a chunk's round trip (a fraction of a millisecond) is
    spread over many queries, small where they meet, so neither side waits long for the other's last
    chunk. A rest of fewer than :data:`MIN_CHUNK` queries joins the chunk cut before it (a 1-query chunk
    cost a round trip of its own). Four equal chunks per process before left this process idle for up
    to two replica chunks (about 40 ms of a 1000-query batch on 60k points, scratch timeline), waiting
    at the end."""
    front, back = [], []
    lo, hi, turn = 0, n, 0
    while lo < hi:
        size = min(hi - lo, max(MIN_CHUNK, min(MAX_CHUNK, (hi - lo) // (2 * (replicas + 1)))))
        if hi - lo - size < MIN_CHUNK:  # the rest joins this chunk: no round trip for a few queries
            size = hi - lo
        if turn < replicas:
            front.append((lo, lo + size))
            lo += size
        else:
            back.append((hi - size, hi))
            hi -= size
        turn = (turn + 1) % (replicas + 1)
    return front + back[::-1]


def _args(vectors, k, per_query, shared) -> tuple:
    return (vectors, k, per_query, *shared)


if __name__ == "__main__":  # a replica process: ``python -m plugin.store.replicas <socket fd>``
    _worker(Connection(int(sys.argv[1])))
