"""Serialize a model (TorchScript script/trace, torch.export, AOTInductor, ONNX) and prove the file reloads
and agrees.

TorchScript is what many deployed systems load today and is deprecated upstream (the old path); torch.export
(`.pt2`) is its successor; AOTInductor compiles that program ahead of time into native code for this machine's
CPU (a package `torch._inductor.aoti_load_package` loads without the model's Python); ONNX (run by ONNX
Runtime, outside Python too) is the path many teams ship. All are produced side by side so a reader sees what
each costs.
"""

from __future__ import annotations

import json
import linecache
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pandas as pd
import torch

from lab2prod.core import extras
from lab2prod.core.errors import Lab2ProdError, one_line
from lab2prod.core.files import archive_payload, scratch_root, sha256_file
from lab2prod.core.inputs import (
    Inputs,
    call,
    export_program,
    first_tensor,
    map_tensors,
    tensors,
    to_device,
    trace,
    varied_cases,
)
from lab2prod.core.progress import steps as progress_steps
from lab2prod.core.results import gate
from lab2prod.core.schema import MODEL_CARD, Measure, Results, described
from lab2prod.models.load import LoadedModel
from lab2prod.models.onnx_rt import export_onnx, versions
from lab2prod.models.reference import set_eval
from lab2prod.studies import chain

__all__ = [
    "ExportResults",
    "FORMATS",
    "PORTABLE_FORMATS",
    "ExportArtifact",
    "ComparisonRow",
    "check_formats",
    "export_model",
    "compare_outputs",
    "reload_in_fresh_process",
    "input_cases",
    "check_exports",
    "format_gates",
    "write_manifest",
    "artifacts_frame",
    "comparison_frame",
    "plot_max_abs_diff",
]


@dataclass(kw_only=True)
class ExportResults(Results):
    """What its notebook records under results/export.json; the schema is derived from these fields."""

    study: ClassVar[str] = "export"
    measures: ClassVar[tuple[Measure, ...]] = (
        Measure("export.model.heldout_accuracy", "accuracy"),
        Measure("export.manifest[*].bytes", "size"),
    )

    model: dict = described(MODEL_CARD)
    formats: list = described("eager vs reloaded file per format, input case, batch size and device")
    artifacts: list = described("per format: produced, error, tracer warnings, dynamic batch, and the model's line "
                                "an export error or a tracer warning points at (source)")
    manifest: list = described("every exported file: format, file, bytes, sha256, dynamic batch, torch")
    env_lock: str = described("the lab environment lock written beside the exported files")
    stages: list = described("the chain's export stages: the golden set through each file reloaded in a fresh "
                             "process, against eager (lab2prod.studies.chain)")

# Files that load on any machine with the same torch (or any ONNX Runtime), and the one compiled for this CPU
PORTABLE_FORMATS = ("torchscript_script", "torchscript_trace", "torch_export", "onnx")
FORMATS = (*PORTABLE_FORMATS, "aoti")
FILE_SUFFIX = {"torchscript_script": ".pt", "torchscript_trace": ".pt", "torch_export": ".pt2", "onnx": ".onnx",
               "aoti": ".pt2"}
TRACE_BATCH_SIZE = 2


@dataclass
class ExportArtifact:
    """One attempt to serialize the model in one format; `error` says why it failed, in one line."""

    format: str
    path: Path | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    dynamic_batch: bool = False
    dynamic_dims: str = ""  # torch.export and onnx: "batch+seq", "batch" or "" (static shapes)
    seconds: float = 0.0
    opset: int | None = None  # onnx: the default-domain opset
    extra_files: list[Path] = field(default_factory=list)  # onnx: external data written beside the file
    example_bytes: int = 0  # the example batch it was exported with
    source: str = ""  # the model's line that made the export fail or the trace warn: "file.py:86 in forward: `...`"

    @property
    def produced(self) -> bool:
        return self.path is not None


@dataclass
class ComparisonRow:
    """Eager vs reloaded file on one input case (a batch size, held-out or varied inputs)."""

    format: str
    batch_size: int
    inputs: str
    device: str
    loaded: bool
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    top1_agreement: float | None = None
    error: str | None = None


