"""Latency of the demo as a visitor sees it, measured in headless Chromium (the numbers in the README).

* ``--startup``: seconds from ``make demo`` to the first result in the page (the collection exists).
* per mode (exact, relaxed): upload N different Fashion-MNIST training images one after another; the
  time from handing the file to the page until the status names that file and the gallery shows its
  hits (upload, decode, encode, route, score, thumbnails, rendering), median and p95, beside the
  server's own time for the request and the router's search time.
* two tabs: both tabs upload at the same moment, N times; each tab's latency.

Runs against ``--url`` (a running demo) or serves ``--collection`` from this process.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from demo.screenshot import query_png, served


def _done(page, name: str, k: int = 10) -> bool:
    return name in page.inner_text("#search-status") and page.locator("#results img").count() == k


def _wait(page, name: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not _done(page, name):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no result for {name}: {page.inner_text('#search-status')!r}")
        page.wait_for_timeout(5)


def _server_ms(page) -> tuple[float, float]:
    """(whole request in the server, router search ms) from the cost panel."""
    cost = page.inner_text("#cost")
    total = float(re.search(r"whole request in the server: (\d+) ms", cost).group(1))
    search = float(re.search(r"milliseconds \(route \+ score\)\s+([\d.]+)", cost).group(1))
    return total, search


def _stats(xs: list[float]) -> dict:
    import numpy as np

    a = np.asarray(xs, float)
    return {"n": len(xs), "median": round(float(np.median(a)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "min": round(float(a.min()), 1), "max": round(float(a.max()), 1)}


def queries(tmp: Path, n: int, start: int) -> list[Path]:
    out = []
    for i in range(start, start + n):
        p = tmp / f"q{i:05d}.png"
        p.write_bytes(query_png("train", i))
        out.append(p)
    return out


def per_mode(page, files: list[Path], mode: str, warmup: int = 3) -> dict:
    page.get_by_label(mode, exact=True).check()
    page_ms, server_ms, search_ms = [], [], []
    for n, f in enumerate(files):
        t0 = time.perf_counter()
        page.set_input_files("#query-image input[type=file]", str(f))
        _wait(page, f.name)
        dt = (time.perf_counter() - t0) * 1e3
        if n >= warmup:
            page_ms.append(dt)
            s, r = _server_ms(page)
            server_ms.append(s)
            search_ms.append(r)
    return {"page_ms": _stats(page_ms), "server_ms": _stats(server_ms), "router_search_ms": _stats(search_ms)}


def two_tabs(b, url: str, files: list[Path]) -> dict:
    from demo.browser import open_page

    pages = [open_page(b, url), open_page(b, url)]
    lat, server = [[], []], [[], []]
    for i in range(0, len(files) - 1, 2):
        pair = files[i:i + 2]
        t0 = time.perf_counter()
        for p, f in zip(pages, pair):
            p.set_input_files("#query-image input[type=file]", str(f))
        pending = {0, 1}
        while pending:
            for j in list(pending):
                if _done(pages[j], pair[j].name):
                    lat[j].append((time.perf_counter() - t0) * 1e3)
                    server[j].append(_server_ms(pages[j])[0])
                    pending.discard(j)
            if time.perf_counter() - t0 > 60:
                raise TimeoutError("two tabs: no result within 60 s")
            pages[0].wait_for_timeout(5)
    for p in pages:
        p.close()
    return {"tab1_ms": _stats(lat[0][1:]), "tab2_ms": _stats(lat[1][1:]),
            "server_ms": _stats(server[0][1:] + server[1][1:])}


def startup(port: int, tmp: Path) -> dict:
    """``make demo`` in a new process group; seconds until the page answers and until the first result."""
    from demo.browser import browser, open_page

    q = tmp / "first.png"
    q.write_bytes(query_png("train", 7))
    root = Path(__file__).resolve().parents[1]
    t0 = time.perf_counter()
    proc = subprocess.Popen(["make", "demo", f"PORT={port}"], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"make demo exited: {proc.stderr.read().decode()[-500:]}")
                if time.perf_counter() - t0 > 600:
                    raise TimeoutError("the demo did not come up in 10 min")
                time.sleep(0.1)
        up = time.perf_counter() - t0
        with browser() as b:
            page = open_page(b, url)
            page.set_input_files("#query-image input[type=file]", str(q))
            _wait(page, q.name)
        return {"page_up_s": round(up, 1), "first_result_s": round(time.perf_counter() - t0, 1)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=None)
    ap.add_argument("--collection", default="fashion-mnist")
    ap.add_argument("--store", default=None)
    ap.add_argument("-n", type=int, default=40, help="queries per mode (after 3 warm-up queries)")
    ap.add_argument("--startup", action="store_true", help="also time `make demo` to the first result")
    ap.add_argument("--port", type=int, default=7870, help="port for --startup")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    from demo.browser import browser, open_page

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.startup:
            out["startup"] = startup(args.port, tmp)
        files = queries(tmp, 2 * (args.n + 3) + 2 * args.n + 2, 1000)
        with served(args.url, args.collection, args.store) as url, browser() as b:
            page = open_page(b, url)
            n = args.n + 3
            out["exact"] = per_mode(page, files[:n], "exact")
            out["relaxed"] = per_mode(page, files[n:2 * n], "relaxed")
            out["single_tab_relaxed_ms"] = out["relaxed"]["page_ms"]
            page.close()
            out["two_tabs_relaxed"] = two_tabs(b, url, files[2 * n:])
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
