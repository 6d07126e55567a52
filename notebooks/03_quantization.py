# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Dynamic int8 quantization: what it buys and what it costs, for this model
#
# Dynamic int8 quantization is the cheapest speedup a CPU deployment can get, and the easiest
# to ship broken: nobody measured the accuracy, or the speedup, or the fact that it only touches
# the Linear layers of a conv net. This notebook quantizes the same model by two libraries, side
# by side, and measures size, latency, accuracy (or fidelity to fp32 where there are no labels),
# coverage and per-layer sensitivity, then exports the recommended recipe and reloads it in a
# fresh process.
#
# **Methods.** `torch_ao_dynamic` is `torch.ao.quantization.quantize_dynamic`: what deployed
# systems use today, **deprecated upstream** (the *old path*). Its x86/fbgemm kernels quantize
# activations per batch and run int8 GEMMs, fused in C++. `torchao_int8_dynamic` and
# `torchao_int8_weight_only` are torchao's `quantize_` configs (the *new path*). torchao is
# written for GPUs and `torch.compile`; in eager mode on a CPU its ops run unfused, so expect
# them to gain less here, and weight-only int8 to be slower than fp32 (it dequantizes the
# weights on every call). `onnxruntime_int8_dynamic` (and `_per_channel`) is ONNX Runtime's
# `quantize_dynamic` on the model's ONNX export: int8 MatMul and Conv (and embedding Gather),
# activations quantized per call, the whole graph run by ONNX Runtime's C++ session.
# `onnxruntime_fp32` is that export unquantized: it splits ONNX Runtime's speedup into what the
# runtime gives by itself and what its int8 kernels add. The measured numbers below say how
# much, on this machine. A model that does not export to ONNX skips the ONNX Runtime rows,
# with the reason.

# %% tags=["parameters"]
model = "digits_mlp"  # reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed) -> Tensor, for non-image models
data = ""  # your data: a folder of class folders of images, a .csv/.jsonl of text,label, or a .pt
lab_transform = ""  # package.module:callable(PIL image) -> tensor; empty means the recipe of the model family
task = "auto"  # classifier, embedder or auto (a Hugging Face model: its architecture; else inferred from the outputs)
methods = ["torch_ao_dynamic", "torchao_int8_dynamic", "torchao_int8_weight_only", "onnxruntime_fp32",
           "onnxruntime_int8_dynamic", "onnxruntime_int8_dynamic_per_channel"]  # recipes to compare
module_types = ["Linear", "LSTM", "GRU"]  # layer types torch.ao quantizes (torchao: Linear only)
engine = "auto"  # quantized engine: auto, x86, fbgemm, onednn or qnnpack
batch_sizes = [1, 16]  # batch sizes timed
threads = 1  # torch threads while timing (one per worker is the serving default)
min_run_time = 0.5  # seconds of timing per recipe and batch size
accuracy_budget_pts = 1.0  # largest accuracy drop (points; top-1 disagreement when unlabelled) that passes
eval_count = 360  # unlabelled inputs for fidelity (labelled models use all 360 held-out digits)
sensitivity_max_s = 60.0  # over budget: sensitivity and frontiers sized to about this; within it: run if under it
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for input draws and untrained weights

# %%
import pandas as pd

from lab2prod.core.results import record
from lab2prod.studies import notebook as nb
from lab2prod.studies import quantization as q

run_dir, loaded, _ = nb.setup(run_dir, model, weights, example_inputs, seed,
                              data=data, lab_transform=lab_transform, task=task)

methods = q.check_methods(methods)
types = q.resolve_module_types(module_types)
quantized_engine = q.resolve_engine(engine)
data = q.eval_data(loaded, eval_count, seed)
print(f"quantized engine: {quantized_engine}; timing on {threads} thread(s); "
      f"{'accuracy on' if data.labels is not None else 'fidelity on'} {data.count} held-out inputs")
pd.DataFrame([loaded.card()]).set_index("model")

# %% [markdown]
# ## Measure every recipe on the same model, data and batches
#
# Quality is measured once per recipe, latency at each batch size (torch.utils.benchmark,
# median of repeated blocks after a warm-up call). `size_bytes` is the saved state_dict.
# `coverage_params` and `coverage_flops` are the shares of parameters and FLOPs in the layers a
# method quantizes: a conv net whose FLOPs sit in convolutions cannot gain much from a method
# that only quantizes Linear layers.

# %%
skipped = {}
results = q.evaluate_methods(loaded, methods, types, batch_sizes, threads, min_run_time, seed, data, progress=False,
                             skipped=skipped)
for method, why in skipped.items():
    print(f"{method} skipped: {why}")
q.quantization_frame(results)

# %% [markdown]
# Which recipe wins on this CPU, and why: each line is computed from the table. For ONNX
# Runtime the speedup is split into its fp32 session (one fused C++ graph, no Python between
# ops) and its int8 kernels (`MatMulInteger`/`ConvInteger` after `DynamicQuantizeLinear`);
# torch.ao's fbgemm int8 Linear runs inside eager PyTorch, op by op.

# %%
print("\n".join(q.findings(results, batch_sizes)))

