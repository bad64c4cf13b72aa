"""Take the README's screenshot of the Search tab (``make demo-screenshot`` -> docs/demo.png).

A script, not a hand-made picture, so it stays true to the page: it serves the collection in this
process (or uses a running demo given by ``--url``), uploads a Fashion-MNIST *training* image (not in
the collection), runs a relaxed search, clicks the first hit so its explanation shows, and saves the
page as headless Chromium renders it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

QUERY = ("train", 42)  # split, index: an ankle boot in the training split


@contextlib.contextmanager
def served(url: str | None, collection: str, store: str | None):
    """The URL of a demo: the given one, or one served from this process on a free port."""
    if url:
        yield url
        return
    from demo.app import launch
    from demo.browser import free_port
    from demo.service import DemoService

    service = DemoService.open(store, collection)
    try:
        service.warm()
        port = free_port()
        app = launch(service, "127.0.0.1", port, block=False)
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            app.close()
    finally:
        service.close()


def query_png(split: str, index: int) -> bytes:
    from PIL import Image

    from loaders.fashion_mnist import load_arrays

    buf = io.BytesIO()
    Image.fromarray(load_arrays(split)[0][index], mode="L").save(buf, "PNG")
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=None, help="a running demo (default: serve --collection from this process)")
    ap.add_argument("--collection", default="fashion-mnist")
    ap.add_argument("--store", default=None)
    ap.add_argument("--out", default="docs/demo.png")
    args = ap.parse_args(argv)
    from playwright.sync_api import expect

    from demo.browser import browser, open_page

    with tempfile.TemporaryDirectory() as tmp, served(args.url, args.collection, args.store) as url, browser() as b:
        q = Path(tmp) / "ankle-boot.png"
        q.write_bytes(query_png(*QUERY))
        page = open_page(b, url, viewport=(1400, 1000))
        page.get_by_label("relaxed").check()
        page.set_input_files("#query-image input[type=file]", str(q))
        expect(page.locator("#search-status")).to_contain_text("ankle-boot.png", timeout=60_000)
        page.locator("#results button.thumbnail-item").first.click()
        expect(page.locator("#explain")).to_contain_text("Synset path", timeout=60_000)
        page.wait_for_timeout(500)  # let thumbnails finish loading
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.out, full_page=True)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
