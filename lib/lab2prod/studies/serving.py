"""The serving study: every server of the registry the run names (TorchServe, Ray Serve, or any server of the
`Server` protocol) serving the model through the same codec, live parity with the lab, what it refuses, a Locust
load sweep, Prometheus metrics, the knobs tuned against the SLA, and the servers side by side with a pick."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch

from lab2prod.core import extras
from lab2prod.core.inputs import cat
from lab2prod.core.progress import steps as progress_steps
from lab2prod.core.results import gate
from lab2prod.core.schema import Measure, Results, described
from lab2prod.kinds.codec import answer_vector, answers, codec_for, kind_of, lab_answer
from lab2prod.models.requests import request_bodies
from lab2prod.servers.artifacts import ARTIFACT_TITLES, load_artifact, verified_artifacts
from lab2prod.servers.base import Live, Server, ServerConfig, artifacts_of, grid, limits_check, modes_of, queue_bound
from lab2prod.servers.loadtest import content_type_of, load_sweep, request_files, run_locust, write_locustfile
from lab2prod.servers.registry import SERVERS, servers_named
from lab2prod.servers.timing import PHASES
from lab2prod.studies import chain
from lab2prod.studies.benchmark import measure, powers_of_two_axis

__all__ = [
    "batch_limit",
    "extras_needed",
    "ServingResults",
    "ServerConfig",
    "request_images",
    "fidelity",
    "live_parity",
    "parity_passes",
    "parity_text",
    "tuning_grid",
    "ray_grid",
    "tune",
    "choose",
    "ServingReport",
    "evaluate",
    "server_gates",
    "gates_of",
    "serving_gates",
    "rayserve_gates",
    "serving_results",
    "chain_stage",
    "check_backend",
    "selected_servers",
    "in_process_ceiling",
    "side_by_side",
    "pick_server",
    "limits_check",
    "plot_load",
    "plot_tuning",
    "plot_side_by_side",
]


@dataclass(kw_only=True)
class ServingResults(Results):
    """What its notebook records under results/serving.json; the schema is derived from these fields."""

    study: ClassVar[str] = "serving"
    measures: ClassVar[tuple[Measure, ...]] = (Measure("serving.tuned.p99_ms", "latency"),)

    applies: bool = described("whether the model was served")
    served_file: str = described("the file TorchServe served")
    parity_top1_agreement: float | None = described("live answers vs the lab path in process, top-1")
    max_prob_diff: float | None = described("largest probability difference, live vs in process (classifiers)")
    parity_min_cosine: float | None = described("smallest cosine, live vs in process (embedders)")
    parity_max_abs_diff: float | None = described("largest embedding difference, live vs in process (embedders)")
    requests: str = described("what clients send: image bytes, JSON texts or JSON arrays")
    limits: list = described("what the server answered without a token, with a wrong one, to an oversized body")
    load: list = described("the Locust load sweep: per user count, p50/p95/p99 ms, errors, throughput")
    metrics: list = described("TorchServe's Prometheus metrics after the load")
    tuning: list = described("per workers x threads x batch configuration at the tuning load")
    tuned: dict | None = described("the configuration chosen under the SLA")
    chosen_config: dict | None = described("the chosen configuration whole (workers, threads, batching, mode, "
                                           "artifact, the queue bound written), as later studies start the server")
    default: dict | None = described("what an untuned TorchServe did at the same load")
    config_file: str = described("config.properties written with the chosen configuration")
    locustfile: str = described("the locustfile left in the run folder")
    kubernetes: str = described("the Kubernetes manifests written for the chosen configuration")
    backend: str = described("the servers measured: torchserve, rayserve, both, or a comma-separated list "
                                 "of registered servers")
    servers: dict = described("every served server by name: parity, limits, load, metrics, tuning, chosen "
                              "configuration and the deployment files written for it")
    rayserve: dict | None = described("Ray Serve's parity, limits, load, metrics, tuning, chosen configuration, Serve"
                                      " config file and RayService manifest")
    side_by_side: list = described("TorchServe and Ray Serve, default and tuned, at the same load: throughput, "
                                   "p50/p95/p99, errors, CPUs, share of the in-process ceiling")
    pick: str = described("which server to pick for this model on this machine, and why")
    stages: list = described("the chain's serve stages: each live server's answers to the golden set (its live "
                             "parity requests) against the lab in process (lab2prod.studies.chain)")


def check_backend(backends: list[str] | str) -> list[str] | str:
    """A `backends` value naming registered servers (["torchserve"], ["rayserve"], ["both"], several, or the
    same as one comma-separated string), each able to run here; a clear error otherwise."""
    for server in servers_named(backends):
        if extras.available(getattr(server, "extra", "") or "serving"):  # else the runner skips the study
            server.check()
    return backends


def extras_needed(values: dict) -> list[str]:
    """The extras the serving study needs with these parameters: Locust (the serving extra) and each server's."""
    servers = servers_named(values.get("backends", ["torchserve"]))
    return [e for e in dict.fromkeys(["serving", *(getattr(s, "extra", "") for s in servers)]) if e]


