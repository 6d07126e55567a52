# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Drift monitoring: would we notice when production data stops looking like the lab's?
#
# Production data is not the lab's data. This notebook measures how often each drift test
# flags a batch of production traffic, for real shifts of real images (brightness, contrast,
# blur, JPEG quality, rotation), for every serving bug of the parity catalog (the data is fine,
# the server is not), and for another source altogether (photographs sent to a digit model).
# Under no shift the flag rate is the false-positive rate and must sit near the chosen p-value.
#
# The reference is half of your data (`data`: images, texts or tensors), or the held-out digits,
# or draws of your input function; the batches come from the other half. Texts are shifted by
# typos, upper case, truncation and another source; tensors by scaled, offset and noisy features,
# redrawn ids and cut sequences. Without labels the accuracy change is unknown and only false
# positives are judged. A text model needs your texts (`data`): the bundled sentences are too few.
#
# **Tests.** MMD between embeddings (by default the input of the last Linear layer, an
# embedder's own output, a text classifier's token embeddings averaged over the sequence, or the
# output of the layer named by `layer`; RBF kernel,
# median-heuristic bandwidth, permutation p-value), per-feature KS on the embeddings with
# Bonferroni correction (scipy), PSI of the predicted classes (with a permutation p-value, so it
# reads at the same alpha; not for an embedder), and KS on input properties (images: brightness,
# contrast, width, height, aspect; texts: characters, words, shares of capitals, digits and
# non-ASCII; tensors: per-input statistics). The MMD statistic and its permutation test are
# lab2prod's own, vectorized in torch; the tests check them against a plain loop
# implementation. Then the metrics a service exports with `prometheus_client`.

# %% tags=["parameters"]
model = "digits_cnn"  # reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed); its draws are the reference without data
data = ""  # your data: a folder of class folders of images, a .csv/.jsonl of text,label, or a .pt
lab_transform = ""  # package.module:callable(PIL image) -> tensor; empty means the recipe of the model family
task = "auto"  # classifier, embedder or auto (a Hugging Face model: its architecture; else inferred from the outputs)
batch_size = 64  # inputs per monitored batch
layer = ""  # module whose output is the embedding (a name from model.named_modules()); empty: the default
batches = 50  # batches drawn per scenario
alpha = 0.05  # p-value below which a batch is flagged
sla_ms = 100.0  # latency objective: a histogram bucket boundary is put on it
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for the reference split, batch draws and permutations

# %%

from lab2prod.core.results import record
from lab2prod.studies import drift
from lab2prod.studies import notebook as nb

run_dir, loaded, _ = nb.setup(run_dir, model, weights, example_inputs, seed,
                              data=data, lab_transform=lab_transform, task=task)

report = drift.evaluate_drift(loaded, batch_size, batches, alpha, seed, layer=layer)
print(report.reason or f"reference: {report.reference_size} {report.reference}; embeddings: {report.embedding}; "
      f"{batches} batches of {report.batch_size} per scenario; flagged when p < {alpha:g}")

# %% [markdown]
# ## Detection rates
#
# Rows: scenarios, with the change in the model's accuracy they cause (what matters). Columns:
# tests. The `no shift` row is the false-positive rate. Serving bugs leave the images as they
# were, so the input-property test cannot see them: only what the model sees can.

# %%
fig = drift.plot_drift(report) if report.applies else None

# %%
drift.drift_frame(report).round(3) if report.applies else report.reason

# %% [markdown]
# ## Metrics a service exports
#
# `lab2prod.studies.drift.MetricsExporter` holds a `data_drift_score` gauge, an inference latency
# histogram with a bucket boundary on the SLA, and requests counted by outcome; `serve()` starts a
# `/metrics` endpoint on 127.0.0.1 that a handler or sidecar can use. Below, the exposition text
# after recording the monitored batches of two scenarios (values from this run).

# %%
exporter = drift.MetricsExporter(sla_ms)
if report.applies:
    for row in report.scenarios:
        if row["test"] == drift.PRIMARY_TEST and row["scenario"] in ("no shift", "darker (x0.6)"):
            exporter.drift.labels(test=f"{drift.PRIMARY_TEST}:{row['scenario']}").set(1 - row["median_p_value"])
    exporter.requests.labels(outcome="ok").inc(report.batch_size * report.batches)
    exporter.latency.observe(sla_ms / 1000 / 2)
print("\n".join(line for line in exporter.exposition().splitlines()
                if line.startswith(("data_drift", "inference_latency_seconds_bucket", "inference_requests"))))

# %% [markdown]
# ## Gate
#
# `drift`: the MMD test's false-positive rate under no shift is at most 0.1, and every injected
# shift that moves the model's accuracy by more than 5 points is flagged in at least 80% of the
# batches of the default size.

# %%
# NBVAL_CHECK_OUTPUT
gates = [drift.drift_gate(report)]
record(run_dir, "drift", drift.DriftResults(
    false_positive_rate=report.false_positive_rate() if report.applies else None,
    scenarios=report.scenarios or [],
    batch_size=report.batch_size,
    alpha=alpha,
    primary_test=drift.PRIMARY_TEST,
), gates, notebook="06_drift_monitoring")
nb.gates_frame(gates)[["verdict", "threshold"]]
