"""Which lab2prod produced a run: its version and, where it came from a git checkout, the commit."""

from __future__ import annotations

import json
import subprocess
from functools import cache

from lab2prod import __version__
from lab2prod.core.paths import PACKAGE_DIR

__all__ = ["provenance", "version_line"]

BUILD_FILE = PACKAGE_DIR / "_build.json"  # written into the wheel by setup.py: the commit it was built from


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@cache
def provenance() -> dict:
    """{"version", "commit", "dirty", "source"}: the commit of the checkout this package runs from (an
    editable install), else the one its wheel was built from, else None."""
    if (PACKAGE_DIR.parent.parent / ".git").exists():  # lib/lab2prod in this repository's checkout
        status = _git("status", "--porcelain", "--untracked-files=no")
        return {"version": __version__, "commit": _git("rev-parse", "HEAD"), "dirty": bool(status),
                "source": "checkout"}
    if BUILD_FILE.is_file():
        built = json.loads(BUILD_FILE.read_text())
        return {"version": __version__, "commit": built.get("commit"), "dirty": built.get("dirty"),
                "source": "wheel"}
    return {"version": __version__, "commit": None, "dirty": None, "source": "package"}


def version_line() -> str:
    """`lab2prod 0.1.0 (commit 1a2b3c4d5e6f, from a checkout)`; the commit is left out where none is known."""
    info = provenance()
    if not info["commit"]:
        return f"lab2prod {info['version']}"
    dirty = ", with uncommitted changes" if info["dirty"] else ""
    return f"lab2prod {info['version']} (commit {info['commit'][:12]}, from a {info['source']}{dirty})"
