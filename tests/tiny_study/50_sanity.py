# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 50 · Sanity: are the model's outputs finite?

# %% tags=["parameters"]
model = "digits_cnn"  # reference or torchvision name, a .pt/.pt2 file, or package.module:factory
batch_size = 4  # inputs in the batch
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for input draws

# %%
import tiny_sanity

from lab2prod.core.results import record, resolve_run_dir

values, gates = tiny_sanity.evaluate(model, batch_size, seed)
record(resolve_run_dir(run_dir), "sanity", values, gates, notebook="50_sanity")
values
