"""The environment fingerprint, the lab lock, the lab-vs-here diff, and operator smoke tests."""

from __future__ import annotations

import json
import locale
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import ClassVar

import pandas as pd
import torch

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.files import atomic_write
from lab2prod.core.inputs import arguments
from lab2prod.core.results import gate
from lab2prod.core.schema import Results, described

__all__ = [
    "EnvironmentResults",
    "PACKAGES",
    "NUMERIC_ENV_VARS",
    "fingerprint",
    "smoke_outputs",
    "make_lock",
    "write_lock",
    "read_lock",
    "diff_fingerprints",
    "compare_smoke",
    "exported_ops_check",
    "utf8_round_trip_demo",
    "hour_of_day_demo",
    "environment_gate",
    "cpu_model",
    "gpu_driver",
    "machine_snapshot",
    "fingerprint_frame",
    "plot_smoke",
]


@dataclass(kw_only=True)
class EnvironmentResults(Results):
    """What its notebook records under results/environment.json; the schema is derived from these fields."""

    study: ClassVar[str] = "environment"

    lock: str = described("the lab lock compared with (a file written by `lab2prod env lock`)")
    fingerprint: dict = described("this machine: versions, BLAS, quantized engines, locale, time zone, threads")
    diffs: list = described("differences from the lock: key, lab, here, severity (fail, warn, info)")
    smoke: list = described("operator smoke tests against the lock's outputs: op, device, max_abs_diff, passed")
    exported_ops: list = described("every operator of the exported graph run here: op, ran, error")
    utf8_demo: list = described("non-ASCII labels written and read back under this locale and the C locale")
    hour_demo: list = described("an hour-of-day feature computed under other time zones")

PACKAGES = ("torch", "torchvision", "numpy", "pillow", "scikit-learn", "pandas", "scipy", "matplotlib", "onnx",
            "onnxruntime", "onnxscript", "transformers", "tokenizers")
NUMERIC_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG",
                    "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF", "NVIDIA_TF32_OVERRIDE",
                    "ONEDNN_DEFAULT_FPMATH_MODE", "TZ", "LANG", "LC_ALL", "PYTHONHASHSEED", "PYTHONUTF8")
LOCK_VERSION = 1


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if found:
            return found.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def gpu_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _ort_providers() -> str | None:
    """ONNX Runtime's available execution providers (CPU, CUDA, TensorRT...), comma-separated."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return ",".join(onnxruntime.get_available_providers())


def fingerprint() -> dict[str, object]:
    """A flat {key: value} description of this environment (versions, hardware, locale, time zone)."""
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    onednn = re.search(r"MKL-DNN (v[\d.]+)", config)
    cuda = torch.cuda.is_available()
    result: dict[str, object] = {
        "python": platform.python_version(),
        "python.implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    for package in PACKAGES:
        result[f"package.{package}"] = _version(package)
    result.update({
        "cuda.available": cuda,
        "cuda.version": torch.version.cuda,
        "cudnn.version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu.name": torch.cuda.get_device_name(0) if cuda else None,
        "gpu.capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "gpu.driver": gpu_driver() if cuda else None,
        "gpu.count": torch.cuda.device_count() if cuda else 0,
        "cpu.model": cpu_model(),
        "cpu.count": os.cpu_count(),
        "torch.threads": torch.get_num_threads(),
        "torch.interop_threads": torch.get_num_interop_threads(),
        "torch.blas": blas.group(1) if blas else None,
        "torch.onednn": onednn.group(1) if onednn else None,
        "torch.quantized_engines": ",".join(torch.backends.quantized.supported_engines),
        "torch.quantized_engine": torch.backends.quantized.engine,
        "onnxruntime.providers": _ort_providers(),
        "locale": ".".join(filter(None, locale.getlocale())) or "C",
        "encoding.preferred": locale.getpreferredencoding(False),
        "encoding.filesystem": sys.getfilesystemencoding(),
        "encoding.stdout": getattr(sys.stdout, "encoding", None),
        "timezone": time.tzname[0],
        "timezone.utc_offset_h": -time.timezone / 3600,
    })
    for name in NUMERIC_ENV_VARS:
        result[f"env.{name}"] = os.environ.get(name)
    return result


def _smoke_cases(device: str) -> dict[str, torch.Tensor]:
    """Each operator on fixed seeded inputs; small enough to keep in the lock."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device)

    x, weight, image = rand(4, 16), rand(8, 3, 3, 3), rand(1, 3, 8, 8)
    q, k, v = rand(1, 2, 4, 8), rand(1, 2, 4, 8), rand(1, 2, 4, 8)
    a, b = rand(8, 16), rand(16, 8)
    fn = torch.nn.functional
    outputs = {
        "gelu": fn.gelu(x),
        "layer_norm": fn.layer_norm(x, (16,)),
        "softmax": torch.softmax(x, dim=-1),
        "conv2d": fn.conv2d(image, weight, padding=1),
        "matmul": a @ b,
        "interpolate": fn.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False),
        "scaled_dot_product_attention": fn.scaled_dot_product_attention(q, k, v),
    }
    if device == "cpu":
        linear = torch.nn.Linear(16, 8)
        linear.weight.data, linear.bias.data = rand(8, 16), rand(8)
        with warnings.catch_warnings():  # torch.ao.quantization is the old path, deprecated upstream
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(
                torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)
        outputs["quantized_dynamic_linear"] = quantized(x)
    return {name: out.detach().float().cpu() for name, out in outputs.items()}


