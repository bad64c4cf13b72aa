"""One exception family for everything the plugin refuses, each with a message a user can act on.

Every error derives from :class:`HSearchError` so callers (the CLI, the demo) can catch the family
and print ``str(err)`` without a traceback.
"""
from __future__ import annotations


class HSearchError(Exception):
    """Base class of every error raised on purpose by the plugin."""


class BadVectorError(HSearchError, ValueError):
    """A vector has the wrong shape/dimension or holds NaN/inf."""


class CollectionNotFoundError(HSearchError, LookupError):
    """The named collection (store directory or server collection) does not exist."""


class CollectionExistsError(HSearchError):
    """Creating a collection that already exists with an incompatible configuration."""


class StoreLockedError(HSearchError):
    """An embedded store directory is already opened by another process or object."""


class EmptyCollectionError(HSearchError):
    """A search or build on a collection that holds no points."""


class UnknownSynsetError(HSearchError, KeyError):
    """One or more WordNet ids (e.g. ``n02084071``) are malformed or not noun synsets of WordNet 3.0."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WordNetNotFoundError(HSearchError):
    """The WordNet 3.0 database files are not installed."""


class UnknownEncoderError(HSearchError, KeyError):
    """``create_encoder`` was given a name that is not in the registry."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class WeightsNotFoundError(HSearchError):
    """Model weights could not be found locally or downloaded."""


class BadImageError(HSearchError):
    """An image file is corrupt, truncated, not an image, or too large."""


class RouterError(HSearchError):
    """The router is unbuilt, stale, or was given invalid parameters."""
