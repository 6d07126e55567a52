"""Shared fixtures: a CLI runner and small user-style model files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture
def run_cli(tmp_path):
    """Run `lab2prod ...` in a subprocess (as a user would); returns the CompletedProcess."""

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lab2prod.run.cli", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def torchserve():
    """Skip, with the reason, where TorchServe cannot run (no Java 17 or no torchserve)."""
    from lab2prod.core.errors import Lab2ProdError
    from lab2prod.servers.torchserve.server import check_requirements

    try:
        check_requirements()
    except Lab2ProdError as exc:
        pytest.skip(f"TorchServe cannot run here: {exc}")


@pytest.fixture
def model_files(tmp_path) -> dict[str, Path]:
    """A state_dict, a whole pickled model, a corrupt file, TorchScript and .pt2 files."""
    from lab2prod.models.reference import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN().eval()
    files = {name: tmp_path / name for name in
             ("state.pt", "whole.pt", "corrupt.pt", "scripted.pt", "exported.pt2")}
    torch.save(model.state_dict(), files["state.pt"])
    torch.save(model, files["whole.pt"])
    files["corrupt.pt"].write_bytes(b"not a torch file" * 8)
    torch.jit.save(torch.jit.script(model), str(files["scripted.pt"]))
    batch = {0: torch.export.Dim("batch", min=1, max=64)}
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes=(batch,))
    torch.export.save(program, str(files["exported.pt2"]))
    return files
