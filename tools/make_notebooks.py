"""Write notebooks/*.ipynb from the cell sources below (outputs are added by executing them).

    python tools/make_notebooks.py [names] && python tools/execute_notebooks.py [names]
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def md(text):
    return new_markdown_cell(text.strip())


def code(text, tags=()):
    cell = new_code_cell(text.strip())
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


EXPORT = [
    md("""
# 01 · Export: does the serialized model load, and does it agree?

A model that runs in the notebook is not a model that runs in the server. The server loads a
*file*, in a fresh process, without your Python classes. This notebook serializes the model in
each format, reloads every file in a new Python process (as a server would), and compares it
with eager PyTorch at several batch sizes, on inputs the export never saw.

**Formats.** TorchScript (`torch.jit.script` and `torch.jit.trace`) is what many deployed
systems load today; it is **deprecated upstream** and kept here as the *old path*.
`torch.export` (`.pt2`) is its successor, the *new path*. The classic trap: `torch.jit.trace`
records the branch that the example input took, so a model with data-dependent control flow
traces without error and then answers wrongly. Varied inputs (negated, noise) catch it.
"""),
    code("""
model = "digits_cnn"  # reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed) -> Tensor, for non-image models
device = "auto"  # auto, cpu or cuda; files are always reloaded on cpu, also on cuda when used
batch_sizes = [1, 4, 16]  # batch sizes compared after reload
formats = ["torchscript_script", "torchscript_trace", "torch_export"]  # formats to produce
atol = 1e-4  # largest max-abs-diff between eager and the reloaded file that passes
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for input draws and untrained weights
""", tags=["parameters"]),
    code("""
import pandas as pd

from lab2prod import export
from lab2prod import notebook as nb
from lab2prod.models import load_model
from lab2prod.environment import write_lock
from lab2prod.results import record

nb.quiet_deprecations()
run_dir = nb.resolve_run_dir(run_dir)
devices = nb.resolve_devices(device)
loaded = load_model(model, weights, example_inputs, seed)
pd.DataFrame([loaded.card()]).set_index("model")
"""),
    md("""
## Serialize

Each format is attempted; one that cannot be produced says why in one line instead of
stopping the notebook. `dynamic_batch` says whether the file accepts any batch size.
"""),
    code("""
artifacts = [export.export_model(loaded, fmt, run_dir / "models", seed) for fmt in formats]
nb.artifacts_frame(artifacts, run_dir)
"""),
    md("""
## Reload in a fresh process and compare with eager

`held-out` rows use data the export never saw; `negated` and `noise` rows push a model with
data-dependent control flow down the other branch. Look at `max_abs_diff` and `top1_agreement`.
"""),
    code("""
rows = export.check_exports(loaded, artifacts, batch_sizes, devices, seed)
nb.comparison_frame(rows)
"""),
    md("""
Bars on the floor are bit-exact; anything above the dashed line fails.
"""),
    code("""
fig = nb.plot_max_abs_diff(rows, atol)
"""),
    md("""
## Gates and manifest

One gate per format, `parity:<format>`: the file was produced, reloaded in a fresh process,
every case within `atol`, top-1 identical, and (trace) no tracer warning that the trace may
be wrong. The manifest records what a server needs to know about each file, and the lab
environment lock (`models/env.lock.json`) travels with the files for the environment notebook.
"""),
    code("""
# NBVAL_CHECK_OUTPUT
gates = export.format_gates(artifacts, rows, atol)
manifest = export.write_manifest(loaded, artifacts, run_dir)
lock_file = write_lock(run_dir / "models" / "env.lock.json")  # the lab environment, beside the model
record(run_dir, "export", {
    "model": loaded.card(),
    "formats": [r.__dict__ for r in rows],
    "artifacts": [{"format": a.format, "produced": a.produced, "error": a.error,
                   "warnings": a.warnings, "dynamic_batch": a.dynamic_batch} for a in artifacts],
    "manifest": manifest,
    "env_lock": str(lock_file.relative_to(run_dir)),
}, gates, notebook="01_export")
nb.gates_frame(gates)[["verdict", "threshold", "detail"]]
"""),
    code("""
columns = ["format", "file", "bytes", "sha256", "dynamic_batch", "torch"]
pd.DataFrame(manifest, columns=columns).set_index("format")
"""),
]

PARITY = [
    md("""
# 02 · Preprocessing parity: does the service feed the model what the lab fed it?

The most common silent failure in deployment: the service prepares images differently from
the lab. Nothing crashes; accuracy just falls. The classic case: the lab used `Resize(256)`,
`CenterCrop(224)`, scaling and `Normalize(mean, std)`; the service resized to a square and
divided by 255, and lost about 40% accuracy.

This notebook sends the same images as **request bytes** through the serving path (by default
lab2prod's `ServingPath`, which a handler imports: it decodes like the lab and applies the lab
transform *object*), compares every tensor with the lab path's, and then measures a catalog of
real serving bugs on the same requests: what each does to the tensors, the predictions and the
accuracy. Clients do not all send RGB: the same images also go out as grayscale, RGBA, palette
and EXIF-rotated phone photos, and the serving path must handle each exactly like the lab.
"""),
    code("""
model = "digits_cnn"  # reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed); a model that takes tensors is skipped here
lab_transform = ""  # package.module:callable(PIL image) -> tensor; empty means the recipe of the model family
serving_transform = ""  # package.module:callable(bytes) -> tensor under test; empty means ServingPath
bugs = ["all"]  # catalogued bugs to measure: ["all"], a list of names, or [] for none
atol = 1e-6  # largest per-element abs diff between serving and lab tensors that passes
max_images = 0  # images to send; 0 means all 360 held-out digits (or 24 photographs)
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for photograph crops and untrained weights
""", tags=["parameters"]),
    code("""
import pandas as pd

from lab2prod import notebook as nb
from lab2prod import parity
from lab2prod.models import load_model
from lab2prod.results import record

nb.quiet_deprecations()
run_dir = nb.resolve_run_dir(run_dir)
loaded = load_model(model, weights, example_inputs, seed)
pd.DataFrame([loaded.card()]).set_index("model")
"""),
    md("""
## Send every image, as every client would

Labelled held-out digits for the reference models (so accuracy can be measured); real
photographs from scikit-learn and scikit-image, whole and cropped to varied aspect ratios,
for any other image model (agreement with the lab path only, no labels).
"""),
    code("""
report = parity.evaluate_parity(loaded, lab_transform, serving_transform, bugs, max_images, seed, progress=False)
print(report.reason or f"{len(report.names)} images x {len(report.request_sets)} client encodings, "
      f"{len(report.bugs)} catalogued bugs, labels: {'yes' if report.labels is not None else 'no'}")
"""),
    md("""
## The serving path under test

Each row is one kind of client. `max_abs_diff` is the largest per-element difference between
the serving tensor and the lab tensor over all images; it must stay within `atol`.
"""),
    code("""
nb.parity_serving_frame(report) if report.applies else report.reason
"""),
    md("""
