"""The serving study: a real TorchServe (and, with `backend`, Ray Serve) serving the model, live
parity with the lab, what it refuses, a Locust load sweep, Prometheus metrics, the knobs tuned
against the SLA, and the two servers side by side."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.inputs import call, cat
from lab2prod.core.results import gate
from lab2prod.kinds.codec import answer_vector, codec_for, lab_answer
from lab2prod.models.requests import request_bodies
from lab2prod.servers.kubernetes import write_deployment
from lab2prod.servers.loadtest import content_type_of, load_sweep, run_locust, write_locustfile
from lab2prod.servers.rayserve.server import (
    DEFAULT_RAY_CONFIG,
    RayConfig,
    RayServer,
    rayservice_manifest,
    serve_config,
    validate_rayservice,
    write_model_dir,
)
from lab2prod.servers.rayserve.server import write_serve_config as write_config_file
from lab2prod.servers.torchserve.server import (
    DEFAULT_CONFIG,
    ServeConfig,
    TorchServe,
    build_archive,
    check_requirements,
    exported_torchscript,
    limits_check,
    scrape_metrics,
    write_deployment_config,
)
from lab2prod.studies.benchmark import measure

__all__ = [
    "ServeConfig",
    "request_images",
    "fidelity",
    "live_parity",
    "parity_passes",
    "parity_text",
    "tuning_grid",
    "tune",
    "choose",
    "ServingReport",
    "evaluate_serving",
    "serving_gates",
    "serving_results",
    "BACKENDS",
    "check_backend",
    "ray_grid",
    "evaluate_rayserve",
    "in_process_ceiling",
    "side_by_side",
    "pick_server",
]

BACKENDS = ("torchserve", "rayserve", "both")


def check_backend(backend: str) -> str:
    """torchserve, rayserve or both; a clear error otherwise (and when Ray Serve is not installed)."""
    if backend not in BACKENDS:
        raise Lab2ProdError(f"backend {backend!r} is not known; use torchserve, rayserve or both")
    if backend != "torchserve":
        try:
            import ray.serve  # noqa: F401
        except ImportError:
            raise Lab2ProdError(f"backend {backend!r} needs Ray Serve; pip install -r requirements.txt") from None
    return backend


REQUEST_KINDS = {"image": "image file bytes (PNG, JPEG)", "text": 'JSON {"text": "..."}',
                 "tensor": "JSON of named arrays, one item"}


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


def live_parity(server: TorchServe, name: str, loaded, requests: list[tuple[str, bytes]],
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


def tuning_grid(workers, threads, batch_sizes, max_batch_delay_ms: int) -> list[ServeConfig]:
    """Every combination of workers x threads per worker x server batch size."""
    return [ServeConfig(w, t, b, max_batch_delay_ms) for w in workers for t in threads for b in batch_sizes]


def tune(server: TorchServe, loaded, run_dir: Path, locustfile: Path, configs: list[ServeConfig], users: int,
         duration_s: float, sla_ms: float, seed: int = 0, progress: bool = False,
         model_file: Path | None = None) -> list[dict]:
    """Measure each configuration at `users` users (register, load, unregister); returns rows with
    `meets_sla` set. The choice is the highest throughput whose p99 <= sla_ms."""
    from tqdm import tqdm

    rows, archives = [], {}
    for config in tqdm(configs, desc="tune", unit="config", disable=not progress):
        if config.threads not in archives:  # the thread count lives in the archive; the rest is registration
            archives[config.threads] = build_archive(loaded, Path(run_dir) / "serving", f"m_t{config.threads}",
                                                     config.threads, seed, model_file)
        name = server.register(archives[config.threads], config)
        try:
            warm = sorted((Path(locustfile).parent / "requests").iterdir())[0]
            server.predict(name, warm.read_bytes(), content_type=content_type_of(warm))
            row = run_locust(server, name, locustfile, users, duration_s)
        finally:
            server.unregister(name)
        rows.append({**row, **asdict(config), "config": config.label,
                     "meets_sla": row["p99_ms"] is not None and row["p99_ms"] <= sla_ms and row["error_rate"] == 0})
    return rows


def choose(rows: list[dict]) -> dict | None:
    """The highest-throughput row that meets the SLA; when none does, the row with the lowest
    p99 (its `meets_sla` says so). None only without rows."""
    meeting = [r for r in rows if r["meets_sla"]]
    if meeting:
        return max(meeting, key=lambda r: r["throughput_per_s"])
    answered = [r for r in rows if r["p99_ms"] is not None]
    return min(answered, key=lambda r: r["p99_ms"], default=None)


@dataclass
class ServingReport:
    """What the serving notebook shows; `applies` is False (with `reason`) for tensor models."""

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
    config_file: str = ""
    locustfile: str = ""
    kubernetes: str = ""


def evaluate_serving(loaded, run_dir: Path, config: ServeConfig, users_levels, duration_s: float,
                     tuning_configs: list[ServeConfig], tune_users: int, sla_ms: float, parity_count: int = 64,
                     seed: int = 0, progress: bool = False) -> ServingReport:
    """Serve the model with a real TorchServe and measure it: live parity, limits, a Locust load
    sweep, Prometheus metrics, then the tuning sweep (the default configuration first). The server
    is stopped before this returns, also on an error or an interrupt."""
    check_requirements()
    run_dir = Path(run_dir)
    serve_dir = run_dir / "serving"
    serve_dir.mkdir(parents=True, exist_ok=True)
    model_file = exported_torchscript(run_dir)
    name = "model"
    report = ServingReport(True, model_name=name,
                           served_file=str(model_file.relative_to(run_dir)) if model_file else "traced here",
                           requests=REQUEST_KINDS[codec_for(loaded, guarded=False).kind])
    server = TorchServe(serve_dir, config)
    try:
        server.start()
        archive = build_archive(loaded, serve_dir, name, config.threads, seed, model_file)
        server.register(archive, config)
        requests = request_images(loaded, parity_count, seed)
        report.parity = live_parity(server, name, loaded, requests)
        report.limits = limits_check(server, name, requests[0][1], config.max_request_size,
                                     codec_for(loaded, guarded=False).content_type)
        locustfile = write_locustfile(run_dir, requests, codec_for(loaded, guarded=False).suffix)
        report.locustfile = str(locustfile.relative_to(run_dir))
        report.load = load_sweep(server, name, locustfile, config, users_levels, duration_s, progress)
        report.metrics = scrape_metrics(server)
        server.unregister(name)
        default, *tuned = tune(server, loaded, run_dir, locustfile, [DEFAULT_CONFIG, *tuning_configs], tune_users,
                               duration_s, sla_ms, seed, progress, model_file)
        report.default = {**default, "default": True}
        report.tuning = [report.default, *tuned]
        report.chosen = choose(report.tuning)
    finally:
        server.stop()
    chosen_threads = report.chosen["threads"] if report.chosen else config.threads
    build_archive(loaded, serve_dir, name, chosen_threads, seed, model_file)  # the archive the config names
    report.config_file = str(write_deployment_config(serve_dir, name, report.chosen, config).relative_to(run_dir))

    report.kubernetes = str(write_deployment(serve_dir, name, report.chosen, config.workers, config.threads,
                                             config.batch_size, config.max_batch_delay_ms).relative_to(run_dir))
    return report


def serving_gates(report: ServingReport, sla_ms: float, prob_atol: float = 1e-4) -> list[dict]:
    """serving:parity (top-1 identical, probabilities within prob_atol), serving:errors (no
    failed request at any load level), serving:sla (p99 <= sla_ms at the lowest level)."""

    names = ("serving:parity", "serving:errors", "serving:sla")
    if not report.applies:
        return [gate(n, False, None, None, report.reason, skipped=True) for n in names]
    parity = report.parity
    parity_ok = parity_passes(parity, prob_atol)
    worst_errors = max(r["error_rate"] for r in report.load)
    lowest = min(report.load, key=lambda r: r["users"])
    return [
        gate(names[0], parity_ok, parity.get("max_abs_diff", parity.get("max_prob_diff")), prob_atol,
             parity_text(parity)),
        gate(names[1], worst_errors == 0, worst_errors, 0.0,
             f"levels {', '.join(str(r['users']) for r in report.load)} users"),
        gate(names[2], lowest["p99_ms"] is not None and lowest["p99_ms"] <= sla_ms, lowest["p99_ms"], sla_ms,
             f"p99 at {lowest['users']} user(s)"),
    ]


def serving_results(report: ServingReport, backend: str = "torchserve", ray: RayReport | None = None,
                    side: list[dict] | None = None, pick: str = "") -> dict:
    """The named results the serving notebook records (results["serving"])."""
    keys = ["workers", "threads", "batch_size", "users", "p99_ms", "throughput_per_s"]
    return {
        "backend": backend,
        "rayserve": asdict(ray) if ray is not None else None,
        "side_by_side": side or [],
        "pick": pick,
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
        "default": {k: report.default[k] for k in keys} if report.default else None,
        "config_file": report.config_file,
        "locustfile": report.locustfile,
        "kubernetes": report.kubernetes,
    }


# ---------------------------------------------------------------- Ray Serve beside TorchServe


def ray_grid(replicas, threads, batch_sizes, num_cpus: int = 2, max_request_size: int = 1_000_000) -> list:
    """Every combination of replicas x torch threads per replica x @serve.batch size. The replicas
    share Ray's `num_cpus` evenly (so each can be placed); threads are set apart from that, so
    replicas x threads can oversubscribe the cores, as TorchServe's workers x threads can."""

    return [RayConfig(r, num_cpus / r, t, b, 0.005, max_request_size) for r in replicas for t in threads
            for b in batch_sizes]


