"""Latency benchmarking: one harness for any callable, variants checked before timing, batch sweep, SLA choice."""

from __future__ import annotations

import os
import shutil
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from lab2prod.core import extras
from lab2prod.core.errors import Lab2ProdError, one_line
from lab2prod.core.files import scratch_dir
from lab2prod.core.inputs import Inputs, batch_size_of, call, export_program, first_tensor, load_aoti, to_device, trace
from lab2prod.core.progress import steps as progress_steps
from lab2prod.core.results import gate
from lab2prod.core.schema import MODEL_CARD, Measure, Results, described
from lab2prod.models.onnx_rt import OrtModule, export_to_temp, quantize_file
from lab2prod.studies.quantization import MODULE_TYPES, quantize

__all__ = [
    "BenchmarkResults",
    "Timing",
    "summarize",
    "measure",
    "harness_overhead_ns",
    "rss_bytes",
    "CPU_VARIANTS",
    "CUDA_VARIANTS",
    "default_variants",
    "check_variants",
    "build_variant",
    "check_correct",
    "BenchmarkRow",
    "run_sweep",
    "choose_sla",
    "flops_per_item",
    "GPU_PEAK_TFLOPS",
    "device_peak_tflops",
    "matmul_gflops",
    "sla_gate",
    "benchmark_frame",
    "plot_latency_distributions",
    "plot_batch_sweep",
    "efficiency_frame",
]


@dataclass(kw_only=True)
class BenchmarkResults(Results):
    """What its notebook records under results/benchmark.json; the schema is derived from these fields."""

    study: ClassVar[str] = "benchmark"
    measures: ClassVar[tuple[Measure, ...]] = (
        Measure("benchmark.model.heldout_accuracy", "accuracy"),
        Measure("benchmark.rows[*].p99_ms", "latency"),
    )

    model: dict = described(MODEL_CARD)
    rows: list = described("per device, variant and batch size: p50/p90/p99 ms, throughput, n, stable, correct")
    sla: dict = described("the highest-throughput correct configuration with p99 within the SLA")
    sla_by_device: dict = described("that choice on each device")
    machine: dict = described("where it was measured: CPU, cores, torch, threads, GPU and driver")
    threads: int = described("torch CPU threads while timing")
    flops_per_item: float | None = described("FLOPs of one inference")
    efficiency: list = described("achieved GFLOP/s against a large matmul on the same device")


# ---------------------------------------------------------------- the harness


@dataclass
class Timing:
    """Raw per-call samples of one measurement and what was measured."""

    samples_ms: np.ndarray
    batch_size: int
    device: str
    threads: int
    warmup_calls: int
    settled: bool  # whether warm-up reached stable timings within its budget
    stable: bool  # whether the median was stable when sampling stopped (else the time budget ran out)
    peak_mem_bytes: int | None = None
    reserved_mem_bytes: int | None = None
    rss_growth_bytes: int | None = None

    def stats(self) -> dict:
        return summarize(self.samples_ms, self.batch_size)


def summarize(samples_ms, batch_size: int) -> dict:
    """mean, p50, p90, p95, p99, max, std in milliseconds, and throughput in items per second
    (batch_size over the mean latency: what a server doing one call after another delivers)."""
    samples = np.asarray(samples_ms, dtype=np.float64)
    if samples.size == 0:
        raise Lab2ProdError("no timing samples; the time budget was too small for one call")
    p50, p90, p95, p99 = np.percentile(samples, [50, 90, 95, 99])
    mean = float(samples.mean())
    return {"n": int(samples.size), "mean_ms": mean, "p50_ms": float(p50), "p90_ms": float(p90),
            "p95_ms": float(p95), "p99_ms": float(p99), "max_ms": float(samples.max()),
            "std_ms": float(samples.std()), "throughput_per_s": batch_size * 1000.0 / mean}