Where the serving path differs from the lab path, image by image (worst first); empty when it
matches everywhere. A shape that differs from the lab's counts as an infinite difference.
"""),
    code("""
where = [row for result in report.serving
         for row in parity.worst_images(result, report.names, report.request_sets[result.client], atol)]
pd.DataFrame(where).set_index(["client", "image"]) if where else "the serving path matches the lab path on every image"
"""),
    md("""
## The catalog of serving bugs, most harmful first

Each bug is a small function on request bytes that reproduces a real mistake. `accuracy_drop_pts`
compares with the lab path on the same requests; `failed_requests` are requests that would
have been HTTP 500s. Whether a bug costs many points depends on the model and the data: that is
why it is measured here rather than assumed. Without labels the ranking uses disagreement with
the lab's top-1; an untrained model (random weights) tends to predict one class for everything,
so there the tensor difference is what to read.
"""),
    code("""
nb.parity_bug_frame(report) if report.bugs else report.reason or "no bugs selected"
"""),
    code("""
fig = nb.plot_parity_impact(report) if report.bugs else None
"""),
    md("""
## What the model sees

The lab path's input and the inputs produced by the most harmful bugs, for the same requests,
with the normalization undone. A missing Normalize looks fine to a person; the model sees a
different distribution.
"""),
    code("""
fig = nb.plot_model_view(report) if report.bugs else None
"""),
    md("""
## Gate

`parity:serving`: on every image and every client encoding, the serving path's tensor has the
lab tensor's shape and lies within `atol` of it. Skipped for models that take tensors.
"""),
    code("""
# NBVAL_CHECK_OUTPUT
gates = [parity.serving_gate(report, atol)]
record(run_dir, "parity", {
    "applies": report.applies,
    "serving_transform": serving_transform or "lab2prod.preprocess:ServingPath",
    "lab_transform": lab_transform or (f"{loaded.family} recipe" if report.applies else None),
    "recipe": report.recipe,
    "images": len(report.names),
    "labelled": report.labels is not None,
    "serving_max_abs_diff": report.serving_max_abs_diff if report.applies else None,
    "lab_accuracy": report.lab_accuracy,
    "serving": [r.summary() for r in report.serving],
    "bugs": report.bug_rows(),
}, gates, notebook="02_preprocessing_parity")
nb.gates_frame(gates)[["verdict", "threshold", "detail"]]
"""),
]

QUANTIZATION = [
    md("""
# 03 · Dynamic int8 quantization: what it buys and what it costs, for this model

Dynamic int8 quantization is the cheapest speedup a CPU deployment can get, and the easiest
to ship broken: nobody measured the accuracy, or the speedup, or the fact that it only touches
the Linear layers of a conv net. This notebook quantizes the same model by two libraries, side
by side, and measures size, latency, accuracy (or fidelity to fp32 where there are no labels),
coverage and per-layer sensitivity, then exports the recommended recipe and reloads it in a
fresh process.

**Methods.** `torch_ao_dynamic` is `torch.ao.quantization.quantize_dynamic`: what deployed
systems use today, **deprecated upstream** (the *old path*). Its x86/fbgemm kernels quantize
activations per batch and run int8 GEMMs, fused in C++. `torchao_int8_dynamic` and
`torchao_int8_weight_only` are torchao's `quantize_` configs (the *new path*). torchao is
written for GPUs and `torch.compile`; in eager mode on a CPU its ops run unfused, so expect
them to gain less here, and weight-only int8 to be slower than fp32 (it dequantizes the
weights on every call). The measured numbers below say how much, on this machine.
"""),
    code("""
model = "digits_mlp"  # reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed) -> Tensor, for non-image models
methods = ["torch_ao_dynamic", "torchao_int8_dynamic", "torchao_int8_weight_only"]  # recipes to compare
module_types = ["Linear", "LSTM", "GRU"]  # layer types torch.ao quantizes (torchao: Linear only)
engine = "auto"  # quantized engine: auto, x86, fbgemm, onednn or qnnpack
batch_sizes = [1, 16]  # batch sizes timed
threads = 1  # torch threads while timing (one per worker is the serving default)
min_run_time = 0.5  # seconds of timing per recipe and batch size
accuracy_budget_pts = 1.0  # largest accuracy drop (points; top-1 disagreement when unlabelled) that passes
eval_count = 360  # unlabelled inputs for fidelity (labelled models use all 360 held-out digits)
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for input draws and untrained weights
""", tags=["parameters"]),
    code("""
import pandas as pd

from lab2prod import notebook as nb
from lab2prod import quantization as q
from lab2prod.models import load_model
from lab2prod.results import record

nb.quiet_deprecations()
run_dir = nb.resolve_run_dir(run_dir)
methods = q.check_methods(methods)
types = q.resolve_module_types(module_types)
quantized_engine = q.resolve_engine(engine)
loaded = load_model(model, weights, example_inputs, seed)
data = q.eval_data(loaded, eval_count, seed)
print(f"quantized engine: {quantized_engine}; timing on {threads} thread(s); "
      f"{'accuracy on' if data.labels is not None else 'fidelity on'} {len(data.inputs)} held-out inputs")
pd.DataFrame([loaded.card()]).set_index("model")
"""),
    md("""
## Measure every recipe on the same model, data and batches

Quality is measured once per recipe, latency at each batch size (torch.utils.benchmark,
median of repeated blocks after a warm-up call). `size_bytes` is the saved state_dict.
`coverage_params` and `coverage_flops` are the shares of parameters and FLOPs in the layers a
method quantizes: a conv net whose FLOPs sit in convolutions cannot gain much from a method
that only quantizes Linear layers.
"""),
    code("""
results = q.evaluate_methods(loaded, methods, types, batch_sizes, threads, min_run_time, seed, data, progress=False)
nb.quantization_frame(results)
"""),
    code("""
print("\\n".join(q.findings(results, batch_sizes)))
"""),
    code("""
fig = nb.plot_quantization_tradeoff(results, max(batch_sizes), accuracy_budget_pts)
"""),
    md("""
## Per-layer sensitivity

Each layer quantized alone (torch.ao), the rest kept in fp32: its accuracy drop (or top-1
disagreement) and its relative output error. When the whole-model recipe exceeds the budget,
a selective recipe keeps the most sensitive layers in fp32, one more at a time, until it fits;
it gets its own row.
"""),
    code("""
sensitivity = q.layer_sensitivity(loaded, "torch_ao_dynamic", types, data) if "torch_ao_dynamic" in methods else []
print(q.add_selective(results, loaded, types, sensitivity, data, accuracy_budget_pts, batch_sizes, threads,
                     min_run_time, seed))
pd.DataFrame(sensitivity).set_index("layer") if sensitivity else "no layer of the chosen types to quantize"
"""),
    md("""
## Export the recommended recipe and reload it in a fresh process