def export_model(
    loaded: LoadedModel, fmt: str, out_dir: Path, seed: int = 0
) -> ExportArtifact:
    """Serialize `loaded` in format `fmt` under `out_dir`; never raises for a model that won't export."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not known; use one of {', '.join(FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ("model.onnx" if fmt == "onnx" else f"model.{fmt}{FILE_SUFFIX[fmt]}")
    # Tracing and export see training-split inputs; comparisons use held-out ones.
    example = loaded.make_inputs(TRACE_BATCH_SIZE, seed, split="train")
    module = set_eval(loaded.module)
    artifact = ExportArtifact(fmt, example_bytes=sum(t.nbytes for t in tensors(example)))
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if fmt == "torchscript_script":
                torch.jit.save(torch.jit.script(module), str(path))
                artifact.dynamic_batch = True
            elif fmt == "torchscript_trace":
                with torch.inference_mode(False), torch.no_grad():
                    traced = trace(module, example, check_trace=False)
                torch.jit.save(traced, str(path))
                artifact.dynamic_batch = True  # shapes are not frozen unless the code reads them
            elif fmt == "onnx":
                written = export_onnx(module, example, path)
                artifact.dynamic_dims, artifact.opset = written["dynamic_dims"], written["opset"]
                artifact.dynamic_batch = bool(written["dynamic_dims"])
                artifact.extra_files = [f for f in written["files"] if f != path]
            else:
                dynamic, program = export_program(module, example)
                artifact.dynamic_batch = bool(dynamic)
                artifact.dynamic_dims = dynamic
                if fmt == "aoti":  # the same program, compiled to native code for this CPU by AOTInductor
                    torch._inductor.aoti_compile_and_package(program, package_path=str(path))
                else:
                    torch.export.save(program, str(path))
            artifact.path = path
        except Exception as exc:
            artifact.error = one_line(exc)
            artifact.source = failing_line(str(exc))
            path.unlink(missing_ok=True)
            if fmt == "onnx":  # nothing half-written: the exporter's external data file too
                for leftover in out_dir.glob(f"{path.name}.data"):
                    leftover.unlink(missing_ok=True)
    artifact.seconds = time.perf_counter() - start
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    artifact.warnings = sorted({str(w.message).splitlines()[0] for w in tracer})
    artifact.source = artifact.source or next(
        (where for w in tracer if (where := source_line(w.filename, w.lineno))), "")
    return artifact


_TORCH_DIR = str(Path(torch.__file__).parent)
# torch.export's error ends with the model's frame: 'The following call raised this error:\n  File "..", line N, in f'
_RAISED_AT = re.compile(r'File "([^"]+)", line (\d+), in (\w+)')


def source_line(filename: str, lineno: int, function: str = "") -> str:
    """`file.py:86 in forward: `if x.mean() > 0:`` for a line of the model's own code; "" for a line inside
    torch (a warning torch raised about itself says nothing about the model)."""
    if not filename or filename.startswith(_TORCH_DIR) or filename.startswith("<"):
        return ""
    path = Path(filename)
    try:
        shown = str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        shown = str(path)
    code = linecache.getline(filename, lineno).strip()
    return f"{shown}:{lineno}" + (f" in {function}" if function else "") + (f": `{code}`" if code else "")


def failing_line(message: str) -> str:
    """The model's line an export error points at: the last frame outside torch that torch.export (or the
    ONNX exporter, which runs it) names in its message; "" when it names none."""
    frames = [source_line(f, int(n), fn) for f, n, fn in _RAISED_AT.findall(message)]
    return next((frame for frame in reversed(frames) if frame), "")


def input_cases(loaded: LoadedModel, batch_sizes: list[int], seed: int = 0) -> dict[str, Inputs]:
    """Comparison inputs the export never saw: held-out data at every batch size, then varied
    batches at the largest size (`inputs.varied_cases`: negated and noise for float inputs, other
    valid ids for integer ones, a shorter sequence), which take another branch in models with
    data-dependent control flow. A varied case eager itself cannot run is left out."""
    cases = {f"held-out:{bs}": loaded.make_inputs(bs, seed + 1) for bs in batch_sizes}
    largest = max(batch_sizes)
    generator = torch.Generator().manual_seed(seed + 2)
    for name, varied in varied_cases(cases[f"held-out:{largest}"], generator).items():
        try:
            with torch.inference_mode():
                call(loaded.module, varied)
        except Exception:
            continue  # e.g. a model whose sequence length is fixed: not a finding about the export
        cases[f"{name}:{largest}"] = varied
    return cases


def compare_outputs(reference: torch.Tensor, candidate: torch.Tensor, classifier: bool = True) -> dict:
    """max_abs_diff; max_rel_diff (relative to the largest reference magnitude);
    top1_agreement (share of rows whose argmax matches; None for non-2D outputs and for an
    embedder, whose argmax means nothing)."""
    reference, candidate = reference.float(), candidate.float()
    if reference.shape != candidate.shape:
        raise ValueError(f"output shape {tuple(candidate.shape)} != eager {tuple(reference.shape)}")
    diff = (reference - candidate).abs()
    max_abs = float(diff.max()) if diff.numel() else 0.0
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    top1 = None
    if classifier and reference.dim() == 2 and reference.shape[1] > 1:
        top1 = float((reference.argmax(1) == candidate.argmax(1)).float().mean())
    return {"max_abs_diff": max_abs, "max_rel_diff": max_abs / scale if scale else max_abs,
            "top1_agreement": top1}


def reload_in_fresh_process(
    fmt: str, path: Path, cases: dict[str, torch.Tensor], device: str = "cpu", timeout_s: float = 300
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Load `path` in a new Python process and run every case; returns (status, outputs)."""
    with tempfile.TemporaryDirectory(prefix="lab2prod-reload-", dir=scratch_root()) as tmp:
        inputs_file, outputs_file = Path(tmp) / "inputs.pt", Path(tmp) / "outputs.pt"
        torch.save({name: map_tensors(torch.Tensor.clone, t) for name, t in cases.items()}, inputs_file)  # not views
        command = [sys.executable, "-m", "lab2prod.models.reload_check", fmt, str(path),
                   str(inputs_file), str(outputs_file), device]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        status_lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not status_lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return {"loaded": False, "load_error": f"reload process failed: {tail}", "errors": {}}, {}
        status = json.loads(status_lines[-1])
        outputs = torch.load(outputs_file, weights_only=True) if outputs_file.exists() else {}
        return status, outputs


