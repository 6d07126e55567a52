"""pytest across the repository. The notebooks share their run folder (a later one reads what an earlier one
wrote) and nbval runs a notebook's cells in one kernel, so with pytest-xdist they go, in order, to one worker,
and first, being the longest run; every other test is scheduled on its own."""

from __future__ import annotations

import pytest


def _notebook(nodeid: str) -> bool:
    return nodeid.startswith("notebooks/")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    items[:] = [i for i in items if _notebook(i.nodeid)] + [i for i in items if not _notebook(i.nodeid)]


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksTogether(LoadScopeScheduling):
        """One scope for every notebook cell; one scope per test otherwise."""

        def _split_scope(self, nodeid: str) -> str:
            return "notebooks" if _notebook(nodeid) else nodeid

    return NotebooksTogether(config, log)