The recommended recipe is the fastest at the largest batch size within the accuracy budget.
torch.ao models are saved as TorchScript (the old path), torchao models through `torch.export`;
the file is loaded in a new Python process and compared with the in-process quantized model.
"""),
    code("""
best = q.recommended(results, accuracy_budget_pts, max(batch_sizes))
exported = q.export_quantized(best, loaded, run_dir / "models", batch_sizes, seed) if best else None
pd.DataFrame([exported]).set_index("method") if exported else "no recipe within the accuracy budget"
"""),
    md("""
## Gates

`quantization:accuracy`: a quantized recipe stays within `accuracy_budget_pts` (top-1
disagreement with fp32 when there are no labels). `quantization:export`: that recipe's file
reloads in a fresh process and matches the in-process model (max abs diff ≤ 1e-4, top-1
identical).
"""),
    code("""
# NBVAL_CHECK_OUTPUT
gates = q.quantization_gates(results, best, exported, accuracy_budget_pts)
record(run_dir, "quantization", {
    "model": loaded.card(),
    "engine": quantized_engine,
    "threads": threads,
    "labelled": data.labels is not None,
    "methods": [row for r in results for row in r.rows(results[0])],
    "sensitivity": sensitivity,
    "recommended": best.method if best else None,
    "export": exported,
    "findings": q.findings(results, batch_sizes),
}, gates, notebook="03_quantization")
nb.gates_frame(gates)[["verdict", "threshold", "detail"]]
"""),
]

BENCHMARK = [
    md("""
# 04 · Latency benchmark: tail latency, batch sweep, and the batch size that meets the SLA

"It ran fast on my laptop" is not a latency budget. A service is judged by its tail (P99),
at the batch size it actually runs, with the threads it actually has. This notebook times
each variant of the model (eager, TorchScript, torch.export, dynamic int8 on CPU; on a CUDA
GPU also fp16/bf16 autocast, channels_last, torch.compile and CUDA graphs) at each batch size,
after checking that the variant gives the same answers as eager fp32 (a fast but wrong variant
is flagged, not ranked), and picks the highest-throughput configuration whose P99 meets the
SLA, the way Triton Model Analyzer does (constraint first, then objective).

**Harness.** Warm-up until consecutive windows agree, then per-call samples until the median
is stable (or the time budget runs out); CPU calls timed with `perf_counter_ns`, CUDA calls with
events and a synchronize. The raw samples are kept. TorchScript is the old path (deprecated
upstream); torch.export is the new one.
"""),
    code("""
model = "digits_cnn"  # reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed) -> Tensor, for non-image models
device = "auto"  # auto (cuda when present, also cpu), cpu or cuda
batch_sizes = [1, 4, 16, 64]  # batch sizes swept
variants = ["auto"]  # auto picks the defaults of the device; or a list of names such as eager, torch_export
sla_ms = 100.0  # latency objective: P99 per call must stay at or under this
min_run_time = 1.0  # seconds of sampling per variant and batch size (more for expensive calls)
threads = 1  # torch CPU threads while timing (one per worker is the serving default)
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for input draws and untrained weights
""", tags=["parameters"]),
    code("""
import pandas as pd

from lab2prod import benchmark as bm
from lab2prod import notebook as nb
from lab2prod.models import load_model
from lab2prod.results import gate, record

nb.quiet_deprecations()
run_dir = nb.resolve_run_dir(run_dir)
devices = nb.resolve_devices(device)
loaded = load_model(model, weights, example_inputs, seed)
machine = bm.machine_info()
pd.DataFrame([{**loaded.card(), "devices": ", ".join(devices)}]).set_index("model")
"""),
    code("""
pd.Series(machine, name="machine").to_frame()
"""),
    md("""
## Sweep: every variant at every batch size

`correct` says whether the variant matched eager fp32 on the same batch (cosine ≥ 0.999 and
top-1 agreement ≥ 99%); `n` is the number of timed calls; `stable` whether the median had
settled when sampling stopped. `peak_mem_bytes` is CUDA max allocated on a GPU and resident
memory growth while timing on the CPU.
"""),
    code("""
flops = bm.flops_per_item(loaded.module, loaded.make_inputs(2, seed))
rows = []
for dev in devices:
    rows += bm.run_sweep(loaded, bm.check_variants(variants, dev), dev, batch_sizes, threads, min_run_time,
                         seed, flops, progress=False)
nb.benchmark_frame(rows)
"""),
    md("""
## Latency distributions

Every timed call at the largest batch size, per variant: the box is the middle half, the
whiskers the 1st to 99th percentile; dots beyond them are the tail a P99 is made of.
"""),
    code("""
fig = nb.plot_latency_distributions(rows, max(batch_sizes))
"""),
    md("""
## P50 and P99 against batch size, with the SLA; throughput against batch size

Larger batches raise throughput until the P99 crosses the SLA line: the best batch size is
the last one under it.
"""),
    code("""
fig = nb.plot_batch_sweep(rows, sla_ms)
"""),
    md("""
## The configuration that meets the SLA

Among correct rows with P99 ≤ `sla_ms`, the highest throughput.
"""),
    code("""
# NBVAL_CHECK_OUTPUT
choices = {dev: bm.choose_sla([r for r in rows if r.device == dev], sla_ms) for dev in devices}
primary = devices[-1]  # the GPU when there is one
chosen = choices[primary]
wrong = sorted({f"{r.variant}@{r.device}" for r in rows if r.error is None and not r.correct})
print(f"SLA p99 <= {sla_ms:g} ms: " + ("met" if chosen["met"] else "NOT met") + f" on {primary}")
print("fast but wrong (not ranked):", ", ".join(wrong) if wrong else "none")
"""),
    code("""
pd.DataFrame([{"device": dev, **choice} for dev, choice in choices.items()]).set_index("device")
"""),
    md("""
## Efficiency: achieved FLOP/s against what the device can do

FLOPs per inference from `torch.utils.flop_counter`; achieved GFLOP/s at the median latency.
The practical ceiling is a large matmul measured on the same device with the same threads;
on a known GPU the data-sheet peak is shown too. Small models at small batches sit far below
both: they are bound by per-call overhead, not arithmetic.
"""),
    code("""
efficiency = nb.efficiency_frame(rows, flops, devices, machine, threads)
efficiency
"""),
    md("""
## Gate

`sla`: the chosen configuration's P99 is within `sla_ms` on the GPU when there is one, else the CPU.
"""),
    code("""
# NBVAL_CHECK_OUTPUT
gates = [gate("sla", chosen["met"], chosen["p99_ms"], sla_ms,
              f"{chosen['variant']} at batch {chosen['batch_size']} on {primary}" if chosen["met"]
              else f"no correct configuration has p99 <= {sla_ms:g} ms on {primary}")]
record(run_dir, "benchmark", {
    "model": loaded.card(),
    "rows": [r.as_dict() for r in rows],
    "sla": chosen,
    "sla_by_device": choices,
    "machine": machine,
    "threads": threads,
    "flops_per_item": flops,
    "efficiency": efficiency.reset_index().to_dict("records"),
}, gates, notebook="04_latency_benchmark")
nb.gates_frame(gates)[["verdict", "threshold"]]
"""),
]

SERVING = [
    md("""