def smoke_outputs(device: str = "cpu") -> dict[str, torch.Tensor]:
    """Outputs of the smoke operators on `device` (the dynamic int8 Linear only on cpu)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # compare true fp32 on the GPU
    try:
        return _smoke_cases(device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def make_lock() -> dict:
    """The lab lock: this fingerprint plus reference outputs of the smoke operators on the CPU."""
    return {
        "lock_version": LOCK_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "fingerprint": fingerprint(),
        "smoke": {name: out.tolist() for name, out in smoke_outputs("cpu").items()},
    }


def write_lock(path: str | Path) -> Path:
    """Write the lab lock as JSON to `path` (atomically); returns the path."""
    path = Path(path)
    text = json.dumps(make_lock(), indent=2)
    try:
        atomic_write(path, lambda tmp: tmp.write_text(text))
    except OSError as exc:
        raise Lab2ProdError(f"cannot write lock {str(path)!r} ({exc.strerror}); choose a writable path") from None
    return path


def read_lock(path: str | Path) -> dict:
    """Read a lock written by `lab2prod env lock`; a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise Lab2ProdError(f"lock file {str(path)!r} does not exist; create one with `lab2prod env lock PATH`")
    try:
        lock = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Lab2ProdError(f"lock file {str(path)!r} is not valid JSON ({exc}); re-create it") from None
    if not isinstance(lock, dict) or "fingerprint" not in lock or "smoke" not in lock:
        raise Lab2ProdError(f"lock file {str(path)!r} has no fingerprint/smoke; re-create it with `lab2prod env lock`")
    return lock


def _major_minor(version) -> tuple:
    return tuple(re.findall(r"\d+", str(version))[:2])


def _severity(key: str, lab, here) -> str:
    if key in ("python", "package.torch"):
        return "fail" if _major_minor(lab) != _major_minor(here) else "warn"
    if key == "cuda.available":
        return "fail" if lab and not here else "info"
    if key.startswith("package.") or key.startswith("encoding.") or key.startswith("timezone") \
            or key in ("locale", "cuda.version", "cudnn.version", "torch.quantized_engine", "onnxruntime.providers"):
        return "warn"
    return "info"


