"""What the notebooks call to set up, show tables and draw plots, so the notebooks stay thin."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.results import gate_verdict, resolve_run_dir
from lab2prod.kinds.image import CLIENTS
from lab2prod.models.load import load_model
from lab2prod.studies.benchmark import device_peak_tflops, matmul_gflops
from lab2prod.studies.export import ComparisonRow, ExportArtifact
from lab2prod.studies.parity import viewable
from lab2prod.studies.quantization import best_step

__all__ = [
    "Setup",
    "setup",
    "quiet_deprecations",
    "resolve_run_dir",
    "resolve_devices",
    "artifacts_frame",
    "comparison_frame",
    "gates_frame",
    "plot_max_abs_diff",
    "fingerprint_frame",
    "plot_smoke",
    "parity_serving_frame",
    "parity_bug_frame",
    "plot_parity_impact",
    "plot_model_view",
    "quantization_frame",
    "plot_quantization_tradeoff",
    "plot_frontier",
    "benchmark_frame",
    "plot_latency_distributions",
    "plot_batch_sweep",
    "efficiency_frame",
    "plot_load",
    "plot_tuning",
    "drift_frame",
    "plot_drift",
    "plot_adversarial",
    "plot_canary",
    "scorecard_frame",
    "plot_scorecard",
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
        })
    return pd.DataFrame(rows).set_index("format")


def comparison_frame(rows: list[ComparisonRow]) -> pd.DataFrame:
    """The per-format, per-case comparison table."""
    frame = pd.DataFrame([r.__dict__ for r in rows])
    return frame.set_index(["format", "device", "inputs", "batch_size"])


def gates_frame(gates: list[dict]) -> pd.DataFrame:
    """Gates with a PASS/FAIL column, failures first; the numeric value is left out so the
    table is stable enough to check with nbval."""
    frame = pd.DataFrame(gates)
    frame.insert(0, "verdict", [gate_verdict(g) for g in gates])
    frame = frame.drop(columns=["passed"])
    order = {"FAIL": 0, "SKIP": 1, "PASS": 2}
    frame = frame.sort_values("verdict", key=lambda v: v.map(order), kind="stable")
    return frame.drop(columns=["value"]).set_index("name")


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


def parity_serving_frame(report) -> pd.DataFrame:
    """The serving path under test on each client's encoding of the images, vs the lab path; for
    a text model, its encodings and outputs vs the lab's over every text."""

    if report.kind == "text":
        columns = ["bug", "requests", "encodings_differ", "max_output_diff", "top1_agreement", "min_cosine",
                   "accuracy", "failed_requests"]
        frame = pd.DataFrame([r.summary() for r in report.serving], columns=columns)
        return frame.rename(columns={"bug": "path"}).set_index("path").dropna(axis=1, how="all")

    rows = [{**r.summary(), "client sends": CLIENTS[r.client][0]} for r in report.serving]
    columns = ["client", "client sends", "max_abs_diff", "mean_abs_diff", "top1_agreement", "accuracy",
               "failed_requests"]
    frame = pd.DataFrame(rows, columns=columns).set_index("client")
    return frame.dropna(axis=1, how="all")


def parity_bug_frame(report) -> pd.DataFrame:
    """Every catalogued bug, most harmful first, with what goes wrong and where it happens."""
    columns = ["bug", "client", "max_abs_diff", "mean_abs_diff", "top1_agreement", "accuracy",
               "accuracy_drop_pts", "failed_requests", "what", "where"]
    if report.kind == "text":
        columns = ["bug", "encodings_differ", "top1_agreement", "min_cosine", "accuracy", "accuracy_drop_pts",
                   "failed_requests", "what", "where"]
    frame = pd.DataFrame(report.bug_rows(), columns=columns).set_index("bug")
    return frame.dropna(axis=1, how="all")