# 05 · Serving: does the served model answer like the lab, under load, within limits?

The lab number means nothing until the served model gives the same answers under load. This
notebook serves the model with a real **TorchServe** (started here, loopback only, token
authorization on, stopped before the notebook goes on), checks that it answers exactly like
the lab, shows what it refuses, load-tests it with **Locust** at increasing numbers of
concurrent users, reads its **Prometheus** metrics, and then tunes the server the way Triton
Model Analyzer does: every combination of workers, torch threads per worker and server-side
batch size at the target load, keeping the highest throughput whose P99 meets the SLA.

The handler imports lab2prod's serving path (`lab2prod.preprocess.ServingPath`), so its
preprocessing is the lab transform object, not a copy. The served file is the export
notebook's TorchScript when this run has one (TorchScript is the old path, deprecated
upstream; TorchServe 0.12 loads it natively).
"""),
    code("""
model = "digits_cnn"  # reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed); a model that takes tensors is skipped here
users = [1, 8, 32, 64]  # concurrent Locust users per load level
duration_s = 4.0  # seconds of load per level and per tuned configuration
workers = 1  # workers for the load sweep
threads = 1  # torch threads per worker for the load sweep (0 means the torch default)
batch_size = 1  # server-side batch size for the load sweep
max_batch_delay_ms = 5  # how long the server waits to fill a batch
sla_ms = 100.0  # p99 objective for the client-side latency
tune_users = 8  # load at which configurations are compared
tune_workers = [1, 2]  # workers per model to try
tune_threads = [1, 2]  # torch threads per worker to try
tune_batch_sizes = [1, 4]  # server batch sizes to try
max_request_size = 1000000  # bytes; larger requests are refused
parity_requests = 64  # held-out images sent one by one for live parity
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for untrained weights and photo crops
""", tags=["parameters"]),
    code("""
import pandas as pd

from lab2prod import notebook as nb
from lab2prod import serving
from lab2prod.models import load_model
from lab2prod.results import record

nb.quiet_deprecations()
run_dir = nb.resolve_run_dir(run_dir)
loaded = load_model(model, weights, example_inputs, seed)
config = serving.ServeConfig(workers, threads, batch_size, max_batch_delay_ms, max_request_size)
grid = serving.tuning_grid(tune_workers, tune_threads, tune_batch_sizes, max_batch_delay_ms)
pd.DataFrame([loaded.card()]).set_index("model")
"""),
    md("""
## Serve, measure, stop

One call starts TorchServe, runs every measurement below and stops the server (also on an
error or an interrupt). It takes a few minutes: each load level and each configuration runs
for `duration_s` seconds.
"""),
    code("""
report = serving.evaluate_serving(loaded, run_dir, config, users, duration_s, grid, tune_users, sla_ms,
                                  parity_requests, seed)
print(report.reason or f"served {report.served_file}; deployment config: {report.config_file}; "
      f"locustfile: {report.locustfile}")
"""),
    md("""
## Live parity

Held-out images sent as request bytes, one by one; the served top-1 and probabilities against
the lab path run in this process.
"""),
    code("""
pd.DataFrame([report.parity]) if report.applies else report.reason
"""),
    md("""
## What the server refuses

Status codes actually returned by this TorchServe: without the token, with a wrong one (also on
`/ping`), and with a body over `max_request_size` (413, or status 0 when the server closes the
connection before answering, as Netty may while the body is still arriving).
"""),
    code("""
pd.DataFrame(report.limits).set_index("request") if report.applies else report.reason
"""),
    md("""
## Load sweep (Locust, headless, loopback)

Percentiles are computed here from every request's latency as Locust's client saw it. The
locustfile and the request images are saved in the run folder: point it at a real deployment,
or run it distributed (`locust -f locustfile.py --master` and `--worker` processes).
"""),
    code("""
columns = ["users", "requests", "avg_ms", "p50_ms", "p95_ms", "p99_ms", "error_rate", "throughput_per_s"]
pd.DataFrame(report.load, columns=columns).set_index("users") if report.applies else report.reason
"""),
    code("""
fig = nb.plot_load(report.load, sla_ms) if report.applies else None
"""),
    md("""
## Prometheus metrics

Scraped from the metrics endpoint and parsed with `prometheus_client`'s parser. TorchServe
exports counters (totals), so percentiles come from the client side above.
"""),
    code("""
pd.DataFrame(report.metrics).set_index(["metric", "labels"]) if report.metrics else report.reason or "no metrics"
"""),
    md("""
## Tuning: workers x threads x server batch at the target load

