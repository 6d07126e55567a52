"""pytest across the repository. The notebooks share their run folder (a later one reads what an earlier one
wrote) and nbval runs a notebook's cells in one kernel, so with pytest-xdist they go, in order, to one worker,
and first, being the longest run; every other test is scheduled on its own, the files whose tests run a whole
study or start a server first (longest first, so no long test starts last and leaves a worker idle)."""

from __future__ import annotations

import pytest

# test files whose tests take a minute or more each, roughly longest first (measured on 2 cores)
LONG = ("tests/test_cli_text.py", "tests/test_cli_serving.py", "tests/test_cli_your_models.py",
        "tests/test_rayserve.py", "tests/test_photos.py", "tests/test_package.py", "tests/test_gpu_check.py",
        "tests/test_canary.py", "tests/test_litserve.py", "tests/test_jupyterlab_browser.py")


def _notebook(nodeid: str) -> bool:
    return nodeid.startswith("notebooks/")


def _order(item) -> tuple[int, int]:
    path = item.nodeid.split("::")[0]
    if _notebook(item.nodeid):
        return (0, 0)
    return (1, LONG.index(path)) if path in LONG else (2, 0)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    items.sort(key=_order)  # stable: the order within each group is kept


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksTogether(LoadScopeScheduling):
        """One scope for every notebook cell; one scope per test otherwise."""

        def _split_scope(self, nodeid: str) -> str:
            return "notebooks" if _notebook(nodeid) else nodeid

    return NotebooksTogether(config, log)