def rss_bytes() -> int:
    """This process's resident memory now (bytes), from /proc where it exists."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - non-Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _median(values) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def measure(
    fn: Callable[[], object],
    *,
    batch_size: int = 1,
    device: str = "cpu",
    threads: int | None = None,
    min_run_time: float = 1.0,
    max_run_time: float | None = None,
    warmup_s: float | None = None,
    rel_spread: float = 0.05,
    min_samples: int = 10,
    clock: Callable[[], int] = time.perf_counter_ns,
    window: int = 3,
) -> Timing:
    """Time `fn()` call by call.

    Warm-up runs windows of `window` calls until the median of one window is within `rel_spread` of
    the previous one (or `warmup_s`, default a quarter of `min_run_time`, runs out). Sampling then
    runs at least `min_run_time` seconds and `min_samples` calls, and stops once the medians of
    the two halves of the samples agree within `rel_spread`, or at `max_run_time` (default 4x
    `min_run_time`) once it has min(`min_samples`, 3) calls. CPU calls are timed with
    perf_counter_ns; CUDA calls with events, each call synchronized. Threads are set for the measurement and restored.
    """
    cuda = device.startswith("cuda")
    max_run_time = max_run_time if max_run_time is not None else 4 * min_run_time
    warmup_s = warmup_s if warmup_s is not None else max(min_run_time / 4, 0.0)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if cuda:
            start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

            def timed() -> float:
                start_event.record()
                fn()
                end_event.record()
                torch.cuda.synchronize()
                return float(start_event.elapsed_time(end_event))
        else:
            def timed() -> float:
                start = clock()
                fn()
                return (clock() - start) / 1e6

        with torch.inference_mode():
            # Warm-up: first calls pick kernels, pack weights, compile, fill caches.
            warm, settled, began = [], False, clock()
            while True:
                warm.extend(timed() for _ in range(window))
                if len(warm) >= 2 * window:
                    last, before = _median(warm[-window:]), _median(warm[-2 * window:-window])
                    if abs(last - before) <= rel_spread * max(before, 1e-9):
                        settled = True
                        break
                if (clock() - began) / 1e9 >= warmup_s:
                    break
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            rss_before = rss_bytes()
            samples, stable, began = [], False, clock()
            while True:
                samples.append(timed())
                elapsed = (clock() - began) / 1e9
                if elapsed >= min_run_time and len(samples) >= min_samples:
                    half = len(samples) // 2
                    first, second = _median(samples[:half]), _median(samples[half:])
                    if abs(first - second) <= rel_spread * max(first, 1e-9):
                        stable = True
                        break
                if elapsed >= max_run_time and len(samples) >= min(min_samples, 3):
                    break
        timing = Timing(np.asarray(samples), batch_size, device, torch.get_num_threads(), len(warm), settled, stable)
        timing.rss_growth_bytes = max(0, rss_bytes() - rss_before)
        if cuda:
            timing.peak_mem_bytes = int(torch.cuda.max_memory_allocated())
            timing.reserved_mem_bytes = int(torch.cuda.max_memory_reserved())
        return timing
    finally:
        torch.set_num_threads(previous_threads)


def harness_overhead_ns(calls: int = 20000) -> float:
    """Nanoseconds the harness adds per timed call on the CPU: a no-op timed the same way."""
    start = time.perf_counter_ns()
    for _ in range(calls):
        begin = time.perf_counter_ns()
        (lambda: None)()
        _ = (time.perf_counter_ns() - begin) / 1e6
    return (time.perf_counter_ns() - start) / calls


# ---------------------------------------------------------------- variants


CPU_VARIANTS = ["eager", "torchscript", "torch_export", "aoti", "dynamic_int8", "onnxruntime", "onnxruntime_int8"]
CUDA_VARIANTS = ["eager", "torchscript", "torch_export", "fp16_autocast", "bf16_autocast", "channels_last",
                 "torch_compile", "cuda_graphs", "onnxruntime_cuda", "onnxruntime_tensorrt"]
ALL_VARIANTS = list(dict.fromkeys(CPU_VARIANTS + CUDA_VARIANTS))


def default_variants(device: str) -> list[str]:
    """The device's variants; those of ONNX Runtime only where the onnx extra is installed."""
    variants = CUDA_VARIANTS if device.startswith("cuda") else CPU_VARIANTS
    return [v for v in variants if not v.startswith("onnxruntime") or extras.available("onnx")]


def check_variants(variants, device: str | None = None) -> list[str]:
    """The variants asked for ("auto" means the device's defaults); a clear error for unknown ones."""
    variants = [variants] if isinstance(variants, str) else list(variants)
    if variants == ["auto"]:
        return default_variants(device or "cpu")
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown or not variants:
        raise Lab2ProdError(f"variants {variants!r} are not known; use ['auto'] or some of {', '.join(ALL_VARIANTS)}")
    return variants


