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
#
# For a **text model** the serving path is the tokenizer, and the lab's cleanup before it. The
# same texts go out as JSON requests; the serving path (by default lab2prod's text codec, which
# the TorchServe handler imports: the lab's cleanup and tokenizer *objects* with the lab's
# settings) is compared with the lab path request by request: ids, attention mask, token type
# ids and length, then the model's outputs. The text catalog holds the tokenizer bugs users hit.

# %% tags=["parameters"]
model = "digits_cnn"  # reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed); a model that takes tensors is skipped here
data = ""  # your data: a folder of class folders of images, a .csv/.jsonl of text,label, or a .pt
lab_transform = ""  # package.module:callable(PIL image) -> tensor (a text model: str -> str cleanup); empty: recipe
task = "auto"  # classifier, embedder or auto (a Hugging Face model: its architecture; else inferred from the outputs)
serving_transform = ""  # package.module:callable under test: bytes -> tensor (images), text -> encoding (texts)
bugs = ["all"]  # catalogued bugs to measure: ["all"], a list of names, or [] for none
atol = 1e-6  # largest per-element abs diff between serving and lab tensors that passes
max_images = 0  # images to send; 0 means all held-out images (360 digits, 300 photo crops; else 24 photographs)
max_texts = 0  # texts to send to a text model; 0 means all its labelled texts (540 for text_langid)
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for photograph crops and untrained weights

# %%
import pandas as pd
from IPython.display import display

from lab2prod.core.results import record
from lab2prod.studies import notebook as nb
from lab2prod.studies import parity

run_dir, loaded, _ = nb.setup(run_dir, model, weights, example_inputs, seed,
                              data=data, lab_transform=lab_transform, task=task)

pd.DataFrame([loaded.card()]).set_index("model")

# %% [markdown]
# ## Send every image (or text), as every client would
#
# Labelled held-out images for the reference models (so accuracy can be measured): the digits,
# or for `photo_cnn` its held-out photo crops at 4:3, 3:4, 16:9, 9:16 and 1:1; your images with
# `data`; real photographs from scikit-learn and scikit-image, whole and cropped to varied
# aspect ratios, for any other image model (agreement with the lab path only, no labels).
# A text model gets its labelled texts: `text_langid`'s 540 held-out sentences (a fifth of them
# scraped web text with tags, entities and stray whitespace), your `data`, or else the 32
# bundled sample texts.

# %%
report = parity.evaluate(loaded, lab_transform, serving_transform, bugs, max_images, max_texts, seed, progress=False)
if report.kind == "text":
    print(f"{len(report.names)} texts as JSON requests, {len(report.bugs)} catalogued text bugs"
          + (f" ({len(report.skipped)} do not apply: {report.skipped})" if report.skipped else "")
          + f", labels: {'yes' if report.labels is not None else 'no'}")
else:
    print(report.reason or f"{len(report.names)} images x {len(report.request_sets)} client encodings, "
          f"{len(report.bugs)} catalogued bugs, labels: {'yes' if report.labels is not None else 'no'}")

# %% [markdown]
# ## The serving path under test
#
# Each row is one kind of client. `max_abs_diff` is the largest per-element difference between
# the serving tensor and the lab tensor over all images; it must stay within `atol`. For a text
# model the one row counts the requests whose encoding differs from the lab's (any id, mask
# value, token type or the length) and the largest difference of the model's outputs: both must be 0.

# %%
parity.parity_serving_frame(report) if report.applies else report.reason

# %% [markdown]
# Where the serving path differs from the lab path, image by image (worst first) or text by
# text (the first ten, with the ids each side made); empty when it matches everywhere. A shape
# that differs from the lab's counts as an infinite difference.

# %%
where = parity.where_serving_differs(report, atol) if report.applies else []
if where:
    display(pd.DataFrame(where).set_index(["request"] if report.kind == "text" else ["client", "image"]))
else:
    print(f"the serving path matches the lab path on every {'text' if report.kind == 'text' else 'image'}")

# %% [markdown]
# ## Which known bug is it?
#
# When the serving path differs, every catalogued bug is replayed on the same requests and ranked by
# how much of the difference it reproduces (`explained`: 1 − |served − bug| / |served − lab| per
# request, averaged; 100% is the very tensors; for a text model, the share of differing requests
# whose encoding the bug makes exactly). A bug that reproduces at least 90% is named, with
# where it typically happens; several are named when the service makes several mistakes (one code
# path that ignores EXIF and skips `.convert("RGB")` matches both). When no single bug reproduces a
# client's difference exactly, two mistakes made by one service are replayed as one path too (a
# square resize and a missing Normalize, BGR order and bicubic resizing, ...), named `a + b`. When
# none matches, the signature says what the difference looks like: a per-channel scale and offset,
# or a change of geometry that no such map explains.

# %%
if not report.applies:
    print(report.reason)
elif parity.parity_gate(report, atol)["passed"]:
    print("the serving path matches the lab path: nothing to diagnose")
else:
    diagnosis = parity.diagnose(report, loaded.module)  # the whole catalog, whatever `bugs` selected
    print(parity.diagnosis_text(report, diagnosis))
    display(pd.DataFrame(diagnosis[:5]).set_index("bug"))

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
parity.parity_bug_frame(report) if report.bugs else report.reason or "no bugs selected"

# %%
fig = parity.plot_parity_impact(report) if report.bugs else None

# %% [markdown]
# ## What the model sees
#
# The lab path's input and the inputs produced by the most harmful bugs, for the same requests,
# with the normalization undone. A missing Normalize looks fine to a person; the model sees a
# different distribution. For a text model: the tokens each path made for one text (a leading
# `·` marks a position the attention mask hides; padding is left out unless it is attended).

# %%
if report.bugs and report.kind == "text":
    display(parity.text_model_view(report))
fig = parity.plot_model_view(report) if report.bugs and report.kind == "image" else None

# %% [markdown]
# ## Gate
#
# `parity:serving`: on every image and every client encoding, the serving path's tensor has the
# lab tensor's shape and lies within `atol` of it; for a text model, every request's encoding is
# the lab's exactly and so are the outputs. Skipped for models that take tensors.

# %%
# NBVAL_CHECK_OUTPUT
gates = [parity.parity_gate(report, atol)]
text = report.kind == "text"
record(run_dir, "parity", parity.ParityResults(
    applies=report.applies,
    kind=report.kind,
    serving_transform=serving_transform or f"lab2prod.{'codec:TextCodec' if text else 'preprocess:ServingPath'}",
    lab_transform=loaded.lab_transform or lab_transform or (f"{loaded.family} recipe" if report.applies else None),
    recipe=None if text else report.recipe,
    images=0 if text else len(report.names),
    texts=len(report.names) if text else 0,
    labelled=report.labels is not None,
    serving_max_abs_diff=report.serving_max_abs_diff if report.applies else None,
    lab_accuracy=report.lab_accuracy,
    serving=[r.summary() for r in report.serving],
    bugs=report.bug_rows(),
    bugs_not_applicable=report.skipped if text else {},
    stages=[parity.chain_stage(report, atol)],
), gates, notebook="02_preprocessing_parity")
nb.gates_frame(gates)[["verdict", "threshold", "detail"]]
