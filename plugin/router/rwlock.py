"""A readers-writer lock: searches share it, updates take it alone.

A search scores the leaves its snapshot chose; an update (add, delete, reconcile) rewrites ``leaf``
payloads in the store and then swaps the snapshot. Sharing the lock among searches lets the demo's
threads search in parallel; holding it exclusively during an update means no search ever pairs one
moment's routing with another moment's payloads. Writers are preferred (a waiting update blocks new
searches), so a steady stream of searches cannot starve ingestion. The standard library has no such
lock; this one is a dozen lines over ``threading.Condition``.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager


class RWLock:
    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = None  # thread holding the write lock
        self._depth = 0  # re-entrant writes by the same thread
        self._waiting_writers = 0

    @contextmanager
    def read(self):
        me = threading.get_ident()
        if self._writer == me:  # a writer may search (e.g. reconcile calling assign); it already excludes others
            yield
            return
        with self._cond:
            while self._writer is not None or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
            else:
                self._waiting_writers += 1
                while self._writer is not None or self._readers:
                    self._cond.wait()
                self._waiting_writers -= 1
                self._writer, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._writer = None
                    self._cond.notify_all()
