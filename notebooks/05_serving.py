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
# TorchServe's repository was archived on 2025-08-07 (0.12.0 is its last release, with no security
# patches since): it still serves, but weigh that when choosing a server for a new deployment. With
# `backends=["both"]` (or `["rayserve"]`, or any list of the servers in
# `lab2prod.servers.registry.SERVERS`) the same model is also served by **Ray Serve**, which is
# maintained and runs unchanged on a Ray cluster (KubeRay): the same codec and guard in its deployment,
# a bearer token checked by the deployment (Ray Serve has no authorization of its own), the same
# locustfile at the same loads, Ray's Prometheus metrics, replicas x threads x `@serve.batch` tuned
# against the same SLA, each in Ray Serve's default mode and in its high-throughput mode (HAProxy
# ingress, throughput-optimized). `["litserve"]` (or `["all"]`) adds **LitServe**, maintained, on
# FastAPI and uvicorn: the same codec behind a bearer token, workers x threads x batching tuned the same
# way. Every server goes through the same measurements, one after the other, and the servers are
# compared side by side with a line saying which to pick.

# %% tags=["parameters"]
model = "digits_cnn"  # reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed); its requests are JSON arrays
data = ""  # your data: a folder of class folders of images, a .csv/.jsonl of text,label, or a .pt
lab_transform = ""  # package.module:callable(PIL image) -> tensor; empty means the recipe of the model family
task = "auto"  # classifier, embedder or auto (a Hugging Face model: its architecture; else inferred from the outputs)
backends = ["torchserve"]  # servers to measure: torchserve, rayserve, both, or any registered server
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
from lab2prod.servers import kubernetes
from lab2prod.studies import notebook as nb
from lab2prod.studies import serving

run_dir, loaded, _ = nb.setup(run_dir, model, weights, example_inputs, seed,
                              data=data, lab_transform=lab_transform, task=task)

servers = serving.selected_servers(serving.check_backend(backends))
config = serving.ServerConfig(workers, threads, batch_size, max_batch_delay_ms, max_request_size)
grid = serving.tuning_grid(tune_workers, tune_threads, tune_batch_sizes, max_batch_delay_ms, max_request_size)
pd.DataFrame([loaded.card()]).set_index("model")

# %% [markdown]
# ## Serve, measure, stop
#
# One call per server starts it, runs every measurement below and stops it (also on an error or an
# interrupt). It takes a few minutes: each load level and each configuration runs for `duration_s`
# seconds.

# %%
reports = {}
for server in servers:
    reports[server.name] = serving.evaluate(server, loaded, run_dir, config, users, duration_s, grid, tune_users,
                                            sla_ms, parity_requests, seed)
    served = reports[server.name]
    print(f"{server.title}: served {served.served_file} taking {served.requests}; wrote "
          f"{', '.join(served.files.values())}; locustfile: {served.locustfile}")
report = reports.get("torchserve") or serving.ServingReport(False, f"backends={backends}: TorchServe not started")

# %% [markdown]
# ## Live parity
#
# Held-out requests sent one by one (image bytes, or JSON for text and tensor models); the served
# answers against the lab path run in this process on the same bodies. A classifier is judged by
# top-1 agreement and the largest probability difference, an embedder by the smallest cosine and
# the largest absolute difference.

# %%
pd.DataFrame([{"server": r.title, **r.parity} for r in reports.values()]).set_index("server")

# %% [markdown]
# ## What the server refuses
#
# Status codes actually returned: without the token, with a wrong one (also on TorchServe's `/ping`),
# and with a body over `max_request_size` (413, or status 0 when the server closes the connection
# before answering, as TorchServe's Netty may while the body is still arriving).

# %%
pd.DataFrame([{"server": r.title, **row} for r in reports.values() for row in r.limits]).set_index(
    ["server", "request"])

# %% [markdown]
# ## Load sweep (Locust, headless, loopback)
#
# Percentiles are computed here from every request's latency as Locust's client saw it; each P99 comes
# with the samples at or above it (`p99_tail_samples`) and its bootstrap 95% interval (`p99_ci_ms`).
# `locust_cpu` is the load generator's share of one core: at 0.9 or more it, not the server, set the
# pace of that level (`limited_by_load_generator`). The locustfile and the request images are saved in
# the run folder: point it at a real deployment, or run it distributed (`locust -f locustfile.py
# --master` and `--worker` processes).

# %%
columns = ["users", "requests", "avg_ms", "p50_ms", "p95_ms", "p99_ms", "p99_tail_samples", "p99_ci_ms",
           "error_rate", "throughput_per_s", "locust_cpu", "limited_by_load_generator"]
pd.DataFrame([{"server": r.title, **{c: row.get(c) for c in columns}} for r in reports.values()
              for row in r.load]).set_index(["server", "users"])

# %%
for served in reports.values():
    fig = serving.plot_load(served.load, sla_ms)
    fig.suptitle(served.title)

# %% [markdown]
# ## Prometheus metrics
#
# Scraped from each server's metrics endpoint and parsed with `prometheus_client`'s parser.
# TorchServe exports counters (totals), so percentiles come from the client side above; Ray Serve's
# rows are totals over its replicas.

# %%
pd.DataFrame([{"server": r.title, **row} for r in reports.values() for row in r.metrics]).set_index(
    ["server", "metric"]) if any(r.metrics for r in reports.values()) else "no metrics"

