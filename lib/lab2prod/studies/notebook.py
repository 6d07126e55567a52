"""What the notebooks call to set up, show tables and draw plots, so the notebooks stay thin."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.results import gate_verdict, resolve_run_dir
from lab2prod.models.load import load_model

__all__ = [
    "Setup",
    "setup",
    "quiet_deprecations",
    "resolve_run_dir",
    "resolve_devices",
    "gates_frame",
]


def quiet_deprecations() -> None:
    """Hide torch.jit / torch.ao deprecation notices: they are known (the notebooks say which path
    is the old one) and they would make executed outputs differ from run to run."""
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"torch(\..*)?")
    warnings.filterwarnings("ignore", message=r".*(TorchScript|torch\.jit|torch\.ao).*deprecat.*")


class Setup(NamedTuple):
    run_dir: Path
    loaded: object  # lab2prod.models.load.LoadedModel, or None when no model was named
    devices: list[str]


def setup(run_dir: str, model: str = "", weights: str = "", example_inputs: str = "", seed: int = 0,
          device: str = "cpu", data: str = "", lab_transform: str = "", task: str = "auto") -> Setup:
    """What every notebook does first, in one call: hide the known deprecation notices, resolve
    the run folder (outputs/interactive on the defaults), the devices, and load the model (with
    the user's data, lab transform and task when given)."""

    quiet_deprecations()
    folder = resolve_run_dir(run_dir)
    devices = resolve_devices(device)
    loaded = load_model(model, weights, example_inputs, seed, data=data, lab_transform=lab_transform, task=task) \
        if model else None
    return Setup(folder, loaded, devices)


def resolve_devices(device: str) -> list[str]:
    """Devices to reload on: always cpu (map_location='cpu'), plus cuda when asked or auto-found."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise Lab2ProdError(f"device {device!r} is not known; use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise Lab2ProdError("device 'cuda' was asked for but torch sees no CUDA GPU; use cpu or auto")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return ["cpu", "cuda"]
    return ["cpu"]






def gates_frame(gates: list[dict]) -> pd.DataFrame:
    """Gates with a PASS/FAIL column, failures first; the numeric value is left out so the
    table is stable enough to check with nbval."""
    frame = pd.DataFrame(gates)
    frame.insert(0, "verdict", [gate_verdict(g) for g in gates])
    frame = frame.drop(columns=["passed"])
    order = {"FAIL": 0, "SKIP": 1, "PASS": 2}
    frame = frame.sort_values("verdict", key=lambda v: v.map(order), kind="stable")
    return frame.drop(columns=["value"]).set_index("name")


















































