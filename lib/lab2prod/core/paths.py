"""Project-root paths, so notebooks never depend on the folder the kernel started in."""

from pathlib import Path

__all__ = ["PACKAGE_DIR", "PROJECT_ROOT", "NOTEBOOKS_DIR", "OUTPUTS_DIR", "CACHE_DIR", "DATA_DIR"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # lib/lab2prod
PROJECT_ROOT = PACKAGE_DIR.parents[1]
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
OUTPUTS_DIR = PROJECT_ROOT / "outputs"
CACHE_DIR = OUTPUTS_DIR / "cache"
DATA_DIR = PROJECT_ROOT / "data"
