"""Dynamic int8 quantization by torch.ao, torchao and ONNX Runtime: size, latency, accuracy, coverage,
per-layer sensitivity."""

from __future__ import annotations

import copy
import io
import logging
import shutil
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from lab2prod.core import extras
from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.files import scratch_dir
from lab2prod.core.inputs import Inputs, batch_size_of, call, export_program, first_tensor, outputs_of, take, trace
from lab2prod.core.progress import steps as progress_steps
from lab2prod.core.results import gate
from lab2prod.core.schema import MODEL_CARD, Measure, Results, described
from lab2prod.kinds.preprocess import load_transform
from lab2prod.models.onnx_rt import (
    OrtModule,
    export_to_temp,
    external_files,
    inline_weights,
    quantizable_nodes,
    quantize_file,
)
from lab2prod.models.reference import reference_images, reference_tensors
from lab2prod.studies import chain
from lab2prod.studies.export import reload_in_fresh_process

__all__ = [
    "QuantizationResults",
    "METHODS",
    "MODULE_TYPES",
    "check_engine",
    "resolve_engine",
    "resolve_module_types",
    "check_methods",
    "check_method",
    "quantize",
    "quantized_layers",
    "coverage",
    "serialized_size",
    "latency_ms",
    "EvalData",
    "eval_data",
    "first_layer_over_share",
    "sensitivity_wanted",
    "over_budget_text",
    "quality",
    "MethodResult",
    "evaluate_methods",
    "layer_sensitivity",
    "export_quantized",
    "recommended",
    "findings",
    "frontier",
    "best_step",
    "add_selective",
    "ort_frontier",
    "ort_layer_order",
    "ort_method",
    "sensitivity_inputs",
    "recommendation_text",
    "quantization_gates",
    "quantization_frame",
    "plot_quantization_tradeoff",
    "plot_frontier",
]


@dataclass(kw_only=True)
class QuantizationResults(Results):
    """What its notebook records under results/quantization.json; the schema is derived from these fields."""

    study: ClassVar[str] = "quantization"
    measures: ClassVar[tuple[Measure, ...]] = (
        Measure("quantization.model.heldout_accuracy", "accuracy"),
        Measure("quantization.methods[*].accuracy", "accuracy"),
        Measure("quantization.methods[*].size_bytes", "size"),
    )

    model: dict = described(MODEL_CARD)
    engine: str = described("the quantized engine used (x86, fbgemm, onednn, qnnpack)")
    threads: int = described("torch threads while timing")
    labelled: bool = described("whether quality is accuracy (labels) or fidelity to fp32")
    methods: list = described("per recipe and batch size: latency, speedup, size, quality, coverage")
    sensitivity: list = described("per layer quantized alone: accuracy drop or disagreement, output error")
    frontier: list = described("layers to int8 one step at a time, least sensitive first, per runtime (torch.ao, "
                               "and ONNX Runtime with nodes_to_exclude): quality lost, cosine, latency and speedup "
                               "at each step")
    recommended: str | None = described("the fastest recipe of any runtime within the accuracy budget, fp32 when "
                                        "none within it is faster than fp32")
    export: dict | None = described("the recommended recipe exported and reloaded in a fresh process")
    findings: list = described("what the numbers say, one sentence each")
    skipped: dict = described("methods that do not apply to this model, with the reason (ONNX Runtime's when the "
                              "model does not export to ONNX)")
    stages: list = described("the chain's quantize stage: the recommended recipe's saved file on the golden set, "
                             "against fp32 eager (lab2prod.studies.chain)")

# method -> (library path, what it does). torch.ao is the old path (deprecated upstream), torchao the new one.
METHODS = {
    "torch_ao_dynamic": ("torch.ao (old path)", "quantize_dynamic: int8 weights, activations quantized per batch"),
    "torchao_int8_dynamic": ("torchao (new path)", "Int8DynamicActivationInt8WeightConfig"),
    "torchao_int8_weight_only": ("torchao (new path)", "Int8WeightOnlyConfig: int8 weights, float activations"),
    "onnxruntime_fp32": ("ONNX Runtime", "the ONNX export in ONNX Runtime, not quantized: what the runtime alone "
                         "gives, so the int8 rows can be split into runtime and int8"),
    "onnxruntime_int8_dynamic": ("ONNX Runtime", "quantize_dynamic on the ONNX export: int8 weights per tensor, "
                                 "activations quantized per call (MatMul, Conv, Gather)"),
    "onnxruntime_int8_dynamic_per_channel": ("ONNX Runtime", "quantize_dynamic with per_channel=True: one int8 scale "
                                             "per output channel"),
}
ORT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # what ONNX Runtime's dynamic int8 turns into int8 ops
MODULE_TYPES = {"Linear": nn.Linear, "LSTM": nn.LSTM, "GRU": nn.GRU, "LSTMCell": nn.LSTMCell,
                "GRUCell": nn.GRUCell, "RNNCell": nn.RNNCell}
TORCHAO_TYPES = (nn.Linear,)  # torchao's int8 configs replace Linear weights only


def check_engine(engine: str) -> str:
    """`engine` if this torch build supports it ("auto" included); a clear error otherwise."""
    supported = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if engine not in ("auto", "", None) and engine not in supported:
        raise Lab2ProdError(f"quantized engine {engine!r} is not supported by this torch build; "
                            f"use auto or one of {', '.join(supported)}")
    return engine


def resolve_engine(engine: str = "auto") -> str:
    """Set and return the quantized engine: "auto" keeps torch's default for this CPU; a name must
    be one of torch.backends.quantized.supported_engines."""
    if check_engine(engine) in ("auto", "", None):
        return torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    return engine


def resolve_module_types(names) -> tuple[type, ...]:
    """Module classes from names such as ["Linear", "LSTM"]."""
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in MODULE_TYPES]
    if unknown or not names:
        raise Lab2ProdError(f"module_types {names!r} are not quantizable dynamically; "
                            f"use some of {', '.join(MODULE_TYPES)}")
    return tuple(MODULE_TYPES[n] for n in names)


def check_methods(methods) -> list[str]:
    methods = [methods] if isinstance(methods, str) else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise Lab2ProdError(f"quantization methods {methods!r} are not known; use some of {', '.join(METHODS)}")
    onnx = [m for m in methods if m.startswith("onnxruntime")]
    if onnx and not extras.available("onnx"):
        if len(onnx) == len(methods):
            extras.require("onnx", f"quantization methods {methods!r}")
        warnings.warn(f"ONNX Runtime is not installed, so {', '.join(onnx)} are left out; "
                      f"{extras.install_line('onnx')}", stacklevel=2)
        methods = [m for m in methods if m not in onnx]
    return methods


