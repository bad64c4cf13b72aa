"""The numba hierarchical k-means router (hkm-tree-retrieval): build, route, score, maintain."""
from plugin.router.modes import MODES, register_mode
from plugin.router.router import Router, SearchResult

__all__ = ["MODES", "Router", "SearchResult", "register_mode"]
