# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Environment: is the serving environment the lab environment?
#
# A model validated under one Python and torch can fail, or silently answer differently, under
# another; a feature derived from a timestamp shifts by hours when the server's time zone differs;
# non-ASCII class labels break where the locale is not UTF-8. This notebook compares the
# environment it runs in with the **lab lock** (`lab2prod env lock PATH`, written on the lab
# machine and beside every exported model), runs operator smoke tests against the lock's
# reference values, checks that every operator of the exported graph runs here, and shows the
# two classic seed failures with their fixes. The dynamically quantized Linear uses
# `torch.ao.quantization`, the old path (deprecated upstream in favour of torchao).

# %% tags=["parameters"]
lock_path = ""  # lab lock from `lab2prod env lock`; empty means this machine writes its own
tolerance = 1e-4  # largest max-abs-diff of a smoke operator vs the lock that passes
model = "digits_cnn"  # model whose exported graph must run here
weights = ""  # optional state_dict file for the model
example_inputs = ""  # package.module:fn(batch_size, seed) -> Tensor, for non-image models
data = ""  # your data: a folder of class folders of images, a .csv/.jsonl of text,label, or a .pt
lab_transform = ""  # package.module:callable(PIL image) -> tensor; empty means the recipe of the model family
task = "auto"  # classifier, embedder or auto (a Hugging Face model: its architecture; else inferred from the outputs)
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for input draws and untrained weights

# %%
import pandas as pd

from lab2prod.core.inputs import export_program
from lab2prod.core.results import record
from lab2prod.studies import environment as env
from lab2prod.studies import notebook as nb

run_dir, loaded, _ = nb.setup(run_dir, model, weights, example_inputs, seed,
                              data=data, lab_transform=lab_transform, task=task)

here = env.fingerprint()
if lock_path:
    lock, lock_source = env.read_lock(lock_path), lock_path
else:
    lock_source = str(env.write_lock(run_dir / "env.lock.json"))
    lock = env.read_lock(lock_source)
print(f"lab lock: {'given' if lock_path else 'none given, this machine is the lab'}")

# %% [markdown]
# ## Lab vs here
#
# Every key of the fingerprint side by side; the rows that differ come first.

# %%
env.fingerprint_frame(lock["fingerprint"], here)

# %% [markdown]
# The differences with their severity: **fail** for another major.minor Python or torch, or a
# CUDA the lab had and this machine lacks; **warn** for patch versions, other packages,
# encodings, locale and time zone; **info** for the rest.

# %%
# NBVAL_CHECK_OUTPUT
diffs = env.diff_fingerprints(lock["fingerprint"], here)
pd.DataFrame(diffs, columns=["key", "lab", "here", "severity"]).set_index("key") if diffs else "no differences"

# %% [markdown]
# ## Operator smoke tests
#
# Fixed inputs through gelu, layer_norm, softmax, conv2d, matmul, interpolate, scaled dot-product
# attention and a dynamically quantized Linear, compared with the values the lab recorded (and on
# a GPU, CUDA vs CPU). A different BLAS, oneDNN or quantized engine shows up here first.

# %%
# NBVAL_CHECK_OUTPUT
smoke = env.compare_smoke(lock["smoke"], tolerance)
pd.DataFrame(smoke).set_index(["op", "device"])[["passed"]].T

# %%
fig = env.plot_smoke(smoke, tolerance)

# %% [markdown]
# ## Every operator of the exported graph runs here
#
# The model is exported with `torch.export` and its graph is run node by node; an operator this
# torch build lacks (or that fails on this hardware) is named.

# %%
example = loaded.make_inputs(2, seed)
_, program = export_program(loaded.module, example)
ops = env.exported_ops_check(program.module(), example)
pd.DataFrame(ops).set_index("op")

# %% [markdown]
# ## Seed failure 1: non-ASCII labels under a non-UTF-8 locale
#
# The same labels written and read back in a child process under this machine's locale and
# under the C locale. `open()` without an encoding uses the locale's; naming `utf-8` fixes it.

# %%
labels = ["café", "naïve", "日本語", "Ünïcödé", "señal"]
utf8 = env.utf8_round_trip_demo(labels)
pd.DataFrame(utf8).set_index("locale")

# %% [markdown]
# ## Seed failure 2: an hour-of-day feature under another time zone
#
# One event (2026-11-26 10:00 UTC), its hour-of-day feature computed by servers whose `TZ`
# differs. `datetime.fromtimestamp(ts)` uses the server's zone; naming the zone the model was
# trained with (here UTC) gives the same feature everywhere.

# %%
hours = env.hour_of_day_demo(1764151200.0, ["UTC", "Europe/Berlin", "America/Los_Angeles", "Asia/Tokyo"])
pd.DataFrame(hours).set_index("server TZ")

# %% [markdown]
# ## Gate
#
# `environment`: no fail-level difference, every smoke operator within tolerance, and every
# operator of the exported graph runs.

# %%
# NBVAL_CHECK_OUTPUT
gates = [env.environment_gate(diffs, smoke, ops)]
record(run_dir, "environment", env.EnvironmentResults(
    lock=lock_source, fingerprint=here, diffs=diffs, smoke=smoke, exported_ops=ops,
    utf8_demo=utf8, hour_demo=hours,
), gates, notebook="00_environment")
nb.gates_frame(gates)[["verdict", "detail"]]