def build_variant(module: torch.nn.Module, variant: str, device: str, example: Inputs) -> Callable:
    """A callable for `variant` of `module` on `device`, called like the model (`inputs.call`);
    raises with the reason when the variant does not apply (e.g. CUDA graphs on a CPU, channels_last
    for inputs that are not one image batch)."""
    cuda = device.startswith("cuda")
    module = module.to(device).eval()
    example = to_device(example, device)
    single = isinstance(example, torch.Tensor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if variant == "eager":
            return module
        if variant == "torchscript":
            with torch.inference_mode(False), torch.no_grad():
                return torch.jit.freeze(trace(module, example))
        if variant == "torch_export":
            return export_program(module, example)[1].module()
        if variant == "aoti":
            if cuda:
                raise Lab2ProdError("aoti is compiled here for the CPU; measure it with --device cpu")
            return _aoti_variant(module, example)
        if variant == "dynamic_int8":
            if cuda:
                raise Lab2ProdError("dynamic int8 (torch.ao) runs on the CPU only")

            return quantize(module, "torch_ao_dynamic", tuple(MODULE_TYPES.values()))
        if variant.startswith("onnxruntime"):
            return _ort_variant(module, variant, device, example)
        if variant in ("fp16_autocast", "bf16_autocast"):
            if not cuda:
                raise Lab2ProdError(f"{variant} is measured on CUDA only")
            dtype = torch.float16 if variant == "fp16_autocast" else torch.bfloat16

            def autocast(*args, **kwargs):
                with torch.autocast("cuda", dtype=dtype):
                    return module(*args, **kwargs)
            return autocast
        if variant == "channels_last":
            if not single or example.dim() != 4:
                raise Lab2ProdError("channels_last needs 4-d image batches")
            converted = module.to(memory_format=torch.channels_last)
            return lambda batch: converted(batch.contiguous(memory_format=torch.channels_last))
        if variant == "torch_compile":
            return torch.compile(module)
        if variant == "cuda_graphs":
            if not cuda:
                raise Lab2ProdError("CUDA graphs need a CUDA device")
            if not single:
                raise Lab2ProdError("CUDA graphs are captured here for one input tensor")
            return _cuda_graph(module, example)
    raise Lab2ProdError(f"variant {variant!r} is not known; use some of {', '.join(ALL_VARIANTS)}")


def _aoti_variant(module: torch.nn.Module, example: Inputs) -> Callable:
    """The model's torch.export program compiled ahead of time by AOTInductor for this CPU (what the export
    notebook's `aoti` format serves), loaded in its C++ runner; the package is removed with the runner."""
    folder = scratch_dir("lab2prod-aoti-")
    try:
        path = torch._inductor.aoti_compile_and_package(export_program(module, example)[1],
                                                        package_path=str(folder / "model.aoti.pt2"))
        runner = load_aoti(path)
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    weakref.finalize(runner, shutil.rmtree, str(folder), True)
    return runner


def _ort_variant(module: torch.nn.Module, variant: str, device: str, example: Inputs) -> Callable:
    """The model's ONNX export in an ONNX Runtime session (graph optimizations on, intra-op
    threads following the harness's): fp32, ONNX Runtime's dynamic int8 (CPU), or on a GPU the
    CUDA (or TensorRT) execution provider with I/O binding. Inputs go to the session from the
    host, as a server's would; the output comes back as a torch tensor on `device`."""
    import shutil
    import weakref

    import onnxruntime


    cuda = device.startswith("cuda")
    if variant in ("onnxruntime_cuda", "onnxruntime_tensorrt") and not cuda:
        raise Lab2ProdError(f"{variant} needs a CUDA device")
    if variant == "onnxruntime_int8" and cuda:
        raise Lab2ProdError("ONNX Runtime's dynamic int8 runs on the CPU execution provider only")
    wanted = {"onnxruntime_cuda": "CUDAExecutionProvider", "onnxruntime_tensorrt": "TensorrtExecutionProvider"}
    if variant in wanted and wanted[variant] not in onnxruntime.get_available_providers():
        raise Lab2ProdError(f"ONNX Runtime has no {wanted[variant]} here (install onnxruntime-gpu with CUDA 12)")
    folder, path = export_to_temp(module.cpu(), to_device(example, "cpu"))
    module.to(device)
    if variant == "onnxruntime_int8":
        quantize_file(path, folder / "model.int8.onnx")
        path = folder / "model.int8.onnx"
    session = OrtModule(path, threads=0, device="cuda" if variant in wanted else "cpu")
    if variant == "onnxruntime_tensorrt":
        session.providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    weakref.finalize(session, shutil.rmtree, str(folder), True)

    def run(*args, **kwargs):
        return session(*args, **kwargs).to(device)

    run.session = session
    return run


def _cuda_graph(module: torch.nn.Module, example: torch.Tensor) -> Callable:
    # A captured graph replays for one input shape: keep one graph per batch size, captured lazily.
    graphs: dict[tuple, tuple] = {}

    def run(batch: torch.Tensor):
        key = tuple(batch.shape)
        if key not in graphs:
            static_in = batch.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(3):
                    module(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                static_out = module(static_in)
            graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = graphs[key]
        static_in.copy_(batch)
        graph.replay()
        return static_out

    return run


def check_correct(reference: torch.Tensor, output: torch.Tensor, min_cosine: float = 0.999,
                  min_agreement: float = 0.99, classifier: bool = True) -> dict:
    """Compare a variant's output with eager fp32 on the same batch: max abs diff, cosine
    similarity (mean per sample), top-1 agreement (a classifier's; an embedder is judged by
    cosine alone), and whether it is correct enough to rank."""
    ref, out = reference.float().flatten(1).cpu(), output.float().flatten(1).cpu()
    if ref.shape != out.shape:
        return {"max_abs_diff": float("inf"), "cosine": 0.0, "top1_agreement": 0.0, "correct": False}
    cosine = float(torch.nn.functional.cosine_similarity(ref, out, dim=1).mean())
    agreement = float((ref.argmax(1) == out.argmax(1)).float().mean()) if classifier else None
    return {"max_abs_diff": float((ref - out).abs().max()), "cosine": cosine, "top1_agreement": agreement,
            "correct": bool(cosine >= min_cosine and (agreement is None or agreement >= min_agreement))}


# ---------------------------------------------------------------- sweep and SLA


@dataclass
class BenchmarkRow:
    """One variant at one batch size on one device: statistics, memory, and correctness."""

    variant: str
    device: str
    batch_size: int
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    max_ms: float | None = None
    std_ms: float | None = None
    n: int = 0
    throughput_per_s: float | None = None
    peak_mem_bytes: int | None = None
    correct: bool = False
    cosine: float | None = None
    max_abs_diff: float | None = None
    stable: bool = False
    gflops_per_s: float | None = None
    error: str | None = None
    brief: bool = False
    samples_ms: list = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "samples_ms"}


BRIEF_OVER_SLA = 4.0  # a call this many times over the SLA is timed briefly: it cannot meet the SLA


def run_sweep(loaded, variants, device: str, batch_sizes, threads: int | None, min_run_time: float,
              seed: int = 0, flops_item: float | None = None, progress: bool = True,
              sla_ms: float | None = None) -> list[BenchmarkRow]:
    """Every variant at every batch size: built once, checked against eager fp32 on each batch,
    then timed with `measure`. A variant that cannot be built or run gets rows with its error. Given
    `sla_ms`, a batch whose checking call took over BRIEF_OVER_SLA times the SLA is timed briefly
    (one warm-up call, three timed ones; `brief` on its row): on a large model such a call takes
    seconds, and no number of samples would bring it within the SLA."""

    example = to_device(loaded.make_inputs(2, seed, "train"), device)
    batches = {b: to_device(loaded.make_inputs(b, seed, "test"), device) for b in batch_sizes}
    module = loaded.module.to(device).eval()
    with torch.inference_mode():
        references = {b: first_tensor(call(module, batch)).float() for b, batch in batches.items()}
    rows = []
    steps = [(v, b) for v in variants for b in batch_sizes]
    built: dict[str, Callable | Exception] = {}
    for variant, batch_size in progress_steps(steps, "benchmark", "run", show=progress):
        row = BenchmarkRow(variant, device, batch_size)
        rows.append(row)
        if variant not in built:
            try:
                built[variant] = build_variant(loaded.module, variant, device, example)
            except Exception as exc:
                built[variant] = exc
        fn = built[variant]
        if isinstance(fn, Exception):
            row.error = one_line(fn)
            continue
        batch = batches[batch_size]
        try:
            start = time.perf_counter()
            with torch.inference_mode():
                output = first_tensor(call(fn, batch))
            first_ms = (time.perf_counter() - start) * 1e3
            check = check_correct(references[batch_size], output, classifier=loaded.task == "classifier")
            row.correct, row.cosine, row.max_abs_diff = check["correct"], check["cosine"], check["max_abs_diff"]
            row.brief = sla_ms is not None and first_ms > BRIEF_OVER_SLA * sla_ms
            budget = (dict(min_run_time=0.0, max_run_time=0.0, warmup_s=0.0, min_samples=3, window=1) if row.brief
                      else dict(min_run_time=min_run_time))
            timing = measure(lambda fn=fn, batch=batch: call(fn, batch), batch_size=batch_size, device=device,
                             threads=threads, **budget)
        except Exception as exc:
            row.error = one_line(exc)
            continue
        stats = timing.stats()
        for key in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "max_ms", "std_ms", "n", "throughput_per_s"):
            setattr(row, key, stats[key])
        row.peak_mem_bytes = timing.peak_mem_bytes if timing.peak_mem_bytes is not None else timing.rss_growth_bytes
        row.stable = timing.stable
        row.samples_ms = timing.samples_ms.tolist()
        if flops_item:
            row.gflops_per_s = flops_item * batch_size / (row.p50_ms / 1e3) / 1e9
    if device.startswith("cuda"):
        loaded.module.to("cpu")
    return rows


