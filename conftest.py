"""Test session settings shared by tests/ and the nbval tier over notebooks/."""

import os


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker more than the cores (at most 4). Much of the notebook tier waits on servers, load
    tests of a fixed duration and fresh processes, so a third worker on two cores finishes sooner; no test
    asserts a timing."""
    return max(2, min(4, (os.cpu_count() or 1) + 1))
