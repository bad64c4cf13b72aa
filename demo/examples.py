"""Example queries a visitor can click: real photos that ship with scikit-image (BSD/CC0, offline) and a
few of the collection's own images, one per label, so both "out of collection" and "in collection"
searches are one click away."""
from __future__ import annotations

from dataclasses import dataclass

#: scikit-image photos: (function in skimage.data, caption). All ship inside the package.
PHOTOS = [("chelsea", "cat photo"), ("coffee", "coffee cup photo"), ("astronaut", "astronaut photo"),
          ("rocket", "rocket photo")]


@dataclass
class Example:
    caption: str
    image: object  # PIL image
    point_id: int | None = None  # a stored point: searched by its stored vector


def photo_examples() -> list[Example]:
    import skimage.data
    from PIL import Image

    out = []
    for name, caption in PHOTOS:
        try:
            out.append(Example(caption, Image.fromarray(getattr(skimage.data, name)()).convert("RGB")))
        except Exception:  # a photo this scikit-image version lacks or would download: leave it out
            continue
    return out


def collection_examples(store, pictures, n: int = 4, scan: int = 2048) -> list[Example]:
    """One point for each of the first ``n`` labels met in the first ``scan`` points (scroll order is by
    id, so the choice is stable across restarts), only points whose picture can be shown."""
    out, seen = [], set()
    for page in store.scroll(batch_size=scan, with_vectors=False):
        for r in page:
            wnid = r.payload.get("wnid")
            if wnid in seen:
                continue
            img = pictures.of(r.payload)
            if img is None:
                continue
            seen.add(wnid)
            out.append(Example(f"{r.payload.get('label') or 'unlabelled'} (id {r.id})", img, r.id))
            if len(out) >= n:
                return out
        break
    return out