The first row is what an untuned TorchServe does on this machine (a worker per core, each with
torch's default threads). On a small machine workers x threads oversubscribe the cores fast;
the sweep finds that by itself. The chosen configuration is written into the
`config.properties` the run leaves behind.
"""),
    code("""
fig = nb.plot_tuning(report.tuning, sla_ms, report.chosen) if report.applies else None
"""),
    code("""
columns = ["config", "workers", "threads", "batch_size", "p50_ms", "p99_ms", "throughput_per_s", "error_rate",
           "meets_sla"]
pd.DataFrame(report.tuning, columns=columns).set_index("config") if report.applies else report.reason
"""),
    code("""
if report.applies and report.chosen:
    gain = report.chosen["throughput_per_s"] / max(report.default["throughput_per_s"], 1e-9)
    verdict = "meets" if report.chosen["meets_sla"] else f"NONE meets the SLA at {tune_users} users; closest"
    print(f"{verdict}: {report.chosen['config']}: {report.chosen['throughput_per_s']:.0f} req/s, "
          f"p99 {report.chosen['p99_ms']:.0f} ms; default: {report.default['throughput_per_s']:.0f} req/s, "
          f"p99 {report.default['p99_ms']:.0f} ms ({gain:.1f}x the default's throughput)")
else:
    print(report.reason or "no configuration met the SLA")
"""),
    md("""
## Beyond one machine: Kubernetes

The chosen configuration also becomes manifests (checked against the Kubernetes schema before
they are written): a Deployment whose CPU limit is workers x threads, a readiness probe that
calls `/ping` with the token TorchServe wrote at start, a Service, and an autoscaler on CPU.
The folder holds the Dockerfile and build context of the image the Deployment runs.
"""),
    code("""
from lab2prod import kubernetes

pd.DataFrame(kubernetes.describe(run_dir / report.kubernetes)).set_index("kind") if report.applies else report.reason
"""),
    md("""
## Gates

`serving:parity`: every live request answered, top-1 identical to the lab, probabilities within
1e-4. `serving:errors`: no failed request at any load level. `serving:sla`: p99 ≤ `sla_ms` at
the lowest load level.
"""),
    code("""
# NBVAL_CHECK_OUTPUT
gates = serving.serving_gates(report, sla_ms)
summary_keys = ["workers", "threads", "batch_size", "users", "p99_ms", "throughput_per_s"]
record(run_dir, "serving", {
    "applies": report.applies,
    "served_file": report.served_file,
    "parity_top1_agreement": report.parity.get("top1_agreement"),
    "max_prob_diff": report.parity.get("max_prob_diff"),
    "limits": report.limits,
    "load": report.load,
    "metrics": report.metrics,
    "tuning": report.tuning,
    "tuned": {**{k: report.chosen[k] for k in summary_keys}, "meets_sla": report.chosen["meets_sla"]}
    if report.chosen else None,
    "default": {k: report.default[k] for k in summary_keys} if report.default else None,
    "config_file": report.config_file,
    "locustfile": report.locustfile,
    "kubernetes": report.kubernetes,
}, gates, notebook="05_serving")
nb.gates_frame(gates)[["verdict", "threshold"]]
"""),
]

DRIFT = [
    md("""
# 06 · Drift monitoring: would we notice when production data stops looking like the lab's?

Production data is not the lab's data. This notebook measures how often each drift test
flags a batch of production traffic, for real shifts of real images (brightness, contrast,
blur, JPEG quality, rotation), for every serving bug of the parity catalog (the data is fine,
the server is not), and for another source altogether (photographs sent to a digit model).
Under no shift the flag rate is the false-positive rate and must sit near the chosen p-value.

**Tests.** MMD between penultimate-layer embeddings (RBF kernel, median-heuristic bandwidth,
permutation p-value), per-feature KS on the embeddings with Bonferroni correction (scipy),
PSI of the predicted classes (with a permutation p-value, so it reads at the same alpha), and
KS on image properties (brightness, contrast, width, height, aspect). The MMD statistic and its
permutation test are lab2prod's own, vectorized in torch; the tests check them against a plain
loop implementation. Then the metrics a service exports with `prometheus_client`.
"""),
    code("""
model = "digits_cnn"  # a reference model: drift rates need its labelled digits
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed); a model that takes tensors is skipped here
batch_size = 64  # images per monitored batch
batches = 50  # batches drawn per scenario
alpha = 0.05  # p-value below which a batch is flagged
sla_ms = 100.0  # latency objective: a histogram bucket boundary is put on it
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for the reference split, batch draws and permutations
""", tags=["parameters"]),
    code("""
import pandas as pd

from lab2prod import drift
from lab2prod import notebook as nb
from lab2prod.models import load_model
from lab2prod.results import gate, record

nb.quiet_deprecations()
run_dir = nb.resolve_run_dir(run_dir)
loaded = load_model(model, weights, example_inputs, seed)
report = drift.evaluate_drift(loaded, batch_size, batches, alpha, seed)
print(report.reason or f"reference: {report.reference_size} held-out images; {batches} batches of "
      f"{report.batch_size} per scenario; flagged when p < {alpha:g}")
"""),
    md("""
## Detection rates

Rows: scenarios, with the change in the model's accuracy they cause (what matters). Columns:
tests. The `no shift` row is the false-positive rate. Serving bugs leave the images as they
were, so the image-property test cannot see them: only what the model sees can.
"""),
    code("""
fig = nb.plot_drift(report) if report.applies else None
"""),
    code("""
nb.drift_frame(report).round(3) if report.applies else report.reason
"""),
    md("""
## Metrics a service exports

`lab2prod.drift.MetricsExporter` holds a `data_drift_score` gauge, an inference latency
histogram with a bucket boundary on the SLA, and requests counted by outcome; `serve()` starts a
`/metrics` endpoint on 127.0.0.1 that a handler or sidecar can use. Below, the exposition text
after recording the monitored batches of two scenarios (values from this run).
"""),
    code("""
exporter = drift.MetricsExporter(sla_ms)
if report.applies:
    for row in report.scenarios:
        if row["test"] == drift.PRIMARY_TEST and row["scenario"] in ("no shift", "darker (x0.6)"):
            exporter.drift.labels(test=f"{drift.PRIMARY_TEST}:{row['scenario']}").set(1 - row["median_p_value"])
    exporter.requests.labels(outcome="ok").inc(report.batch_size * report.batches)
    exporter.latency.observe(sla_ms / 1000 / 2)
print("\\n".join(line for line in exporter.exposition().splitlines()
                if line.startswith(("data_drift", "inference_latency_seconds_bucket", "inference_requests"))))
"""),
    md("""
## Gate

`drift`: the MMD test's false-positive rate under no shift is at most 0.1, and every injected
shift that moves the model's accuracy by more than 5 points is flagged in at least 80% of the
batches of the default size.
"""),
    code("""
# NBVAL_CHECK_OUTPUT
if report.applies:
    fpr, missed = report.false_positive_rate(), report.missed()
    gates = [gate("drift", fpr <= 0.1 and not missed, fpr, 0.1,
                  f"false-positive rate {fpr:.2f}; " + (f"missed: {', '.join(missed)}" if missed else
                                                       "every shift costing > 5 points flagged in >= 80% of batches"))]
else:
    fpr, gates = None, [gate("drift", False, None, 0.1, report.reason, skipped=True)]
record(run_dir, "drift", {
    "false_positive_rate": fpr,
    "scenarios": report.scenarios or [],
    "batch_size": report.batch_size,
    "alpha": alpha,
    "primary_test": drift.PRIMARY_TEST,
}, gates, notebook="06_drift_monitoring")
nb.gates_frame(gates)[["verdict", "threshold"]]
"""),
]

SECURITY = [
    md("""
# 07 · Security: hostile inputs, adversarial examples, model integrity, server configuration

Production requests are not all friendly. The input guard (`lab2prod.guard.InputGuard`) is
what the served handler runs before anything reaches the model: a byte limit, the format by
its magic bytes (never the file name), a pixel limit read from the header before decoding
(decompression bombs), one frame only, the colour modes the lab used, sane dimensions, a full
decode (truncated files), then NaN/Inf, shape and range checks and a z-score screen of the
input statistics against the lab's. Every refusal has a reason code.

Adversarial examples are measured honestly: FGSM and PGD on the reference model, with the
perturbation budget in the usual [0, 1] pixel scale and the model's normalization inside the
attacked function. A statistics screen is not a defence against them, and the numbers show it.
"""),
    code("""
model = "digits_cnn"  # the model attacked and served
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed); a model that takes tensors is skipped here
eps = 0.03  # L-inf budget of the attacks in [0, 1] pixel units (8/255 is about 0.031)
pgd_steps = 10  # PGD iterations
attack_images = 200  # held-out images attacked
z_limit = 5.0  # z-score screen threshold on the input statistics
max_bytes = 1000000  # request size limit of the guard
live_server = True  # also send the hostile inputs to a real TorchServe with the guard in its handler
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for PGD random starts and untrained weights
""", tags=["parameters"]),
    code("""
import pandas as pd
import torch

