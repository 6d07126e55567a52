"""Notebooks are the source: each .ipynb is paired with a jupytext percent .py that must say the same,
and an edit made on either side reaches the other with the outputs kept."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupytext.config import load_jupytext_config

from lab2prod.core.paths import NOTEBOOKS_DIR
from lab2prod.core.registry import STUDIES

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def as_percent(path: Path) -> str:
    """The .py text jupytext writes for this notebook under the project's configuration."""
    config = load_jupytext_config(str(path))
    return jupytext.writes(jupytext.read(path), fmt="py:percent", config=config)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_is_in_sync_with_its_percent_source(path):
    source = path.with_suffix(".py")
    assert source.exists(), f"{source.name} is missing: run `jupytext --sync {path}`"
    assert as_percent(path) == source.read_text(encoding="utf-8"), (
        f"{path.name} and {source.name} differ: edit one, then `jupytext --sync notebooks/*.ipynb`")


def test_every_registered_study_has_a_notebook_pair_and_no_generator_remains():
    for study in STUDIES:
        assert study.path.exists() and study.path.with_suffix(".py").exists(), study.notebook
    assert not (PROJECT_ROOT / "tools" / "make_notebooks.py").exists()


def _sync(path: Path) -> None:
    subprocess.run([sys.executable, "-m", "jupytext", "--sync", str(path)], check=True, capture_output=True)


def test_an_edit_to_the_ipynb_reaches_the_py_and_back_with_outputs_kept(tmp_path):
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")  # the pairing configuration
    folder = tmp_path / "notebooks"
    folder.mkdir()
    ipynb, py = folder / "01_export.ipynb", folder / "01_export.py"
    shutil.copy(NOTEBOOKS_DIR / ipynb.name, ipynb)
    shutil.copy(NOTEBOOKS_DIR / py.name, py)
    outputs_before = [c.get("outputs") for c in nbformat.read(ipynb, as_version=4).cells]

    # JupyterLab saves through nbformat: change a markdown cell and a code cell there.
    notebook = nbformat.read(ipynb, as_version=4)
    notebook.cells[0].source += "\n\nEdited in JupyterLab."
    code = next(c for c in notebook.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", []))
    code.source += "\nprint('edited in the ipynb')"
    nbformat.write(notebook, ipynb)
    os.utime(ipynb, (py.stat().st_mtime + 10,) * 2)
    _sync(ipynb)
    text = py.read_text(encoding="utf-8")
    assert "# Edited in JupyterLab." in text and "print('edited in the ipynb')" in text

    # Back: an edit to the .py (a reviewer's change) reaches the .ipynb, outputs kept.
    py.write_text(text.replace("print('edited in the ipynb')", "print('edited in the py')"), encoding="utf-8")
    os.utime(py, (ipynb.stat().st_mtime + 10,) * 2)
    _sync(py)
    paired = nbformat.read(ipynb, as_version=4)
    assert any("print('edited in the py')" in c.source for c in paired.cells)
    assert not any("edited in the ipynb" in c.source for c in paired.cells)
    assert [c.get("outputs") for c in paired.cells] == outputs_before
    assert [c.get("id") for c in paired.cells] == [c.get("id") for c in notebook.cells]  # diffs stay small
