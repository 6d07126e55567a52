"""Where a served request's time goes: the phases each server's handler reports in a `Server-Timing` response
header (W3C Server Timing: `codec;dur=0.41, queue;dur=1.2, inference;dur=2.3, postprocess;dur=0.05`, in ms).

- `codec`: lab2prod's request codec, one object: decode, the guard's checks before and after, and the lab's
  preprocessing (the guard wraps the transform, so they are timed together);
- `queue`: from the request reaching the model's process to its batch starting (batch filling and waiting; a
  server whose handler cannot see its own queue, TorchServe's, leaves it out);
- `inference`: the batch through the served artifact, shared by every request of the batch;
- `postprocess`: the answers (softmax, top-1, JSON-ready lists).

What the client saw minus their sum is the rest of the path: the HTTP server, the proxy, the network and
the client itself. One more entry, `batch;desc=4`, says how many requests the server's batch held: how full the
configured batches really were, read from the server rather than assumed; `version;desc=2.0` says which version
of the model answered (the resilience study's update watches it change).
"""

from __future__ import annotations

import time

__all__ = ["HEADER", "PHASES", "BATCH", "VERSION", "header_value", "parse", "described", "batch_size", "version_of",
           "Stopwatch"]

HEADER = "Server-Timing"
PHASES = ("codec", "queue", "inference", "postprocess")
BATCH = "batch"
VERSION = "version"


def header_value(phases: dict[str, float], batch: int | None = None, version: str | None = None) -> str:
    """The Server-Timing header value of {phase: milliseconds}, the size of the request's batch and the version of
    the model that answered."""
    entries = [f"{name};dur={float(ms):.3f}" for name, ms in phases.items()]
    entries += [f"{BATCH};desc={int(batch)}"] if batch is not None else []
    entries += [f'{VERSION};desc="{version}"'] if version else []
    return ", ".join(entries)


def described(value: str | None, name: str) -> str | None:
    """The `desc` of entry `name` of a Server-Timing header value (`batch;desc=4` gives "4"), or None."""
    for entry in (value or "").split(","):
        entry_name, *params = [part.strip() for part in entry.split(";")]
        for param in params:
            key, _, text = param.partition("=")
            if entry_name == name and key.strip() == "desc":
                return text.strip().strip('"')
    return None


def batch_size(value: str | None) -> int | None:
    """The `batch;desc=N` entry of a Server-Timing header value, or None."""
    text = described(value, BATCH)
    return int(text) if text and text.isdigit() else None


def version_of(value: str | None) -> str | None:
    """The `version;desc=...` entry of a Server-Timing header value: the model version that answered, or None."""
    return described(value, VERSION)


def parse(value: str | None) -> dict[str, float]:
    """{phase: milliseconds} of a Server-Timing header value; entries without a duration are left out."""
    phases = {}
    for entry in (value or "").split(","):
        name, *params = [part.strip() for part in entry.split(";")]
        for param in params:
            key, _, number = param.partition("=")
            if name and key == "dur":
                try:
                    phases[name] = float(number)
                except ValueError:
                    pass
    return phases


class Stopwatch:
    """Milliseconds since the last `lap()` (or since it was made)."""

    def __init__(self):
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = (now - self.last) * 1000, now
        return elapsed
