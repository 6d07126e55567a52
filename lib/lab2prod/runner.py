"""Run the notebooks with papermill into one run folder, then write summary.json and report.html."""

from __future__ import annotations

import ast
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import Lab2ProdError
from .paths import NOTEBOOKS_DIR
from .results import load_results, write_json

__all__ = [
    "NOTEBOOK_NAMES",
    "NotebookRun",
    "available_notebooks",
    "select_notebooks",
    "notebook_parameters",
    "parse_parameter",
    "check_parameters",
    "check_values",
    "environment_summary",
    "execute_run",
    "new_run_id",
]

# Short names used by --only/--skip, in run order.
NOTEBOOK_NAMES = {
    "environment": "00_environment",
    "export": "01_export",
    "parity": "02_preprocessing_parity",
    "quantization": "03_quantization",
    "benchmark": "04_latency_benchmark",
    "serving": "05_serving",
    "drift": "06_drift_monitoring",
    "security": "07_security",
    "canary": "08_canary",
    "report": "99_report",
}


@dataclass
class NotebookRun:
    short: str
    path: Path

    @property
    def name(self) -> str:
        return self.path.stem


def available_notebooks(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[NotebookRun]:
    """The notebooks of this version that `lab2prod run` knows, in run order."""
    return [NotebookRun(short, notebooks_dir / f"{stem}.ipynb")
            for short, stem in NOTEBOOK_NAMES.items()
            if (notebooks_dir / f"{stem}.ipynb").exists()]


def select_notebooks(only: list[str] | None, skip: list[str] | None,
                     notebooks_dir: Path = NOTEBOOKS_DIR) -> list[NotebookRun]:
    """Apply --only/--skip; unknown or absent short names are errors that list the valid ones."""
    present = available_notebooks(notebooks_dir)
    present_names = [n.short for n in present]
    for name in (only or []) + (skip or []):
        if name not in NOTEBOOK_NAMES:
            raise Lab2ProdError(
                f"notebook {name!r} is not known; use one of {', '.join(NOTEBOOK_NAMES)}"
            )
        if name not in present_names:
            raise Lab2ProdError(
                f"notebook {name!r} ({NOTEBOOK_NAMES[name]}.ipynb) is not in this version; "
                f"available: {', '.join(present_names)}"
            )
    chosen = [n for n in present if (not only or n.short in only) and n.short not in (skip or [])]
    if not chosen:
        raise Lab2ProdError("--only/--skip left no notebook to run; see `lab2prod run --list`")
    return chosen


def notebook_parameters(path: Path) -> dict[str, dict]:
    """{name: {"default": value, "type": name, "help": comment}} of a notebook's parameters cell."""
    import papermill

    declared = papermill.inspect_notebook(str(path))
    parameters = {}
    for name, info in declared.items():
        try:
            default = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            default = info["default"]
        parameters[name] = {"default": default, "type": type(default).__name__,
                            "help": info.get("help", "")}
    return parameters


def parse_parameter(text: str) -> tuple[str, object]:
    """Parse `name=value` typed like papermill -p (True/False/None, int, float), plus lists."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise Lab2ProdError(f"parameter {text!r} is not name=value; e.g. -p atol=1e-5")
    if raw in ("True", "False", "None"):
        return name, {"True": True, "False": False, "None": None}[raw]
    try:
        value = ast.literal_eval(raw)
        if isinstance(value, (int, float, list, tuple, dict)) and not isinstance(value, bool):
            return name, list(value) if isinstance(value, tuple) else value
    except (ValueError, SyntaxError):
        pass
    return name, raw


def _type_ok(default, value) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list) and all(
            _type_ok(default[0], item) for item in value) if default else isinstance(value, list)
    return isinstance(value, type(default))


def check_parameters(params: dict, notebooks: list[NotebookRun]) -> dict:
    """Check names and types against the notebooks' parameters cells; return them coerced."""
    declared: dict[str, dict] = {}
    for notebook in notebooks:
        declared.update(notebook_parameters(notebook.path))
    checked = {}
    for name, value in params.items():
        if name not in declared:
            raise Lab2ProdError(
                f"parameter {name!r} is not used by the selected notebooks; "
                f"known: {', '.join(sorted(declared))}"
            )
        default = declared[name]["default"]
        if isinstance(default, str) and not isinstance(value, str) and value is not None:
            value = str(value)  # `-p model=123` means the string "123"
        if not _type_ok(default, value):
            raise Lab2ProdError(
                f"parameter {name}={value!r} has the wrong type: expected "
                f"{type(default).__name__} like the default; pass e.g. -p {name}={default!r}"
            )
        if isinstance(default, float) and isinstance(value, int):
            value = float(value)
        checked[name] = value
    return checked


def check_values(params: dict) -> None:
    """Reject parameter values a notebook would reject (unknown bug, method, layer type or
    quantized engine; a transform that does not import; a traffic split that is not two weights)
    before any run folder exists."""
    from . import benchmark, canary, parity, quantization
    from .preprocess import load_transform

    checks = {
        "bugs": parity.select_bugs,
        "methods": quantization.check_methods,
        "module_types": quantization.resolve_module_types,
        "engine": quantization.check_engine,
        "variants": benchmark.check_variants,
        "traffic_split": canary.check_split,
        "latency_percentile": canary.check_percentile,
        "candidate_method": lambda method: quantization.check_methods([method]),
        "lab_transform": lambda spec: load_transform(spec, "lab_transform"),
        "serving_transform": lambda spec: load_transform(spec, "serving_transform"),
    }
    for name, check in checks.items():
        if params.get(name) not in (None, ""):
            check(params[name])


def environment_summary() -> dict:
    """Where the run happened (the environment notebook records much more)."""
    import torch
    import torchvision

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
    }