def plot_parity_impact(report):
    """Horizontal bars per bug, failed requests hatched: the accuracy drop in points (labelled
    data), else top-1 disagreement with the lab in percent, else (an untrained model that
    predicts one class for everything) the mean abs tensor difference."""
    import matplotlib.pyplot as plt

    rows = report.bug_rows()
    if report.labels is not None:
        values = [r["accuracy_drop_pts"] for r in rows]
        xlabel, unit, alarm = "accuracy drop vs the lab path (points)", "", 5
    elif any(r["top1_agreement"] < 1 for r in rows):
        values = [100 * (1 - r["top1_agreement"]) for r in rows]
        xlabel, unit, alarm = "top-1 disagreement with the lab path (%)", "%", 5
    elif getattr(report, "kind", "image") == "text":
        values = [100 * r["encodings_differ"] / max(r["requests"], 1) for r in rows]
        xlabel, unit, alarm = "requests encoded differently from the lab (%; no labels, predictions never changed)", \
            "%", 5
    else:
        values = [min(r["mean_abs_diff"], 10.0) for r in rows]
        xlabel, unit, alarm = "mean |serving − lab| per element (no labels; predictions never changed)", "", 0.1
    fig, ax = plt.subplots(figsize=(7.5, 0.34 * len(rows) + 1.3))
    bars = ax.barh([r["bug"] for r in rows], values,
                   color=["#d62728" if v >= alarm else "#ff7f0e" if v > alarm / 10 else "#7f7f7f" for v in values])
    top = max(values, default=0)
    for bar, row, value in zip(bars, rows, values, strict=True):
        if row["failed_requests"]:
            bar.set_hatch("//")
        ax.text(max(value, 0) + top * 0.01, bar.get_y() + bar.get_height() / 2,
                f"{value:.3g}{unit}" + (" (requests fail)" if row["failed_requests"] else ""), va="center",
                fontsize=8)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.invert_yaxis()
    ax.set_xlim(min(0, min(values, default=0)) - top * 0.02, top * 1.35 + 1e-9)
    ax.set_xlabel(xlabel)
    ax.set_title("What each serving bug costs on this model")
    fig.tight_layout()
    return fig


def text_model_view(report, bugs: int = 5, text: int | None = None, tokens: int = 14) -> pd.DataFrame:
    """What the model sees for one text: the tokens the lab path made and those of the most
    harmful bugs that still encode it (special tokens shown, padding left out; a dot marks a
    position the attention mask hides). By default the first text whose encoding the most bugs change."""
    import numpy as np

    results = {r.path: r for r in report.bugs}
    worst = [row["bug"] for row in report.bug_rows() if row["failed_requests"] < len(report.names)][:bugs]
    if text is None:
        changed = [sum(bool(results[name].differences[i]) for name in worst) for i in range(len(report.names))]
        text = int(np.argmax(changed)) if changed else 0
    tokenizer = report.tokenizer

    def shown(encoding) -> list[str]:
        ids = encoding["input_ids"][0].tolist()
        mask = encoding.get("attention_mask", None)
        mask = mask[0].tolist() if mask is not None else [1] * len(ids)
        pieces = [(tokenizer.convert_ids_to_tokens(i), m) for i, m in zip(ids, mask, strict=True)]
        return [(p if m else f"·{p}") for p, m in pieces if p != tokenizer.pad_token or m][:tokens]

    rows = {"lab path": shown(report.lab_encodings[text])}
    for name in worst:
        encoding = results[name].encodings[text]
        rows[name] = shown(encoding) if encoding is not None else ["(request failed)"]
    frame = pd.DataFrame.from_dict(rows, orient="index").fillna("")
    frame.index.name = f"{report.names[text]}: {report.texts[text][:50]!r}"
    return frame


