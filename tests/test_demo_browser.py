"""The demo page in a real browser: Debian's Chromium, headless, driven by Playwright, against the app
serving the small real test collection on a free localhost port.

Each test does what a visitor does (upload, click an example, type a subtree, browse the hierarchy,
add images) and reads what the page shows. Skipped when Chromium or Playwright is missing.
"""
from __future__ import annotations

import re

import pytest
from demo_collection import (FOOTWEAR, demo_service, fashion_png, first_train_index, photo_dir,  # noqa: F401
                             png_bytes, semantics_service, upload_file)

from demo.browser import chromium_path

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.skipif(chromium_path() is None, reason="no Chromium: apt-get install chromium"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")]
expect = playwright.expect
T = 30_000  # ms: generous for a loaded 2-core machine; a search takes well under a second


@pytest.fixture(scope="module")
def app_url(demo_service):
    from demo.app import launch
    from demo.browser import free_port

    port = free_port()
    app = launch(demo_service, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def chromium():
    from demo.browser import browser

    with browser() as b:
        yield b


@pytest.fixture()
def page(chromium, app_url):
    from demo.browser import open_page

    p = open_page(chromium, app_url)
    yield p
    p.close()


def _labels_under(service, ancestor: str) -> set[str]:
    from demo import hierarchy
    from plugin.taxonomy import synset_payload

    return {hierarchy.label(w) for w in service.synset_counts() if ancestor in synset_payload(w)["synsets"]}


def _captions(page) -> list[str]:
    return page.locator("#results .caption-label").all_inner_texts()


def _caption_labels(page) -> list[str]:
    out = []
    for c in _captions(page):
        m = re.match(r"^\d+\. (\d\.\d{3}) · (.+?) · ", c)
        assert m, f"caption without score and label: {c!r}"
        out.append(m.group(2))
    return out


def _upload(page, path: str) -> None:
    page.set_input_files("#query-image input[type=file]", path)


def _textbox(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def test_upload_an_image_shows_k_hits_with_labels_and_what_it_shows(page, demo_service, upload_file):
    k = page.locator("#k input[type=number]")
    k.fill("6")
    k.press("Enter")
    sneaker = upload_file("sneaker.png", fashion_png("train", first_train_index("n03472535")))
    _upload(page, sneaker)
    expect(page.locator("#search-status")).to_contain_text("6 hits for uploaded image", timeout=T)
    expect(page.locator("#results img")).to_have_count(6)
    labels = _caption_labels(page)
    assert len(labels) == 6 and labels[0] == "gym shoe"
    collection_labels = {l for l in _labels_under(demo_service, "n00001740")}
    assert set(labels) <= collection_labels
    shows = page.inner_text("#shows")
    assert "What the query shows" in shows and len(re.findall(r"n\d{8}", shows)) >= 5  # top-5 as synsets
    assert "Where the hits fall" in shows
    cost = page.inner_text("#cost")
    assert "points scored" in cost and "exact search" in cost and f"{demo_service.store.count():,}" in cost
    # clicking a hit explains it
    page.locator("#results button.thumbnail-item").first.click()
    expect(page.locator("#explain")).to_contain_text("Synset path", timeout=T)
    expect(page.locator("#explain")).to_contain_text("Lowest common ancestor with the query's class")


def test_pick_an_example(page):
    page.locator("#examples button.thumbnail-item").first.click()  # the scikit-image cat photo
    expect(page.locator("#search-status")).to_contain_text("example: cat photo", timeout=T)
    assert _caption_labels(page)[0] == "tabby"  # the same photo is in the collection, labelled tabby
    assert re.search(r"\bcat\b", page.inner_text("#shows"))  # MobileNetV2 sees a cat


def test_search_within_a_subtree(page, demo_service, upload_file):
    bag = upload_file("bag.png", fashion_png("train", first_train_index("n02774152")))
    _upload(page, bag)
    expect(page.locator("#search-status")).to_contain_text("10 hits for uploaded image", timeout=T)
    footwear = _labels_under(demo_service, FOOTWEAR)
    assert not set(_caption_labels(page)) <= footwear  # unrestricted, a bag finds bags
    box = _textbox(page, "within")
    box.fill("footwear")
    box.press("Enter")
    expect(page.locator("#search-status")).to_contain_text(f"within footwear ({FOOTWEAR})", timeout=T)
    labels = _caption_labels(page)
    assert len(labels) == 10 and set(labels) <= footwear
    box.fill("n99999999")
    box.press("Enter")
    expect(page.locator("#search-status")).to_contain_text("unknown or malformed WordNet noun id", timeout=T)
    expect(page.locator("#results img")).to_have_count(0)  # no earlier answer left to read as this one's


def test_browse_the_hierarchy_and_search_within_a_subtree(page, demo_service, upload_file):
    _upload(page, upload_file("coat.png", fashion_png("train", first_train_index("n03057021"))))
    expect(page.locator("#search-status")).to_contain_text("10 hits", timeout=T)
    page.click("button[role=tab]:has-text('Hierarchy')")
    tree = page.locator("#wn-tree .wn-tree")
    expect(tree).to_be_visible(timeout=T)
    counts = demo_service.synset_counts()
    garment = page.locator("#wn-tree summary", has=page.locator("code", has_text="n03419014"))
    expect(garment).to_contain_text(f"garment n03419014 {counts['n03419014']:,}")
    expect(page.locator("#leaf-plot img")).to_be_visible(timeout=T)
    page.locator("#subtree input").click()
    page.keyboard.type("footwear")
    page.locator("ul[role=listbox] li", has_text="footwear").first.click()
    page.click("#within-btn")
    expect(page.locator("#search-status")).to_contain_text(f"within footwear ({FOOTWEAR})", timeout=T)
    expect(page.locator("#results")).to_be_visible()  # the page switched back to the Search tab
    expect(page.locator("#wn-tree")).to_be_hidden()
    assert _textbox(page, "within").input_value() == FOOTWEAR
    assert set(_caption_labels(page)) <= _labels_under(demo_service, FOOTWEAR)


def test_add_images_and_find_them(page, demo_service, upload_file):
    sandal = upload_file("my-sandal.png", fashion_png("train", first_train_index("n04133789") + 1))
    notes = upload_file("notes.txt", "a shopping list, not a picture")
    n0 = demo_service.store.count()
    page.click("button[role=tab]:has-text('Add')")
    page.set_input_files("#add-files input[type=file]", [sandal, notes])
    _textbox(page, "add-label").fill("sandal")
    page.click("#add-btn")
    report = page.locator("#add-report")
    expect(report).to_contain_text("1 added", timeout=T)
    expect(report).to_contain_text("1 rejected")
    expect(report.locator("tr", has_text="notes.txt")).to_contain_text("not an image")
    assert demo_service.store.count() == n0 + 1
    page.click("button[role=tab]:has-text('Search')")
    _upload(page, sandal)
    expect(page.locator("#search-status")).to_contain_text("hits for uploaded image", timeout=T)
    assert _captions(page)[0].startswith("1. 1.000 · sandal")  # the image just added, found first


def test_bad_uploads_show_their_reason_and_store_nothing(page, demo_service, upload_file):
    from PIL import Image

    n0 = demo_service.store.count()
    _upload(page, upload_file("holiday.png", "this file only claims to be a PNG"))
    expect(page.locator("#search-status")).to_contain_text("not an image (format not recognised)", timeout=T)
    _upload(page, upload_file("huge.png", png_bytes(Image.new("L", (8000, 6000)))))  # 48 MP in ~50 KB
    expect(page.locator("#search-status")).to_contain_text("image too large", timeout=T)
    _upload(page, upload_file("notes.txt", "plain text"))  # refused by the page before it is sent
    expect(page.get_by_text("Invalid file type")).to_be_visible(timeout=T)
    assert demo_service.store.count() == n0


def test_two_tabs_search_at_once(chromium, app_url, upload_file):
    from demo.browser import open_page

    pages = [open_page(chromium, app_url) for _ in range(2)]
    try:
        files = [upload_file(f"q{i}.png", fashion_png("train", first_train_index(w)))
                 for i, w in enumerate(("n03472535", "n04489008"))]
        for p, f in zip(pages, files):
            p.set_input_files("#query-image input[type=file]", f)  # both requests in flight together
        for p, want in zip(pages, ("gym shoe", "trouser")):
            expect(p.locator("#search-status")).to_contain_text("10 hits", timeout=T)
            assert _caption_labels(p)[0] == want  # each tab got its own answer
    finally:
        for p in pages:
            p.close()


def test_the_panel_shows_the_semantics_when_the_collection_has_signatures(chromium, semantics_service, upload_file):
    from PIL import Image

    from demo.app import launch
    from demo.browser import free_port, open_page

    port = free_port()
    app = launch(semantics_service, "127.0.0.1", port, block=False)
    page = open_page(chromium, f"http://127.0.0.1:{port}/")
    try:
        sneaker = upload_file("sneaker.png", fashion_png("train", first_train_index("n03472535")))
        _upload(page, sneaker)
        expect(page.locator("#search-status")).to_contain_text("hits for uploaded image", timeout=T)
        shows = page.locator("#shows")
        expect(shows).to_contain_text("General semantics", timeout=T)
        want = semantics_service.semantics_of(semantics_service._encode(Image.open(sneaker))[0])
        text = shows.inner_text()
        assert "Specific semantics" in text and "top-5" not in text and "stale" not in text
        assert all(e["wnid"] in text for e in want["general"] + want["specific"])
        assert f"{want['searched']['selected']} of {want['searched']['nodes']} synsets" in text
    finally:
        page.close()
        app.close()
