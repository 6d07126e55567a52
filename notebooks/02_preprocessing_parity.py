# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Preprocessing parity: does the service feed the model what the lab fed it?
#
# The most common silent failure in deployment: the service prepares images differently from
# the lab. Nothing crashes; accuracy just falls. The classic case: the lab used `Resize(256)`,
# `CenterCrop(224)`, scaling and `Normalize(mean, std)`; the service resized to a square and
# divided by 255, and lost about 40% accuracy.
#
# This notebook sends the same images as **request bytes** through the serving path (by default
# lab2prod's `ServingPath`, which a handler imports: it decodes like the lab and applies the lab
# transform *object*), compares every tensor with the lab path's, and then measures a catalog of
# real serving bugs on the same requests: what each does to the tensors, the predictions and the
# accuracy. Clients do not all send RGB: the same images also go out as grayscale, RGBA, palette
# and EXIF-rotated phone photos, and the serving path must handle each exactly like the lab.

# %% tags=["parameters"]
model = "digits_cnn"  # reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed); a model that takes tensors is skipped here
data = ""  # your data: a folder of class folders of images, a .csv/.jsonl of text,label, or a .pt
lab_transform = ""  # package.module:callable(PIL image) -> tensor; empty means the recipe of the model family
task = "auto"  # classifier, embedder or auto (a Hugging Face model: its architecture; else inferred from the outputs)
serving_transform = ""  # package.module:callable(bytes) -> tensor under test; empty means ServingPath
bugs = ["all"]  # catalogued bugs to measure: ["all"], a list of names, or [] for none
atol = 1e-6  # largest per-element abs diff between serving and lab tensors that passes
max_images = 0  # images to send; 0 means all held-out images (360 digits, 300 photo crops; else 24 photographs)
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for photograph crops and untrained weights

# %%
import pandas as pd

from lab2prod import notebook as nb
from lab2prod import parity
from lab2prod.results import record

run_dir, loaded, _ = nb.setup(run_dir, model, weights, example_inputs, seed,
                              data=data, lab_transform=lab_transform, task=task)

pd.DataFrame([loaded.card()]).set_index("model")

# %% [markdown]
# ## Send every image, as every client would
#
# Labelled held-out images for the reference models (so accuracy can be measured): the digits,
# or for `photo_cnn` its held-out photo crops at 4:3, 3:4, 16:9, 9:16 and 1:1; your images with
# `data`; real photographs from scikit-learn and scikit-image, whole and cropped to varied
# aspect ratios, for any other image model (agreement with the lab path only, no labels).

# %%
report = parity.evaluate_parity(loaded, lab_transform, serving_transform, bugs, max_images, seed, progress=False)
print(report.reason or f"{len(report.names)} images x {len(report.request_sets)} client encodings, "
      f"{len(report.bugs)} catalogued bugs, labels: {'yes' if report.labels is not None else 'no'}")

# %% [markdown]
# ## The serving path under test
#
# Each row is one kind of client. `max_abs_diff` is the largest per-element difference between
# the serving tensor and the lab tensor over all images; it must stay within `atol`.

# %%
nb.parity_serving_frame(report) if report.applies else report.reason

# %% [markdown]
# Where the serving path differs from the lab path, image by image (worst first); empty when it
# matches everywhere. A shape that differs from the lab's counts as an infinite difference.

# %%
where = [row for result in report.serving
         for row in parity.worst_images(result, report.names, report.request_sets[result.client], atol)]
pd.DataFrame(where).set_index(["client", "image"]) if where else "the serving path matches the lab path on every image"

# %% [markdown]
# ## The catalog of serving bugs, most harmful first
#
# Each bug is a small function on request bytes that reproduces a real mistake. `accuracy_drop_pts`
# compares with the lab path on the same requests; `failed_requests` are requests that would
# have been HTTP 500s. Whether a bug costs many points depends on the model and the data: that is
# why it is measured here rather than assumed. Without labels the ranking uses disagreement with
# the lab's top-1; an untrained model (random weights) tends to predict one class for everything,
# so there the tensor difference is what to read.

# %%
nb.parity_bug_frame(report) if report.bugs else report.reason or "no bugs selected"

# %%
fig = nb.plot_parity_impact(report) if report.bugs else None

# %% [markdown]
# ## What the model sees
#
# The lab path's input and the inputs produced by the most harmful bugs, for the same requests,
# with the normalization undone. A missing Normalize looks fine to a person; the model sees a
# different distribution.

# %%
fig = nb.plot_model_view(report) if report.bugs else None

# %% [markdown]
# ## Gate
#
# `parity:serving`: on every image and every client encoding, the serving path's tensor has the
# lab tensor's shape and lies within `atol` of it. Skipped for models that take tensors.

# %%
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
