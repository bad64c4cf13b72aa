"""The Gradio web demo: search a collection by image, see what the query shows in WordNet and what the
search cost, search within a WordNet subtree, browse the hierarchy, add images.

``service`` holds the non-UI logic (one store, router and encoder per process), ``views`` formats its
results, ``hierarchy`` reads WordNet for people, ``images`` gets stored pictures back safely,
``examples`` picks example queries, ``app`` builds and serves the page, ``browser`` drives it in
headless Chromium (tests, screenshot, measurements). Start it with ``hsearch demo`` or ``make demo``.
"""
