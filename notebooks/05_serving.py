# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Serving: does the served model answer like the lab, under load, within limits?
#
# The lab number means nothing until the served model gives the same answers under load. This
# notebook serves the model with a real **TorchServe** (started here, loopback only, token
# authorization on, stopped before the notebook goes on), checks that it answers exactly like
# the lab, shows what it refuses, load-tests it with **Locust** at increasing numbers of
# concurrent users, reads its **Prometheus** metrics, and then tunes the server the way Triton
# Model Analyzer does: every combination of workers, torch threads per worker and server-side
# batch size at the target load, keeping the highest throughput whose P99 meets the SLA.
#
# The handler imports lab2prod's request codec (`lab2prod.kinds.codec`), so its preprocessing is the
# lab's own object, not a copy: image bytes through the lab transform (the user's own
# `lab_transform`, whose source file the archive carries, or the family's recipe), JSON
# `{"text": ...}` through the model's tokenizer (its files in the archive), or JSON of named arrays
# for a model given with `example_inputs`. A classifier answers class probabilities and top-1, an
# embedder its vector. The served file is the export notebook's TorchScript when this run has one
# (TorchScript is the old path, deprecated upstream; TorchServe 0.12 loads it natively).
#
# TorchServe has been in limited maintenance since 2025 (0.12.0 is its last release): it still
# serves, but weigh that when choosing a server for a new deployment. With `backend="both"` (or
# `"rayserve"`) the same model is also served by **Ray Serve**, which is maintained and runs
# unchanged on a Ray cluster (KubeRay): the same codec and guard in its deployment, a bearer
# token checked by the deployment (Ray Serve has no authorization of its own), the same
# locustfile at the same loads, Ray's Prometheus metrics, replicas x threads x `@serve.batch`
# tuned against the same SLA, and the two servers side by side with a line saying which to pick.

# %% tags=["parameters"]
model = "digits_cnn"  # reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed); its requests are JSON arrays
data = ""  # your data: a folder of class folders of images, a .csv/.jsonl of text,label, or a .pt
lab_transform = ""  # package.module:callable(PIL image) -> tensor; empty means the recipe of the model family
task = "auto"  # classifier, embedder or auto (a Hugging Face model: its architecture; else inferred from the outputs)
backend = "torchserve"  # torchserve, rayserve or both (measured side by side)
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

# %%
import pandas as pd
from IPython.display import display

from lab2prod.core.results import record
from lab2prod.studies import notebook as nb
from lab2prod.studies import serving

run_dir, loaded, _ = nb.setup(run_dir, model, weights, example_inputs, seed,
                              data=data, lab_transform=lab_transform, task=task)

backend = serving.check_backend(backend)
config = serving.ServeConfig(workers, threads, batch_size, max_batch_delay_ms, max_request_size)
grid = serving.tuning_grid(tune_workers, tune_threads, tune_batch_sizes, max_batch_delay_ms)
pd.DataFrame([loaded.card()]).set_index("model")

# %% [markdown]
# ## Serve, measure, stop
#
# One call starts TorchServe, runs every measurement below and stops the server (also on an
# error or an interrupt). It takes a few minutes: each load level and each configuration runs
# for `duration_s` seconds.

# %%
if backend == "rayserve":
    report = serving.ServingReport(False, "backend='rayserve': TorchServe not started")
else:
    report = serving.evaluate_serving(loaded, run_dir, config, users, duration_s, grid, tune_users, sla_ms,
                                      parity_requests, seed)
print(report.reason or f"served {report.served_file} taking {report.requests}; deployment config: "
      f"{report.config_file}; locustfile: {report.locustfile}")

# %% [markdown]
# ## Live parity
#
# Held-out requests sent one by one (image bytes, or JSON for text and tensor models); the served
# answers against the lab path run in this process on the same bodies. A classifier is judged by
# top-1 agreement and the largest probability difference, an embedder by the smallest cosine and
# the largest absolute difference.

