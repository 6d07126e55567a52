"""What a Python-hosting server (Ray Serve, LitServe) can serve from the model folder, and which of those files
this run verified. TorchScript is the old path (deprecated upstream) that every server loads. The export
notebook's AOTInductor package (native code for this CPU) and ONNX file (run in ONNX Runtime) are served only when
their fresh-process reload passed `parity:aoti` / `parity:onnx`; the quantization notebook's recommended file only
when it is of the same model and passed `quantization:accuracy` and `quantization:export`."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from lab2prod.core.inputs import call, first_tensor, load_aoti
from lab2prod.models.onnx_rt import OrtModule

__all__ = ["ARTIFACTS", "ARTIFACT_FILES", "ARTIFACT_TITLES", "Served", "load_artifact", "verified_artifacts",
           "copy_artifact"]

ARTIFACTS = ("torchscript", "aoti", "onnx", "quantized")
ARTIFACT_FILES = {"torchscript": "model.pt", "aoti": "model.aoti.pt2", "onnx": "*.onnx", "quantized": "quantized_*"}
ARTIFACT_TITLES = {"torchscript": "TorchScript", "aoti": "AOTInductor", "onnx": "ONNX Runtime",
                   "quantized": "quantized"}
_FORMATS = {"aoti": "aoti", "onnx": "onnx"}  # artifact -> the export notebook's format whose parity gate must pass


def _file(model_dir: Path, artifact: str) -> Path:
    """The artifact's file in the model folder (the quantized file is never taken for the export's ONNX)."""
    found = sorted(p for p in Path(model_dir).glob(ARTIFACT_FILES[artifact])
                   if artifact == "quantized" or not p.name.startswith("quantized_"))
    if not found:
        raise FileNotFoundError(f"no {artifact} file ({ARTIFACT_FILES[artifact]}) in {model_dir}")
    return found[0]


class Served:
    """A loaded artifact called with the model's inputs (a tensor, tuple or dict); returns its first output.
    `module` is what was loaded, callable like the model."""

    def __init__(self, module: Callable, artifact: str):
        self.module, self.artifact = module, artifact

    def __call__(self, inputs):
        return first_tensor(call(self.module, inputs))


def load_artifact(model_dir: Path, artifact: str = "torchscript", threads: int = 1) -> Served:
    """A callable from the model's inputs (a tensor, tuple or dict) to its first output, running the folder's
    `artifact` (`model_dir` may also be the served TorchScript file itself): TorchScript in torch, the AOTInductor
    package in its C++ runner, the ONNX file in an ONNX Runtime session with `threads` intra-op threads (0:
    torch's current count), or the recommended quantized file (ONNX, TorchScript or torch.export, by its
    suffix)."""
    if artifact not in ARTIFACTS:
        raise ValueError(f"artifact {artifact!r} is not servable; use one of {', '.join(ARTIFACTS)}")
    model_dir = Path(model_dir)
    if model_dir.is_file():  # a served file itself (TorchServe's TorchScript); the other artifacts beside it
        path = model_dir if artifact == "torchscript" else _file(model_dir.parent, artifact)
    else:
        path = _file(model_dir, artifact)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.suffix == ".onnx":  # the export notebook's file (or the int8 one), under its own name
            module = OrtModule(path, threads=int(threads) or torch.get_num_threads())
        elif artifact == "aoti":
            module = load_aoti(path)  # called with contiguous inputs: it does not check strides
        elif path.suffix == ".pt2":
            module = torch.export.load(str(path)).module()
        else:
            module = torch.jit.load(str(path), map_location="cpu").eval()
    return Served(module, artifact)


def _model_of(run_dir: Path, study: str) -> str | None:
    path = run_dir / "results" / f"{study}.json"
    return (json.loads(path.read_text())["values"].get("model") or {}).get("model") if path.exists() else None


def _quantized_entry(run_dir: Path) -> dict | None:
    """The quantization notebook's exported recommendation, when it is of the model the export notebook exported
    and both its gates passed."""
    results = run_dir / "results" / "quantization.json"
    if not results.exists() or _model_of(run_dir, "quantization") != _model_of(run_dir, "export"):
        return None
    recorded = json.loads(results.read_text())
    exported = recorded["values"].get("export") or {}
    passed = {g["name"] for g in recorded["gates"] if g["passed"]}
    if not exported.get("produced") or not {"quantization:accuracy", "quantization:export"} <= passed:
        return None
    return exported if (run_dir / exported["file"]).exists() else None


def verified_artifacts(run_dir: Path) -> list[str]:
    """The artifacts this run may serve: TorchScript always (the export notebook's file, else a trace made for
    the server), each other export format in the manifest that passed its parity gate, and the recommended
    quantized file of the same model."""
    run_dir = Path(run_dir)
    manifest, results = run_dir / "manifest.json", run_dir / "results" / "export.json"
    if not manifest.exists() or not results.exists():
        return ["torchscript"]
    files = {entry["format"]: run_dir / entry["file"] for entry in json.loads(manifest.read_text())}
    passed = {g["name"] for g in json.loads(results.read_text())["gates"] if g["passed"]}
    verified = ["torchscript"] + [artifact for artifact, fmt in _FORMATS.items()
                                  if fmt in files and files[fmt].exists() and f"parity:{fmt}" in passed]
    return verified + (["quantized"] if _quantized_entry(run_dir) else [])


def copy_artifact(run_dir: Path, artifact: str, folder: Path) -> None:
    """Copy a verified artifact of the run into the model folder (the ONNX file with its external data)."""
    run_dir, folder = Path(run_dir), Path(folder)
    if artifact == "quantized":
        source = run_dir / _quantized_entry(run_dir)["file"]
        shutil.copyfile(source, folder / source.name)
    elif artifact in _FORMATS:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        entry = next(e for e in manifest if e["format"] == _FORMATS[artifact])
        path = run_dir / entry["file"]
        for found in path.parent.glob(path.name + "*"):  # model.onnx and its external data, names kept
            shutil.copyfile(found, folder / found.name)
