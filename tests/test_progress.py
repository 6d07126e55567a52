"""Progress inside a long cell: the library notes each step, and `lab2prod run` shows it beside its cell bar."""

import io
import os
import time
from pathlib import Path

from tqdm import tqdm

from lab2prod.core import progress
from lab2prod.run import runner


def test_steps_note_each_step_and_clear_it_at_the_end(tmp_path, monkeypatch):
    path = tmp_path / "progress"
    monkeypatch.setenv(progress.ENV, str(path))
    seen = [progress.read(path) for _ in progress.steps(["a", "b", "c"], "sensitivity", "layer")]
    assert seen == ["sensitivity 0/3 layers", "sensitivity 1/3 layers", "sensitivity 2/3 layers"]
    assert progress.read(path) == ""
    phases = progress.Counter(7, "TorchServe")
    phases.update(3)
    assert progress.read(path) == "TorchServe 3/7 phases"
    phases.close()
    monkeypatch.delenv(progress.ENV)
    path.unlink()
    assert list(progress.steps([1, 2], "quiet")) == [1, 2] and not path.exists()  # outside a run: no file


def test_the_run_shows_the_kernels_step_beside_its_cell_bar(tmp_path):
    bar = tqdm(total=3, desc="[1/2] 03_quantization", file=io.StringIO())
    other = tqdm(total=3, desc="latency", file=io.StringIO())  # a bar of the library's own: left alone
    try:
        with runner.relayed_progress(tmp_path, True):
            path = Path(os.environ[progress.ENV])
            assert path.parent == tmp_path
            path.write_text("sensitivity 4/37 layers")
            deadline = time.monotonic() + 5
            while "sensitivity 4/37 layers" not in (bar.postfix or "") and time.monotonic() < deadline:
                time.sleep(0.1)
        assert "sensitivity 4/37 layers" in (bar.postfix or "") and not other.postfix
        assert not path.exists() and progress.ENV not in os.environ
    finally:
        bar.close()
        other.close()