# %%
pd.DataFrame([report.parity]) if report.applies else report.reason

# %% [markdown]
# ## What the server refuses
#
# Status codes actually returned by this TorchServe: without the token, with a wrong one (also on
# `/ping`), and with a body over `max_request_size` (413, or status 0 when the server closes the
# connection before answering, as Netty may while the body is still arriving).

# %%
pd.DataFrame(report.limits).set_index("request") if report.applies else report.reason

# %% [markdown]
# ## Load sweep (Locust, headless, loopback)
#
# Percentiles are computed here from every request's latency as Locust's client saw it. The
# locustfile and the request images are saved in the run folder: point it at a real deployment,
# or run it distributed (`locust -f locustfile.py --master` and `--worker` processes).

# %%
columns = ["users", "requests", "avg_ms", "p50_ms", "p95_ms", "p99_ms", "error_rate", "throughput_per_s"]
pd.DataFrame(report.load, columns=columns).set_index("users") if report.applies else report.reason

# %%
fig = nb.plot_load(report.load, sla_ms) if report.applies else None

# %% [markdown]
# ## Prometheus metrics
#
# Scraped from the metrics endpoint and parsed with `prometheus_client`'s parser. TorchServe
# exports counters (totals), so percentiles come from the client side above.

# %%
pd.DataFrame(report.metrics).set_index(["metric", "labels"]) if report.metrics else report.reason or "no metrics"

# %% [markdown]
# ## Tuning: workers x threads x server batch at the target load
#
# The first row is what an untuned TorchServe does on this machine (a worker per core, each with
# torch's default threads). On a small machine workers x threads oversubscribe the cores fast;
# the sweep finds that by itself. The chosen configuration is written into the
# `config.properties` the run leaves behind.

# %%
fig = nb.plot_tuning(report.tuning, sla_ms, report.chosen) if report.applies else None

# %%
columns = ["config", "workers", "threads", "batch_size", "p50_ms", "p99_ms", "throughput_per_s", "error_rate",
           "meets_sla"]
pd.DataFrame(report.tuning, columns=columns).set_index("config") if report.applies else report.reason

# %%
if report.applies and report.chosen:
    gain = report.chosen["throughput_per_s"] / max(report.default["throughput_per_s"], 1e-9)
    verdict = "meets" if report.chosen["meets_sla"] else f"NONE meets the SLA at {tune_users} users; closest"
    print(f"{verdict}: {report.chosen['config']}: {report.chosen['throughput_per_s']:.0f} req/s, "
          f"p99 {report.chosen['p99_ms']:.0f} ms; default: {report.default['throughput_per_s']:.0f} req/s, "
          f"p99 {report.default['p99_ms']:.0f} ms ({gain:.1f}x the default's throughput)")
else:
    print(report.reason or "no configuration met the SLA")

# %% [markdown]
# ## Beyond one machine: Kubernetes
#
# The chosen configuration also becomes manifests (checked against the Kubernetes schema before
# they are written): a Deployment whose CPU limit is workers x threads, a readiness probe that
# calls `/ping` with the token TorchServe wrote at start, a Service, and an autoscaler on CPU.
# The folder holds the Dockerfile and build context of the image the Deployment runs.

# %%
from lab2prod.servers import kubernetes

pd.DataFrame(kubernetes.describe(run_dir / report.kubernetes)).set_index("kind") if report.applies else report.reason

# %% [markdown]
# ## Ray Serve: the same model, the same measurements
#
# With `backend` "rayserve" or "both": a local Ray (127.0.0.1, as many CPUs as the machine has,
# no dashboard, its own temp folder, always shut down) serves the same TorchScript file through
# the same codec and guard. The deployment checks a bearer token generated at this start (key
# file mode 0600) and refuses bodies over `max_request_size` with 413. Load: the same
# locustfile at the same numbers of users. Tuning: replicas (the `tune_workers` values) x torch
# threads x `@serve.batch` size at `tune_users`, after Ray Serve's defaults (one replica, torch's
# default threads, no batching).

