"""Project-root paths, so notebooks never depend on the folder the kernel started in."""

from pathlib import Path

__all__ = ["PROJECT_ROOT", "NOTEBOOKS_DIR", "OUTPUTS_DIR", "CACHE_DIR", "DATA_DIR"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
OUTPUTS_DIR = PROJECT_ROOT / "outputs"
CACHE_DIR = OUTPUTS_DIR / "cache"
DATA_DIR = PROJECT_ROOT / "data"