def _eager_outputs(loaded: LoadedModel, cases: dict[str, torch.Tensor], device: str) -> dict:
    module = loaded.module.to(device) if device != "cpu" else loaded.module
    with torch.inference_mode():
        result = {name: first_tensor(call(module, to_device(batch, device))).float().cpu()
                  for name, batch in cases.items()}
    if device != "cpu":
        loaded.module.to("cpu")
    return result


def check_exports(
    loaded: LoadedModel, artifacts: list[ExportArtifact], batch_sizes: list[int],
    devices: list[str], seed: int = 0, stages: list | None = None, atol: float = 1e-4,
) -> list[ComparisonRow]:
    """Compare every produced file, reloaded in a fresh process, with eager on every input case. Given a
    `stages` list, the golden set (chain.golden_cases) goes through every file on the CPU in the same process,
    and one stage of the chain per format is appended to it (answers within `atol`, top-1 identical)."""
    cases = input_cases(loaded, batch_sizes, seed)
    golden = chain.golden_cases(loaded, seed=seed, batch_size=max(batch_sizes)) if stages is not None else {}
    rows = []
    for device in devices:
        eager = _eager_outputs(loaded, cases, device)
        traced = golden if device == "cpu" else {}
        lab_answers = chain.golden_outputs(loaded.module, golden, loaded.task) if traced else None
        for artifact in progress_steps(artifacts, f"reload on {device}", "format"):
            if artifact.format == "aoti" and device != "cpu":
                continue  # compiled for this CPU: a CUDA package is compiled on (and for) the GPU machine
            if not artifact.produced:
                rows.append(ComparisonRow(artifact.format, 0, "-", device, False, error=artifact.error))
                where = f" at {artifact.source}" if artifact.source else ""
                if traced:  # no file, no answers: its parity gate fails it (or skips it where it does not apply)
                    stages.append(chain.failed_stage(f"export: {artifact.format}", "export", loaded.task,
                                                     chain.golden_label(golden),
                                                     f"not produced{where}: {artifact.error}", passed=None))
                continue
            status, outputs = reload_in_fresh_process(artifact.format, artifact.path, {**cases, **traced}, device)
            if traced:
                stages.append(_golden_stage(artifact.format, status, outputs, golden, lab_answers, loaded.task, atol))
            for name, reference in eager.items():
                kind, _, size = name.partition(":")
                row = ComparisonRow(artifact.format, int(size), kind, device, status["loaded"])
                if not status["loaded"]:
                    row.error = status["load_error"]
                elif name in status["errors"]:
                    row.error = status["errors"][name]
                else:
                    try:
                        for key, value in compare_outputs(reference, outputs[name],
                                                          loaded.task == "classifier").items():
                            setattr(row, key, value)
                    except ValueError as exc:
                        row.error = str(exc)
                rows.append(row)
    return rows