def new_run_id(model: str) -> str:
    base = model.rpartition(":")[2] if ":" in model else Path(model).stem
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in base)
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{safe[:40]}"


def _error_line(exc: BaseException) -> str:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    first = (str(evalue).strip().splitlines() or [""])[0]
    return f"{ename}: {first}"[:500]


def execute_run(notebooks: list[NotebookRun], params: dict, run_dir: Path,
                progress: bool = True) -> dict:
    """Execute each notebook into run_dir, keep going after a failure, write summary + report."""
    import papermill

    from .report import write_report

    run_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for index, notebook in enumerate(notebooks, 1):
        declared = notebook_parameters(notebook.path)
        mine = {k: v for k, v in params.items() if k in declared}
        if "run_dir" in declared:
            mine["run_dir"] = str(run_dir)
        output = run_dir / notebook.path.name
        bar = {"desc": f"[{index}/{len(notebooks)}] {notebook.name}", "file": sys.stderr} \
            if progress else False
        start = time.perf_counter()
        status, error = "ok", None
        try:
            papermill.execute_notebook(
                str(notebook.path), str(output), parameters=mine, kernel_name="python3",
                progress_bar=bar, cwd=str(run_dir), log_output=False,
            )
        except papermill.PapermillExecutionError as exc:
            status, error = "error", _error_line(exc)
        except Exception as exc:  # kernel died, notebook unreadable: still recorded
            status, error = "error", _error_line(exc)
        finally:
            from .serving import stop_recorded

            stop_recorded(run_dir)  # a server the notebook started never outlives it, pass or fail
        records.append({"name": notebook.name, "status": status,
                        "seconds": round(time.perf_counter() - start, 2), "error": error})
    results, gates = load_results(run_dir)
    summary = {
        "run_id": run_dir.name,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "params": params,
        "environment": environment_summary(),
        "notebooks": records,
        "results": results,
        "gates": gates,
    }
    write_report(summary, run_dir)
    write_json(run_dir / "summary.json", summary)  # last: its presence means the run finished
    return summary


def run_passed(summary: dict) -> bool:
    """True when every notebook ran and no gate failed (skipped gates do not fail a run)."""
    return all(n["status"] == "ok" for n in summary["notebooks"]) and all(
        g["passed"] is not False for g in summary["gates"])