from lab2prod import notebook as nb
from lab2prod import security
from lab2prod.guard import InputGuard, lab_input_stats
from lab2prod.models import load_model
from lab2prod.preprocess import lab_transform_for
from lab2prod.results import gate, record

nb.quiet_deprecations()
run_dir = nb.resolve_run_dir(run_dir)
loaded = load_model(model, weights, example_inputs, seed)
applies = loaded.family != "tensor"
if applies:
    transform, recipe = lab_transform_for(loaded.family)
    guard = InputGuard(max_bytes=max_bytes, expected_shape=loaded.input_shape, z_limit=z_limit,
                       lab_stats=lab_input_stats(loaded.make_inputs(256, 0, "train")))
print("guard:", guard if applies else f"skipped: {model!r} takes tensors, not images")
"""),
    md("""
## Every bad input tried

`rejected` with its `reason` code is the expected answer; `crashed` would mean an exception
other than a refusal escaped the guard. With `live_server`, the same inputs (and requests with
no token or a wrong one) go to a real TorchServe whose handler runs this guard, and the server
must still answer a good request afterwards.
"""),
    code("""
if applies:
    from lab2prod.parity import parity_images

    good_image = parity_images(loaded.family, 1)[1][0]
    inputs = security.bad_inputs(good_image, max_bytes)
    tried = security.try_inputs(guard, transform, inputs)
    if live_server:
        tried = security.try_live(loaded, run_dir, inputs, tried, seed)
    table = pd.DataFrame(tried).set_index("input")
table if applies else "skipped"
"""),
    md("""
## Adversarial examples (FGSM, PGD)

Clean accuracy against accuracy under attack, and the share of attacked images the z-score
screen flags. Expect the screen to catch few or none: the perturbations are small by design.
"""),
    code("""
if applies and loaded.family == "digits":
    from lab2prod.data import digits_images
    from lab2prod.transforms import digits_lab_transform

    data = digits_images("test")
    unnormalized = digits_lab_transform(normalize=False)
    x01 = torch.stack([unnormalized(im) for im in data.images[:attack_images]])
    labels = torch.as_tensor(data.labels[:attack_images])
    adversarial, examples = security.adversarial_report(loaded.module, x01, labels, recipe.mean, recipe.std, eps,
                                                        guard, pgd_steps, seed)
else:
    adversarial, examples = None, None
pd.Series(adversarial).to_frame("value") if adversarial else "needs a reference model with labels"
"""),
    code("""
fig = nb.plot_adversarial(examples) if examples else None
"""),
    md("""
## Model integrity

Each file of the run's manifest checked by sha256 before it would be loaded; a tampered copy
refused; a whole pickled model refused by weights-only loading (unpickling runs code).
"""),
    code("""
integrity = security.integrity_checks(run_dir, run_dir / "security")
pd.DataFrame(integrity).set_index("check")
"""),
    md("""
## TorchServe configuration audit

The `config.properties` the serving notebook left in this run (or, without one, the deployment
configuration lab2prod writes), each item pass/fail with the fix.
"""),
    code("""
config_path = security.config_to_audit(run_dir)
audit = security.audit_config(config_path)
print("audited:", config_path.relative_to(run_dir))
pd.DataFrame(audit).set_index("item")
"""),
    md("""
## Gates

`security:inputs`: every bad input refused with a reason, nothing crashed, and (live) the server
still answers. `security:integrity`: all integrity checks pass. `security:config`: every audit
item passes.
"""),
    code("""
# NBVAL_CHECK_OUTPUT
if applies:
    refused = all(r["rejected"] and r["reason"] and not r["crashed"] for r in tried)
    alive = all(r.get("server_alive", True) is not False for r in tried)
    gates = [gate("security:inputs", refused and alive, sum(r["rejected"] for r in tried), len(tried),
                  f"{sum(r['rejected'] for r in tried)} of {len(tried)} refused with a reason"
                  + ("" if alive else "; the server stopped answering"))]
else:
    tried, gates = [], [gate("security:inputs", False, None, None, "model takes tensors", skipped=True)]
gates += [gate("security:integrity", all(r["passed"] for r in integrity), sum(r["passed"] for r in integrity),
               len(integrity), "; ".join(r["check"] for r in integrity if not r["passed"]) or "all pass"),
          gate("security:config", all(r["passed"] for r in audit), sum(r["passed"] for r in audit), len(audit),
               "; ".join(f"{r['item']}: {r['fix']}" for r in audit if not r["passed"]) or "all pass")]
record(run_dir, "security", {
    "inputs": [{k: r.get(k) for k in ("input", "rejected", "reason", "server_alive", "server_status")} for r in tried],
    "adversarial": adversarial,
    "integrity": integrity,
    "config_audit": audit,
}, gates, notebook="07_security")
nb.gates_frame(gates)[["verdict", "threshold"]]
"""),
]

ENVIRONMENT = [
    md("""
# 00 · Environment: is the serving environment the lab environment?

A model validated under one Python and torch can fail, or silently answer differently, under
another; a feature derived from a timestamp shifts by hours when the server's time zone differs;
non-ASCII class labels break where the locale is not UTF-8. This notebook compares the
environment it runs in with the **lab lock** (`lab2prod env lock PATH`, written on the lab
machine and beside every exported model), runs operator smoke tests against the lock's
reference values, checks that every operator of the exported graph runs here, and shows the
two classic seed failures with their fixes. The dynamically quantized Linear uses
`torch.ao.quantization`, the old path (deprecated upstream in favour of torchao).
"""),
    code("""
lock_path = ""  # lab lock from `lab2prod env lock`; empty means this machine writes its own
tolerance = 1e-4  # largest max-abs-diff of a smoke operator vs the lock that passes
model = "digits_cnn"  # model whose exported graph must run here
weights = ""  # optional state_dict file for the model
example_inputs = ""  # package.module:fn(batch_size, seed) -> Tensor, for non-image models
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for input draws and untrained weights
""", tags=["parameters"]),
    code("""
import pandas as pd
import torch

from lab2prod import environment as env
from lab2prod import notebook as nb
from lab2prod.models import load_model
from lab2prod.results import gate, record

nb.quiet_deprecations()
run_dir = nb.resolve_run_dir(run_dir)
here = env.fingerprint()
if lock_path:
    lock, lock_source = env.read_lock(lock_path), lock_path
else:
    lock_source = str(env.write_lock(run_dir / "env.lock.json"))
    lock = env.read_lock(lock_source)
print(f"lab lock: {'given' if lock_path else 'none given, this machine is the lab'}")
"""),
    md("""
## Lab vs here

Every key of the fingerprint side by side; the rows that differ come first.
"""),
    code("""
nb.fingerprint_frame(lock["fingerprint"], here)
"""),
    md("""
The differences with their severity: **fail** for another major.minor Python or torch, or a
CUDA the lab had and this machine lacks; **warn** for patch versions, other packages,
encodings, locale and time zone; **info** for the rest.
"""),
    code("""
