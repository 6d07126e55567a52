"""pytest across the repository: the notebooks share their run folder (a later one reads what an earlier one
wrote), so with pytest-xdist they run as one group, in order, on one worker; the unit tests and the CLI tests
spread over the others."""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith("notebooks/"):
            item.add_marker(pytest.mark.xdist_group("notebooks"))