def choose_sla(rows: list[BenchmarkRow], sla_ms: float) -> dict:
    """Triton Model Analyzer's rule: among correct, measured rows with p99 <= sla_ms (the
    constraint), the highest throughput (the objective). `met` is False when none qualifies;
    then the row with the lowest p99 is named so the reader sees how far off it is."""
    measured = [r for r in rows if r.error is None and r.p99_ms is not None and r.correct]
    meeting = [r for r in measured if r.p99_ms <= sla_ms]
    if meeting:
        best, met = max(meeting, key=lambda r: r.throughput_per_s), True
    elif measured:
        best, met = min(measured, key=lambda r: r.p99_ms), False
    else:
        return {"sla_ms": sla_ms, "met": False, "variant": None, "batch_size": None, "p99_ms": None,
                "throughput_per_s": None}
    return {"sla_ms": sla_ms, "met": met, "variant": best.variant, "batch_size": best.batch_size,
            "p99_ms": best.p99_ms, "throughput_per_s": best.throughput_per_s}


# ---------------------------------------------------------------- efficiency


def flops_per_item(module: torch.nn.Module, example: Inputs) -> float:
    """FLOPs of one inference (torch.utils.flop_counter; a multiply-add counts 2) per item."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        call(module, example)
    return counter.get_total_flops() / batch_size_of(example)


# Dense peak TFLOP/s from the vendors' data sheets: (fp32, fp16/bf16 tensor cores), no sparsity.
GPU_PEAK_TFLOPS = {
    "H200": (67.0, 989.0),
    "H100 SXM": (67.0, 989.0),
    "H100 NVL": (60.0, 835.0),
    "H100 PCIe": (51.0, 756.0),
    "H100": (67.0, 989.0),
    "A100": (19.5, 312.0),
    "L40S": (91.6, 362.0),
    "L4": (30.3, 121.0),
    "A10G": (31.2, 125.0),
    "A10": (31.2, 125.0),
    "T4": (8.1, 65.0),
    "V100": (15.7, 125.0),
    "RTX 4090": (82.6, 165.0),
}


def device_peak_tflops(gpu_name: str | None) -> tuple[float, float] | None:
    """(fp32, fp16/bf16) peak TFLOP/s for a GPU name, longest matching key first; None if unknown."""
    if not gpu_name:
        return None
    for key in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in gpu_name.lower():
            return GPU_PEAK_TFLOPS[key]
    return None


def matmul_gflops(device: str, size: int = 1024, dtype: torch.dtype = torch.float32, threads: int | None = None,
                  min_run_time: float = 0.3) -> float:
    """Achieved GFLOP/s of a size x size matmul on `device`: the practical ceiling to compare with."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    timing = measure(lambda: a @ b, device=device, threads=threads, min_run_time=min_run_time)
    return 2 * size**3 / (timing.stats()["p50_ms"] / 1e3) / 1e9


