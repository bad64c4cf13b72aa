"""The Gradio page: Search, Hierarchy and Add tabs over one :class:`~demo.service.DemoService`.

Handlers never raise into Gradio: an anticipated failure (a bad upload, an unknown synset, a missing
point) comes back as a one-line message in the page, and anything else is logged with its traceback on
the server and shown as one line, never as a stack trace. Components carry ``elem_id``s so the
browser tests (and anyone scripting the page) can find them.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no outside hosts

import gradio as gr  # noqa: E402

from demo import views  # noqa: E402
from demo.service import K_MAX, MAX_UPLOAD_BYTES, DemoService  # noqa: E402
from plugin.errors import HSearchError  # noqa: E402

log = logging.getLogger("hsearch.demo")

#: Concurrent searches Gradio runs (each on its own worker thread; the router lets them overlap).
SEARCH_CONCURRENCY = 4

CSS = """
.wn-tree { list-style: none; padding-left: 0.2em; font-size: 0.92em; }
.wn-tree ul { list-style: none; padding-left: 1.2em; border-left: 1px dotted #bbb; }
.wn-tree code { font-size: 0.8em; color: #777; }
#results .caption-label { white-space: normal; font-size: 0.78em; line-height: 1.25; max-width: 96%; }
"""


def make_query_image(**kwargs) -> gr.Image:
    """An image upload whose handler gets the uploaded file's path undecoded.

    ``gr.Image`` decodes uploads with PIL before the handler runs, so a file that is not an image (or a
    decompression bomb) would end in Gradio's generic error. The demo decodes with the loaders' safe
    decoding instead and says what is wrong. The override is set on the instance (Gradio calls
    ``block.preprocess``): a ``gr.Image`` subclass would make Gradio write a ``.pyi`` stub beside this file.
    Gradio has already checked that the file lies in its upload folder.
    """
    img = gr.Image(type="filepath", **kwargs)

    def preprocess(payload):
        if payload is None:
            return None
        if payload.path is None:
            raise gr.Error("the upload did not arrive as a file; upload it again")
        return str(payload.path)

    img.preprocess = preprocess
    return img


def _fail(e: Exception) -> str:
    if isinstance(e, (HSearchError, FileNotFoundError)):
        return views.error_md(str(e))
    log.exception("demo handler failed")
    return views.error_md(f"internal error ({type(e).__name__}): {e}")


def build_app(service: DemoService) -> gr.Blocks:
    """The page. One ``service`` serves every tab and browser."""
    modes = service.modes()
    examples = service.examples()
    plot_dir = Path(tempfile.mkdtemp(prefix="hsearch-demo-"))
    atexit.register(shutil.rmtree, plot_dir, ignore_errors=True)

    def outputs_of(outcome):
        counts = service.synset_counts()
        return (views.status_md(outcome), views.gallery_items(outcome), views.shows_md(outcome, counts),
                views.cost_md(outcome), "", outcome, None)

    def failed(e):
        """The message in the status line; the panels are cleared so no earlier answer reads as this one's."""
        return (_fail(e), [], "", "", "", gr.skip(), None)

    def run(fn, *args):
        try:
            return outputs_of(fn(*args))
        except Exception as e:  # noqa: BLE001 - every failure becomes a message in the page
            return failed(e)

    def on_upload(path, mode, k, within):
        if path is None:  # the upload was cleared
            return failed(HSearchError("upload an image, pick an example or give a point id")) + (gr.skip(),)
        return run(service.search_upload, path, mode, k, within) + ("",)

    def on_search(path, point_id, mode, k, within):
        if point_id and str(point_id).strip():
            return run(service.search_point, point_id, mode, k, within)
        if path:
            return run(service.search_upload, path, mode, k, within)
        return failed(HSearchError("upload an image, pick an example or give a point id first"))

    def on_example(evt: gr.SelectData, mode, k, within):
        ex = examples[evt.index]
        out = run(service.search_example, evt.index, mode, k, within)
        return out + (ex.image, "" if ex.point_id is None else str(ex.point_id))

    def on_hit(evt: gr.SelectData, outcome):
        try:
            if outcome is None:
                return "", None
            return views.explain_md(service.explain(outcome, evt.index)), evt.index
        except Exception as e:  # noqa: BLE001
            return _fail(e), None

    def on_hit_search(outcome, index, mode, k, within):
        if outcome is None or index is None:
            return failed(HSearchError("click a hit first")) + (gr.skip(), gr.skip())
        hit = outcome.hits[int(index)]
        return run(service.search_point, hit.id, mode, k, within) + (hit.picture, str(hit.id))

    def on_rerun(outcome, mode, k, within):
        """Repeat the last query (after the subtree changed on the Hierarchy tab)."""
        if outcome is None:
            return failed(HSearchError("subtree set: now upload an image, pick an example or give a point id"))
        if outcome.query_id is not None:
            return run(service.search_point, outcome.query_id, mode, k, within)
        return run(service.search_image, outcome.query_picture, mode, k, within)

    def on_hierarchy():
        try:
            root = service.hierarchy()
            plot = plot_dir / f"tree-{service.router.flat.n_points}-{service.router.flat.n_leaves}.png"
            if not plot.exists():  # drawn once per tree state; renamed into place (tabs may ask at once)
                tmp = plot.with_name(f"{plot.stem}-{threading.get_ident()}.png")
                service.leaf_plot(tmp)
                os.replace(tmp, plot)
            from PIL import Image

            return (views.tree_html(root), gr.Dropdown(choices=views.subtree_choices(root)), Image.open(plot), "")
        except Exception as e:  # noqa: BLE001
            return gr.skip(), gr.skip(), gr.skip(), _fail(e)

    def on_add(files, label):
        try:
            paths = [(os.path.basename(str(f)), str(f)) for f in (files or [])]
            if not paths:
                return views.error_md("choose one or more image files first"), gr.skip()
            rows = service.add(paths, label)
            return views.add_report_md(rows), views.header_md(service.info())
        except Exception as e:  # noqa: BLE001
            return _fail(e), gr.skip()

    with gr.Blocks(title="Hierarchical image search", analytics_enabled=False) as app:
        header = gr.Markdown(views.header_md(service.info()), elem_id="header")
        last = gr.State(None)
        picked = gr.State(None)
        with gr.Tabs(selected="search") as tabs:
            with gr.Tab("Search", id="search"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=300):
                        query_image = make_query_image(label="Query image (drop or upload)",
                                                       sources=["upload", "clipboard"], format="png", height=220,
                                                       elem_id="query-image")
                        gr.Markdown("Or click an example (photos from scikit-image, images from the collection):")
                        example_gallery = gr.Gallery(
                            value=[(views.thumb(e.image, 96), e.caption) for e in examples], columns=3, height=300,
                            format="png", allow_preview=False, show_label=False, interactive=False, elem_id="examples")
                        some_id = next((e.point_id for e in examples if e.point_id is not None), None)
                        query_id = gr.Textbox(label="Or a stored point id (press Enter)",
                                              placeholder=f"e.g. {some_id}" if some_id else "", elem_id="query-id")
                        mode = gr.Radio(choices=modes, value=service.default_mode(), label="Search mode",
                                        elem_id="mode")
                        k = gr.Slider(1, K_MAX, value=10, step=1, label="k (hits)", elem_id="k")
                        within = gr.Textbox(label="Only within a WordNet subtree (optional)",
                                            placeholder="a wnid like n03419014, or a name like garment",
                                            elem_id="within")
                        search_btn = gr.Button("Search", variant="primary", elem_id="search-btn")
                    with gr.Column(scale=5):
                        status = gr.Markdown(elem_id="search-status")
                        results = gr.Gallery(label="Top hits (click one to see why)", columns=5, height=420,
                                             format="png", object_fit="contain", allow_preview=False, interactive=False,
                                             elem_id="results")
                        explain = gr.Markdown(elem_id="explain")
                        hit_btn = gr.Button("Search with the clicked hit", size="sm", elem_id="hit-search")
                        with gr.Row():
                            shows = gr.Markdown(elem_id="shows")
                            cost = gr.Markdown(elem_id="cost")
            with gr.Tab("Hierarchy", id="hierarchy") as htab:
                gr.Markdown("The collection's WordNet synsets with the number of images under each (one facet "
                            "query on the `synsets` payload index). Pick one to search within it.")
                with gr.Row():
                    subtree = gr.Dropdown(choices=[], label="Subtree", elem_id="subtree", scale=3)
                    within_btn = gr.Button("Search within this subtree", elem_id="within-btn", scale=1)
                hier_status = gr.Markdown(elem_id="hierarchy-status")
                tree = gr.HTML(elem_id="wn-tree")
                leaf_plot = gr.Image(label="The k-means router's tree: dot area = points; leaves labelled with "
                                     "their most common label", interactive=False, elem_id="leaf-plot")
            with gr.Tab("Add", id="add"):
                gr.Markdown(f"Add images (each at most {MAX_UPLOAD_BYTES // 2**20} MiB). They go through the same "
                            "ingestion as `hsearch ingest` (router.add: filed under their leaf at once; they join "
                            "the semantics engine's signatures too, when the collection has them) and can be "
                            "searched as soon as the report appears.")
                files = gr.File(file_count="multiple", type="filepath", label="Images", elem_id="add-files")
                add_label = gr.Textbox(label="WordNet label for all of them (optional)",
                                       placeholder="a wnid like n02123045, or a synset name", elem_id="add-label")
                add_btn = gr.Button("Add to the collection", variant="primary", elem_id="add-btn")
                add_report = gr.Markdown(elem_id="add-report")

        outs = [status, results, shows, cost, explain, last, picked]
        search_args = dict(concurrency_limit=SEARCH_CONCURRENCY, concurrency_id="search")
        query_image.upload(on_upload, [query_image, mode, k, within], outs + [query_id], **search_args)
        search_btn.click(on_search, [query_image, query_id, mode, k, within], outs, **search_args)
        query_id.submit(on_search, [query_image, query_id, mode, k, within], outs, **search_args)
        within.submit(on_search, [query_image, query_id, mode, k, within], outs, **search_args)
        example_gallery.select(on_example, [mode, k, within], outs + [query_image, query_id], **search_args)
        results.select(on_hit, [last], [explain, picked])
        hit_btn.click(on_hit_search, [last, picked, mode, k, within], outs + [query_image, query_id], **search_args)
        htab.select(on_hierarchy, None, [tree, subtree, leaf_plot, hier_status])
        within_btn.click(lambda w: (w or "", gr.Tabs(selected="search")), [subtree], [within, tabs]).then(
            on_rerun, [last, mode, k, within], outs, **search_args)
        add_btn.click(on_add, [files, add_label], [add_report, header], concurrency_limit=1)
    return app


def launch(service: DemoService, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page on ``host:port`` (127.0.0.1 by default: reachable from this machine only)."""
    app = build_app(service)
    app.queue(default_concurrency_limit=SEARCH_CONCURRENCY)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, max_file_size=MAX_UPLOAD_BYTES,
               show_error=False, quiet=True, css=CSS)
    return app


def serve(location: str | None, collection: str, host: str = "127.0.0.1", port: int = 7860, image_roots=(),
          block: bool = True, echo=print):
    """``hsearch demo``: open (or build) the collection, warm everything up, serve the page."""
    import time

    t0 = time.perf_counter()
    service = DemoService.open(location, collection, image_roots=image_roots, echo=echo)
    try:
        warm = service.warm()
        app = launch(service, host, port, block=False)
        echo(f"demo ready at http://{host}:{port} ({time.perf_counter() - t0:.1f} s after start; warm-up "
             + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in warm.items()) + ")")
        if not block:
            return app, service
        app.block_thread()
    finally:
        if block:
            service.close()
    return None