# %%
ray = None
if backend in ("rayserve", "both"):
    ray_config = serving.ray_grid([workers], [max(threads, 1)], [batch_size], max_request_size=max_request_size)[0]
    ray_grid = serving.ray_grid(tune_workers, tune_threads, tune_batch_sizes, max_request_size=max_request_size)
    ray = serving.evaluate_rayserve(loaded, run_dir, ray_config, users, duration_s, ray_grid, tune_users, sla_ms,
                                    parity_requests, seed)
    display(pd.DataFrame([ray.parity]))
    display(pd.DataFrame(ray.limits).set_index("request"))
    load_columns = ["users", "requests", "avg_ms", "p50_ms", "p95_ms", "p99_ms", "error_rate", "throughput_per_s"]
    display(pd.DataFrame(ray.load, columns=load_columns).set_index("users"))
    display(pd.DataFrame(ray.metrics).set_index("metric") if ray.metrics else "no Ray Serve metrics")
    display(pd.DataFrame(ray.tuning)[["config", "replicas", "threads", "max_batch_size", "p50_ms", "p99_ms",
                                      "throughput_per_s", "error_rate", "meets_sla"]].set_index("config"))
    print(f"Serve config: {ray.serve_config} (serve run accepts it); KubeRay manifest: {ray.rayservice}")
else:
    print(f"backend={backend!r}: Ray Serve not started (pass -p backend=both to measure it beside TorchServe)")

# %% [markdown]
# ## Side by side, and which to pick
#
# Both servers' defaults and tuned configurations at `tune_users` users against the same SLA.
# `cpus` is how many torch threads the server runs at once (workers or replicas x threads).
# `share_of_in_process` is the server's throughput over what the same TorchScript file does
# called in this process at the same batch size and threads, times the workers the cores can
# run side by side (lab2prod's benchmark harness, measured now): what the server itself costs.

# %%
from lab2prod.servers.torchserve.server import exported_torchscript

served = exported_torchscript(run_dir) or run_dir / "serving" / "rayserve" / "model" / "model.pt"
ceilings = {}
for name, rep in (("TorchServe", report if report.applies else None), ("Ray Serve", ray)):
    for kind, row in (("default", rep.default if rep else None), ("tuned", rep.chosen if rep else None)):
        if row is not None and served.exists():
            key = (row["batch_size"], row["threads"], row["workers"])  # one measurement per configuration
            measured = next((c for c in ceilings.values() if c["key"] == key), None)
            ceilings[(name, kind)] = measured or {"key": key, **serving.in_process_ceiling(
                served, loaded, row["batch_size"], row["threads"], row["workers"], seed)}
side = serving.side_by_side(report if report.applies else None, ray, ceilings)
pick = serving.pick_server(side, sla_ms)
print(pick)
pd.DataFrame(side).set_index(["server", "config"]).round(3) if side else "nothing served"

# %%
fig = nb.plot_side_by_side(side, sla_ms) if side else None

# %% [markdown]
# ## Gates
#
# `serving:parity`: every live request answered, top-1 identical to the lab and probabilities
# within 1e-4 (an embedder: cosine at least 0.9999 and values within 1e-4). `serving:errors`: no
# failed request at any load level. `serving:sla`: p99 ≤ `sla_ms` at the lowest load level.
# `rayserve:parity`, `rayserve:errors`, `rayserve:sla`: the same three for Ray Serve, when the
# backend includes it.

# %%
# NBVAL_CHECK_OUTPUT
gates = serving.serving_gates(report, sla_ms) + (serving.rayserve_gates(ray, sla_ms) if ray is not None else [])
record(run_dir, "serving", serving.serving_results(report, backend, ray, side, pick), gates, notebook="05_serving")
nb.gates_frame(gates)[["verdict", "threshold"]]