# NBVAL_CHECK_OUTPUT
diffs = env.diff_fingerprints(lock["fingerprint"], here)
pd.DataFrame(diffs, columns=["key", "lab", "here", "severity"]).set_index("key") if diffs else "no differences"
"""),
    md("""
## Operator smoke tests

Fixed inputs through gelu, layer_norm, softmax, conv2d, matmul, interpolate, scaled dot-product
attention and a dynamically quantized Linear, compared with the values the lab recorded (and on
a GPU, CUDA vs CPU). A different BLAS, oneDNN or quantized engine shows up here first.
"""),
    code("""
# NBVAL_CHECK_OUTPUT
smoke = env.compare_smoke(lock["smoke"], tolerance)
pd.DataFrame(smoke).set_index(["op", "device"])[["passed"]].T
"""),
    code("""
fig = nb.plot_smoke(smoke, tolerance)
"""),
    md("""
## Every operator of the exported graph runs here

The model is exported with `torch.export` and its graph is run node by node; an operator this
torch build lacks (or that fails on this hardware) is named.
"""),
    code("""
loaded = load_model(model, weights, example_inputs, seed)
example = loaded.make_inputs(2, seed)
program = torch.export.export(loaded.module, (example,))
ops = env.exported_ops_check(program.module(), example)
pd.DataFrame(ops).set_index("op")
"""),
    md("""
## Seed failure 1: non-ASCII labels under a non-UTF-8 locale

The same labels written and read back in a child process under this machine's locale and
under the C locale. `open()` without an encoding uses the locale's; naming `utf-8` fixes it.
"""),
    code("""
labels = ["café", "naïve", "日本語", "Ünïcödé", "señal"]
utf8 = env.utf8_round_trip_demo(labels)
pd.DataFrame(utf8).set_index("locale")
"""),
    md("""
## Seed failure 2: an hour-of-day feature under another time zone

One event (2026-11-26 10:00 UTC), its hour-of-day feature computed by servers whose `TZ`
differs. `datetime.fromtimestamp(ts)` uses the server's zone; naming the zone the model was
trained with (here UTC) gives the same feature everywhere.
"""),
    code("""
hours = env.hour_of_day_demo(1764151200.0, ["UTC", "Europe/Berlin", "America/Los_Angeles", "Asia/Tokyo"])
pd.DataFrame(hours).set_index("server TZ")
"""),
    md("""
## Gate

`environment`: no fail-level difference, every smoke operator within tolerance, and every
operator of the exported graph runs.
"""),
    code("""
# NBVAL_CHECK_OUTPUT
failing = [d for d in diffs if d["severity"] == "fail"]
bad_ops = [s["op"] for s in smoke if not s["passed"]] + [o["op"] for o in ops if not o["ran"]]
problems = [f"{d['key']}: lab {d['lab']} vs here {d['here']}" for d in failing] + [f"{op} fails" for op in bad_ops]
gates = [gate("environment", not problems, len(problems), 0,
              "; ".join(problems) if problems else "no fail-level difference; all smoke operators pass")]
record(run_dir, "environment", {
    "lock": lock_source, "fingerprint": here, "diffs": diffs, "smoke": smoke, "exported_ops": ops,
    "utf8_demo": utf8, "hour_demo": hours,
}, gates, notebook="00_environment")
nb.gates_frame(gates)[["verdict", "detail"]]
"""),
]

CANARY = [
    md("""
# 08 · Canary: may v2 replace v1, and can we take it back?

A new version is never switched on for everyone at once. This notebook compares v1 (the
model in fp32) with v2 (by default the same model with int8 dynamic quantization, or any
other model by parameter) on the same held-out inputs: how often they agree, the accuracy
change with a confidence interval (paired bootstrap, and McNemar's exact test on the inputs
where they disagree), and the latency change per percentile. Then both versions are served
side by side by a real **TorchServe** (one model, versions 1.0 and 2.0), **Locust** splits
live traffic between them by weight (80/20 by default, as a weighted router would), and a
written rollback rule decides: promote, hold or roll back. The decision is carried out on the
live server through its management API and checked.

v2 is served as TorchScript, the old path (deprecated upstream) that TorchServe 0.12 loads;
torch.ao dynamic quantization is the old quantization path too (torchao is the new one, but
its models export with torch.export only).
"""),
    code("""
model = "digits_cnn"  # v1: reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file for v1 (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed); a model that takes tensors gets no rollout
candidate = "int8"  # v2: int8 means v1 quantized with candidate_method; else any model spec
candidate_weights = ""  # optional state_dict file for a v2 given by model spec
candidate_method = "torch_ao_dynamic"  # quantization of v2 when candidate is int8
traffic_split = [80, 20]  # percent of live requests to v1 and to v2
canary_users = 2  # concurrent Locust users during the rollout
duration_s = 10.0  # seconds of live traffic
max_accuracy_drop_pts = 1.0  # accuracy loss v2 may cost, in points
latency_percentile = 95.0  # percentile of live latency the rollback rule compares
max_latency_increase_ms = 10.0  # increase of that percentile v2 may cost, in ms
min_agreement = 0.97  # share of held-out inputs whose top-1 must not change
min_requests = 100  # live requests v2 must answer before a decision
threads = 1  # torch threads for the offline latency and per served worker
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for untrained weights, bootstrap and the traffic split
""", tags=["parameters"]),
    code("""
import pandas as pd

from lab2prod import canary
from lab2prod import notebook as nb
from lab2prod.models import load_model
from lab2prod.quantization import serialized_size
from lab2prod.results import record

nb.quiet_deprecations()
run_dir = nb.resolve_run_dir(run_dir)
loaded = load_model(model, weights, example_inputs, seed)
v2, v2_label = canary.candidate_model(loaded, candidate, candidate_weights, candidate_method, seed)
policy = canary.Policy(max_accuracy_drop_pts=max_accuracy_drop_pts, max_latency_increase_ms=max_latency_increase_ms,
                       latency_percentile=latency_percentile, min_agreement=min_agreement, min_requests=min_requests)
pd.DataFrame([{"version": "v1", "model": loaded.label, "serialized_bytes": serialized_size(loaded.module)},
              {"version": "v2", "model": v2_label, "serialized_bytes": serialized_size(v2)}]).set_index("version")
"""),
    md("""
## Compare, serve, split, decide, apply

One call runs the offline comparison, then starts TorchServe with both versions, checks that
each answers like its in-process model, sends `duration_s` seconds of Locust traffic split by
`traffic_split`, decides, applies the decision and stops the server (also on an error).
"""),
    code("""
report = canary.evaluate_canary(loaded, v2, v2_label, run_dir, traffic_split, canary_users, duration_s, policy, threads,
                                seed=seed)
print(report.reason or f"rollout: {sum(r['requests'] for r in report.rollout['live'].values() if 'requests' in r)} "
      f"live requests, decision {report.decision!r}")
"""),
    md("""
## Same inputs, both versions