def check_method(method: str) -> str:
    """One quantization method (the canary's candidate), checked like a list of them; the canary
    serves its candidate through TorchServe's torch handler, so an ONNX Runtime method is refused."""
    method = check_methods([method])[0]
    if method.startswith("onnxruntime"):
        torch_methods = [m for m in METHODS if not m.startswith("onnxruntime")]
        raise Lab2ProdError(f"method {method!r} makes an ONNX file, which the canary's TorchServe handler does not "
                            f"serve; use one of {', '.join(torch_methods)}")
    return method


def _import_torchao():
    # torchao logs import-time notices through torch's loggers; they are noise in a report.
    for name in ("torch.utils._pytree", "torch.utils.cpp_extension", "torchao"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import torchao.quantization as tq
    except ImportError:  # pragma: no cover - pinned in requirements.txt
        raise Lab2ProdError("the torchao methods need torchao; pip install -r requirements.txt") from None
    return tq


def quantized_layers(module: nn.Module, method: str, module_types: tuple[type, ...]) -> list[str]:
    """Names of the leaf layers that `method` quantizes in `module`."""
    if method == "onnxruntime_fp32":
        return []
    if method.startswith("onnxruntime"):
        types = ORT_TYPES
    else:
        types = tuple(t for t in module_types if t in TORCHAO_TYPES) if method.startswith("torchao") else module_types
    return [name for name, child in module.named_modules() if name and types and isinstance(child, types)]


def quantize(module: nn.Module, method: str, module_types: tuple[type, ...], keep_fp32=(), example=None,
             onnx_file: Path | None = None) -> nn.Module:
    """A quantized copy of `module`; the layers named in `keep_fp32` stay in float. ONNX Runtime's
    methods export `module` to ONNX on `example` (or start from `onnx_file`, that export made once) and return
    the int8 file in a session (lab2prod.models.onnx_rt.OrtModule; its files are removed with it)."""
    check_methods([method])
    if method.startswith("onnxruntime"):
        return _ort_quantized(module, method, example, onnx_file)
    model = copy.deepcopy(module).eval()
    layers = [n for n in quantized_layers(model, method, module_types) if n not in set(keep_fp32)]
    if not layers:
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        if method == "torch_ao_dynamic":
            qconfig = torch.ao.quantization.default_dynamic_qconfig
            return torch.ao.quantization.quantize_dynamic(model, {name: qconfig for name in layers}, dtype=torch.qint8)
        tq = _import_torchao()
        config = (tq.Int8DynamicActivationInt8WeightConfig() if method == "torchao_int8_dynamic"
                  else tq.Int8WeightOnlyConfig())
        chosen = set(layers)
        tq.quantize_(model, config, filter_fn=lambda child, fqn: fqn in chosen)
    return model


def _ort_quantized(module: nn.Module, method: str, example, onnx_file: Path | None = None) -> nn.Module:
    if onnx_file is not None:  # a copy of the export in a folder of its own: each session removes its own files
        folder = scratch_dir("lab2prod-onnx-")
        for path in [Path(onnx_file), *external_files(onnx_file)]:
            shutil.copyfile(path, folder / path.name)
        source = folder / Path(onnx_file).name
    elif example is None:
        raise Lab2ProdError(f"{method} needs example inputs to export the model to ONNX")
    else:
        folder, source = export_to_temp(module, example)
    if method == "onnxruntime_fp32":
        session = OrtModule(source)
        session.quantized_ops, session.source = [], source
        weakref.finalize(session, shutil.rmtree, str(folder), True)
        return session
    target = folder / "model.int8.onnx"
    try:
        ops = quantize_file(source, target, per_channel=method.endswith("per_channel"))
    except Exception as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise Lab2ProdError(f"{method}: ONNX Runtime could not quantize the model ({exc})") from None
    quantized = OrtModule(target)
    quantized.quantized_ops, quantized.source = ops, source
    weakref.finalize(quantized, shutil.rmtree, str(folder), True)
    return quantized


_RNN_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def _rnn_flops(module: nn.Module, inputs: tuple) -> int:
    # torch.utils.flop_counter does not count the fused RNN ops; count their matmuls here:
    # per layer and direction, 2 * gates * hidden * (input + hidden) multiply-adds per step.
    x = inputs[0]
    steps, batch = (x.shape[1], x.shape[0]) if module.batch_first else (x.shape[0], x.shape[1])
    if x.dim() == 2:
        steps, batch = x.shape[0], 1
    gates = next(g for t, g in _RNN_GATES.items() if isinstance(module, t))
    directions = 2 if module.bidirectional else 1
    flops = 0
    for layer in range(module.num_layers):
        width = module.input_size if layer == 0 else module.hidden_size * directions
        flops += directions * 2 * gates * module.hidden_size * (width + module.hidden_size)
    return flops * steps * batch


def coverage(module: nn.Module, layers: list[str], example: Inputs) -> tuple[float, float]:
    """(share of parameters, share of FLOPs) in `layers`, each 0..1; FLOPs from
    torch.utils.flop_counter on `example`, plus the matmuls of LSTM/GRU/RNN layers, which it
    does not count."""
    from torch.utils.flop_counter import FlopCounterMode

    total_params = sum(p.numel() for p in module.parameters())
    named = dict(module.named_modules())
    params = sum(p.numel() for name in layers for p in named[name].parameters())
    rnn_flops: dict[str, int] = {}
    hooks = [child.register_forward_hook(
        lambda mod, inputs, output, name=name: rnn_flops.__setitem__(name, _rnn_flops(mod, inputs)))
        for name, child in named.items() if isinstance(child, tuple(_RNN_GATES))]
    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            call(module, example)
    finally:
        for hook in hooks:
            hook.remove()
    counts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    root = type(module).__name__
    total_flops = counts.get("Global", 0) + sum(rnn_flops.values())
    flops = sum(counts.get(f"{root}.{name}", 0) + rnn_flops.get(name, 0) for name in layers)
    return (params / total_params if total_params else 0.0, flops / total_flops if total_flops else 0.0)


def serialized_size(module: nn.Module) -> int:
    """Bytes of torch.save(module.state_dict()), or of an ONNX file and its external data: what a
    deployment ships."""
    if hasattr(module, "file_bytes"):
        return int(module.file_bytes)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(module.state_dict(), buffer)
    return len(buffer.getvalue())


def latency_ms(module: nn.Module, batch: Inputs, threads: int, min_run_time: float) -> float:
    """Median milliseconds per call, torch.utils.benchmark's blocked_autorange on `threads` threads."""
    from torch.utils import benchmark

    if hasattr(module, "set_threads"):  # an ONNX Runtime session: its own intra-op threads, as many
        module.set_threads(threads)
    timer = benchmark.Timer("call(module, batch)", globals={"module": module, "batch": batch, "call": call},
                            num_threads=threads)
    with torch.inference_mode():
        call(module, batch)  # warm-up: first calls pack weights and pick kernels
        return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


@dataclass
class EvalData:
    """Inputs the quality numbers are measured on, with labels when the model has labelled data."""

    inputs: Inputs
    labels: torch.Tensor | None
    task: str = "classifier"

    @property
    def count(self) -> int:
        return batch_size_of(self.inputs)


def eval_data(loaded, count: int = 360, seed: int = 0) -> EvalData:
    """The user's data (--data: every item, with its labels when it has them), else the held-out
    digits or photo crops with labels for the reference models, else `count` held-out inputs (with the labels the input
    function returns, if it does)."""
    if loaded.data is not None:
        return EvalData(loaded.data_inputs(), loaded.data_labels, loaded.task)
    if loaded.family in ("digits", "photos"):
        if loaded.lab_transform:  # the held-out images through the user's own lab transform

            transform = load_transform(loaded.lab_transform, "lab_transform")
            images, labels = reference_images(loaded.family, "test")
            return EvalData(torch.stack([transform(image) for image in images]), torch.as_tensor(labels))
        images, labels = reference_tensors(loaded.family, "test")
        return EvalData(images, labels)
    labels = loaded.make_labels(count, seed, "test") if loaded.make_labels is not None else None
    return EvalData(loaded.make_inputs(count, seed, "test"), labels, loaded.task)


def quality(reference: torch.Tensor, outputs: torch.Tensor, labels: torch.Tensor | None,
            task: str = "classifier") -> dict:
    """Fidelity of `outputs` to the fp32 `reference` (mean cosine similarity per sample, top-1
    agreement for a classifier, relative L2 error) and accuracy when labels are given. An
    embedder has no top-1: the argmax of a vector means nothing."""
    ref, out = reference.flatten(1), outputs.flatten(1)
    row = {
        "cosine": float(nn.functional.cosine_similarity(ref, out, dim=1).mean()),
        "top1_agreement": float((ref.argmax(1) == out.argmax(1)).float().mean()) if task == "classifier" else None,
        "relative_error": float((out - ref).norm() / ref.norm().clamp_min(1e-12)),
        "accuracy": None,
    }
    if labels is not None:
        row["accuracy"] = float((out.argmax(1) == labels).float().mean())
    return row


def _drop_pts(row: dict, fp32: dict) -> float:
    """The quality lost, in points: the accuracy drop when labelled, else top-1 disagreement with
    fp32 for a classifier, else (an embedder) 100 x (1 - cosine to fp32), so a 1-point budget is
    a cosine of at least 0.99."""
    if fp32["accuracy"] is not None:
        return round(100 * (fp32["accuracy"] - row["accuracy"]), 2)
    if row["top1_agreement"] is None:
        return round(100 * (1 - row["cosine"]), 2)
    return round(100 * (1 - row["top1_agreement"]), 2)


@dataclass
class MethodResult:
    """One recipe (fp32, a method, or a selective recipe) measured once for quality and size,
    and at each batch size for latency."""

    method: str
    module: nn.Module = field(repr=False)
    layers: list[str]
    keep_fp32: list[str]
    size_bytes: int
    coverage_params: float
    coverage_flops: float
    quality: dict
    accuracy_drop_pts: float
    latency_ms: dict[int, float] = field(default_factory=dict)

    def rows(self, fp32: MethodResult) -> list[dict]:
        """The named-results rows, one per batch size."""
        return [{
            "method": self.method,
            "batch_size": batch_size,
            "latency_ms": self.latency_ms[batch_size],
            "speedup": fp32.latency_ms[batch_size] / self.latency_ms[batch_size],
            "size_bytes": self.size_bytes,
            "size_ratio": fp32.size_bytes / self.size_bytes,
            "accuracy": self.quality["accuracy"],
            "accuracy_drop_pts": self.accuracy_drop_pts,
            "cosine": self.quality["cosine"],
            "top1_agreement": self.quality["top1_agreement"],
            "coverage_params": self.coverage_params,
            "coverage_flops": self.coverage_flops,
            "quantized_layers": len(self.layers),
            "kept_fp32": list(self.keep_fp32),
        } for batch_size in sorted(self.latency_ms)]


def _measure(name: str, model: nn.Module, layers: list[str], keep: list[str], loaded, data: EvalData,
             reference: torch.Tensor, fp32_quality: dict | None) -> MethodResult:
    example = loaded.make_inputs(2, 0)
    params_share, flops_share = coverage(loaded.module, layers, example) if layers else (0.0, 0.0)
    row = quality(reference, outputs_of(model, data.inputs), data.labels, data.task)
    drop = _drop_pts(row, fp32_quality or row)
    return MethodResult(name, model, layers, keep, serialized_size(model), params_share, flops_share, row, drop)


def _time(results: list[MethodResult], loaded, batch_sizes, threads, min_run_time, seed, progress,
          rounds: int = 2) -> None:
    # Recipes are timed in alternating rounds and each keeps its best median, so a slow moment of a
    # shared machine (or the order of measurement) does not decide which recipe looks faster.

    steps = [(round_, b, r) for round_ in range(rounds) for b in batch_sizes for r in results]
    batches = {b: loaded.make_inputs(b, seed, "test") for b in batch_sizes}
    for round_, batch_size, result in progress_steps(steps, "latency", "run", show=progress):
        median = latency_ms(result.module, batches[batch_size], threads, min_run_time / rounds)
        previous = result.latency_ms.get(batch_size)
        result.latency_ms[batch_size] = median if previous is None or round_ == 0 else min(previous, median)


def evaluate_methods(loaded, methods, module_types, batch_sizes, threads: int = 1, min_run_time: float = 0.5,
                     seed: int = 0, data: EvalData | None = None, progress: bool = True,
                     skipped: dict | None = None) -> list[MethodResult]:
    """fp32 first, then each method on the same model, data and batches. A method that does not
    apply to this model (ONNX Runtime's, when the model does not export to ONNX) is left out,
    with its reason in `skipped`."""
    methods = check_methods(methods)
    data = data or eval_data(loaded, seed=seed)
    reference = outputs_of(loaded.module, data.inputs)
    fp32 = _measure("fp32", loaded.module, [], [], loaded, data, reference, None)
    results = [fp32]
    example = loaded.make_inputs(2, seed, "train")
    exported: dict = {}  # ONNX Runtime's methods start from one export of the model, made on first use
    try:
        for method in progress_steps(methods, "quantize", "method"):
            layers = quantized_layers(loaded.module, method, module_types)
            try:
                onnx_file = _shared_export(exported, loaded.module, example) if method.startswith("onnx") else None
                model = quantize(loaded.module, method, module_types, example=example, onnx_file=onnx_file)
            except Lab2ProdError as exc:
                if skipped is None or not method.startswith("onnxruntime"):
                    raise
                skipped[method] = str(exc)
                continue
            if getattr(model, "quantized_ops", None):  # ONNX Runtime's int8: the layers whose nodes it quantized
                layers = ort_layers(model.source, loaded.module)
            results.append(_measure(method, model, layers, [], loaded, data, reference, fp32.quality))
    finally:
        if "folder" in exported:
            shutil.rmtree(exported["folder"], ignore_errors=True)
    _time(results, loaded, batch_sizes, threads, min_run_time, seed, progress)
    return results


def _shared_export(exported: dict, module: nn.Module, example) -> Path:
    # the model's ONNX export, made once for every ONNX Runtime method; a model that does not export says so once
    if "error" in exported:
        raise exported["error"]
    if "file" not in exported:
        try:
            exported["folder"], exported["file"] = export_to_temp(module, example)
        except Lab2ProdError as exc:
            exported["error"] = exc
            raise
    return exported["file"]


def sensitivity_inputs(data: EvalData, count: int) -> EvalData:
    """The first `count` of `data` (all of it when `count` is 0 or larger): the per-layer sensitivity ranks layers,
    and a ranking needs fewer inputs than a budget decision."""
    if not count or count >= data.count:
        return data
    labels = data.labels[:count] if data.labels is not None else None
    return EvalData(take(data.inputs, 0, count), labels, data.task)


def layer_sensitivity(loaded, method: str, module_types, data: EvalData, progress: bool = False) -> list[dict]:
    """Quantize one layer at a time: each layer's accuracy drop (or disagreement) and relative
    output error vs fp32, most sensitive first."""

    reference = outputs_of(loaded.module, data.inputs)
    fp32 = quality(reference, reference, data.labels, data.task)
    layers = quantized_layers(loaded.module, method, module_types)
    named = dict(loaded.module.named_modules())
    rows = []
    for layer in progress_steps(layers, "sensitivity", "layer", show=progress):
        model = quantize(loaded.module, method, module_types, keep_fp32=[n for n in layers if n != layer])
        row = quality(reference, outputs_of(model, data.inputs), data.labels, data.task)
        rows.append({"layer": layer, "type": type(named[layer]).__name__,
                     "parameters": sum(p.numel() for p in named[layer].parameters()),
                     "accuracy_drop_pts": _drop_pts(row, fp32), "relative_error": row["relative_error"],
                     "cosine": row["cosine"], "inputs": data.count})
    return sorted(rows, key=lambda r: (-r["accuracy_drop_pts"], -r["relative_error"]))


def frontier(loaded, method: str, module_types, sensitivity: list[dict], data: EvalData, batch_size: int,
             threads: int, min_run_time: float, budget_pts: float, max_steps: int = 12,
             rounds: int = 2, progress: bool = False) -> list[dict]:
    """The speed-fidelity frontier of a selective recipe: layers go to int8 one step at a time, least
    sensitive first (the per-layer `sensitivity`), and each step is measured: quality lost (points,
    as the budget counts them), cosine to fp32, median latency at `batch_size` and speedup over
    fp32 (all steps and fp32 timed in alternating rounds, best median kept). At most `max_steps`
    steps, spread evenly up to every layer. One row per step, fp32 first."""
    order = [r["layer"] for r in reversed(sensitivity)]  # least sensitive first
    rows, models = _measured_steps(loaded, method, data, order, max_steps, progress,
                                   lambda count: quantize(loaded.module, method, module_types, keep_fp32=order[count:]))
    return _time_steps(rows, models, loaded, batch_size, threads, min_run_time, budget_pts, rounds)


def _measured_steps(loaded, method: str, data: EvalData, order: list[str], max_steps: int, progress: bool,
                    make) -> tuple[list[dict], list]:
    # fp32, then `make(count)` for each step count (the first `count` of `order` in int8), each measured for
    # quality on `data`: the rows and the models, both fp32 first; `models` holds what was made if a step fails
    reference = outputs_of(loaded.module, data.inputs)
    fp32_quality = quality(reference, reference, data.labels, data.task)
    rows = [{"method": "fp32", "quantized_layers": 0, "kept_fp32": len(order), "added": "", "drop_pts": 0.0,
             "cosine": fp32_quality["cosine"]}]
    models = [loaded.module]
    for count in progress_steps(_step_counts(len(order), max_steps), f"frontier {method}", "step", show=progress):
        models.append(make(count))
        row = quality(reference, outputs_of(models[-1], data.inputs), data.labels, data.task)
        rows.append({"method": method, "quantized_layers": count, "kept_fp32": len(order) - count,
                     "added": order[count - 1], "drop_pts": _drop_pts(row, fp32_quality), "cosine": row["cosine"]})
    return rows, models


def _step_counts(layers: int, max_steps: int) -> list[int]:
    """At most `max_steps` layer counts from 1 to `layers`, spread evenly."""
    return sorted({int(round(c)) for c in np.linspace(1, layers, min(layers, max_steps))}) if layers else []


def _time_steps(rows: list[dict], models: list, loaded, batch_size: int, threads: int, min_run_time: float,
                budget_pts: float, rounds: int) -> list[dict]:
    # every step and fp32 (the first row) in alternating rounds, the best median kept: speedups in one run
    batch = loaded.make_inputs(batch_size, 0, "test")
    for round_ in range(rounds):
        for row, model in zip(rows, models, strict=True):
            median = latency_ms(model, batch, threads, min_run_time / rounds)
            row["latency_ms"] = median if round_ == 0 else min(row["latency_ms"], median)
    for row in rows:
        row["speedup"] = rows[0]["latency_ms"] / row["latency_ms"]
        row["within_budget"] = row["drop_pts"] <= budget_pts
        row["batch_size"] = batch_size
    return rows


ORT_INT8 = ("onnxruntime_int8_dynamic_per_channel", "onnxruntime_int8_dynamic")


def ort_layer_order(source: Path, module: nn.Module, sensitivity: list[dict]) -> list[tuple[str, list[str]]]:
    """ONNX Runtime's quantizable nodes grouped by the torch layer they came from, in the order the frontier
    quantizes them: the layers of the per-layer `sensitivity`, least sensitive first, then the groups it did not
    measure (embeddings, convolutions, nodes under no layer), which go to int8 last. [(layer, [node, ...])]."""
    names = {name for name, _ in module.named_modules() if name}
    groups: dict[str, list[str]] = {}
    for row in quantizable_nodes(source, names):
        groups.setdefault(row["layer"] or f"{row['op']} {row['node']}", []).append(row["node"])
    measured = [r["layer"] for r in reversed(sensitivity) if r["layer"] in groups]
    return [(layer, groups[layer]) for layer in measured] + [(k, v) for k, v in groups.items() if k not in measured]


def ort_layers(source: Path, module: nn.Module) -> list[str]:
    """The torch layers whose ONNX nodes ONNX Runtime's dynamic int8 quantizes (a Linear on 2-D inputs, a Gemm,
    is not among them), in the model's order."""
    names = [name for name, _ in module.named_modules() if name]
    found = {row["layer"] for row in quantizable_nodes(source, names)}
    return [name for name in names if name in found]


def ort_method(results: list[MethodResult], budget_pts: float) -> MethodResult | None:
    """The ONNX Runtime int8 recipe the frontier starts from: the measured one that lost least, when every
    measured one is over the budget (within it, the whole-model recipe is already a candidate); else None."""
    ort = [r for r in results if r.method in ORT_INT8]
    if not ort or any(r.accuracy_drop_pts <= budget_pts for r in ort):
        return None
    return min(ort, key=lambda r: (r.accuracy_drop_pts, ORT_INT8.index(r.method)))


def _ort_step(source: Path, folder: Path, method: str, order, count: int) -> nn.Module:
    exclude = [node for _, nodes in order[count:] for node in nodes]
    target = Path(folder) / f"{method}_{count}.onnx"
    per_channel = method.removesuffix("_selective").endswith("per_channel")
    ops = quantize_file(source, target, per_channel=per_channel, nodes_to_exclude=exclude)
    module = OrtModule(target)
    module.quantized_ops, module.source = ops, source
    return module


def ort_frontier(loaded, results: list[MethodResult], sensitivity: list[dict], data: EvalData, batch_size: int,
                 threads: int, min_run_time: float, budget_pts: float, max_steps: int = 8, rounds: int = 2,
                 progress: bool = False) -> list[dict]:
    """The frontier of ONNX Runtime's int8 with the sensitive nodes kept in fp32 (quantize_dynamic's
    nodes_to_exclude): layer by layer in `ort_layer_order`, each step quantized, measured for quality and timed
    against eager fp32 like `frontier`. Empty when no ONNX Runtime int8 recipe is over the budget
    (`ort_method`) or no sensitivity was measured. One row per step, fp32 first."""

    whole = ort_method(results, budget_pts)
    if whole is None or not sensitivity:
        return []
    folder = Path(whole.module.path).parent
    source = inline_weights(whole.module.source, folder / "inlined.onnx")
    order = ort_layer_order(source, loaded.module, sensitivity)
    made = []  # each step's file, removed once timed (or when a step fails)

    def make(count: int) -> nn.Module:
        made.append(_ort_step(source, folder, whole.method, order, count))
        return made[-1]

    try:
        rows, models = _measured_steps(loaded, whole.method, data, [layer for layer, _ in order], max_steps,
                                       progress, make)
        return _time_steps(rows, models, loaded, batch_size, threads, min_run_time, budget_pts, rounds)
    finally:
        for model in made:
            model._session = None
            Path(model.path).unlink(missing_ok=True)


def best_step(steps: list[dict], method: str = "") -> dict | None:
    """The fastest frontier step within the budget that quantizes something (of `method`, when given); None when
    none fits."""
    within = [s for s in steps if s["quantized_layers"] > 0 and s["within_budget"]
              and (not method or s.get("method") == method)]
    return min(within, key=lambda s: s["latency_ms"], default=None)


def recommended(results: list[MethodResult], budget_pts: float, batch_size: int,
                fp32_unless_faster: bool = True) -> MethodResult | None:
    """The fastest quantized recipe of any runtime at `batch_size` within the accuracy budget (ONNX Runtime's
    included; its unquantized session is a reference, not a recipe). fp32 itself when none within the budget is
    faster than fp32 (unless `fp32_unless_faster` is off); None when none is within the budget."""
    within = [r for r in results if r.method not in ("fp32", "onnxruntime_fp32") and r.accuracy_drop_pts <= budget_pts]
    best = min(within, key=lambda r: r.latency_ms[batch_size], default=None)
    if best is not None and fp32_unless_faster and best.latency_ms[batch_size] >= results[0].latency_ms[batch_size]:
        return results[0]
    return best


def recommendation_text(results: list[MethodResult], best: MethodResult | None, budget_pts: float,
                        batch_size: int) -> str:
    """One line: what is recommended and why, from the measured numbers."""
    if best is None:
        return f"no recipe within the {budget_pts:g}-point budget"
    fp32 = results[0].latency_ms[batch_size]
    if best.method == "fp32":
        within = [r for r in results[1:] if r.method != "onnxruntime_fp32" and r.accuracy_drop_pts <= budget_pts]
        fastest = min(within, key=lambda r: r.latency_ms[batch_size])
        return (f"fp32: the fastest recipe within the {budget_pts:g}-point budget, {fastest.method}, is "
                f"{fp32 / fastest.latency_ms[batch_size]:.2f}x fp32 at batch {batch_size}; quantizing would not "
                "make this model faster")
    return (f"{best.method}: {fp32 / best.latency_ms[batch_size]:.2f}x fp32 at batch {batch_size}, "
            f"{best.accuracy_drop_pts:g} points lost (budget {budget_pts:g}), the fastest of every runtime within "
            "the budget")


def export_quantized(result: MethodResult, loaded, out_dir: Path, batch_sizes, seed: int = 0,
                     stages: list | None = None, budget_pts: float = 1.0) -> dict:
    """Save a quantized recipe as TorchScript (torch.ao) or torch.export (torchao), reload it in
    a fresh process, and compare with the in-process quantized model. Returns a status dict:
    format, file, produced, error, max_abs_diff, top1_agreement. Given a `stages` list, the same process
    answers the golden set (chain.golden_cases) and the chain's quantize stage is appended: the shipped file
    against fp32 eager, within the accuracy budget (top-1 agreement, or mean cosine for an embedder)."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = {f"held-out:{b}": loaded.make_inputs(b, seed + 1, "test") for b in batch_sizes}
    golden = chain.golden_cases(loaded, seed=seed, batch_size=max(batch_sizes)) if stages is not None else {}
    stage_name = f"quantized: {result.method}"
    example = loaded.make_inputs(2, seed, "train")
    if result.method.startswith("onnxruntime"):
        fmt = "onnx"
    else:
        fmt = "torchscript_trace" if result.method.startswith("torch_ao") or result.method == "fp32" else "torch_export"
    suffix = {"onnx": "onnx", "torch_export": "pt2"}.get(fmt, "pt")
    path = out_dir / f"quantized_{result.method}.{suffix}"
    status = {"method": result.method, "format": fmt, "file": f"{out_dir.name}/{path.name}", "produced": False,
              "error": None,
              "max_abs_diff": None, "top1_agreement": None}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "onnx":  # the int8 file itself, as ONNX Runtime made it
                shutil.copyfile(result.module.path, path)
            elif fmt == "torchscript_trace":
                torch.jit.save(trace(result.module, example), str(path))
            else:
                torch.export.save(export_program(result.module, example)[1], str(path))
        status["produced"] = True
    except Exception as exc:
        status["error"] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
        path.unlink(missing_ok=True)
        if golden:
            stages.append(chain.failed_stage(stage_name, "quantize", loaded.task, chain.golden_label(golden),
                                             f"not saved: {status['error']}"))
        return status
    reload, outputs = reload_in_fresh_process(fmt, path, {**cases, **golden})
    if not reload.get("loaded") or reload.get("errors"):
        status["error"] = reload.get("load_error") or "; ".join(reload["errors"].values())
        if golden:
            stages.append(chain.failed_stage(stage_name, "quantize", loaded.task, chain.golden_label(golden),
                                             f"the saved file does not answer: {status['error']}"))
        return status
    diffs, agree = [], []
    with torch.inference_mode():
        for name, batch in cases.items():
            expected = first_tensor(call(result.module, batch)).float()
            diffs.append(float((outputs[name] - expected).abs().max()))
            if loaded.task == "classifier":
                agree.append(float((outputs[name].argmax(1) == expected.argmax(1)).float().mean()))
    status.update(max_abs_diff=max(diffs), top1_agreement=float(np.mean(agree)) if agree else None)
    if golden:
        stages.append(_quantize_stage(stage_name, result, loaded, golden, outputs, status, budget_pts))
    return status


def _quantize_stage(name: str, result: MethodResult, loaded, golden: dict, outputs: dict, status: dict,
                    budget_pts: float) -> dict:
    """The chain's quantize stage: the saved file's answers on the golden set against fp32 eager. Its tolerance
    is the study's own: within the accuracy budget on the study's held-out inputs (64 golden requests are too
    few to judge a 1-point budget), and the file answering as the in-process recipe did."""
    candidate = chain.answer_space(torch.cat([outputs[case] for case in golden]), loaded.task)
    row = chain.stage(name, "quantize", chain.golden_outputs(loaded.module, golden, loaded.task), candidate,
                      loaded.task, None, 0.0, chain.golden_label(golden), compared="answers of the saved file, "
                      "fresh process", measure="mean cosine" if loaded.task == "embedder" else "")
    same_file = status["max_abs_diff"] <= 1e-4 and status["top1_agreement"] in (None, 1.0)
    row["passed"] = same_file and result.accuracy_drop_pts <= budget_pts
    row["tolerance"] = (f"within the {budget_pts:g}-point budget on the study's held-out inputs (drop "
                        f"{result.accuracy_drop_pts:.2f}); the file answers as the recipe in process")
    if not same_file:
        row["detail"] = f"the saved file differs from the recipe in process by {status['max_abs_diff']:.3g}"
    return row


def not_quantized_stage(loaded, why: str, failed: bool) -> dict:
    """The chain's quantize stage when no file was saved: no recipe within the budget (failed), or none asked."""
    return chain.failed_stage("quantized: none", "quantize", loaded.task, "", why, passed=False if failed else None)


def findings(results: list[MethodResult], batch_sizes) -> list[str]:
    """Sentences that say, from the measured numbers, which recipe wins at each batch size and
    how much of the model the methods can touch."""
    fp32 = results[0]
    lines = []
    for batch_size in sorted(batch_sizes):
        best = min(results[1:], key=lambda r: r.latency_ms[batch_size], default=None)
        if best is None:
            continue
        speedup = fp32.latency_ms[batch_size] / best.latency_ms[batch_size]
        lines.append(f"batch {batch_size}: fastest is {best.method} at {best.latency_ms[batch_size]:.3g} ms, "
                     f"{speedup:.2f}x fp32 ({fp32.latency_ms[batch_size]:.3g} ms)"
                     + ("; no int8 recipe beats fp32 here: the (de)quantization around small matmuls costs more "
                        "than int8 saves, so quantize this model for size, not speed" if speedup < 1 else ""))
    lines += _runtime_split(results, batch_sizes)
    for result in results[1:]:
        if result.method == "onnxruntime_fp32":
            continue
        lines.append(f"{result.method}: {len(result.layers)} layers, {100 * result.coverage_params:.1f}% of "
                     f"parameters, {100 * result.coverage_flops:.1f}% of FLOPs; "
                     f"{fp32.size_bytes / result.size_bytes:.2f}x smaller")
    return lines


def _runtime_split(results: list[MethodResult], batch_sizes) -> list[str]:
    """Why ONNX Runtime's int8 wins or loses: its speedup over eager fp32 split into what ONNX
    Runtime gives without quantization (its fp32 session: one C++ graph, fused ops, no Python
    per op) and what its int8 kernels add on top, beside torch.ao's int8 at the same batch size."""
    by_name = {r.method: r for r in results}
    fp32, ort = by_name["fp32"], by_name.get("onnxruntime_fp32")
    if ort is None:
        return []
    lines = []
    for batch_size in sorted(batch_sizes):
        for name in ("onnxruntime_int8_dynamic", "onnxruntime_int8_dynamic_per_channel"):
            if name not in by_name:
                continue
            total = fp32.latency_ms[batch_size] / by_name[name].latency_ms[batch_size]
            runtime = fp32.latency_ms[batch_size] / ort.latency_ms[batch_size]
            line = (f"batch {batch_size}: {name} is {total:.2f}x eager fp32 = {runtime:.2f}x from ONNX Runtime itself "
                    f"(its fp32 session) x {total / runtime:.2f}x from its int8 kernels")
            if "torch_ao_dynamic" in by_name:
                torch_ao = fp32.latency_ms[batch_size] / by_name["torch_ao_dynamic"].latency_ms[batch_size]
                line += f"; torch.ao int8 is {torch_ao:.2f}x"
            lines.append(line)
            break
    return lines


def add_selective(results: list[MethodResult], loaded, module_types, sensitivity: list[dict], data: EvalData,
                  budget_pts: float, batch_sizes, threads: int, min_run_time: float, seed: int = 0,
                  steps: list[dict] | None = None) -> str:
    """Append a selective recipe to `results` for each runtime whose whole-model int8 exceeds the budget: the
    fastest step of its frontier (`steps`: torch.ao's and ONNX Runtime's) within the budget, timed at every batch
    size like the other recipes. Returns what was done, a sentence per runtime."""
    lines = [_add_torch_selective(results, loaded, module_types, sensitivity, data, budget_pts, batch_sizes, threads,
                                  min_run_time, seed, steps or [])]
    ort = ort_method(results, budget_pts)
    if ort is not None:
        lines.append(_add_ort_selective(results, ort, loaded, sensitivity, data, budget_pts, batch_sizes, threads,
                                        min_run_time, seed, steps or []))
    return "\n".join(lines)


def _add_torch_selective(results, loaded, module_types, sensitivity, data, budget_pts, batch_sizes, threads,
                         min_run_time, seed, steps) -> str:
    full = next((r for r in results if r.method == "torch_ao_dynamic"), None)
    if full is None:
        return "selective recipe: needs torch_ao_dynamic among the methods"
    if full.accuracy_drop_pts <= budget_pts:
        return "selective recipe: not needed, the whole-model recipe is within the budget"
    best = best_step(steps, "torch_ao_dynamic")
    if best is None:
        return "selective recipe: no step of the frontier fits the budget, even with one layer quantized"
    order = [r["layer"] for r in reversed(sensitivity)]
    keep = order[best["quantized_layers"]:]
    reference = outputs_of(loaded.module, data.inputs)
    model = quantize(loaded.module, "torch_ao_dynamic", module_types, keep_fp32=keep)
    selective = _measure("torch_ao_dynamic_selective", model, order[:best["quantized_layers"]], keep, loaded, data,
                         reference, results[0].quality)
    _time([selective], loaded, batch_sizes, threads, min_run_time, seed, progress=False)
    results.append(selective)
    return (f"selective recipe: {best['quantized_layers']} of {len(order)} layers in int8, {len(keep)} kept in fp32 "
            f"({selective.accuracy_drop_pts} pts; {best['speedup']:.2f}x fp32 at batch {best['batch_size']} on the "
            "frontier)")


def _add_ort_selective(results, whole: MethodResult, loaded, sensitivity, data, budget_pts, batch_sizes, threads,
                       min_run_time, seed, steps) -> str:
    name = f"{whole.method}_selective"
    best = best_step(steps, whole.method)
    if best is None:
        return (f"{name}: no step of ONNX Runtime's frontier fits the budget" if sensitivity else
                f"{name}: not tried, no per-layer sensitivity to order the nodes by")
    folder = Path(whole.module.path).parent
    source = folder / "inlined.onnx"
    if not source.exists():
        inline_weights(whole.module.source, source)
    order = ort_layer_order(source, loaded.module, sensitivity)
    count = best["quantized_layers"]
    model = _ort_step(source, folder, name, order, count)
    named = {n for n, _ in loaded.module.named_modules()}
    layers = [layer for layer, _ in order[:count] if layer in named]
    keep = [layer for layer, _ in order[count:]]
    selective = _measure(name, model, layers, keep, loaded, data, outputs_of(loaded.module, data.inputs),
                         results[0].quality)
    _time([selective], loaded, batch_sizes, threads, min_run_time, seed, progress=False)
    results.append(selective)
    return (f"{name}: {count} of {len(order)} layers' nodes in int8, {len(keep)} kept in fp32 (nodes_to_exclude; "
            f"{selective.accuracy_drop_pts} pts; {best['speedup']:.2f}x fp32 at batch {best['batch_size']} on the "
            "frontier)")


def sensitivity_wanted(results: list[MethodResult], loaded, method: str, module_types, data: EvalData,
                       budget_pts: float, max_seconds: float) -> tuple[bool, str, int, int]:
    """(whether to measure the per-layer sensitivity and the frontiers, why, inputs, steps). Always when a
    whole-model int8 recipe (`method`, or every ONNX Runtime one) is over the budget: the selective recipes are
    built from them. Then each phase is sized from one timed evaluation of `data`: the sensitivity ranks
    layers on its first `inputs` (at least 64) in about half of `max_seconds`, and a frontier takes at most
    `steps` steps (3 to 12, an evaluation each within `max_seconds`); the selective recipe is measured again
    on every input. Within the budget they change no recommendation, so they run on all inputs and 12 steps
    only when that estimate stays under `max_seconds`: on a large model they cost minutes."""
    whole = next((r for r in results if r.method == method), None)
    if whole is None:
        return False, f"{method} was not measured: no per-layer sensitivity", 0, 0
    layers = quantized_layers(loaded.module, method, module_types)
    if not layers:
        return False, "no layer of the chosen types to quantize", 0, 0
    over_budget = whole.accuracy_drop_pts > budget_pts or ort_method(results, budget_pts) is not None
    start = time.perf_counter()
    outputs_of(loaded.module, data.inputs)
    one = max(time.perf_counter() - start, 1e-6)
    estimate = one * (len(layers) + min(len(layers), 12))
    if not over_budget:
        if estimate <= max_seconds:
            return True, f"measured: about {estimate:.0f} s ({len(layers)} layers and frontier steps)", data.count, 12
        return False, (f"not measured: {method} is within the {budget_pts:g}-point budget, and the per-layer "
                       f"sensitivity and frontier would take about {estimate:.0f} s ({len(layers)} layers and up to "
                       f"12 steps, {one:.1f} s an evaluation), over sensitivity_max_s={max_seconds:g}; raise it to "
                       "see them"), 0, 0
    which = method if whole.accuracy_drop_pts > budget_pts else "every ONNX Runtime int8 recipe"
    ranking_s = max_seconds / 2  # the other half for the frontiers
    inputs = data.count if one * len(layers) <= ranking_s else min(
        data.count, max(64, int(data.count * ranking_s / (one * len(layers)))))
    steps = int(min(12, max(3, max_seconds // one)))
    sized = ("" if inputs == data.count and steps == 12 else
             f"; sized to sensitivity_max_s={max_seconds:g} ({one:.1f} s an evaluation of {data.count} inputs): the "
             f"ranking on {inputs} inputs, at most {steps} frontier steps")
    return True, f"{which} is over the budget: every layer is measured to build the selective recipe{sized}", \
        inputs, steps


def first_layer_over_share(sensitivity: list[dict], module: nn.Module, budget_pts: float) -> dict | None:
    """The first layer, in the model's own order, whose quality lost when quantized alone exceeds its share of
    the budget (the budget split evenly over the quantizable layers): where a whole-model recipe over budget
    starts to go wrong. None when every layer stays within its share."""
    if not sensitivity:
        return None
    share = budget_pts / len(sensitivity)
    order = {name: i for i, (name, _) in enumerate(module.named_modules())}
    over = [r for r in sensitivity if r["accuracy_drop_pts"] > share]
    first = min(over, key=lambda r: order.get(r["layer"], len(order)), default=None)
    return {**first, "share_pts": share} if first else None


def over_budget_text(results: list[MethodResult], sensitivity: list[dict], module: nn.Module,
                     budget_pts: float, method: str = "torch_ao_dynamic") -> str:
    """One line for a whole-model recipe over the budget: the first layer over its share, with its numbers; ""
    when the recipe is within the budget or was not measured."""
    whole = next((r for r in results if r.method == method), None)
    if whole is None or whole.accuracy_drop_pts <= budget_pts:
        return ""
    first = first_layer_over_share(sensitivity, module, budget_pts)
    if first is None:
        return (f"{method} loses {whole.accuracy_drop_pts:.2f} points, over the {budget_pts:g}-point budget, though "
                "no layer alone exceeds its share: the errors add up across layers")
    return (f"{method} loses {whole.accuracy_drop_pts:.2f} points, over the {budget_pts:g}-point budget; the first "
            f"layer over its share ({first['share_pts']:.3g} points of {len(sensitivity)} layers) is "
            f"{first['layer']} ({first['type']}): {first['accuracy_drop_pts']:.2f} points quantized alone, "
            f"relative output error {first['relative_error']:.3g}")


def quantization_gates(results: list[MethodResult], best: MethodResult | None, exported: dict | None,
                       budget_pts: float, atol: float = 1e-4, why_over: str = "") -> list[dict]:
    """`quantization:accuracy` (a recipe within the budget) and `quantization:export` (its file
    reloads in a fresh process within `atol`, top-1 identical). `why_over` (over_budget_text) is added to a
    failing accuracy gate: the layer where the whole-model recipe starts to go wrong."""

    if best is None:
        worst = min((r.accuracy_drop_pts for r in results[1:]), default=None)
        return [gate("quantization:accuracy", False, worst, budget_pts, "every recipe exceeds the budget"
                     + (f"; {why_over}" if why_over else "")),
                gate("quantization:export", False, None, atol, "no recipe to export")]
    touched = f"{len(best.layers)} layers quantized" if best.layers else "nothing to quantize (0% coverage)"
    if best.method == "fp32" and any(r.layers for r in results[1:]):  # recipes fit the budget, none was faster
        touched = recommendation_text(results, best, budget_pts, max(best.latency_ms)).removeprefix("fp32: ")
    matches = bool(exported and exported["produced"] and exported["max_abs_diff"] is not None
                   and exported["max_abs_diff"] <= atol and exported["top1_agreement"] in (None, 1.0))
    detail = (exported or {}).get("error") or f"{exported['format']} reloads in a fresh process and matches"
    return [gate("quantization:accuracy", True, best.accuracy_drop_pts, budget_pts,
                 f"{best.method}: {touched}, drop within budget"),
            gate("quantization:export", matches, (exported or {}).get("max_abs_diff"), atol, detail)]


# ---------------------------------------------------------------- tables and plots of the notebook


def quantization_frame(results, batch_sizes=None) -> pd.DataFrame:
    """One row per recipe and batch size: latency and speedup, size and ratio, quality, coverage."""
    fp32 = results[0]
    rows = [row for result in results for row in result.rows(fp32)
            if batch_sizes is None or row["batch_size"] in batch_sizes]
    columns = ["method", "batch_size", "latency_ms", "speedup", "size_bytes", "size_ratio", "accuracy",
               "accuracy_drop_pts", "cosine", "top1_agreement", "coverage_params", "coverage_flops"]
    frame = pd.DataFrame(rows, columns=columns).set_index(["method", "batch_size"])
    return frame.dropna(axis=1, how="all")


def plot_quantization_tradeoff(results, batch_size: int, budget_pts: float):
    """Latency at `batch_size` vs accuracy (or top-1 agreement), marker area = serialized size;
    the budget band is shaded."""
    import matplotlib.pyplot as plt

    fp32 = results[0]
    labelled = fp32.quality["accuracy"] is not None
    metric = "accuracy" if labelled else "top1_agreement" if fp32.quality["top1_agreement"] is not None else "cosine"
    fig, ax = plt.subplots(figsize=(7, 4.2))
    largest = max(r.size_bytes for r in results)
    for i, result in enumerate(results):
        y = 100 * result.quality[metric]
        ax.scatter(result.latency_ms[batch_size], y, s=60 + 1400 * result.size_bytes / largest, alpha=0.6,
                   color=f"C{i}", edgecolor="black", label=f"{result.method} ({result.size_bytes / 1e6:.2f} MB)")
        ax.annotate(result.method, (result.latency_ms[batch_size], y), fontsize=7, ha="center",
                    xytext=(0, 16 if i % 2 == 0 else -20), textcoords="offset points")
    reference = 100 * fp32.quality[metric]
    ax.axhspan(reference - budget_pts, reference + 0.5, color="#2ca02c", alpha=0.08,
               label=f"within {budget_pts:g} point budget")
    ax.set_xlabel(f"median latency at batch {batch_size} (ms, lower is better)")
    ax.set_ylabel({"accuracy": "top-1 accuracy (%)", "top1_agreement": "top-1 agreement with fp32 (%)",
                   "cosine": "cosine similarity to fp32 (x 100)"}[metric])
    ax.set_title("Quantization trade-off: marker area = serialized size")
    ax.legend(fontsize=7, loc="lower right", markerscale=0.4)
    fig.tight_layout()
    return fig


def plot_frontier(steps: list[dict], budget_pts: float):
    """The speed-fidelity frontier: speedup over fp32 (x) against quality lost in points (y), one
    point per step labelled with its int8 layer count, a line per runtime (from fp32); within the budget
    green, the fastest of each runtime ringed, the budget a dashed line."""
    import matplotlib.pyplot as plt


    fp32 = next(s for s in steps if s.get("method", "fp32") == "fp32")
    methods = list(dict.fromkeys(s["method"] for s in steps if s.get("method", "fp32") != "fp32"))
    if not methods:  # rows written before the frontier named its runtime
        methods, steps = ["torch_ao_dynamic"], [{**s, "method": s.get("method") or "torch_ao_dynamic"}
                                                for s in steps]
        fp32 = steps[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, method in enumerate(methods):
        mine = [fp32] + [s for s in steps if s["method"] == method and s["quantized_layers"] > 0]
        best = best_step(mine, method)
        ax.plot([s["speedup"] for s in mine], [s["drop_pts"] for s in mine], "-", color=f"C{i}", alpha=0.5,
                zorder=1, label=method)
        for step in mine[1:]:
            colour = "#2ca02c" if step["within_budget"] else "#d62728"
            ax.scatter(step["speedup"], step["drop_pts"], s=50, color=colour, zorder=2, marker="os^"[i % 3],
                       edgecolor="black" if step is best else colour, linewidth=2 if step is best else 0.5)
            ax.annotate(str(step["quantized_layers"]), (step["speedup"], step["drop_pts"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    ax.scatter(1.0, 0.0, s=40, color="#888888", zorder=2, label="fp32")
    ax.axhline(budget_pts, color="#b00020", linestyle="--", linewidth=1, label=f"budget {budget_pts:g} pts")
    ax.axvline(1.0, color="#888888", linewidth=0.8)
    ax.set_xlabel(f"speedup over fp32 at batch {fp32['batch_size']} (right is faster)")
    ax.set_ylabel("quality lost (points; lower is better)")
    ax.set_title("Frontier: layers to int8, least sensitive first (labels: int8 layers)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
