# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Export: does the serialized model load, and does it agree?
#
# A model that runs in the notebook is not a model that runs in the server. The server loads a
# *file*, in a fresh process, without your Python classes. This notebook serializes the model in
# each format, reloads every file in a new Python process (as a server would), and compares it
# with eager PyTorch at several batch sizes, on inputs the export never saw.
#
# **Formats.** TorchScript (`torch.jit.script` and `torch.jit.trace`) is what many deployed
# systems load today; it is **deprecated upstream** and kept here as the *old path*.
# `torch.export` (`.pt2`) is its successor, the *new path*. **AOTInductor** (`aoti`) compiles that
# same program ahead of time into native code for *this* CPU (`torch._inductor.aoti_compile_and_package`;
# a server loads it with `aoti_load_package`, no model Python): the fastest file in torch, but one
# that belongs to the machine it was compiled for (the manifest records which: `compiled_for`), and
# the slowest to produce (a C++ compile: tens of seconds on a small CPU). **ONNX** is the path many teams
# ship: `torch.onnx.export(..., dynamo=True)` from the same torch.export program (a dynamic batch,
# and a dynamic length for sequences), checked with the ONNX checker and shape inference, reloaded
# in ONNX Runtime (which runs outside Python too, on CPU, CUDA or TensorRT). The exporter may put
# the weights in an external data file beside the `.onnx`: the manifest hashes both and records
# the opset. The classic trap: `torch.jit.trace` records the branch that the example input took,
# so a model with data-dependent control flow traces without error and then answers wrongly.
# Varied inputs (negated, noise) catch it; torch.export and ONNX refuse such a model, with the
# reason.

# %% tags=["parameters"]
model = "digits_cnn"  # reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed) -> Tensor, for non-image models
data = ""  # your data: a folder of class folders of images, a .csv/.jsonl of text,label, or a .pt
lab_transform = ""  # package.module:callable(PIL image) -> tensor; empty means the recipe of the model family
task = "auto"  # classifier, embedder or auto (a Hugging Face model: its architecture; else inferred from the outputs)
device = "auto"  # auto, cpu or cuda; files are always reloaded on cpu, also on cuda when used
batch_sizes = [1, 4, 16]  # batch sizes compared after reload
formats = ["auto"]  # ["auto"]: every format, skipping those that do not apply; or a list of names
atol = 1e-4  # largest max-abs-diff between eager and the reloaded file that passes
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for input draws and untrained weights

# %%
import pandas as pd

from lab2prod.core import progress
from lab2prod.core.results import record
from lab2prod.studies import export
from lab2prod.studies import notebook as nb
from lab2prod.studies.environment import write_lock

run_dir, loaded, devices = nb.setup(run_dir, model, weights, example_inputs, seed, device,
                                    data=data, lab_transform=lab_transform, task=task)

auto = formats == ["auto"]
formats = export.check_formats(formats)
pd.DataFrame([loaded.card()]).set_index("model")

# %% [markdown]
# ## Serialize
#
# Each format is attempted; one that cannot be produced says why in one line instead of
# stopping the notebook. `dynamic_batch` says whether the file accepts any batch size. When an export
# fails or a trace warns because the model branches on its data, `where in the model` names the file,
# line and code that did it, taken from torch.export's error or the tracer's warning.

# %%
artifacts = [export.export_model(loaded, fmt, run_dir / "models", seed)
             for fmt in progress.steps(formats, "export", "format")]
export.artifacts_frame(artifacts, run_dir)

# %% [markdown]
# ## Reload in a fresh process and compare with eager
#
# `held-out` rows use data the export never saw; `negated` and `noise` rows push a model with
# data-dependent control flow down the other branch. Look at `max_abs_diff` and `top1_agreement`.
# The same processes also answer the golden set, the held-out requests every later stage answers too
# (the quantized model, each live server): the report lays those stages out as one chain.

# %%
stages = []  # the chain's export stages (lab2prod.studies.chain), filled by check_exports
rows = export.check_exports(loaded, artifacts, batch_sizes, devices, seed, stages=stages, atol=atol)
export.comparison_frame(rows)

# %% [markdown]
# Bars on the floor are bit-exact; anything above the dashed line fails.

# %%
fig = export.plot_max_abs_diff(rows, atol)

# %% [markdown]
# ## Gates and manifest
#
# One gate per format, `parity:<format>`: the file was produced, reloaded in a fresh process,
# every case within `atol`, top-1 identical, and (trace) no tracer warning that the trace may
# be wrong. With `formats=["auto"]` a format that does not apply to this model (a Hugging Face
# model cannot be scripted; its trace warns) is skipped with the reason while another format
# passes; a file that answers differently always fails. The manifest records what a server needs
# to know about each file, and the lab environment lock (`models/env.lock.json`) travels with the
# files for the environment notebook.

# %%
# NBVAL_CHECK_OUTPUT
gates = export.format_gates(artifacts, rows, atol, auto)
manifest = export.write_manifest(loaded, artifacts, run_dir)
lock_file = write_lock(run_dir / "models" / "env.lock.json")  # the lab environment, beside the model
record(run_dir, "export", export.ExportResults(
    model=loaded.card(),
    formats=[r.__dict__ for r in rows],
    artifacts=[{"format": a.format, "produced": a.produced, "error": a.error, "warnings": a.warnings,
                   "dynamic_batch": a.dynamic_batch, "opset": a.opset, "source": a.source} for a in artifacts],
    manifest=manifest,
    env_lock=str(lock_file.relative_to(run_dir)),
    stages=stages,
), gates, notebook="01_export")
nb.gates_frame(gates)[["verdict", "threshold", "detail"]]

# %%
columns = ["format", "file", "bytes", "sha256", "dynamic_batch", "torch", "opset", "external_data", "compiled_for"]
pd.DataFrame(manifest, columns=columns).set_index("format")