Agreement is the share of held-out inputs whose top-1 class is the same. The accuracy change
is v2 minus v1 in points; its interval comes from resampling the same inputs for both versions
(paired), which is far tighter than comparing two separate accuracies. McNemar's p-value asks
whether the inputs only one version gets right lean one way more than chance would.
"""),
    code("""
# NBVAL_CHECK_OUTPUT
accuracy = report.offline["accuracy"] or {}
pd.DataFrame([{"inputs": report.offline["inputs"], "agreement": round(report.offline["agreement"], 4),
               "v1_accuracy": round(accuracy.get("v1_accuracy", float("nan")), 4),
               "v2_accuracy": round(accuracy.get("v2_accuracy", float("nan")), 4),
               "delta_pts": round(accuracy.get("accuracy_delta_pts", float("nan")), 2),
               "ci_low": round(accuracy.get("ci_low", float("nan")), 2),
               "ci_high": round(accuracy.get("ci_high", float("nan")), 2),
               "only_v1_right": accuracy.get("v1_only_correct"), "only_v2_right": accuracy.get("v2_only_correct"),
               "mcnemar_p": round(accuracy.get("mcnemar_p", float("nan")), 3)}]).set_index("inputs")
"""),
    md("""
Latency of each version in this process, batch 1, measured in alternating rounds so that
whatever else the machine does hits both alike.
"""),
    code("""
pd.DataFrame(report.latency).set_index("percentile").round(3)
"""),
    md("""
## The rollout: both versions live, traffic split by weight

First each served version must answer exactly like its own in-process model (so the
comparison above is what users will get). Then the live numbers per version, from the same
Locust run: the share of traffic each received, errors and latency.
"""),
    code("""
if report.rollout:
    served = pd.DataFrame(report.rollout["served_like_offline"]).T
    served.index = [f"v{v[0]}" for v in served.index]
    live = pd.DataFrame({k: v for k, v in report.rollout["live"].items() if k in ("v1", "v2")}).T
    live.insert(0, "share", live["requests"] / live["requests"].sum())
    display(served)
    display(live[["share", "requests", "error_rate", "p50_ms", "p95_ms", "p99_ms"]])
else:
    print(report.reason)
"""),
    code("""
fig = nb.plot_canary(report, policy)
"""),
    md("""
## The rollback rule, with the evidence

Each rule gives promote, hold or roll back; roll back wins over hold, hold over promote.
Accuracy promotes only when the whole interval sits above the budget and rolls back only when
the whole interval sits below it. Latency reads the p95 of live requests (`latency_percentile`):
an increase within the allowance promotes; above it, the rule rolls back only when the
bootstrap interval of the increase is above the allowance too, and holds otherwise. A 20%
canary gets a few hundred requests, so its p99 rests on a handful of them; the p99 change is
shown and recorded, not decided on.
"""),
    code("""
pd.DataFrame(report.rules).set_index("rule")[["outcome", "value", "threshold", "detail"]]
"""),
    code("""
applied = (report.rollout or {}).get("applied")
print(f"decision: {report.decision}")
if applied:
    print(f"applied on the live server: {applied['action']} (HTTP {applied['status']}); "
          f"the unversioned route now answers as {applied['default_answered_by']} (expected {applied['expected']})")
"""),
    md("""
## Gates

`canary:decision`: the rule says promote. `canary:served`: both served versions answer like
their in-process models. `canary:rollback`: the decision was applied on the live server and
the route answered as the version it should.
"""),
    code("""
gates = canary.canary_gates(report)
record(run_dir, "canary", report.results(), gates, notebook="08_canary")
nb.gates_frame(gates)[["verdict", "threshold", "detail"]]
"""),
    md("""
Whatever the decision, both versions must have answered like their in-process models, and the
decision must have been carried out and checked on the live server:
"""),
    code("""
# NBVAL_CHECK_OUTPUT
print({g["name"]: g["passed"] for g in gates if g["name"] in ("canary:served", "canary:rollback")})
"""),
]

REPORT = [
    md("""
# 99 · Readiness report: is this model ready for production?

Every notebook of a run records its gates: a verdict, the number behind it and the threshold.
This notebook reads them back from the run folder and lays them out along the deployment
checklist (environment, model integrity, preprocessing parity, quantization, latency SLA,
serving, monitoring, security, rollback), failures first, then writes `report.html`: one
self-contained page with the scorecard, every gate, links to the executed notebooks and their
plots. `lab2prod run` runs it last and rewrites the page once the whole run has finished.
"""),
    code("""
run_dir = ""  # run folder to report on; empty means outputs/interactive
""", tags=["parameters"]),
    code("""
from lab2prod import notebook as nb
from lab2prod import report

run_dir = nb.resolve_run_dir(run_dir)
summary = report.collect_summary(run_dir)
rows = report.scorecard(summary["gates"])
ready, verdict = report.readiness(summary)
print(verdict)
"""),
    md("""
## Scorecard

One row per checklist item, in checklist order. An item fails when any of its gates fails;
`NOT RUN` means no notebook of this run recorded a gate for it.
"""),
    code("""
# NBVAL_CHECK_OUTPUT
print(", ".join(row["item"] for row in rows))
"""),
    code("""
fig = nb.plot_scorecard(rows)
"""),
    code("""
nb.scorecard_frame(rows)
"""),
    md("""
## Every gate, failures first

The value is what the run measured and the threshold what it had to meet.
"""),
    code("""
import pandas as pd

from lab2prod.results import gate_verdict

gates = report.sorted_gates(summary["gates"])
pd.DataFrame([{"verdict": gate_verdict(g), "item": report.checklist_item(g), "name": g["name"],
               "value": g["value"], "threshold": g["threshold"], "detail": g["detail"]} for g in gates])
"""),
    md("""
## Notebooks of this run
"""),
    code("""
notebooks = pd.DataFrame(summary["notebooks"], columns=["name", "status", "seconds", "error"])
notebooks if len(notebooks) else "no executed notebooks in this folder; lab2prod run saves them beside the results"
"""),
    code("""
path = report.write_report(summary, run_dir)
print(f"wrote {path.name} ({path.stat().st_size // 1024} KiB, self-contained) in the run folder")
"""),
]


def build(name, cells):
    notebook = new_notebook(cells=cells)
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    path = NOTEBOOKS / f"{name}.ipynb"
    nbformat.write(notebook, str(path))
    return path


NOTEBOOK_CELLS = {
    "00_environment": ENVIRONMENT,
    "01_export": EXPORT,
    "02_preprocessing_parity": PARITY,
    "03_quantization": QUANTIZATION,
    "04_latency_benchmark": BENCHMARK,
    "05_serving": SERVING,
    "06_drift_monitoring": DRIFT,
    "07_security": SECURITY,
    "08_canary": CANARY,
    "99_report": REPORT,
}

if __name__ == "__main__":
    import sys

    # Rebuilding a notebook drops its outputs: name the ones whose cells changed, then execute them.
    for name in sys.argv[1:] or NOTEBOOK_CELLS:
        print(build(name, NOTEBOOK_CELLS[name]))