# %% [markdown]
# ## Tuning: workers x threads x server batch at the target load
#
# The first row of each server is what it does untuned on this machine (TorchServe: a worker per
# core, each with torch's default threads; Ray Serve: one replica, torch's default threads, no
# batching, its default proxy; LitServe: one worker, torch's default threads, no batching). Ray Serve's
# grid runs once in each of its modes (its default proxy, and the high-throughput mode: HAProxy ingress
# and `RAY_SERVE_THROUGHPUT_OPTIMIZED`), all with TorchScript (the old path). Then the best of those
# serves, in Ray Serve and LitServe, each other artifact this run verified: the AOTInductor package
# and the ONNX file (in ONNX Runtime) when their export parity gates passed, and the quantization
# notebook's recommended file when it is of this model and passed its gates. Each is checked live
# first (`parity`) and is chosen only if it answers like the lab. On a small machine workers x threads
# oversubscribe the cores fast; the sweep finds that by itself. The chosen configuration is written
# into the server's deployment files.

# %%
for served in reports.values():
    fig = serving.plot_tuning(served.tuning, sla_ms, served.chosen)
    fig.suptitle(served.title)

# %%
columns = ["config", "artifact", "workers", "threads", "batch_size", "mean_batch_size", "p50_ms", "p99_ms",
           "throughput_per_s", "error_rate", "meets_sla", "parity"]
display(pd.DataFrame([{"server": r.title, **{c: row.get(c) for c in columns}} for r in reports.values()
                      for row in r.tuning]).set_index(["server", "config"]))
# `mean_batch_size` is what each server reported per answer (the `batch` entry of its Server-Timing header): a
# configured batch that averaged under half full is named here with what held it back
for r in reports.values():
    for row in r.tuning:
        if row.get("batch_limited_by"):
            print(f"{r.title} {row['config']}: batch {row['batch_size']} never filled: {row['batch_limited_by']}")

# %%
for served in reports.values():
    gain = served.chosen["throughput_per_s"] / max(served.default["throughput_per_s"], 1e-9)
    verdict = "meets" if served.chosen["meets_sla"] else f"NONE meets the SLA at {tune_users} users; closest"
    print(f"{served.title}: {verdict}: {served.chosen['config']}: {served.chosen['throughput_per_s']:.0f} req/s, "
          f"p99 {served.chosen['p99_ms']:.0f} ms; untuned: {served.default['throughput_per_s']:.0f} req/s, "
          f"p99 {served.default['p99_ms']:.0f} ms ({gain:.1f}x its throughput)")

# %% [markdown]
# ## Beyond one machine: Kubernetes and Ray clusters
#
# The chosen configuration also becomes deployment files, checked against their schemas before they
# are written. For TorchServe: a Deployment whose CPU limit is workers x threads, a readiness probe
# that calls `/ping` with the token TorchServe wrote at start, a Service, an autoscaler on CPU, and
# the Dockerfile and build context of its image. For Ray Serve: a Serve config file that `serve run`
# starts, and a KubeRay RayService manifest (with the mode's environment). For LitServe: its config file
# and a Deployment with a Service.

# %%
if "kubernetes" in report.files:
    display(pd.DataFrame(kubernetes.describe(run_dir / report.files["kubernetes"])).set_index("kind"))
pd.DataFrame([{"server": r.title, "file": what, "path": path} for r in reports.values()
              for what, path in r.files.items()]).set_index(["server", "file"])

# %% [markdown]
# ## Side by side, and which to pick
#
# Every server's untuned and tuned configurations at `tune_users` users against the same SLA.
# `served` is the artifact the configuration ran; `cpus` is how many torch threads the server runs
# at once (workers or replicas x threads). Two in-process ceilings are measured now with lab2prod's
# benchmark harness, at the same batch size, threads and artifact, times the workers the cores can
# run side by side: the model alone on a ready batch (`share_of_in_process` is the throughput over
# it), and the full path on the same request bodies, meaning the guarded codec per request, the
# model and the JSON answers (`efficiency` is the throughput over it: what the server itself costs).
# A P99 comes with the samples at or above it and its 95% interval; configurations whose intervals
# overlap are not ranked by P99, throughput decides. The pick weighs maintenance: an archived server
# (TorchServe, archived on 2025-08-07) is picked only when it is at least 1.25x faster than the best
# maintained one.

# %%
ceilings = serving.ceilings_of(reports, run_dir, loaded, seed)
side = serving.side_by_side(reports, ceilings=ceilings)
pick = serving.pick_server(side, sla_ms)
print(pick)
serving.side_table(side) if side else "nothing served"

# %%
fig = serving.plot_side_by_side(side, sla_ms) if side else None

# %% [markdown]
# ## Where each millisecond goes
#
# Each server's handler reports its phases per request in a `Server-Timing` header, and the load test
# collects them: `codec` (decode, the guard and the lab's preprocessing, one object), `queue` (waiting
# for and filling a batch inside the server; TorchServe's handler cannot see its frontend's queue, so
# there it is part of the rest), `inference` (the batch through the served artifact) and
# `postprocess` (the answers). Grey is what the client saw beyond them: the HTTP server, the proxy,
# the network and Locust itself.

# %%
fig = serving.plot_phases(side) if side else None

# %% [markdown]
# ## Gates
#
# `serving:parity`: every live request answered, top-1 identical to the lab and probabilities
# within 1e-4 (an embedder: cosine at least 0.9999 and values within 1e-4). `serving:errors`: no
# failed request at any load level. `serving:sla`: p99 ≤ `sla_ms` at the lowest load level.
# `rayserve:parity`, `rayserve:errors`, `rayserve:sla`: the same three for Ray Serve, and
# `<name>:parity` ... for any other server, when the backends include it.

# %%
# NBVAL_CHECK_OUTPUT
gates = serving.gates_of(reports, sla_ms)
others = {name: r for name, r in reports.items() if name not in ("torchserve", "rayserve")}
record(run_dir, "serving", serving.serving_results(report, backends, reports.get("rayserve"), side, pick, others),
       gates, notebook="05_serving")
nb.gates_frame(gates)[["verdict", "threshold"]]