def diff_fingerprints(lab: dict, here: dict) -> list[dict]:
    """Every key that differs: {key, lab, here, severity}, fail first.

    fail: another major.minor Python or torch, or no CUDA where the lab had it;
    warn: patch versions, other packages, CUDA/cuDNN, encodings, locale, time zone;
    info: everything else (CPU model, thread counts, environment variables)."""
    order = {"fail": 0, "warn": 1, "info": 2}
    diffs = [{"key": key, "lab": lab.get(key), "here": here.get(key),
              "severity": _severity(key, lab.get(key), here.get(key))}
             for key in sorted(set(lab) | set(here)) if lab.get(key) != here.get(key)]
    return sorted(diffs, key=lambda d: (order[d["severity"]], d["key"]))


def compare_smoke(reference: dict[str, list], tolerance: float) -> list[dict]:
    """Smoke operators here vs the lock's reference values, and on CUDA also CPU vs CUDA.
    Returns [{op, device, max_abs_diff, passed}]."""
    here = smoke_outputs("cpu")
    rows = []
    for op, values in reference.items():
        expected = torch.tensor(values)
        if op not in here:
            rows.append({"op": op, "device": "cpu", "max_abs_diff": None, "passed": False})
            continue
        diff = float((here[op] - expected).abs().max()) if here[op].shape == expected.shape else float("inf")
        rows.append({"op": op, "device": "cpu", "max_abs_diff": diff, "passed": diff <= tolerance})
    if torch.cuda.is_available():
        for op, out in smoke_outputs("cuda").items():
            diff = float((out - here[op]).abs().max())
            rows.append({"op": op, "device": "cuda vs cpu", "max_abs_diff": diff, "passed": diff <= tolerance * 10})
    return rows


def exported_ops_check(program_module: torch.nn.Module, example) -> list[dict]:
    """Run an exported program node by node on `example` (a tensor, tuple or dict of inputs, as it
    was exported with); one row per operator: {op, count, ran, error}."""
    import torch.fx
    from torch.utils import _pytree as pytree


    counts: dict[str, int] = {}
    failed: dict[str, str] = {}

    class Checker(torch.fx.Interpreter):
        def run_node(self, node):
            if node.op == "call_function":
                name = str(node.target)
                counts[name] = counts.get(name, 0) + 1
                try:
                    return super().run_node(node)
                except Exception as exc:
                    failed[name] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
                    raise
            return super().run_node(node)

    with torch.inference_mode():
        try:
            Checker(program_module).run(*pytree.tree_flatten(arguments(example))[0])
        except Exception:
            pass  # the failing operator is recorded; those after it did not run
    return [{"op": op, "count": n, "ran": op not in failed, "error": failed.get(op)}
            for op, n in sorted(counts.items())]


_UTF8_SCRIPT = """
import json, sys, tempfile, os
labels = json.loads(sys.argv[1])
folder = tempfile.TemporaryDirectory()
path = os.path.join(folder.name, "labels.txt")
result = {"preferred_encoding": __import__("locale").getpreferredencoding(False)}
for way, kwargs in (("naive", {}), ("utf-8", {"encoding": "utf-8"})):
    try:
        with open(path, "w", **kwargs) as f:
            f.write("\\n".join(labels))
        with open(path, **kwargs) as f:
            back = f.read().split("\\n")
        result[way] = "round trip ok" if back == labels else f"changed: {back}"
    except Exception as exc:
        result[way] = f"{type(exc).__name__}: {str(exc)[:80]}"
print(json.dumps(result))
"""


def utf8_round_trip_demo(labels: list[str]) -> list[dict]:
    """Write and read class labels in a child process under the C locale (no UTF-8), the naive
    way (platform default encoding) and the fixed way (encoding='utf-8')."""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    rows = []
    for name, environ in (("this process's locale", os.environ), ("C locale, no UTF-8", env)):
        out = subprocess.run([sys.executable, "-c", _UTF8_SCRIPT, json.dumps(labels)], env=environ,
                             capture_output=True, text=True, timeout=60, encoding="utf-8")
        result = json.loads(out.stdout)
        rows.append({"locale": name, "preferred_encoding": result["preferred_encoding"],
                     "naive open()": result["naive"], "open(encoding='utf-8')": result["utf-8"]})
    return rows