def plot_model_view(report, bugs: int = 5, images: int = 3):
    """What the model sees: the lab path's input beside the motivating case, the square resize
    and the most harmful other bugs that still produce a tensor, denormalized."""
    import matplotlib.pyplot as plt


    shown = [r["bug"] for r in report.bug_rows() if r["failed_requests"] < len(report.names)]
    headline = [name for name in ("motivating_case", "square_resize") if name in shown]
    worst = (headline + [name for name in shown if name not in headline])[:bugs]
    results = {r.path: r for r in report.bugs}
    lab_set = report.request_sets["rgb"]
    picks = list(range(min(images, len(report.names))))
    columns = ["lab path"] + worst
    fig, axes = plt.subplots(len(picks), len(columns), figsize=(2.1 * len(columns), 2.2 * len(picks)),
                             squeeze=False)
    for row, index in enumerate(picks):
        for col, name in enumerate(columns):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            tensor = lab_set.lab_tensors[index] if col == 0 else results[name].tensors[index]
            if tensor is None:
                ax.text(0.5, 0.5, "request\nfailed", ha="center", va="center", color="#b00020")
            else:
                ax.imshow(viewable(tensor, report.recipe))
            if row == 0:
                ax.set_title(name, fontsize=8)
            if col == 0:
                ax.set_ylabel(report.names[index], fontsize=7)
    fig.suptitle("What the model sees (denormalized, clipped to [0, 1])", fontsize=10)
    fig.tight_layout()
    return fig


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
    point per step labelled with its int8 layer count; within the budget green, the fastest of
    those ringed, the budget a dashed line."""
    import matplotlib.pyplot as plt


    best = best_step(steps)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([s["speedup"] for s in steps], [s["drop_pts"] for s in steps], "-", color="#bbbbbb", zorder=1)
    for step in steps:
        colour = "#2ca02c" if step["within_budget"] else "#d62728"
        ax.scatter(step["speedup"], step["drop_pts"], s=50, color=colour, zorder=2,
                   edgecolor="black" if step is best else colour, linewidth=2 if step is best else 0.5)
        ax.annotate(str(step["quantized_layers"]), (step["speedup"], step["drop_pts"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.axhline(budget_pts, color="#b00020", linestyle="--", linewidth=1, label=f"budget {budget_pts:g} pts")
    ax.axvline(1.0, color="#888888", linewidth=0.8)
    ax.set_xlabel(f"speedup over fp32 at batch {steps[0]['batch_size']} (right is faster)")
    ax.set_ylabel("quality lost (points; lower is better)")
    ax.set_title("Frontier: layers to int8, least sensitive first (labels: int8 layers)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


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


def _powers_of_two_axis(axes, values, label: str) -> None:
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
    _powers_of_two_axis((left, right), sorted({r.batch_size for r in rows}), "batch size")
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


def plot_load(rows: list[dict], sla_ms: float):
    """Left: p50/p95/p99 against concurrent users, with the SLA. Right: throughput and error rate."""
    import matplotlib.pyplot as plt

    users = [r["users"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, style in (("p50_ms", "--o"), ("p95_ms", "-s"), ("p99_ms", "-o")):
        left.plot(users, [r[key] for r in rows], style, label=key.replace("_ms", ""), markersize=4)
    left.axhline(sla_ms, color="#b00020", linewidth=1.2, label=f"SLA {sla_ms:g} ms")
    left.set_yscale("log")
    left.set_ylabel("latency seen by the client (ms)")
    right.plot(users, [r["throughput_per_s"] for r in rows], "-o", color="C2", label="throughput")
    right.set_ylabel("successful requests / s")
    right.set_ylim(0, max(r["throughput_per_s"] for r in rows) * 1.15 + 1)
    errors = right.twinx()
    errors.bar(users, [100 * r["error_rate"] for r in rows], width=[u * 0.3 for u in users], color="#d62728",
               alpha=0.35, label="errors")
    errors.set_ylabel("error rate (%)")
    errors.set_ylim(0, max(5, 100 * max(r["error_rate"] for r in rows) * 1.2))
    _powers_of_two_axis((left, right), users, "concurrent users (Locust)")
    left.legend(fontsize=8)
    left.set_title("Latency percentiles vs load")
    right.set_title("Throughput vs load")
    fig.tight_layout()
    return fig


def plot_tuning(rows: list[dict], sla_ms: float, chosen: dict | None):
    """Throughput per server configuration at the tuning load; bars that miss the SLA are grey,
    the chosen one is outlined; p99 written on each bar."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4))
    labels = [r["config"] + (" (default)" if r.get("default") else "") for r in rows]
    colours = ["#2ca02c" if r["meets_sla"] else "#9e9e9e" for r in rows]
    bars = ax.barh(labels, [r["throughput_per_s"] for r in rows], color=colours)
    for bar, row in zip(bars, rows, strict=True):
        if chosen is not None and row is chosen:
            bar.set_edgecolor("black")
            bar.set_linewidth(2)
        p99 = f"p99 {row['p99_ms']:.0f} ms" if row["p99_ms"] is not None else "no response"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {p99}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"successful requests / s at {rows[0]['users']} users (green: p99 <= {sla_ms:g} ms)")
    ax.set_title("Server configurations: workers x torch threads x server batch")
    ax.set_xlim(0, max(r["throughput_per_s"] for r in rows) * 1.3 + 1)
    fig.tight_layout()
    return fig