def selected_servers(backends: list[str] | str) -> list[Server]:
    """The servers a `backends` value names, in the order given (an alias in registry order)."""
    return servers_named(backends)


def request_images(loaded, count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """(name, body) of what clients send this model: image bytes, or JSON for text and tensor
    models (lab2prod.models.requests.request_bodies)."""
    return request_bodies(loaded, count, seed)


def fidelity(served: torch.Tensor, expected: torch.Tensor, task: str) -> dict:
    """How far served answers are from the lab's, one row per request: for a classifier, top-1
    agreement and the largest probability difference; for an embedder, the smallest cosine and
    the largest absolute difference (never the argmax of a vector)."""
    if task == "embedder":
        cosine = torch.nn.functional.cosine_similarity(served.float(), expected.float(), dim=1)
        return {"min_cosine": float(cosine.min()), "max_abs_diff": float((served - expected).abs().max())}
    return {"top1_agreement": float((served.argmax(1) == expected.argmax(1)).float().mean()),
            "max_prob_diff": float((served - expected).abs().max())}


def live_parity(server: Live, name: str, loaded, requests: list[tuple[str, bytes]],
                module: torch.nn.Module | None = None) -> dict:
    """Send each request to the server and compare with the lab path in process (the same codec
    without its guard, through `module`, default the loaded model): see `fidelity`. A failed
    request counts as a disagreement."""

    lab = codec_for(loaded, guarded=False)
    served, expected, failures = [], [], 0
    with torch.inference_mode():
        for _, body in requests:
            status, payload = server.predict(name, body, content_type=lab.content_type)
            if status != 200:
                failures += 1
                continue
            served.append(answer_vector(json.loads(payload)))
            expected.append(lab_answer(module or loaded.module, lab, body, loaded.task))
    row = {"requests": len(requests), "failed": failures, "measure": loaded.task}
    if served:
        row.update(fidelity(torch.stack(served), torch.stack(expected), loaded.task))
        if "top1_agreement" in row:
            row["top1_agreement"] *= len(served) / len(requests)
    return row


def parity_passes(parity: dict, atol: float = 1e-4, min_cosine: float = 0.9999) -> bool:
    """Every request answered and answered like the lab: top-1 identical and probabilities within
    `atol` (classifier), or cosine >= `min_cosine` and values within `atol` (embedder)."""
    if parity.get("failed", 1) != 0:
        return False
    if parity.get("measure") == "embedder":
        return parity["min_cosine"] >= min_cosine and parity["max_abs_diff"] <= atol
    return parity["top1_agreement"] == 1.0 and parity["max_prob_diff"] <= atol


def parity_text(parity: dict) -> str:
    """One line for a gate or a table: what was compared and how close it came."""
    if parity.get("measure") == "embedder":
        return (f"{parity['requests']} requests, {parity['failed']} failed, "
                f"cosine >= {parity.get('min_cosine', 0):.6f}, "
                f"max abs diff {parity.get('max_abs_diff', float('nan')):.2g}")
    return (f"{parity['requests']} requests, {parity['failed']} failed, top-1 agreement "
            f"{parity.get('top1_agreement', 0):.3f}")


def tuning_grid(workers, threads, batch_sizes, max_batch_delay_ms: int,
                max_request_size: int = 1_000_000) -> list[ServerConfig]:
    """Every combination of workers x threads per worker x server batch size."""
    return grid(workers, threads, batch_sizes, max_batch_delay_ms, max_request_size)


def ray_grid(replicas, threads, batch_sizes, num_cpus: int = 2, max_request_size: int = 1_000_000) -> list:
    """Ray Serve's settings for every combination of replicas x torch threads per replica x @serve.batch size.
    The replicas share Ray's `num_cpus` evenly (so each can be placed); threads are set apart from that, so
    replicas x threads can oversubscribe the cores, as TorchServe's workers x threads can."""
    ray = SERVERS["rayserve"]
    return [ray.native(ServerConfig(r, t, b, 5, max_request_size, num_cpus / r))
            for r in replicas for t in threads for b in batch_sizes]


def _row(server: Server, config: ServerConfig, row: dict, sla_ms: float) -> dict:
    native = server.native(config)
    row = {**row, **asdict(native), **asdict(config), "config": native.label,
           "meets_sla": row["p99_ms"] is not None and row["p99_ms"] <= sla_ms and row["error_rate"] == 0}
    return {**row, "batch_limited_by": batch_limit(row)}


def batch_limit(row: dict) -> str | None:
    """What kept a configured batch from filling, when the batches the server reported averaged under half of
    it: the client's concurrency, the replica's `max_ongoing_requests`, or the batch delay running out first;
    None when the batches filled, when batching is off, or when the server did not report its batches."""
    configured, mean = row.get("batch_size", 1), row.get("mean_batch_size")
    if configured <= 1 or mean is None or mean >= configured / 2:
        return None
    users, ongoing, workers = row.get("users", 0), row.get("max_ongoing_requests"), max(1, row.get("workers", 1))
    if users < configured * workers:
        return (f"client concurrency: {users} users spread over {workers} worker(s) cannot fill a batch of "
                f"{configured} (mean {mean:.2f})")
    if ongoing is not None and ongoing < configured:
        return f"max_ongoing_requests {ongoing} < batch {configured}: a replica never holds a full batch"
    return (f"the batch delay: {row.get('max_batch_delay_ms')} ms runs out before {configured} requests arrive "
            f"(mean batch {mean:.2f})")


def _artifact_parity(live: Live, loaded, requests: list[tuple[str, bytes]], model_dir: Path,
                     config: ServerConfig) -> dict:
    """Live parity of the deployed artifact: against the lab path, or for the quantized file against that file
    run in this process (its distance to the lab was judged by the quantization notebook's budget)."""
    module = load_artifact(model_dir, config.artifact).module if config.artifact == "quantized" else None
    return live_parity(live, live.model, loaded, requests, module)


def tune(server: Server, live: Live, locustfile: Path, configs: list[ServerConfig], users: int, duration_s: float,
         sla_ms: float, progress: bool = False, check=None) -> list[dict]:
    """Measure each configuration at `users` users (deploy, one warm request, `check(config)` when given: a
    live parity row, then Locust); returns rows with `meets_sla` set, and `parity`/`parity_passed` where
    checked. The choice is the highest throughput whose p99 <= sla_ms among rows whose parity passed."""
    rows = []
    warm = request_files(Path(locustfile).parent / "requests")[0]
    for config in progress_steps(configs, f"tune {server.name}", "config", show=progress):
        live.deploy(config)
        live.predict(live.model, warm.read_bytes(), content_type=content_type_of(warm))
        parity = check(config) if check is not None else None
        row = _row(server, config, run_locust(live, live.model, locustfile, users, duration_s), sla_ms)
        if parity is not None:
            row.update(parity=parity_text(parity), parity_passed=parity_passes(parity))
        rows.append(row)
    return rows


def choose(rows: list[dict]) -> dict | None:
    """The highest-throughput row that meets the SLA; when none does, the row with the lowest
    p99 (its `meets_sla` says so), except that rows whose p99 95% intervals overlap that row's are not told
    apart by p99: the highest throughput among them wins. A row whose live parity failed is never chosen.
    None only without rows."""
    rows = [r for r in rows if r.get("parity_passed", True)]
    meeting = [r for r in rows if r["meets_sla"]]
    if meeting:
        return max(meeting, key=lambda r: r["throughput_per_s"])
    answered = [r for r in rows if r["p99_ms"] is not None]
    lowest = min(answered, key=lambda r: r["p99_ms"], default=None)
    if lowest is None:
        return None
    return max((r for r in answered if r is lowest or p99_overlap(r, lowest)), key=lambda r: r["throughput_per_s"])


def p99_overlap(a: dict, b: dict) -> bool:
    """Whether two rows' p99 bootstrap 95% intervals overlap (then their p99s are not ranked); False when
    either has no interval (fewer than 20 samples)."""
    first, second = a.get("p99_ci_ms"), b.get("p99_ci_ms")
    return bool(first and second) and first[0] <= second[1] and second[0] <= first[1]


@dataclass
class ServingReport:
    """What the serving notebook shows for one server; `applies` is False (with `reason`) when it was not
    served. `files` holds the deployment files written for the chosen configuration."""

    applies: bool
    reason: str = ""
    requests: str = ""  # what clients send: image bytes, JSON texts or JSON arrays
    model_name: str = ""
    served_file: str = ""
    parity: dict = field(default_factory=dict)
    limits: list[dict] = field(default_factory=list)
    load: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    tuning: list[dict] = field(default_factory=list)
    default: dict | None = None
    chosen: dict | None = None
    locustfile: str = ""
    server: str = "torchserve"
    title: str = "TorchServe"
    files: dict = field(default_factory=dict)


def evaluate(server: Server, loaded, run_dir: Path, config: ServerConfig, users_levels, duration_s: float,
             tuning_configs: list[ServerConfig], tune_users: int, sla_ms: float, parity_count: int = 64,
             seed: int = 0, progress: bool = False) -> ServingReport:
    """Serve the model with `server` and measure it: live parity, limits, a Locust load sweep, Prometheus
    metrics, then the tuning sweep (what an untuned server does first). The server is stopped before this
    returns, also on an error or an interrupt; the chosen configuration's deployment files are written."""
    server.check()
    run_dir = Path(run_dir)
    (run_dir / "serving").mkdir(parents=True, exist_ok=True)
    lab = codec_for(loaded, guarded=False)
    requests = request_images(loaded, parity_count, seed)
    locustfile = run_dir / "serving" / "locustfile.py"
    if not locustfile.exists():  # one locustfile for every server, so all see the same requests
        locustfile = write_locustfile(run_dir, requests, lab.suffix, lab.content_type)
    report = ServingReport(True, requests=kind_of(loaded.kind).request, model_name="model", server=server.name,
                           title=server.title, locustfile=str(locustfile.relative_to(run_dir)))
    with server.serve(loaded, run_dir, config, seed) as live:
        report.served_file = live.served_file
        report.parity = live_parity(live, live.model, loaded, requests)
        report.limits = live.limits(requests[0][1], config.max_request_size, lab.content_type)
        report.load = load_sweep(live, live.model, locustfile, config, users_levels, duration_s, progress)
        report.metrics = live.scrape()
        # Stage 1: every configuration in each of the server's start-time modes (one mode after the other) with
        # TorchScript. Stage 2: the best of those with each other artifact the server can host that this run
        # verified, each checked live against the lab before it is timed (a coordinate search, not the product).
        configs = [replace(c, mode=mode) for mode in modes_of(server) for c in tuning_configs]
        default, *tuned = tune(server, live, locustfile, [server.default_config(config), *configs],
                               tune_users, duration_s, sla_ms, progress)
        verified = verified_artifacts(run_dir)
        others = [a for a in artifacts_of(server) if a in verified and a != "torchscript"]
        best = choose(tuned)
        if others and best is not None:
            base = configs[tuned.index(best)]
            model_dir = (run_dir / live.served_file).parent
            check = partial(_artifact_parity, live, loaded, requests[:16], model_dir)
            tuned += tune(server, live, locustfile, [replace(base, artifact=a) for a in others], tune_users,
                          duration_s, sla_ms, progress, check)
    report.default = {**default, "default": True}
    report.tuning = [report.default, *tuned]
    report.chosen = choose(report.tuning)
    chosen = ServerConfig(**{k: report.chosen[k] for k in ServerConfig.__dataclass_fields__ if k in report.chosen}) \
        if report.chosen else config
    if report.chosen:  # the written configs bound the queue at what the chosen configuration drains within the SLA
        bound = queue_bound(report.chosen["throughput_per_s"], sla_ms, chosen.workers, chosen.batch_size)
        chosen = replace(chosen, max_queue=bound)
        report.chosen["max_queue"] = bound
    report.files = server.write_files(loaded, run_dir, chosen, seed)
    return report


def server_gates(report: ServingReport, prefix: str, sla_ms: float, prob_atol: float = 1e-4) -> list[dict]:
    """<prefix>:parity (every live request answered like the lab: top-1 identical and probabilities within
    prob_atol), <prefix>:errors (no failed request at any load level), <prefix>:sla (p99 <= sla_ms at the
    lowest level); skipped with the reason when the server did not serve the model."""
    names = (f"{prefix}:parity", f"{prefix}:errors", f"{prefix}:sla")
    if not report.applies:
        return [gate(n, False, None, None, report.reason, skipped=True) for n in names]
    parity = report.parity
    worst_errors = max(r["error_rate"] for r in report.load)
    lowest = min(report.load, key=lambda r: r["users"])
    return [
        gate(names[0], parity_passes(parity, prob_atol), parity.get("max_abs_diff", parity.get("max_prob_diff")),
             prob_atol, parity_text(parity)),
        gate(names[1], worst_errors == 0, worst_errors, 0.0,
             f"levels {', '.join(str(r['users']) for r in report.load)} users"),
        gate(names[2], lowest["p99_ms"] is not None and lowest["p99_ms"] <= sla_ms, lowest["p99_ms"], sla_ms,
             f"p99 at {lowest['users']} user(s)"),
    ]


def serving_gates(report: ServingReport, sla_ms: float, prob_atol: float = 1e-4) -> list[dict]:
    """TorchServe's gates: serving:parity, serving:errors, serving:sla."""
    return server_gates(report, SERVERS["torchserve"].gate_prefix, sla_ms, prob_atol)


def rayserve_gates(report: ServingReport, sla_ms: float, prob_atol: float = 1e-4) -> list[dict]:
    """Ray Serve's gates: rayserve:parity, rayserve:errors, rayserve:sla."""
    return server_gates(report, SERVERS["rayserve"].gate_prefix, sla_ms, prob_atol)


def gates_of(reports: dict[str, ServingReport], sla_ms: float, prob_atol: float = 1e-4) -> list[dict]:
    """Every served server's three gates, named by its prefix (TorchServe keeps `serving:*`)."""
    return [g for name, report in reports.items()
            for g in server_gates(report, SERVERS[name].gate_prefix if name in SERVERS else name, sla_ms, prob_atol)]


def _summary(report: ServingReport) -> dict:
    keys = ["workers", "threads", "batch_size", "users", "p99_ms", "throughput_per_s"]
    return {
        "applies": report.applies,
        "served_file": report.served_file,
        "parity_top1_agreement": report.parity.get("top1_agreement"),
        "max_prob_diff": report.parity.get("max_prob_diff"),
        "parity_min_cosine": report.parity.get("min_cosine"),
        "parity_max_abs_diff": report.parity.get("max_abs_diff"),
        "requests": report.requests,
        "limits": report.limits,
        "load": report.load,
        "metrics": report.metrics,
        "tuning": report.tuning,
        "tuned": {**{k: report.chosen[k] for k in keys}, "meets_sla": report.chosen["meets_sla"]}
        if report.chosen else None,
        "chosen_config": {k: report.chosen[k] for k in ServerConfig.__dataclass_fields__ if k in report.chosen}
        if report.chosen else None,
        "default": {k: report.default[k] for k in keys} if report.default else None,
        "locustfile": report.locustfile,
    }


def serving_results(report: ServingReport, backend: str | list[str] = "torchserve", ray: ServingReport | None = None,
                    side: list[dict] | None = None, pick: str = "",
                    others: dict[str, ServingReport] | None = None) -> ServingResults:
    """The named results the serving notebook records (results["serving"]): TorchServe's at the top level (as
    before there were several servers), Ray Serve's under "rayserve", every server's under "servers"."""
    everyone = {**({"torchserve": report} if report.applies else {}), **({"rayserve": ray} if ray else {}),
                **(others or {})}
    return ServingResults(
        backend=backend if isinstance(backend, str) else ",".join(backend),
        **_summary(report),
        config_file=report.files.get("config_file", ""),
        kubernetes=report.files.get("kubernetes", ""),
        rayserve={**asdict(ray), **ray.files} if ray is not None else None,
        servers={name: {**_summary(r), "title": r.title, **r.files} for name, r in everyone.items()},
        side_by_side=side or [],
        pick=pick,
        stages=[chain_stage(r) for r in everyone.values()],
    )


def chain_stage(report: ServingReport, prob_atol: float = 1e-4, min_cosine: float = 0.9999) -> dict:
    """A live server's stage of the chain (lab2prod.studies.chain): its answers over HTTP, with the real request
    encoding, against the lab in process, judged as the server's parity gate judges them."""
    parity, name = report.parity, f"server: {report.title}"
    if not report.applies or not parity:
        return chain.failed_stage(name, "serve", "classifier", "", report.reason or "not served", passed=None)
    embedder = parity.get("measure") == "embedder"
    bound = f"cosine >= {min_cosine:g}" if embedder else "top-1 agreement 1"
    return chain.measured_stage(
        name, "serve", f"{parity['requests']} held-out requests as {report.requests}",
        f"answers over HTTP ({report.served_file})", "min cosine" if embedder else "top-1 agreement",
        parity.get("min_cosine" if embedder else "top1_agreement"),
        parity.get("max_abs_diff" if embedder else "max_prob_diff"),
        f"every request answered, {bound}, max abs diff <= {prob_atol:g}", parity_passes(parity, prob_atol, min_cosine),
        f"{parity['failed']} of {parity['requests']} requests failed" if parity.get("failed") else "")


def in_process_ceiling(model_dir: Path, loaded, batch_size: int, threads: int, workers: int,
                       seed: int = 0, min_run_time: float = 1.0, artifact: str = "torchscript") -> dict:
    """What the server could at most deliver, measured in this process with lab2prod's benchmark harness at the
    server's batch size and threads, times the workers the cores can run side by side:
    - `ceiling_per_s`: the served artifact alone, on a ready batch (the model's ceiling);
    - `full_path_per_s`: the full path on the same request bodies: the guarded codec per request (decode,
      guard, preprocess), the batch through the artifact, and the JSON answers (the server's own work).
    `model_dir` is the folder the server serves, or the served TorchScript file itself (TorchServe's)."""
    served = load_artifact(model_dir, artifact, int(threads))
    lab = codec_for(loaded, guarded=True)
    size = max(int(batch_size), 1)
    bodies = [body for _, body in request_bodies(loaded, size, seed)]
    bodies = [bodies[i % len(bodies)] for i in range(size)]
    batch = cat([lab(body) for body in bodies])
    threads = int(threads) or (os.cpu_count() or 1)  # 0: torch's default, a thread per core

    def full_path():
        return [json.dumps(a) for a in answers(loaded.task, served(cat([lab(body) for body in bodies])))]

    with torch.inference_mode():
        model = measure(lambda: served(batch), batch_size=size, threads=threads, min_run_time=min_run_time)
        full = measure(full_path, batch_size=size, threads=threads, min_run_time=min_run_time)
    parallel = max(1, min(int(workers), (os.cpu_count() or 1) // threads))
    single, whole = model.stats()["throughput_per_s"], full.stats()["throughput_per_s"]
    return {"batch_size": batch_size, "threads": threads, "workers": parallel, "artifact": artifact,
            "one_worker_per_s": single, "ceiling_per_s": single * parallel, "full_path_per_s": whole * parallel}


def ceilings_of(reports: dict[str, ServingReport], run_dir: Path, loaded, seed: int = 0,
                min_run_time: float = 1.0) -> dict:
    """{(server title, "default"/"tuned"): in_process_ceiling} for every served server, measured once per
    distinct (batch size, threads, workers, artifact)."""
    measured, ceilings = {}, {}
    for served in reports.values():
        model_file = Path(run_dir) / served.served_file
        for kind, row in (("default", served.default), ("tuned", served.chosen)):
            if row is None or not model_file.exists():
                continue
            key = (row["batch_size"], row["threads"], row["workers"], row.get("artifact", "torchscript"))
            if key not in measured:
                measured[key] = in_process_ceiling(model_file, loaded, *key[:3], seed, min_run_time,
                                                   artifact=key[3])
            ceilings[(served.title, kind)] = measured[key]
    return ceilings


def side_by_side(reports: dict[str, ServingReport] | ServingReport | None, ray: ServingReport | None = None,
                 ceilings: dict | None = None) -> list[dict]:
    """Every served server, default and tuned, at the same load and SLA: the served artifact, throughput,
    P50/P95/P99 (with its samples and interval), errors, CPUs used, the share of the model-only in-process ceiling
    of the same configuration (`share_of_in_process`), the share of the full-path ceiling (`efficiency`) and
    the Server-Timing phases (`phases_ms`). `reports` is {name: report};
    (TorchServe's report, Ray Serve's report, ceilings) is accepted as before."""
    if not isinstance(reports, dict):  # the two-server call of earlier versions
        reports = {name: r for name, r in (("torchserve", reports), ("rayserve", ray)) if r is not None}
    ceilings = ceilings or {}
    rows = []
    for report in reports.values():
        if report is None or not report.tuning:
            continue
        for kind, row in (("default", report.default), ("tuned", report.chosen)):
            if row is None:
                continue
            threads = row["threads"] or (os.cpu_count() or 1)  # 0: torch's default, a thread per core
            cpus = row["workers"] * threads  # threads the server runs at once (workers, replicas)
            ceiling = ceilings.get((report.title, kind))
            rows.append({"server": report.title, "config": kind, "setting": row["config"],
                         "throughput_per_s": row["throughput_per_s"], "p50_ms": row["p50_ms"], "p95_ms": row["p95_ms"],
                         "p99_ms": row["p99_ms"], "p99_ci_ms": row.get("p99_ci_ms"),
                         "p99_tail_samples": row.get("p99_tail_samples"), "requests": row.get("requests"),
                         "error_rate": row["error_rate"], "cpus": cpus, "meets_sla": row["meets_sla"],
                         "limited_by_load_generator": row.get("limited_by_load_generator", False),
                         "served": ARTIFACT_TITLES[row.get("artifact", "torchscript")],
                         "share_of_in_process": row["throughput_per_s"] / ceiling["ceiling_per_s"]
                         if ceiling else None,
                         "efficiency": row["throughput_per_s"] / ceiling["full_path_per_s"] if ceiling else None,
                         "phases_ms": row.get("phases_ms")})
    return rows


def _maintained(title: str) -> bool:
    return next((s.maintained for s in SERVERS.values() if s.title == title), True)


def pick_server(rows: list[dict], sla_ms: float) -> str:
    """One sentence: which server to pick for this model on this machine, and why. Among the tuned rows, only
    the servers that meet the SLA count when any does; an unmaintained server (TorchServe, archived) is picked
    only when it is at least 1.25x the throughput of the best maintained one."""
    tuned = [r for r in rows if r["config"] == "tuned"]
    if len(tuned) < 2:
        return "one server measured: nothing to compare"
    meeting = [r for r in tuned if r["meets_sla"]]
    if len(meeting) == 1:
        return (f"pick {meeting[0]['server']}: only it meets p99 <= {sla_ms:g} ms at this load "
                f"({meeting[0]['throughput_per_s']:.0f} req/s)")
    ranked = sorted(meeting or tuned, key=lambda r: r["throughput_per_s"], reverse=True)
    best, other = ranked[0], ranked[1]
    ratio = best["throughput_per_s"] / max(other["throughput_per_s"], 1e-9)
    kept = [r for r in ranked if _maintained(r["server"])]
    if not _maintained(best["server"]) and kept:
        maintained = kept[0]
        gap = best["throughput_per_s"] / max(maintained["throughput_per_s"], 1e-9)
        if gap < 1.25:
            return (f"pick {maintained['server']}: {best['server']} is {gap:.2f}x faster here "
                    f"({best['throughput_per_s']:.0f} vs {maintained['throughput_per_s']:.0f} req/s), too little to "
                    f"outweigh that {best['server']} is archived (no releases or security patches since 2025-08-07) "
                    f"while {maintained['server']} is maintained")
    return (f"pick {best['server']}: {ratio:.2f}x the throughput of {other['server']} at the same load "
            f"({best['throughput_per_s']:.0f} vs {other['throughput_per_s']:.0f} req/s, p99 {best['p99_ms']:.0f} ms)"
            + (f"; note {best['server']} is archived: no security patches since 2025-08-07"
               if not _maintained(best["server"]) else ""))


# ---------------------------------------------------------------- tables and plots of the notebook


def plot_load(rows: list[dict], sla_ms: float):
    """Left: p50/p95/p99 against concurrent users, with the SLA. Right: throughput and error rate."""
    import matplotlib.pyplot as plt

    users = [r["users"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, style in (("p50_ms", "--o"), ("p95_ms", "-s"), ("p99_ms", "-o")):
        left.plot(users, [r[key] for r in rows], style, label=key.replace("_ms", ""), markersize=4)
    left.axhline(sla_ms, color="#b00020", linewidth=1.2, label=f"SLA {sla_ms:g} ms")
    left.set_yscale("log")
    left.set_ylabel("latency seen by the client (ms)")
    right.plot(users, [r["throughput_per_s"] for r in rows], "-o", color="C2", label="throughput")
    right.set_ylabel("successful requests / s")
    right.set_ylim(0, max(r["throughput_per_s"] for r in rows) * 1.15 + 1)
    errors = right.twinx()
    errors.bar(users, [100 * r["error_rate"] for r in rows], width=[u * 0.3 for u in users], color="#d62728",
               alpha=0.35, label="errors")
    errors.set_ylabel("error rate (%)")
    errors.set_ylim(0, max(5, 100 * max(r["error_rate"] for r in rows) * 1.2))
    powers_of_two_axis((left, right), users, "concurrent users (Locust)")
    left.legend(fontsize=8)
    left.set_title("Latency percentiles vs load")
    right.set_title("Throughput vs load")
    fig.tight_layout()
    return fig


def plot_tuning(rows: list[dict], sla_ms: float, chosen: dict | None):
    """Throughput per server configuration at the tuning load; bars that miss the SLA are grey,
    the chosen one is outlined; p99 written on each bar."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4))
    labels = [r["config"] + (" (default)" if r.get("default") else "") for r in rows]
    colours = ["#2ca02c" if r["meets_sla"] else "#9e9e9e" for r in rows]
    bars = ax.barh(labels, [r["throughput_per_s"] for r in rows], color=colours)
    for bar, row in zip(bars, rows, strict=True):
        if chosen is not None and row is chosen:
            bar.set_edgecolor("black")
            bar.set_linewidth(2)
        p99 = f"p99 {row['p99_ms']:.0f} ms" if row["p99_ms"] is not None else "no response"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {p99}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"successful requests / s at {rows[0]['users']} users (green: p99 <= {sla_ms:g} ms)")
    ax.set_title("Server configurations: workers x torch threads x server batch")
    ax.set_xlim(0, max(r["throughput_per_s"] for r in rows) * 1.3 + 1)
    fig.tight_layout()
    return fig


def plot_side_by_side(rows: list[dict], sla_ms: float):
    """TorchServe and Ray Serve, default and tuned: throughput and P99 side by side, the SLA dashed."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    labels = [f"{r['server']}\n{r['config']}" for r in rows]
    servers = list(dict.fromkeys(r["server"] for r in rows))
    colors = [f"C{servers.index(r['server'])}" for r in rows]
    alphas = [0.45 if r["config"] == "default" else 1.0 for r in rows]
    for ax, key, title in ((left, "throughput_per_s", "throughput (req/s)"), (right, "p99_ms", "P99 (ms)")):
        values = [r[key] or 0 for r in rows]
        bars = ax.bar(labels, values, color=colors)
        for bar, alpha, value in zip(bars, alphas, values, strict=True):
            bar.set_alpha(alpha)
            ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
    right.axhline(sla_ms, color="black", linestyle="--", linewidth=0.8, label=f"SLA {sla_ms:g} ms")
    right.set_yscale("log")
    right.legend(fontsize=8)
    fig.suptitle(" vs ".join(servers) + " at the same load", fontsize=10)
    fig.tight_layout()
    return fig


def side_table(rows: list[dict]):
    """The side-by-side rows as the notebook shows them: one row per server and configuration, the P99 with its
    samples and interval, both ceilings' shares, and one column per Server-Timing phase (mean ms)."""
    import pandas as pd

    columns = ["server", "config", "served", "setting", "throughput_per_s", "p50_ms", "p99_ms", "p99_tail_samples",
               "p99_ci_ms", "error_rate", "cpus", "meets_sla", "share_of_in_process", "efficiency",
               "limited_by_load_generator"]
    table = []
    for row in rows:
        phases = row.get("phases_ms") or {}
        interval = row.get("p99_ci_ms")
        table.append({**{c: row.get(c) for c in columns},
                      "p99_ci_ms": f"{interval[0]:.1f}-{interval[1]:.1f}" if interval else None,
                      **{f"{name}_ms": phases.get(name) for name in (*PHASES, "network_and_proxy")}})
    return pd.DataFrame(table).set_index(["server", "config"]).round(3)


def plot_phases(rows: list[dict]):
    """Where each server's milliseconds go: one stacked bar per server and configuration, the mean of each
    Server-Timing phase over the tuning load's answers, and the rest of what the client saw (network, HTTP server
    and proxy); None when no server reported phases."""
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r.get("phases_ms")]
    if not timed:
        return None
    names = [*PHASES, "network_and_proxy"]
    colours = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#bab0ac"]
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(timed) + 1.6))
    labels = [f"{r['server']} {r['config']}\n{r['served']}" for r in timed]
    left = [0.0] * len(timed)
    for name, colour in zip(names, colours, strict=True):
        values = [r["phases_ms"].get(name, 0.0) for r in timed]
        ax.barh(labels, values, left=left, color=colour, label=name.replace("_", " "))
        left = [a + b for a, b in zip(left, values, strict=True)]
    for y, (total, row) in enumerate(zip(left, timed, strict=True)):
        ax.text(total, y, f" {total:.1f} ms (mean of {row['phases_ms']['samples']})", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.35 + 0.1)
    ax.set_xlabel("mean ms per request at the tuning load (Server-Timing phases; grey: the rest the client saw)")
    ax.legend(fontsize=8, ncol=5, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    return fig
