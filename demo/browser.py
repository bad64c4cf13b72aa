"""Driving the page in a real browser: Debian's Chromium through Playwright, headless, offline.

Used by the browser tests, the screenshot script and the latency measurements, so all three see the
page the same way. Never ``playwright install``: Playwright's own browser download needs hosts this
project does not reach; ``/usr/bin/chromium`` (``apt-get install chromium``) is used instead.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket

CHROMIUM = os.environ.get("HSEARCH_CHROMIUM", "/usr/bin/chromium")
#: Flags from ../shared/ENVIRONMENT.md: no sandbox (containers), no GPU, no background traffic.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]


def chromium_path() -> str | None:
    """The Chromium executable, or None when this machine has none (tests then skip)."""
    if os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium")


@contextlib.contextmanager
def browser():
    """A headless Chromium (Playwright ``Browser``), closed on exit."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise RuntimeError("no Chromium: sudo apt-get install chromium (or set HSEARCH_CHROMIUM)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_page(b, url: str, viewport=(1400, 1000), timeout_s: float = 30.0):
    """A new page on ``url`` once the app has rendered its header."""
    page = b.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.goto(url, timeout=timeout_s * 1000)
    page.wait_for_selector("#header", timeout=timeout_s * 1000)
    return page

