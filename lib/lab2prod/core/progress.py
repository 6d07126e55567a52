"""Progress inside a long cell.

`steps` is tqdm over the steps of a long loop (shown where the caller asks, as in a terminal or in
JupyterLab), and it also writes the current step, "sensitivity 12/37 layers", to the file that the
LAB2PROD_PROGRESS environment variable names. `lab2prod run` sets it for the notebook's kernel and shows
that line beside its per-cell bar, so a ten-minute cell says where it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["ENV", "steps", "note", "read", "Counter"]

ENV = "LAB2PROD_PROGRESS"


def note(text: str) -> None:
    """Write `text` as the current step where LAB2PROD_PROGRESS names a file ("" clears it)."""
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        Path(path).write_text(text)
    except OSError:  # progress is a courtesy: never the reason a study fails
        pass


def read(path: Path) -> str:
    """The current step written to `path`, "" when there is none."""
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def steps(items: Iterable, desc: str, unit: str = "step", show: bool = False) -> Iterator:
    """Each of `items`, with a tqdm bar when `show`, and "desc done/total units" noted before each one."""
    from tqdm import tqdm

    items = list(items)
    try:
        for done, item in enumerate(tqdm(items, desc=desc, unit=unit, disable=not show)):
            note(f"{desc} {done}/{len(items)} {unit}s")
            yield item
    finally:
        note("")


class Counter:
    """A bar of `total` phases advanced by hand (`update`), each count noted as `steps` notes it."""

    def __init__(self, total: int, desc: str, unit: str = "phase", show: bool = False):
        from tqdm import tqdm

        self.total, self.desc, self.unit, self.count = total, desc, unit, 0
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not show)
        note(f"{desc} 0/{total} {unit}s")

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.count += n
        note(f"{self.desc} {self.count}/{self.total} {self.unit}s")

    def close(self) -> None:
        self.bar.close()
        note("")
