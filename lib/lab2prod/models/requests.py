"""What clients send for a model: its held-out examples as request bodies, encoded by the model's kind."""

from __future__ import annotations

from lab2prod.kinds.codec import kind_of

__all__ = ["request_bodies"]


def request_bodies(loaded, count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """(name, body) of what clients send for this model: held-out images as PNG bytes (the user's
    images with --data), texts as JSON (the user's texts, or the bundled sample), tensor items
    as JSON of named arrays, or what another registered kind sends."""
    return kind_of(loaded.kind).bodies(loaded, count, seed)