# %%
fig = q.plot_quantization_tradeoff(results, max(batch_sizes), accuracy_budget_pts)

# %% [markdown]
# ## Per-layer sensitivity and the speed-fidelity frontier
#
# Each layer quantized alone (torch.ao), the rest kept in fp32: its accuracy drop (or top-1
# disagreement; for an embedder, 100 x (1 - cosine)) and its relative output error. Then the
# frontier: layers go to int8 one step at a time, least sensitive first, and every step is
# measured for quality and latency. ONNX Runtime gets its own frontier when its whole-model int8
# is over the budget too: the same order, each layer's ONNX nodes (found from the names the
# exporter records) leaving `quantize_dynamic`'s `nodes_to_exclude` one step at a time. For each
# runtime whose whole-model recipe exceeds the budget, the fastest step within it becomes a
# selective recipe, with its own row: not the step that quantizes the most, the one that is
# fastest; and the first layer, in the model's order, that loses more than its share of the
# budget on its own is named: where the whole-model recipe starts to go wrong.
#
# On a large model each phase is sized to `sensitivity_max_s` from one timed evaluation: the
# ranking on fewer inputs, fewer frontier steps (the line below says so); the selective recipe
# is then measured on every input. Within the budget they change no recommendation: where they
# would take longer than `sensitivity_max_s`, they are left out and the line says how long they
# would take.

# %%
wanted, why, inputs, max_steps = q.sensitivity_wanted(results, loaded, "torch_ao_dynamic", types, data,
                                                     accuracy_budget_pts, sensitivity_max_s)
ranked = q.sensitivity_inputs(data, inputs)
sensitivity = q.layer_sensitivity(loaded, "torch_ao_dynamic", types, ranked) if wanted else []
steps = q.frontier(loaded, "torch_ao_dynamic", types, sensitivity, ranked, max(batch_sizes), threads, min_run_time,
                   accuracy_budget_pts, max_steps) if sensitivity else []
steps += q.ort_frontier(loaded, results, sensitivity, ranked, max(batch_sizes), threads, min_run_time,
                        accuracy_budget_pts, max_steps)[1:]
print(why)
if wanted:
    print(q.add_selective(results, loaded, types, sensitivity, data, accuracy_budget_pts, batch_sizes, threads,
                          min_run_time, seed, steps=steps))
why_over = q.over_budget_text(results, sensitivity, loaded.module, accuracy_budget_pts)
if why_over:
    print(why_over)
pd.DataFrame(sensitivity).set_index("layer") if sensitivity else None

# %% [markdown]
# One point per step: speed against quality lost, a line per runtime. Green points fit the
# budget; the fastest of each runtime is ringed.

# %%
fig = q.plot_frontier(steps, accuracy_budget_pts) if steps else None

# %%
pd.DataFrame(steps).set_index("quantized_layers").round(4) if steps else f"no frontier: {why}"

# %% [markdown]
# ## Export the recommended recipe and reload it in a fresh process
#
# The recommended recipe is the fastest of any runtime at the largest batch size within the
# accuracy budget, or fp32 itself when no recipe within the budget is faster than fp32.
# torch.ao models are saved as TorchScript (the old path), torchao models through `torch.export`,
# ONNX Runtime's as the int8 `.onnx` it wrote;
# the file is loaded in a new Python process and compared with the in-process quantized model. The same
# process answers the golden set, which the report's chain compares with the lab's answers.

# %%
best = q.recommended(results, accuracy_budget_pts, max(batch_sizes))
print(q.recommendation_text(results, best, accuracy_budget_pts, max(batch_sizes)))
stages = [] if best else [q.not_quantized_stage(loaded, "no recipe within the accuracy budget", failed=True)]
exported = q.export_quantized(best, loaded, run_dir / "models", batch_sizes, seed, stages,
                              accuracy_budget_pts) if best else None
pd.DataFrame([exported]).set_index("method") if exported else "no recipe within the accuracy budget"

# %% [markdown]
# ## Gates
#
# `quantization:accuracy`: a quantized recipe stays within `accuracy_budget_pts` (top-1
# disagreement with fp32 when there are no labels). `quantization:export`: that recipe's file
# reloads in a fresh process and matches the in-process model (max abs diff ≤ 1e-4, top-1
# identical).

# %%
# NBVAL_CHECK_OUTPUT
gates = q.quantization_gates(results, best, exported, accuracy_budget_pts, why_over=why_over)
record(run_dir, "quantization", q.QuantizationResults(
    model=loaded.card(),
    engine=quantized_engine,
    threads=threads,
    labelled=data.labels is not None,
    methods=[row for r in results for row in r.rows(results[0])],
    sensitivity=sensitivity,
    frontier=steps,
    recommended=best.method if best else None,
    export=exported,
    findings=q.findings(results, batch_sizes),
    skipped=skipped,
    stages=stages,
), gates, notebook="03_quantization")
nb.gates_frame(gates)[["verdict", "threshold"]]

# %% [markdown]
# Each gate's detail names the recommended method, which the measured speeds choose: it is not checked by nbval.

# %%
nb.gates_frame(gates)[["detail"]]