def _ray_tune(server, model_dir: Path, locustfile: Path, configs: list, users: int, duration_s: float,
              sla_ms: float, progress: bool = False) -> list[dict]:
    from tqdm import tqdm

    rows = []
    warm = sorted((Path(locustfile).parent / "requests").iterdir())[0]
    for config in tqdm(configs, desc="tune ray", unit="config", disable=not progress):
        server.deploy(model_dir, config)
        server.predict("model", warm.read_bytes(), content_type=content_type_of(warm))
        row = run_locust(server, "model", locustfile, users, duration_s)
        rows.append({**row, **asdict(config), "config": config.label, "workers": config.replicas,
                     "batch_size": config.max_batch_size,
                     "meets_sla": row["p99_ms"] is not None and row["p99_ms"] <= sla_ms and row["error_rate"] == 0})
    return rows


def in_process_ceiling(model_file: Path, loaded, batch_size: int, threads: int, workers: int,
                       seed: int = 0, min_run_time: float = 1.0) -> dict:
    """What the server could at most deliver: the served TorchScript file called in this process at
    the server's batch size and threads (lab2prod's benchmark harness), times the workers the cores
    can run side by side."""

    module = torch.jit.load(str(model_file)).eval()
    lab = codec_for(loaded, guarded=False)
    bodies = [body for _, body in request_bodies(loaded, max(batch_size, 1), seed)]
    batch = cat([lab(bodies[i % len(bodies)]) for i in range(max(batch_size, 1))])
    threads = int(threads) or (os.cpu_count() or 1)  # 0: torch's default, a thread per core
    with torch.inference_mode():
        timing = measure(lambda: call(module, batch), batch_size=max(batch_size, 1), threads=threads,
                         min_run_time=min_run_time)
    parallel = max(1, min(int(workers), (os.cpu_count() or 1) // threads))
    single = timing.stats()["throughput_per_s"]
    return {"batch_size": batch_size, "threads": threads, "workers": parallel, "one_worker_per_s": single,
            "ceiling_per_s": single * parallel}


@dataclass
class RayReport(ServingReport):
    """Ray Serve's measurements, the TorchServe ones (parity, limits, load, metrics, tuning) plus
    the Serve config file and the RayService manifest written for the chosen configuration."""

    serve_config: str = ""
    rayservice: str = ""


def evaluate_rayserve(loaded, run_dir: Path, config, users_levels, duration_s: float, grid: list, tune_users: int,
                      sla_ms: float, parity_count: int = 64, seed: int = 0, num_cpus: int = 2,
                      progress: bool = False) -> RayReport:
    """Serve the model with Ray Serve (local Ray on 127.0.0.1, `num_cpus` CPUs) and measure it as
    TorchServe is measured: live parity, limits, the same locustfile at the same users, Prometheus
    metrics from Ray's endpoint, then the default and the grid of RayConfigs at `tune_users`. Ray
    is shut down before this returns, also on an error or an interrupt. Writes the chosen
    configuration as a Serve config file and a KubeRay RayService manifest."""
    import yaml


    run_dir = Path(run_dir)
    ray_dir = run_dir / "serving" / "rayserve"
    model_dir = write_model_dir(loaded, ray_dir / "model", exported_torchscript(run_dir), seed, config.max_request_size)
    requests = request_images(loaded, parity_count, seed)
    content_type = codec_for(loaded, guarded=False).content_type
    locustfile = run_dir / "serving" / "locustfile.py"
    if not locustfile.exists():
        locustfile = write_locustfile(run_dir, requests, codec_for(loaded, guarded=False).suffix)
    report = RayReport(True, requests=REQUEST_KINDS[codec_for(loaded, guarded=False).kind], model_name="model",
                       served_file=str((model_dir / "model.pt").relative_to(run_dir)),
                       locustfile=str(locustfile.relative_to(run_dir)))
    with RayServer(ray_dir, num_cpus=num_cpus) as server:
        server.deploy(model_dir, config)
        report.parity = live_parity(server, "model", loaded, requests)
        report.limits = [row for row in limits_check(server, "model", requests[0][1], config.max_request_size,
                                                     content_type) if not row["request"].startswith("ping")]
        for users in users_levels:
            row = run_locust(server, "model", locustfile, users, duration_s)
            report.load.append({**row, "workers": config.replicas, "threads": config.threads,
                                "batch_size": config.max_batch_size})
        report.metrics = _ray_metric_rows(server.scrape_metrics())
        default, *tuned = _ray_tune(server, model_dir, locustfile, [DEFAULT_RAY_CONFIG, *grid], tune_users,
                                    duration_s, sla_ms, progress)
    report.default = {**default, "default": True}
    report.tuning = [report.default, *tuned]
    report.chosen = choose(report.tuning)

    chosen = RayConfig(**{k: report.chosen[k] for k in RayConfig.__dataclass_fields__}) if report.chosen else config
    content = serve_config(str(model_dir), chosen)
    report.serve_config = str(write_config_file(ray_dir / "serve_config.yaml", content).relative_to(run_dir))
    manifest, document = ray_dir / "rayservice.yaml", rayservice_manifest(content, chosen)
    problems = validate_rayservice(document)
    if problems:  # never write a manifest that would not apply
        raise Lab2ProdError(f"the RayService manifest does not validate: {'; '.join(problems[:3])}")
    manifest.write_text(yaml.safe_dump(document, sort_keys=False))
    report.rayservice = str(manifest.relative_to(run_dir))
    return report


def _ray_metric_rows(samples: list[dict]) -> list[dict]:
    """Ray Serve's request counters and latency sums for the deployment, one row per metric."""
    totals: dict[str, float] = {}
    for sample in samples:
        name = sample["metric"]
        if any(key in name for key in ("request_counter", "processing_latency_ms_sum", "processing_latency_ms_count",
                                       "num_router_requests", "request_latency_ms_count", "batch_size_count")):
            totals[name] = totals.get(name, 0.0) + float(sample["value"])
    return [{"metric": name, "labels": "all replicas", "value": value} for name, value in sorted(totals.items())]


def side_by_side(ts: ServingReport | None, ray: RayReport | None, ceilings: dict) -> list[dict]:
    """TorchServe and Ray Serve, default and tuned, at the same load and SLA: throughput, P50/P95/P99,
    errors, CPUs used and the share of the in-process ceiling of the same configuration."""
    rows = []
    for server, report in (("TorchServe", ts), ("Ray Serve", ray)):
        if report is None or not report.tuning:
            continue
        for kind, row in (("default", report.default), ("tuned", report.chosen)):
            if row is None:
                continue
            threads = row["threads"] or (os.cpu_count() or 1)  # 0: torch's default, a thread per core
            cpus = row["workers"] * threads  # threads the server runs at once (TorchServe workers, Ray replicas)
            ceiling = ceilings.get((server, kind))
            rows.append({"server": server, "config": kind, "setting": row["config"],
                         "throughput_per_s": row["throughput_per_s"], "p50_ms": row["p50_ms"], "p95_ms": row["p95_ms"],
                         "p99_ms": row["p99_ms"], "error_rate": row["error_rate"], "cpus": cpus,
                         "meets_sla": row["meets_sla"],
                         "share_of_in_process": row["throughput_per_s"] / ceiling["ceiling_per_s"]
                         if ceiling else None})
    return rows


def pick_server(rows: list[dict], sla_ms: float) -> str:
    """One sentence: which server to pick for this model on this machine, and why."""
    tuned = {r["server"]: r for r in rows if r["config"] == "tuned"}
    if len(tuned) < 2:
        return "one server measured: nothing to compare"
    ts, ray = tuned["TorchServe"], tuned["Ray Serve"]
    meeting = [r for r in (ts, ray) if r["meets_sla"]]
    if len(meeting) == 1:
        return (f"pick {meeting[0]['server']}: only it meets p99 <= {sla_ms:g} ms at this load "
                f"({meeting[0]['throughput_per_s']:.0f} req/s)")
    best, other = (ts, ray) if ts["throughput_per_s"] >= ray["throughput_per_s"] else (ray, ts)
    ratio = best["throughput_per_s"] / max(other["throughput_per_s"], 1e-9)
    if best is ts and ratio < 1.25:
        return (f"pick Ray Serve: TorchServe is {ratio:.2f}x faster here ({ts['throughput_per_s']:.0f} vs "
                f"{ray['throughput_per_s']:.0f} req/s), too little to outweigh that TorchServe is in limited "
                "maintenance since 2025 while Ray Serve is maintained and scales out on a Ray cluster")
    return (f"pick {best['server']}: {ratio:.2f}x the throughput of {other['server']} at the same load "
            f"({best['throughput_per_s']:.0f} vs {other['throughput_per_s']:.0f} req/s, p99 {best['p99_ms']:.0f} ms)"
            + ("; note TorchServe is in limited maintenance since 2025" if best is ts else ""))


def rayserve_gates(report: RayReport, sla_ms: float, prob_atol: float = 1e-4) -> list[dict]:
    """rayserve:parity, rayserve:errors, rayserve:sla: TorchServe's gates, for Ray Serve."""

    names = ("rayserve:parity", "rayserve:errors", "rayserve:sla")
    worst_errors = max(r["error_rate"] for r in report.load)
    lowest = min(report.load, key=lambda r: r["users"])
    return [
        gate(names[0], parity_passes(report.parity, prob_atol),
             report.parity.get("max_abs_diff", report.parity.get("max_prob_diff")), prob_atol,
             parity_text(report.parity)),
        gate(names[1], worst_errors == 0, worst_errors, 0.0,
             f"levels {', '.join(str(r['users']) for r in report.load)} users"),
        gate(names[2], lowest["p99_ms"] is not None and lowest["p99_ms"] <= sla_ms, lowest["p99_ms"], sla_ms,
             f"p99 at {lowest['users']} user(s)"),
    ]
