"""Execute notebooks/*.ipynb in place on their defaults (CPU), so the committed outputs are real.

    python tools/execute_notebooks.py [NAME ...]

Each notebook is first synced with its paired .py (jupytext), so an edit made to either side is
what runs. Execution timestamps are stripped so a re-run only changes what the run computed.
"""

import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from lab2prod.run.runner import private_kernel

ROOT = Path(__file__).resolve().parents[1]


def execute(path: Path) -> None:
    subprocess.run([sys.executable, "-m", "jupytext", "--sync", "--quiet", str(path)], check=True)
    notebook = nbformat.read(str(path), as_version=4)
    with private_kernel() as kernel:
        NotebookClient(notebook, km=kernel, kernel_name="python3", timeout=900,
                       resources={"metadata": {"path": str(ROOT)}}).execute()
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(notebook, str(path))
    print(f"executed {path.relative_to(ROOT)}")


if __name__ == "__main__":
    names = sys.argv[1:]
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if not names or path.stem in names or path.name in names:
            execute(path)