def _golden_stage(fmt: str, status: dict, outputs: dict, golden: dict, reference: torch.Tensor, task: str,
                  atol: float) -> dict:
    """The chain's stage for one file: its answers on the golden set, reloaded in a fresh process, against eager."""
    name, inputs = f"export: {fmt}", chain.golden_label(golden)
    errors = [status["errors"][case] for case in golden if case in status.get("errors", {})]
    if not status["loaded"] or errors:
        return chain.failed_stage(name, "export", task, inputs, status.get("load_error") or errors[0])
    candidate = chain.answer_space(torch.cat([outputs[case] for case in golden]), task)
    # top-1 identical; for an embedder the cosine bound the servers' parity uses (float rounding keeps a cosine
    # of the same vector a hair under 1)
    return chain.stage(name, "export", reference, candidate, task, atol, 0.9999 if task == "embedder" else 1.0,
                       inputs, compared="answers of the file reloaded in a fresh process")


def format_gates(
    artifacts: list[ExportArtifact], rows: list[ComparisonRow], atol: float, auto: bool = False
) -> list[dict]:
    """One gate `parity:<format>` per format: produced, reloaded, every case within atol,
    top-1 identical, and (trace) no tracer warning that the trace may be wrong.

    With `auto` (formats=["auto"]: every format tried, none asked for by name) a format that does
    not apply to this model (it cannot be produced, or tracing warns while every case matches) is
    skipped with its reason, as long as another format passes; a file that answers differently
    always fails."""

    gates, optional = [], []
    for artifact in artifacts:
        mine = [r for r in rows if r.format == artifact.format]
        worst = max((r.max_abs_diff for r in mine if r.max_abs_diff is not None), default=None)
        failures, notes = [], []
        where = f" at {artifact.source}" if artifact.source else ""
        if not artifact.produced:
            notes.append(f"not produced{where}: {artifact.error}")
        else:
            for r in mine:
                label = f"{r.inputs} batch {r.batch_size} on {r.device}"
                if r.error:
                    failures.append(f"{label}: {r.error}")
                elif r.max_abs_diff > atol:
                    failures.append(f"{label}: max abs diff {r.max_abs_diff:.3g} > {atol:g}")
                elif r.top1_agreement is not None and r.top1_agreement < 1.0:
                    failures.append(f"{label}: top-1 agreement {r.top1_agreement:.3f}")
            if artifact.warnings:
                notes.append(f"tracer warning{where}: {artifact.warnings[0]}")
        problems = notes + failures if artifact.source else failures + notes  # the model's line first: the cause
        detail = ("; ".join(problems[:3]) if problems else
                  f"{len(mine)} cases reloaded in a fresh process, all within atol")
        gates.append(gate(f"parity:{artifact.format}", not problems, worst, atol, detail))
        if auto and notes and not failures:
            optional.append(len(gates) - 1)
    if optional and any(g["passed"] for g in gates):
        for index in optional:
            gates[index] = gate(gates[index]["name"], False, gates[index]["value"], atol,
                                f"does not apply to this model ({gates[index]['detail']}); formats=['auto'] "
                                "skips it because another format passes", skipped=True)
    return gates


def check_formats(formats) -> list[str]:
    """The formats, or a Lab2ProdError naming an unknown one and the known ones; ["auto"] is every format."""
    if list(formats) == ["auto"]:
        return [f for f in FORMATS if f != "onnx" or extras.available("onnx")]  # ONNX is the onnx extra
    for fmt in formats:
        if fmt not in FORMATS:
            raise Lab2ProdError(f"format {fmt!r} is not known; use ['auto'] or some of {', '.join(FORMATS)}")
    if "onnx" in formats:
        extras.require("onnx", "format 'onnx'")
    return list(formats)


