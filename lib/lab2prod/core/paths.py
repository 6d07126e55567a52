"""Where lab2prod reads its notebooks and writes its outputs and cache, wherever it is installed.

- Notebooks ship inside the package (`lab2prod/notebooks`, found with `importlib.resources`); in a
  checkout that folder is a link to the repository's `notebooks/`.
- Outputs go to `outputs/` in the project folder: the nearest folder, from the current one up,
  that holds a `lab2prod.yaml` or a `pyproject.toml`, else the current folder. `LAB2PROD_OUTPUTS`
  overrides it, and `lab2prod run --out` overrides both.
- Reference models are trained once per machine into the user cache folder (`platformdirs`, which
  follows `$XDG_CACHE_HOME`); `LAB2PROD_CACHE` overrides it.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

__all__ = ["PACKAGE_DIR", "NOTEBOOKS_DIR", "OUTPUTS_DIR", "CACHE_DIR", "PROJECT_MARKERS", "project_dir",
           "outputs_dir", "cache_dir"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = Path(str(files("lab2prod") / "notebooks"))
PROJECT_MARKERS = ("lab2prod.yaml", "pyproject.toml")


def project_dir(start: str | Path | None = None) -> Path:
    """The nearest folder from `start` (default: the current one) up that holds a project marker,
    else `start` itself: notebooks opened from a subfolder write beside the project's other runs."""
    here = Path(start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        if any((folder / marker).is_file() for marker in PROJECT_MARKERS):
            return folder
    return here


def outputs_dir(start: str | Path | None = None) -> Path:
    """`$LAB2PROD_OUTPUTS`, else `outputs/` in the project folder."""
    given = os.environ.get("LAB2PROD_OUTPUTS")
    return Path(given).expanduser().absolute() if given else project_dir(start) / "outputs"


def cache_dir() -> Path:
    """`$LAB2PROD_CACHE`, else the user cache folder of this machine (e.g. ~/.cache/lab2prod)."""
    given = os.environ.get("LAB2PROD_CACHE")
    if given:
        return Path(given).expanduser().absolute()
    import platformdirs

    return platformdirs.user_cache_path("lab2prod")


OUTPUTS_DIR = outputs_dir()
CACHE_DIR = cache_dir()