def drift_frame(report) -> pd.DataFrame:
    """Detection rate per scenario (rows) and test (columns), with the accuracy change."""
    frame = pd.DataFrame(report.scenarios)
    order = list(dict.fromkeys(frame["scenario"]))
    rates = frame.pivot(index="scenario", columns="test", values="detection_rate")
    about = frame.drop_duplicates("scenario").set_index("scenario")[["kind", "accuracy_change_pts"]]
    tests = list(dict.fromkeys(frame["test"]))
    return about.join(rates[tests]).loc[order]


def plot_drift(report):
    """Heat map of detection rates, scenario x test, with the accuracy change beside each row."""
    import matplotlib.pyplot as plt

    table = drift_frame(report)
    tests = [c for c in table.columns if c not in ("kind", "accuracy_change_pts")]
    values = table[tests].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(8, 0.34 * len(table) + 1.5))
    image = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7)
    changes = table["accuracy_change_pts"].tolist()
    ax.set_yticks(range(len(table)), [f"{name} ({'n/a' if pd.isna(c) else f'{c:+.1f} pts'})"
                                      for name, c in zip(table.index, changes, strict=True)], fontsize=8)
    ax.set_xticks(range(len(tests)), tests, rotation=20, ha="right", fontsize=8)
    ax.set_title(f"Share of batches flagged (batch {report.batch_size}, p < {report.alpha:g}); "
                 "first row: false positives")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    return fig


def plot_adversarial(examples: dict, count: int = 4):
    """Clean images, FGSM and PGD versions, and the PGD perturbation (scaled to be visible)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(count, 4, figsize=(7, 1.8 * count), squeeze=False)
    for row in range(count):
        clean, fgsm_x, pgd_x = (examples[k][row].permute(1, 2, 0).numpy() for k in ("clean", "fgsm", "pgd"))
        delta = pgd_x - clean
        shown = [clean, fgsm_x, pgd_x, 0.5 + delta / (2 * max(abs(delta).max(), 1e-9))]
        for col, (image, title) in enumerate(zip(shown, ["clean", "FGSM", "PGD", "PGD - clean"], strict=True)):
            ax = axes[row][col]
            ax.imshow(image.clip(0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_canary(report, policy):
    """Left: the accuracy change of v2 with its confidence interval against the budget. Right:
    the latency each version's live requests saw (cumulative share), with the percentile the
    rollback rule reads marked."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    accuracy = report.offline.get("accuracy")
    if accuracy:
        delta, low, high = accuracy["accuracy_delta_pts"], accuracy["ci_low"], accuracy["ci_high"]
        left.errorbar([0], [delta], yerr=[[delta - low], [high - delta]], fmt="o", capsize=8, color="C0",
                      label=f"{accuracy['confidence']:.0%} CI (paired bootstrap)")
        left.axhline(-policy.max_accuracy_drop_pts, color="#b00020", linewidth=1.2, label="budget")
        left.axhline(0, color="#888", linewidth=0.8)
        span = max(abs(low), abs(high), policy.max_accuracy_drop_pts) * 1.4 + 0.1
        left.set_ylim(-span, span)
        left.legend(fontsize=8, loc="upper right")
    else:
        left.text(0.5, 0.5, "no labels:\nagreement only", ha="center", va="center", transform=left.transAxes)
    left.set_xticks([])
    left.set_ylabel("accuracy change v2 - v1 (points)")
    left.set_title(f"Accuracy: {report.offline['agreement']:.1%} top-1 agreement")
    samples = (report.rollout or {}).get("latencies_ms") or {}
    for color, (label, values) in zip(("C0", "C1"), samples.items(), strict=False):
        if not values:
            continue
        ordered = np.sort(np.asarray(values))
        right.plot(ordered, np.arange(1, ordered.size + 1) / ordered.size, color=color,
                   label=f"{label}: {ordered.size} requests")
        q = policy.latency_percentile
        mark = float(np.percentile(ordered, q))
        right.axvline(mark, color=color, linestyle="--", linewidth=1, label=f"{label} p{q:g} {mark:.1f} ms")
    if samples:
        right.set_xscale("log")
        right.set_xlabel("latency seen by the client (ms)")
        right.set_ylabel("share of requests")
        right.legend(fontsize=8, loc="lower right")
        right.set_title(f"Live latency per version (p{policy.latency_percentile:g} increase allowed: "
                        f"{policy.max_latency_increase_ms:g} ms)")
    else:
        right.text(0.5, 0.5, report.reason or "no rollout", ha="center", va="center", wrap=True,
                   transform=right.transAxes)
        right.set_axis_off()
    fig.tight_layout()
    return fig