def write_manifest(
    loaded: LoadedModel, artifacts: list[ExportArtifact], run_dir: Path
) -> list[dict]:
    """Write run_dir/manifest.json describing every produced file; return its entries."""
    import torchvision

    entries = []
    for artifact in artifacts:
        if not artifact.produced:
            continue
        entries.append({
            "model": loaded.spec,
            "format": artifact.format,
            "file": str(artifact.path.relative_to(run_dir)),
            "sha256": sha256_file(artifact.path),
            "bytes": artifact.path.stat().st_size,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "input_shape": [None if artifact.dynamic_batch else 1, *loaded.input_shape],
            "dtype": next(iter(loaded.input_spec.values()))["dtype"],
            "inputs": loaded.input_spec,
            "dynamic_batch": artifact.dynamic_batch,
            "dynamic_dims": artifact.dynamic_dims or ("batch" if artifact.dynamic_batch else ""),
            **({"opset": artifact.opset, **_onnx_versions(),
                "external_data": [{"file": str(f.relative_to(run_dir)), "sha256": sha256_file(f),
                                   "bytes": f.stat().st_size} for f in artifact.extra_files]}
               if artifact.format == "onnx" else {}),
            **({"compiled_for": f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"}
               if artifact.format == "aoti" else {}),
            # what the archive holds beside the model: stored sample inputs are data, never the deployment's
            **({"payload": payload, "example_bytes": artifact.example_bytes}
               if (payload := archive_payload(artifact.path)) else {}),
            "trained": loaded.trained,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        })
    (run_dir / "manifest.json").write_text(json.dumps(entries, indent=2))
    return entries


def _onnx_versions() -> dict:
    info = versions()
    return {"onnx": info["onnx"], "onnxruntime": info["onnxruntime"]}


def rows_as_dicts(rows: list[ComparisonRow]) -> list[dict]:
    return [asdict(r) for r in rows]


# ---------------------------------------------------------------- tables and plots of the notebook


def artifacts_frame(artifacts: list[ExportArtifact], run_dir: Path) -> pd.DataFrame:
    """One row per format: produced or why not, size (with an ONNX file's external data), dynamic
    batch, the ONNX opset, tracer warnings."""
    rows = []
    for a in artifacts:
        rows.append({
            "format": a.format,
            "produced": a.produced,
            "file": str(a.path.relative_to(run_dir)) if a.produced else "",
            "MB": round(sum(f.stat().st_size for f in [a.path, *a.extra_files]) / 1e6, 2) if a.produced else None,
            "dynamic_batch": a.dynamic_batch if a.produced else None,
            "opset": a.opset,
            "why not / warning": a.error or (a.warnings[0] if a.warnings else ""),
            "where in the model": a.source,
        })
    return pd.DataFrame(rows).set_index("format")


def comparison_frame(rows: list[ComparisonRow]) -> pd.DataFrame:
    """The per-format, per-case comparison table."""
    frame = pd.DataFrame([r.__dict__ for r in rows])
    return frame.set_index(["format", "device", "inputs", "batch_size"])


def plot_max_abs_diff(rows: list[ComparisonRow], atol: float):
    """Bars of max abs diff per format and case on a log axis, with the tolerance line.
    Bit-exact results sit on the floor; failed cases are red; unloadable ones are marked."""
    import matplotlib.pyplot as plt
    import numpy as np

    floor = 1e-10
    formats = list(dict.fromkeys(r.format for r in rows))
    cases = list(dict.fromkeys(f"{r.inputs}:{r.batch_size}@{r.device}" for r in rows if r.inputs != "-"))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases) + 2), 3.6))
    width = 0.8 / max(1, len(formats))
    for i, fmt in enumerate(formats):
        mine = {f"{r.inputs}:{r.batch_size}@{r.device}": r for r in rows if r.format == fmt}
        for j, case in enumerate(cases):
            x = j + (i - (len(formats) - 1) / 2) * width
            row = mine.get(case)
            if row is None or row.max_abs_diff is None:
                ax.text(x, floor * 3, "✗", ha="center", color="#b00020", fontsize=12)
                continue
            bad = row.max_abs_diff > atol or (row.top1_agreement is not None and row.top1_agreement < 1)
            ax.bar(x, max(row.max_abs_diff, floor), width, color="#d62728" if bad else f"C{i}",
                   label=fmt if j == 0 else None, edgecolor="black", linewidth=0.3)
        if not mine:
            ax.bar(0, 0, width, color=f"C{i}", label=f"{fmt} (not produced)")
    ax.axhline(atol, color="#b00020", linestyle="--", linewidth=1, label=f"atol = {atol:g}")
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, max(1.0, max((r.max_abs_diff or 0) for r in rows) * 5))
    ax.set_xticks(np.arange(len(cases)), cases, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("max |eager − reloaded|  (floor = bit-exact)")
    ax.set_title("Reloaded in a fresh process vs eager")
    ax.legend(fontsize=8, loc="upper left", ncols=2)
    fig.tight_layout()
    return fig