_HOUR_SCRIPT = """
import json, sys
from datetime import datetime
from zoneinfo import ZoneInfo
ts = float(sys.argv[1])
print(json.dumps({"naive": datetime.fromtimestamp(ts).hour,
                  "aware": datetime.fromtimestamp(ts, tz=ZoneInfo(sys.argv[2])).hour}))
"""


def hour_of_day_demo(timestamp: float, timezones: list[str], feature_timezone: str = "UTC") -> list[dict]:
    """The hour-of-day feature of one event, computed in child processes whose TZ differs: the
    naive way (`datetime.fromtimestamp(ts)`, server local time) and the aware way (an explicit zone)."""
    rows = []
    for zone in timezones:
        out = subprocess.run([sys.executable, "-c", _HOUR_SCRIPT, repr(timestamp), feature_timezone],
                             env={**os.environ, "TZ": zone}, capture_output=True, text=True, timeout=60)
        result = json.loads(out.stdout)
        rows.append({"server TZ": zone, "naive hour": result["naive"],
                     f"aware hour ({feature_timezone})": result["aware"]})
    return rows


def environment_gate(diffs: list[dict], smoke: list[dict], ops: list[dict]) -> dict:
    """`environment`: no fail-level difference from the lab lock, every smoke operator within
    tolerance, every operator of the exported graph runs here; the value is the problem count."""

    failing = [d for d in diffs if d["severity"] == "fail"]
    bad_ops = [s["op"] for s in smoke if not s["passed"]] + [o["op"] for o in ops if not o["ran"]]
    problems = [f"{d['key']}: lab {d['lab']} vs here {d['here']}" for d in failing] + [f"{op} fails" for op in bad_ops]
    return gate("environment", not problems, len(problems), 0,
                "; ".join(problems) if problems else "no fail-level difference; all smoke operators pass")


def machine_snapshot() -> dict:
    """The machine a run or a number was measured on: Python, platform, CPU model and cores, torch,
    torchvision and torch threads, CUDA, GPU name and driver (summary.json's `environment`, and the
    benchmark's `machine`)."""
    import torchvision

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "cuda_available": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "driver": gpu_driver() if cuda else None,
    }


# ---------------------------------------------------------------- tables and plots of the notebook


def fingerprint_frame(lab: dict, here: dict) -> pd.DataFrame:
    """Lab and here side by side, one row per key, differing rows first."""
    keys = sorted(set(lab) | set(here))
    frame = pd.DataFrame({"lab": [lab.get(k) for k in keys], "here": [here.get(k) for k in keys]}, index=keys)
    frame["same"] = [lab.get(k) == here.get(k) for k in keys]
    frame = frame.astype({"lab": str, "here": str})
    return frame.sort_values("same", kind="stable")


def plot_smoke(smoke: list[dict], tolerance: float):
    """Max abs diff of each smoke operator vs the lock (floor = bit-exact), with the tolerance."""
    import matplotlib.pyplot as plt

    floor = 1e-10
    labels = [f"{s['op']} ({s['device']})" for s in smoke]
    values = [max(s["max_abs_diff"], floor) if s["max_abs_diff"] is not None else floor for s in smoke]
    colours = ["#2ca02c" if s["passed"] else "#d62728" for s in smoke]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(smoke) + 1.2))
    ax.barh(labels, values, color=colours)
    ax.axvline(tolerance, color="#b00020", linestyle="--", linewidth=1, label=f"tolerance = {tolerance:g}")
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, max(1.0, max(values) * 5))
    ax.invert_yaxis()
    ax.set_xlabel("max |here − lab lock|  (floor = bit-exact)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
