"""What a Python-hosting server (Ray Serve, LitServe) can serve from the model folder, and which of those files
this run verified. TorchScript is the old path (deprecated upstream) that every server loads; the export
notebook's ONNX file, run in ONNX Runtime, is served only when its fresh-process reload passed `parity:onnx`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from lab2prod.core.inputs import call, first_tensor
from lab2prod.models.onnx_rt import OrtModule

__all__ = ["ARTIFACTS", "ARTIFACT_FILES", "load_artifact", "verified_artifacts", "copy_artifact"]

ARTIFACTS = ("torchscript", "onnx")
ARTIFACT_FILES = {"torchscript": "model.pt", "onnx": "*.onnx"}
_FORMATS = {"onnx": "onnx"}  # artifact -> the export notebook's format whose parity gate must have passed


def load_artifact(model_dir: Path, artifact: str = "torchscript", threads: int = 1) -> Callable:
    """A callable from the model's inputs (a tensor, tuple or dict) to its first output, running the folder's
    `artifact`: TorchScript in torch, or the ONNX file in an ONNX Runtime session with `threads` intra-op
    threads (0: torch's current count)."""
    if artifact not in ARTIFACTS:
        raise ValueError(f"artifact {artifact!r} is not servable; use one of {', '.join(ARTIFACTS)}")
    if artifact == "onnx":
        path = next(Path(model_dir).glob("*.onnx"))  # the export notebook's file, under its own name
        module = OrtModule(path, threads=int(threads) or torch.get_num_threads())
    else:
        module = torch.jit.load(str(Path(model_dir) / ARTIFACT_FILES[artifact]), map_location="cpu").eval()
    return lambda inputs: first_tensor(call(module, inputs))


def verified_artifacts(run_dir: Path) -> list[str]:
    """The artifacts this run may serve: TorchScript always (the export notebook's file, else a trace made for
    the server), and each other one whose export format is in the manifest and passed its parity gate."""
    run_dir = Path(run_dir)
    manifest, results = run_dir / "manifest.json", run_dir / "results" / "export.json"
    if not manifest.exists() or not results.exists():
        return ["torchscript"]
    files = {entry["format"]: run_dir / entry["file"] for entry in json.loads(manifest.read_text())}
    passed = {g["name"] for g in json.loads(results.read_text())["gates"] if g["passed"]}
    return ["torchscript"] + [artifact for artifact, fmt in _FORMATS.items()
                              if fmt in files and files[fmt].exists() and f"parity:{fmt}" in passed]


def copy_artifact(run_dir: Path, artifact: str, folder: Path) -> None:
    """Copy a verified artifact of the run into the model folder (the ONNX file with its external data)."""
    if artifact == "onnx":
        source = next(e for e in json.loads((Path(run_dir) / "manifest.json").read_text()) if e["format"] == "onnx")
        onnx = Path(run_dir) / source["file"]
        for path in onnx.parent.glob(onnx.name + "*"):  # model.onnx and its external data, names kept
            shutil.copyfile(path, Path(folder) / path.name)