def scorecard_frame(rows: list[dict]) -> pd.DataFrame:
    """The checklist scorecard as a table indexed by item."""
    return pd.DataFrame(rows).set_index("item")[["verdict", "passed", "failed", "skipped", "gates", "why"]]


def plot_scorecard(rows: list[dict]):
    """One bar per checklist item (top to bottom in checklist order): its gates, green passed,
    red failed, grey skipped; items that did not run are labelled so."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.0))
    positions = list(range(len(rows)))[::-1]
    left = [0] * len(rows)
    for key, color in (("failed", "#b00020"), ("skipped", "#9e9e9e"), ("passed", "#2e7d32")):
        values = [r[key] for r in rows]
        ax.barh(positions, values, left=left, color=color, label=key, height=0.6)
        left = [a + b for a, b in zip(left, values, strict=True)]
    for y, row, width in zip(positions, rows, left, strict=True):
        ax.text(width + 0.1, y, row["verdict"], va="center", fontsize=8,
                color={"FAIL": "#b00020", "PASS": "#2e7d32"}.get(row["verdict"], "#555"))
    ax.set_yticks(positions, [r["item"] for r in rows])
    ax.set_xlabel("gates")
    ax.set_xlim(0, max(left + [1]) + 1.5)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Readiness scorecard, in checklist order")
    fig.tight_layout()
    return fig


def plot_side_by_side(rows: list[dict], sla_ms: float):
    """TorchServe and Ray Serve, default and tuned: throughput and P99 side by side, the SLA dashed."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    labels = [f"{r['server']}\n{r['config']}" for r in rows]
    colors = ["#1f77b4" if r["server"] == "TorchServe" else "#ff7f0e" for r in rows]
    alphas = [0.45 if r["config"] == "default" else 1.0 for r in rows]
    for ax, key, title in ((left, "throughput_per_s", "throughput (req/s)"), (right, "p99_ms", "P99 (ms)")):
        values = [r[key] or 0 for r in rows]
        bars = ax.bar(labels, values, color=colors)
        for bar, alpha, value in zip(bars, alphas, values, strict=True):
            bar.set_alpha(alpha)
            ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
    right.axhline(sla_ms, color="black", linestyle="--", linewidth=0.8, label=f"SLA {sla_ms:g} ms")
    right.set_yscale("log")
    right.legend(fontsize=8)
    fig.suptitle("TorchServe vs Ray Serve at the same load", fontsize=10)
    fig.tight_layout()
    return fig
