"""How results look: pure functions from the service's data to Markdown, HTML and gallery items.

Nothing here touches the store or the page, so each view can be checked on its own, and the wording a
browser test looks for lives in one place. Text that came from a user (file names, error messages
quoting them) is escaped before it reaches Markdown or HTML.
"""
from __future__ import annotations

import html
import re
from collections import Counter

from demo import hierarchy

THUMB = 160


def esc(text) -> str:
    """Text that Markdown shows as typed (no links, emphasis, tables or HTML from user input)."""
    return re.sub(r"([\\`*_{}\[\]()#+!|<>~])", r"\\\1", str(text))


def thumb(img, size: int = THUMB):
    """A gallery picture: tiny images (28x28 Fashion-MNIST) scaled up by a whole factor without blur,
    big photos scaled down."""
    from PIL import Image

    w, h = img.size
    if max(w, h) < size // 2:
        f = max(1, size // max(w, h))
        return img.resize((w * f, h * f), Image.NEAREST)
    if max(w, h) > size * 2:
        img = img.copy()
        img.thumbnail((size * 2, size * 2))
    return img


def placeholder(size: int = 96):
    from PIL import Image

    return Image.new("RGB", (size, size), (215, 215, 215))


def names(wnids, n: int | None = None) -> str:
    labels = [hierarchy.label(w) for w in wnids]
    if n is not None and len(labels) > n:
        labels = ["…"] + labels[-n:]
    return " › ".join(labels)


def caption(rank: int, hit) -> str:
    where = names(hierarchy.path(hit.wnid), 2) if hit.wnid else "no WordNet label"
    return f"{rank}. {hit.score:.3f} · {hit.label or 'unlabelled'} · {where}"


def gallery_items(outcome) -> list[tuple[object, str]]:
    return [(thumb(h.picture) if h.picture is not None else placeholder(), caption(r, h))
            for r, h in enumerate(outcome.hits, 1)]


def within_text(wnids) -> str:
    return ", ".join(f"{hierarchy.label(w)} ({w})" for w in wnids)


def status_md(outcome) -> str:
    s = f"**{len(outcome.hits)} hits** for {esc(outcome.query)} · mode **{outcome.mode}** · k={outcome.k}"
    if outcome.stats.get("query_label"):  # semantic modes rank by the query's predicted class
        s += f" · ranked by the query's class **{esc(outcome.stats['query_label'])}**"
    if outcome.within:
        s += f" · within {within_text(outcome.within)}"
        if outcome.stats.get("widened"):
            s += " (routing found fewer than k there, so the whole subtree was scored)"
        if not outcome.hits:
            s += "\n\nNo image of this collection lies under that subtree."
    return s


def error_md(message: str) -> str:
    return f"**⚠ {esc(message)}**"


def semantics_lines(sem: dict) -> list[str]:
    """The semantics engine's answer: general semantics (top-level subtrees chosen), specific semantics
    (the three fused synsets), how much of the hierarchy it searched, and whether the signatures lag."""
    lines = ["The collection's semantics engine (visual signatures per WordNet synset) says:", "",
             "**General semantics** (top-level subtrees):"]

    def entry(e, bullet: str = "-") -> str:
        return (f"{bullet} **{esc(e['label'])}** `{e['wnid']}` · {' › '.join(esc(p) for p in e['path'][-4:])} · "
                f"distance {e['score']:.3f} · {e['images']:,} images")

    lines += [entry(e) for e in sem["general"]]
    lines += ["", "**Specific semantics** (top three synsets):"]
    lines += [entry(e, f"{e['rank']}.") for e in sem["specific"]]
    s = sem["searched"]
    lines += ["", f"**Searched:** {s['selected']} of {s['nodes']} synsets ({s['share_selected']:.0%}) by branch "
                  f"selection, {s['survivors']} ({s['share_survivors']:.0%}) after pruning; the specific semantics "
                  f"hold {s['images']:,} images ({s['share_images']:.0%} of the collection) · "
                  f"{sem['semantics_ms']:.1f} ms"]
    st = sem.get("stale")
    if st:
        why = ", ".join(f"{n} {what}" for n, what in ((st["synsets_changed"], "synsets with other counts"),
                                                     (st["new_synsets"], "new synsets"),
                                                     (st["flagged"], "synsets waiting to be re-clustered")) if n)
        lines += ["", f"_⚠ The signatures are stale: the collection changed since they were built ({why}). "
                      f"Run `{st['fix']}`._"]
    return lines


def shows_md(outcome, counts: dict[str, int]) -> str:
    """What the query shows (the semantics engine's general and specific semantics when the collection
    has signatures, else the encoder's top-5 ImageNet classes as WordNet synsets) and where the hits fall
    in the collection's hierarchy."""
    lines = ["#### What the query shows"]
    if outcome.semantics:
        lines += semantics_lines(outcome.semantics)
    elif outcome.predictions:
        lines.append("The encoder's top-5 ImageNet classes, as WordNet synsets:")
        for w, lab, p in outcome.predictions:
            inside = counts.get(w, 0)
            note = f" — {inside} images of it here" if inside else ""
            lines.append(f"- **{lab}** `{w}` {p:.0%} · {names(hierarchy.path(w), 4)}{note}")
    else:
        lines.append("_This encoder is not a classifier (or the point's picture is not available): "
                     "no class predictions._")
    labelled = [h for h in outcome.hits if h.wnid]
    if labelled:
        labs = Counter(h.label for h in labelled)
        common = set.intersection(*(set(h.synsets) for h in labelled))
        deepest = max(common, key=lambda w: (len(hierarchy.path(w)), w)) if common else None
        where = "**Where the hits fall:** " + ", ".join(f"{lab} ×{n}" for lab, n in labs.most_common())
        if deepest:
            where += (f"; all {len(labelled)} labelled hits lie under **{hierarchy.label(deepest)}** `{deepest}` "
                      f"({counts.get(deepest, 0):,} images in the collection).")
        lines += ["", where]
    return "\n".join(lines)


def cost_md(outcome) -> str:
    st, n = outcome.stats, max(outcome.n_points, 1)
    leaves = st.get("n_leaves", 0)
    rows = ["#### What it cost", "", "| | this search | exact search |", "|---|---|---|"]
    ex = outcome.exact
    ex_ops = ex["operands"] if ex else st["operands"]
    rows.append(f"| points scored | {st['operands']:,} ({st['operands'] / n:.1%}) | "
                f"{ex_ops:,} ({ex_ops / n:.1%}) |")
    if outcome.mode == "exact" or (st["operands"] >= n and not leaves):
        mine = f"all {outcome.n_leaves}"
    elif leaves:
        mine = f"{leaves} of {outcome.n_leaves}"
    else:
        mine = "none: the points were picked by a payload filter"
    rows.append(f"| leaves scored | {mine} | all {outcome.n_leaves} |")
    ex_ms = f"{ex['ms']:.2f}" if ex else f"{st['ms']:.2f}"
    rows.append(f"| milliseconds (route + score) | {st['ms']:.2f} ({st.get('route_ms', 0):.2f} + "
                f"{st.get('score_ms', 0):.2f}) | {ex_ms} |")
    if ex:
        rows.append(f"| top-{outcome.k} shared with exact | {ex['overlap']} of {ex['of']} | — |")
    rows.append("")
    rows.append(f"Collection: {outcome.n_points:,} points. Encoding the query: {outcome.encode_ms:.0f} ms; "
                f"whole request in the server: {outcome.total_ms:.0f} ms.")
    if outcome.within:
        rows.append("Scoring is restricted to the subtree (leaf ∈ routed leaves AND synsets ∋ subtree).")
    return "\n".join(rows)


def explain_md(ex) -> str:
    h = ex.hit
    lines = [f"#### Hit {h.id}: {h.label or 'unlabelled'} (score {h.score:.3f})"]
    if h.source:
        lines.append(f"source: `{esc(h.source)}`")
    if not ex.path:
        lines.append("This point has no WordNet label.")
        return "\n\n".join(lines)
    lines.append(f"**Synset path:** {names(ex.path)} `{h.wnid}`")
    if ex.lca:
        q = hierarchy.label(ex.query_wnid)
        lines.append(f"**Lowest common ancestor with the query's class** ({q} `{ex.query_wnid}`): "
                     f"**{hierarchy.label(ex.lca)}** `{ex.lca}` — {ex.up_from_hit} step(s) up from the hit, "
                     f"{ex.up_from_query} up from the query's class; {ex.lca_count} images of this collection "
                     "lie under it.")
    if h.why and "weighted_distance" in h.why:
        lines.append(f"**Ranked by the mode:** distance {h.why['distance']:.4f} stretched to "
                     f"{h.why['weighted_distance']:.4f} by the WordNet height {h.why.get('lca_height')} of the LCA "
                     f"({esc(h.why.get('lca_label') or '—')}) with the query's class.")
    return "\n\n".join(lines)


def tree_html(root, open_depth: int = 6, max_nodes: int = 3000) -> str:
    """The collection's WordNet tree as nested ``<details>`` (expandable without JavaScript). Chains of
    single children with the same count (entity › physical entity › object …) are folded into one line."""
    if root is None:
        return "<p>The collection holds no labelled images yet.</p>"
    shown = [0]

    def node(n, depth: int) -> str:
        chain = [n]
        while len(chain[-1].children) == 1 and chain[-1].children[0].count == n.count:
            chain.append(chain[-1].children[0])
        last = chain[-1]
        shown[0] += len(chain)
        title = " › ".join(html.escape(c.label) for c in chain)
        head = (f'<span class="syn" data-wnid="{last.wnid}">{title}</span> <code>{last.wnid}</code> '
                f'<b>{last.count:,}</b>')
        if not last.children or shown[0] > max_nodes:
            return f"<li>{head}</li>"
        kids = "".join(node(c, depth + 1) for c in last.children)
        return (f"<li><details{' open' if depth < open_depth else ''}><summary>{head}</summary>"
                f"<ul>{kids}</ul></details></li>")

    return f'<ul class="wn-tree">{node(root, 0)}</ul>'


def subtree_choices(root) -> list[tuple[str, str]]:
    """Dropdown entries (indented label with count, wnid) in tree order."""
    return [(f"{'· ' * d}{n.label} ({n.count:,})", n.wnid) for d, n in hierarchy.flatten(root)]


def add_report_md(rows) -> str:
    if not rows:
        return "_No files given._"
    tally = Counter(r.status for r in rows)
    out = [", ".join(f"**{n} {s}**" for s, n in tally.items()), "", "| file | result | point id | reason |",
           "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {esc(r.name)} | {r.status} | {r.id if r.id is not None else ''} | {esc(r.reason)} |")
    if tally.get("added"):
        out += ["", "Added images are searchable now: search with one (or give its point id) on the Search tab."]
    return "\n".join(out)


def header_md(info: dict) -> str:
    return (f"## Hierarchical image search\n"
            f"Collection **{esc(info['collection'])}** ({info['backend']}): {info['points']:,} images, "
            f"k-means router k={info['k']} l={info['l']} with {info['leaves']} leaves, encoder "
            f"`{info['encoder']}`. Search by picture, see what it shows in WordNet and what the search cost.")
