import hashlib

import matplotlib
import pytest

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.files import atomic_write, sha256_file
from lab2prod.core.results import gate
from lab2prod.studies.export import ComparisonRow, plot_max_abs_diff
from lab2prod.studies.notebook import gates_frame, resolve_devices

matplotlib.use("Agg")


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 3_000_000)
    assert sha256_file(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.json"

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert list(tmp_path.iterdir()) == []
    atomic_write(target, lambda tmp: tmp.write_text("whole"))
    assert target.read_text() == "whole" and len(list(tmp_path.iterdir())) == 1


def test_atomic_write_gives_the_file_the_usual_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "report.html", lambda tmp: tmp.write_text("<html>"))
    finally:
        os.umask(mask)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_gates_frame_puts_failures_first():
    frame = gates_frame([gate("parity:a", True, 0.0, 1e-4, "ok"), gate("parity:b", False, 1.0, 1e-4, "far")])
    assert list(frame.index) == ["parity:b", "parity:a"]
    assert list(frame["verdict"]) == ["FAIL", "PASS"] and "value" not in frame


def test_diff_plot_marks_failures_and_tolerance():
    rows = [ComparisonRow("torchscript_trace", 4, "held-out", "cpu", True, 0.0, 0.0, 1.0),
            ComparisonRow("torchscript_trace", 4, "negated", "cpu", True, 0.5, 0.1, 0.5),
            ComparisonRow("torch_export", 0, "-", "cpu", False, error="not produced")]
    fig = plot_max_abs_diff(rows, atol=1e-4)
    ax = fig.axes[0]
    colours = [tuple(round(c, 3) for c in bar.get_facecolor()[:3]) for bar in ax.patches if bar.get_height() > 0]
    red = tuple(round(c, 3) for c in matplotlib.colors.to_rgb("#d62728"))
    assert colours.count(red) == 1  # the negated case is over atol
    assert any(line.get_ydata()[0] == 1e-4 for line in ax.get_lines())


def test_resolve_devices():
    assert resolve_devices("cpu") == ["cpu"]
    with pytest.raises(Lab2ProdError, match="device 'tpu' is not known"):
        resolve_devices("tpu")
