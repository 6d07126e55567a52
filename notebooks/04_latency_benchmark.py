# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Latency benchmark: tail latency, batch sweep, and the batch size that meets the SLA
#
# "It ran fast on my laptop" is not a latency budget. A service is judged by its tail (P99),
# at the batch size it actually runs, with the threads it actually has. This notebook times
# each variant of the model (eager, TorchScript, torch.export, dynamic int8 on CPU; on a CUDA
# GPU also fp16/bf16 autocast, channels_last, torch.compile and CUDA graphs) at each batch size,
# after checking that the variant gives the same answers as eager fp32 (a fast but wrong variant
# is flagged, not ranked), and picks the highest-throughput configuration whose P99 meets the
# SLA, the way Triton Model Analyzer does (constraint first, then objective).
#
# **Harness.** Warm-up until consecutive windows agree, then per-call samples until the median
# is stable (or the time budget runs out); CPU calls timed with `perf_counter_ns`, CUDA calls with
# events and a synchronize. The raw samples are kept. TorchScript is the old path (deprecated
# upstream); torch.export is the new one.

# %% tags=["parameters"]
model = "digits_cnn"  # reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed) -> Tensor, for non-image models
data = ""  # your data: a folder of class folders of images, a .csv/.jsonl of text,label, or a .pt
lab_transform = ""  # package.module:callable(PIL image) -> tensor; empty means the recipe of the model family
task = "auto"  # classifier, embedder or auto (a Hugging Face model: its architecture; else inferred from the outputs)
device = "auto"  # auto (cuda when present, also cpu), cpu or cuda
batch_sizes = [1, 4, 16, 64]  # batch sizes swept
variants = ["auto"]  # auto picks the defaults of the device; or a list of names such as eager, torch_export
sla_ms = 100.0  # latency objective: P99 per call must stay at or under this
min_run_time = 1.0  # seconds of sampling per variant and batch size (more for expensive calls)
threads = 1  # torch CPU threads while timing (one per worker is the serving default)
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for input draws and untrained weights

# %%
import pandas as pd

from lab2prod.core.results import record
from lab2prod.studies import benchmark as bm
from lab2prod.studies import environment as env
from lab2prod.studies import notebook as nb

run_dir, loaded, devices = nb.setup(run_dir, model, weights, example_inputs, seed, device,
                                    data=data, lab_transform=lab_transform, task=task)

machine = env.machine_snapshot()
pd.DataFrame([{**loaded.card(), "devices": ", ".join(devices)}]).set_index("model")

# %%
pd.Series(machine, name="machine").to_frame()

# %% [markdown]
# ## Sweep: every variant at every batch size
#
# `correct` says whether the variant matched eager fp32 on the same batch (cosine ≥ 0.999 and
# top-1 agreement ≥ 99%); `n` is the number of timed calls; `stable` whether the median had
# settled when sampling stopped. `peak_mem_bytes` is CUDA max allocated on a GPU and resident
# memory growth while timing on the CPU. `brief` marks a batch whose checking call took over 4x
# `sla_ms`: it cannot meet the SLA, so it gets one warm-up call and three timed ones instead of a
# full sample (on a large model one such call takes seconds).

# %%
flops = bm.flops_per_item(loaded.module, loaded.make_inputs(2, seed))
rows = []
for dev in devices:
    rows += bm.run_sweep(loaded, bm.check_variants(variants, dev), dev, batch_sizes, threads, min_run_time,
                         seed, flops, progress=False, sla_ms=sla_ms)
bm.benchmark_frame(rows)

# %% [markdown]
# ## Latency distributions
#
# Every timed call at the largest batch size, per variant: the box is the middle half, the
# whiskers the 1st to 99th percentile; dots beyond them are the tail a P99 is made of.

# %%
fig = bm.plot_latency_distributions(rows, max(batch_sizes))

# %% [markdown]
# ## P50 and P99 against batch size, with the SLA; throughput against batch size
#
# Larger batches raise throughput until the P99 crosses the SLA line: the best batch size is
# the last one under it.

# %%
fig = bm.plot_batch_sweep(rows, sla_ms)

# %% [markdown]
# ## The configuration that meets the SLA
#
# Among correct rows with P99 ≤ `sla_ms`, the highest throughput.

# %%
# NBVAL_CHECK_OUTPUT
choices = {dev: bm.choose_sla([r for r in rows if r.device == dev], sla_ms) for dev in devices}
primary = devices[-1]  # the GPU when there is one
chosen = choices[primary]
wrong = sorted({f"{r.variant}@{r.device}" for r in rows if r.error is None and not r.correct})
print(f"SLA p99 <= {sla_ms:g} ms: " + ("met" if chosen["met"] else "NOT met") + f" on {primary}")
print("fast but wrong (not ranked):", ", ".join(wrong) if wrong else "none")

# %%
pd.DataFrame([{"device": dev, **choice} for dev, choice in choices.items()]).set_index("device")

# %% [markdown]
# ## Efficiency: achieved FLOP/s against what the device can do
#
# FLOPs per inference from `torch.utils.flop_counter`; achieved GFLOP/s at the median latency.
# The practical ceiling is a large matmul measured on the same device with the same threads;
# on a known GPU the data-sheet peak is shown too. Small models at small batches sit far below
# both: they are bound by per-call overhead, not arithmetic.

# %%
efficiency = bm.efficiency_frame(rows, flops, devices, machine, threads)
efficiency

# %% [markdown]
# ## Gate
#
# `sla`: the chosen configuration's P99 is within `sla_ms` on the GPU when there is one, else the CPU.

# %%
# NBVAL_CHECK_OUTPUT
gates = [bm.sla_gate(chosen, sla_ms, primary)]
record(run_dir, "benchmark", bm.BenchmarkResults(
    model=loaded.card(),
    rows=[r.as_dict() for r in rows],
    sla=chosen,
    sla_by_device=choices,
    machine=machine,
    threads=threads,
    flops_per_item=flops,
    efficiency=efficiency.reset_index().to_dict("records"),
), gates, notebook="04_latency_benchmark")
nb.gates_frame(gates)[["verdict", "threshold"]]
