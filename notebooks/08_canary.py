# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Canary: may v2 replace v1, and can we take it back?
#
# A new version is never switched on for everyone at once. This notebook compares v1 (the
# model in fp32) with v2 (by default the int8 recipe the quantization notebook of this run
# recommended, where TorchServe can serve it; else the model with torch.ao's int8 dynamic
# quantization; or any other model by parameter) on the same held-out inputs: how often they
# agree (the same top-1; for an embedder, a cosine of at least 0.99), the accuracy
# change with a confidence interval (paired bootstrap, and McNemar's exact test on the inputs
# where they disagree), and the latency change per percentile. Then both versions are served
# side by side by a real **TorchServe** (one model, versions 1.0 and 2.0), **Locust** splits
# live traffic between them by weight (80/20 by default, as a weighted router would), and a
# written rollback rule decides: promote, hold or roll back. The decision is carried out on the
# live server through its management API and checked.
#
# v2 is served as TorchScript, the old path (deprecated upstream) that TorchServe 0.12 loads;
# torch.ao dynamic quantization is the old quantization path too (torchao is the new one, but
# its models export with torch.export only).

# %% tags=["parameters"]
model = "digits_cnn"  # v1: reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file for v1 (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed); its requests are JSON arrays
data = ""  # your data: a folder of class folders of images, a .csv/.jsonl of text,label, or a .pt
lab_transform = ""  # package.module:callable(PIL image) -> tensor; empty means the recipe of the model family
task = "auto"  # classifier, embedder or auto (a Hugging Face model: its architecture; else inferred from the outputs)
candidate = "recommended"  # v2: the quantization notebook's recommended recipe, int8 (candidate_method) or a model
candidate_weights = ""  # optional state_dict file for a v2 given by model spec
candidate_method = "torch_ao_dynamic"  # v2's quantization for int8, or where the recommended recipe cannot be served
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

# %%
import pandas as pd
from IPython.display import display

from lab2prod.core.results import record
from lab2prod.studies import canary
from lab2prod.studies import notebook as nb
from lab2prod.studies.quantization import serialized_size

run_dir, loaded, _ = nb.setup(run_dir, model, weights, example_inputs, seed,
                              data=data, lab_transform=lab_transform, task=task)

v2, v2_label = canary.candidate_model(loaded, candidate, candidate_weights, candidate_method, seed, run_dir)
policy = canary.Policy(max_accuracy_drop_pts=max_accuracy_drop_pts, max_latency_increase_ms=max_latency_increase_ms,
                       latency_percentile=latency_percentile, min_agreement=min_agreement, min_requests=min_requests)
print(f"v2: {v2_label}")
pd.DataFrame([{"version": "v1", "model": loaded.label, "serialized_bytes": serialized_size(loaded.module)},
              {"version": "v2", "model": v2_label, "serialized_bytes": serialized_size(v2)}]).set_index("version")

# %% [markdown]
# ## Compare, serve, split, decide, apply
#
# One call runs the offline comparison, then starts TorchServe with both versions, checks that
# each answers like its in-process model, sends `duration_s` seconds of Locust traffic split by
# `traffic_split`, decides, applies the decision and stops the server (also on an error).

# %%
report = canary.evaluate_canary(loaded, v2, v2_label, run_dir, traffic_split, canary_users, duration_s, policy, threads,
                                seed=seed)
print(report.reason or f"rollout: {sum(r['requests'] for r in report.rollout['live'].values() if 'requests' in r)} "
      f"live requests, decision {report.decision!r}")

# %% [markdown]
# ## Same inputs, both versions
#
# Agreement is the share of held-out inputs whose top-1 class is the same. The accuracy change
# is v2 minus v1 in points; its interval comes from resampling the same inputs for both versions
# (paired), which is far tighter than comparing two separate accuracies. McNemar's p-value asks
# whether the inputs only one version gets right lean one way more than chance would.

# %%
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

# %% [markdown]
# Latency of each version in this process, batch 1, measured in alternating rounds so that
# whatever else the machine does hits both alike.

# %%
pd.DataFrame(report.latency).set_index("percentile").round(3)

# %% [markdown]
# ## The rollout: both versions live, traffic split by weight
#
# First each served version must answer exactly like its own in-process model (so the
# comparison above is what users will get). Then the live numbers per version, from the same
# Locust run: the share of traffic each received, errors and latency.

# %%
if report.rollout:
    served = pd.DataFrame(report.rollout["served_like_offline"]).T
    served.index = [f"v{v[0]}" for v in served.index]
    live = pd.DataFrame({k: v for k, v in report.rollout["live"].items() if k in ("v1", "v2")}).T
    live.insert(0, "share", live["requests"] / live["requests"].sum())
    display(served)
    display(live[["share", "requests", "error_rate", "p50_ms", "p95_ms", "p99_ms"]])
else:
    print(report.reason)

# %%
fig = canary.plot_canary(report, policy)

# %% [markdown]
# ## The rollback rule, with the evidence
#
# Each rule gives promote, hold or roll back; roll back wins over hold, hold over promote.
# Accuracy promotes only when the whole interval sits above the budget and rolls back only when
# the whole interval sits below it. Latency reads the p95 of live requests (`latency_percentile`):
# an increase within the allowance promotes; above it, the rule rolls back only when the
# bootstrap interval of the increase is above the allowance too, and holds otherwise. A 20%
# canary gets a few hundred requests, so its p99 rests on a handful of them; the p99 change is
# shown and recorded, not decided on.

# %%
pd.DataFrame(report.rules).set_index("rule")[["outcome", "value", "threshold", "detail"]]

# %%
applied = (report.rollout or {}).get("applied")
print(f"decision: {report.decision}")
if applied:
    print(f"applied on the live server: {applied['action']} (HTTP {applied['status']}); "
          f"the unversioned route now answers as {applied['default_answered_by']} (expected {applied['expected']})")

# %% [markdown]
# ## Gates
#
# `canary:decision`: the rule says promote. `canary:served`: both served versions answer like
# their in-process models. `canary:rollback`: the decision was applied on the live server and
# the route answered as the version it should.

# %%
gates = canary.canary_gates(report)
record(run_dir, "canary", report.results(), gates, notebook="08_canary")
nb.gates_frame(gates)[["verdict", "threshold", "detail"]]

# %% [markdown]
# Whatever the decision, both versions must have answered like their in-process models, and the
# decision must have been carried out and checked on the live server:

# %%
# NBVAL_CHECK_OUTPUT
print({g["name"]: g["passed"] for g in gates if g["name"] in ("canary:served", "canary:rollback")})
