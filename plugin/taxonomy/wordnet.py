"""WordNet 3.0 offline for nltk: find the database files, lay them out as nltk wants, load once.

``nltk.download()`` cannot work without internet. Debian's ``wordnet-base`` installs the Princeton
3.0 files into ``/usr/share/wordnet`` (noun offsets identical to 3.0, so ImageNet wnids resolve), but
nltk also needs a ``lexnames`` file no package ships (we carry it in ``data/lexnames``) and, from nltk
3.10 on, reads only ``<root>/corpora/wordnet`` folders on ``nltk.data.path``. We build that folder (a
~40 MB copy) under ``$HSEARCH_HOME/nltk_data`` (or point ``$HSEARCH_WORDNET_DIR`` at another copy).
"""
from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

from plugin import config
from plugin.errors import WordNetNotFoundError

SEARCH_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/share/wordnet/dict")
NEEDED = ("data.noun", "index.noun", "noun.exc", "data.verb", "index.verb", "data.adj", "index.adj",
          "data.adv", "index.adv", "adj.exc", "adv.exc", "verb.exc", "index.sense")
LEXNAMES = Path(__file__).with_name("data") / "lexnames"


def find_wordnet_files() -> Path:
    candidates = [os.environ.get("HSEARCH_WORDNET_DIR")] + list(SEARCH_DIRS)
    for c in candidates:
        if c and (Path(c) / "data.noun").is_file():
            return Path(c)
    raise WordNetNotFoundError(
        "WordNet 3.0 files not found (looked in $HSEARCH_WORDNET_DIR and " + ", ".join(SEARCH_DIRS) +
        "). On Debian/Ubuntu: sudo apt-get install wordnet-base wordnet-sense-index")


def prepare_nltk_wordnet(root: Path | None = None) -> Path:
    """Create ``<root>/corpora/wordnet`` (symlinks + lexnames); idempotent. Returns ``root``."""
    src = find_wordnet_files()
    root = Path(root) if root else config.home() / "nltk_data"
    dst = root / "corpora" / "wordnet"
    dst.mkdir(parents=True, exist_ok=True)
    for name in NEEDED + ("cntlist.rev",):
        s, d = src / name, dst / name
        if s.is_file() and (d.is_symlink() or not d.exists() or d.stat().st_size != s.stat().st_size):
            d.unlink(missing_ok=True)
            shutil.copyfile(s, d)  # copies, not symlinks: nltk refuses paths that leave its root
    if not (dst / "lexnames").exists():
        shutil.copyfile(LEXNAMES, dst / "lexnames")
    return root


@functools.lru_cache(maxsize=1)
def wordnet():
    """The nltk WordNet corpus reader, loaded from local files (2-3 s the first time)."""
    import nltk

    root = prepare_nltk_wordnet()
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    from nltk.corpus import wordnet as wn

    try:
        wn.ensure_loaded()
    except LookupError as e:
        raise WordNetNotFoundError(f"nltk could not load WordNet from {root}: {e}") from None
    return wn