def sla_gate(chosen: dict, sla_ms: float, device: str) -> dict:
    """`sla`: the configuration `choose_sla` picked on `device` has a P99 within `sla_ms`."""

    return gate("sla", chosen["met"], chosen["p99_ms"], sla_ms,
                f"{chosen['variant']} at batch {chosen['batch_size']} on {device}" if chosen["met"]
                else f"no correct configuration has p99 <= {sla_ms:g} ms on {device}")


# ---------------------------------------------------------------- tables and plots of the notebook


def benchmark_frame(rows) -> pd.DataFrame:
    """A Compare-style table: one row per device, variant and batch size."""
    columns = ["device", "variant", "batch_size", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_per_s",
               "n", "stable", "correct", "cosine", "peak_mem_bytes", "gflops_per_s", "error"]
    frame = pd.DataFrame([r.as_dict() for r in rows], columns=columns)
    if frame["error"].isna().all():
        frame = frame.drop(columns=["error"])
    return frame.set_index(["device", "variant", "batch_size"])


def plot_latency_distributions(rows, batch_size: int):
    """Box plots of every timed call per variant (and device) at `batch_size`, log scale."""
    import matplotlib.pyplot as plt

    chosen = [r for r in rows if r.batch_size == batch_size and r.samples_ms]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(chosen) + 2), 3.8))
    if not chosen:
        ax.text(0.5, 0.5, "no variant was timed", ha="center", va="center")
        return fig
    ax.boxplot([r.samples_ms for r in chosen], whis=(1, 99), showfliers=True,
               flierprops={"markersize": 2, "alpha": 0.4})
    ax.set_xticks(range(1, len(chosen) + 1),
                  [f"{r.variant}\n{r.device}" + ("" if r.correct else "\n(WRONG)") for r in chosen], fontsize=8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(plt.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_ylabel("latency per call (ms)")
    ax.set_title(f"Latency of every timed call at batch {batch_size}")
    fig.tight_layout()
    return fig


def powers_of_two_axis(axes, values, label: str) -> None:
    """A log2 x axis labelled with the measured values themselves (batch sizes, user counts)."""
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(values, [str(v) for v in values])
        ax.minorticks_off()
        ax.set_xlabel(label)


def plot_batch_sweep(rows, sla_ms: float):
    """Left: P50 (dashed) and P99 (solid) against batch size per variant, with the SLA line.
    Right: throughput against batch size. Wrong variants are drawn grey."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    keys = list(dict.fromkeys((r.device, r.variant) for r in rows))
    for i, key in enumerate(keys):
        mine = sorted((r for r in rows if (r.device, r.variant) == key and r.p99_ms is not None),
                      key=lambda r: r.batch_size)
        if not mine:
            continue
        colour = f"C{i % 10}" if all(r.correct for r in mine) else "#999999"
        label = f"{key[1]} ({key[0]})" + ("" if all(r.correct for r in mine) else " WRONG")
        batches = [r.batch_size for r in mine]
        left.plot(batches, [r.p99_ms for r in mine], "-o", color=colour, label=label, markersize=4)
        left.plot(batches, [r.p50_ms for r in mine], "--", color=colour, linewidth=1)
        right.plot(batches, [r.throughput_per_s for r in mine], "-o", color=colour, label=label, markersize=4)
    left.axhline(sla_ms, color="#b00020", linewidth=1.2, label=f"SLA {sla_ms:g} ms")
    powers_of_two_axis((left, right), sorted({r.batch_size for r in rows}), "batch size")
    left.set_yscale("log")
    left.set_ylabel("latency per call (ms): P99 solid, P50 dashed")
    right.set_ylabel("throughput (items/s)")
    left.legend(fontsize=7)
    left.set_title("Tail latency vs batch size")
    right.set_title("Throughput vs batch size")
    fig.tight_layout()
    return fig


def efficiency_frame(rows, flops_item: float, devices, machine: dict, threads: int) -> pd.DataFrame:
    """Per device: the best achieved GFLOP/s of a correct row, a large matmul's GFLOP/s on the
    same device (the practical ceiling), and the data-sheet peak for a known GPU."""

    records = []
    for dev in devices:
        mine = [r for r in rows if r.device == dev and r.correct and r.gflops_per_s]
        best = max(mine, key=lambda r: r.gflops_per_s, default=None)
        ceiling = matmul_gflops(dev, size=4096 if dev.startswith("cuda") else 1024,
                                threads=None if dev.startswith("cuda") else threads)
        peak = device_peak_tflops(machine.get("gpu")) if dev.startswith("cuda") else None
        records.append({
            "device": dev,
            "flops_per_item": flops_item,
            "best_gflops_per_s": best.gflops_per_s if best else None,
            "at": f"{best.variant} batch {best.batch_size}" if best else None,
            "matmul_gflops_per_s": ceiling,
            "share_of_matmul": (best.gflops_per_s / ceiling) if best and ceiling else None,
            "datasheet_peak_fp32_tflops": peak[0] if peak else None,
        })
    return pd.DataFrame(records).set_index("device")
