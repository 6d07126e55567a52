import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib
import pytest

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.files import SCRATCH_ENV, atomic_write, scratch_dir, scratch_root, sha256_file
from lab2prod.core.results import gate
from lab2prod.run.runner import private_kernel
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


_SCRATCH_CHILD = """
import os, signal, sys
from lab2prod.core.files import scratch_dir
folder = scratch_dir("lab2prod-onnx-")
(folder / "model.onnx").write_bytes(b"x" * 1000)
print(folder, flush=True)
if sys.argv[1] == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _scratch_child(how: str, env: dict | None = None) -> Path:
    env = {k: v for k, v in (env or os.environ).items() if k != SCRATCH_ENV} if env is None else env
    proc = subprocess.run([sys.executable, "-c", _SCRATCH_CHILD, how], capture_output=True, text=True, env=env,
                          timeout=120)
    return Path(proc.stdout.strip())


def test_a_process_removes_its_scratch_at_exit_and_a_killed_ones_is_removed_by_the_next(monkeypatch):
    monkeypatch.delenv(SCRATCH_ENV, raising=False)
    exited = _scratch_child("exits")
    assert exited.name.startswith("lab2prod-onnx-") and not exited.parent.exists()

    killed = _scratch_child("killed")  # SIGKILL, as nbval and `lab2prod run` stop a notebook's kernel
    assert killed.name.startswith("lab2prod-onnx-") and killed.parent.name.startswith("lab2prod-scratch-")
    _scratch_child("exits")  # the next lab2prod process to make a scratch folder removes the orphan
    assert not killed.parent.exists()


def test_a_live_process_keeps_its_scratch_and_a_given_folder_is_used(tmp_path, monkeypatch):
    monkeypatch.delenv(SCRATCH_ENV, raising=False)
    mine = scratch_dir("lab2prod-test-")
    assert mine.parent == scratch_root() and mine.parent.parent == Path(tempfile.gettempdir())
    _scratch_child("exits")  # another process's sweep leaves a running process's folder alone
    assert mine.is_dir()
    mine.rmdir()

    child = _scratch_child("killed", env={**os.environ, SCRATCH_ENV: str(tmp_path / "given")})
    assert child.parent == tmp_path / "given"


def test_a_kernel_of_the_runner_makes_its_scratch_in_the_folder_the_runner_removes(monkeypatch):
    monkeypatch.delenv(SCRATCH_ENV, raising=False)
    with private_kernel():
        given = Path(os.environ[SCRATCH_ENV])
        assert given.parent.name.startswith("lab2prod-kernel-")
        child = _scratch_child("killed", env=dict(os.environ))
        assert child.parent == given and child.is_dir()
    assert not given.parent.exists() and SCRATCH_ENV not in os.environ


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
