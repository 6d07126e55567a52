"""Load testing with Locust: the locustfile (`lab2prod.servers.locustfile`) and its request images written
into a run folder, headless runs against a server on loopback, percentiles from every request."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from lab2prod.core.errors import Lab2ProdError
from lab2prod.servers.base import Live, ServerConfig, tool_path
from lab2prod.servers.timing import batch_size, parse

__all__ = ["LOCUSTFILE", "LOAD_GENERATOR_LIMIT", "content_type_of", "write_locustfile", "percentile_interval",
           "latency_stats", "phase_means", "mean_batch_size", "LocustRun", "run_locust", "load_sweep"]

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def content_type_of(path: Path) -> str:
    """The Content-Type a request file is sent with: what its folder's CONTENT_TYPE file declares, else JSON
    for .json and raw bytes otherwise."""
    declared = Path(path).parent / "CONTENT_TYPE"
    if declared.exists():
        return declared.read_text().strip()
    return "application/json" if Path(path).suffix == ".json" else "application/octet-stream"


def request_files(folder: Path) -> list[Path]:
    """The request bodies a locustfile folder holds, in order."""
    return sorted(p for p in Path(folder).iterdir() if p.name != "CONTENT_TYPE")


def write_locustfile(run_dir: Path, requests: list[tuple[str, bytes]], suffix: str = ".png",
                     content_type: str = "", folder: str = "serving") -> Path:
    """Save the locustfile and the request bodies (`suffix` .png for images, .json for JSON
    requests) in run_dir/<folder>, for reuse against any host; `content_type`, when given, is what every body
    is sent with (written beside them as CONTENT_TYPE)."""
    serve = Path(run_dir) / folder
    images = serve / "requests"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True, exist_ok=True)
    for i, (_, body) in enumerate(requests):
        (images / f"{i:04d}{suffix}").write_bytes(body)
    if content_type:
        (images / "CONTENT_TYPE").write_text(content_type + "\n")
    path = serve / "locustfile.py"
    shutil.copyfile(LOCUSTFILE, path)
    return path


def percentile_interval(values, q: float = 99.0, draws: int = 300, seed: int = 0) -> tuple[float, float] | None:
    """The bootstrap 95% interval of the q-th percentile of `values` (resampled `draws` times with a fixed
    seed); None with fewer than 20 values, where it says nothing."""
    values = np.asarray(values, dtype=float)
    if values.size < 20:
        return None
    rng = np.random.default_rng(seed)
    chunks = [np.percentile(values[rng.integers(0, values.size, size=(min(50, draws - i), values.size))], q, axis=1)
              for i in range(0, draws, 50)]  # 50 resamples at a time: bounded memory on long runs
    estimates = np.concatenate(chunks)
    return float(np.percentile(estimates, 2.5)), float(np.percentile(estimates, 97.5))


def latency_stats(latencies_ms, ok, seconds: float) -> dict:
    """requests, avg/p50/p95/p99 in ms, error rate and successful requests per second of a set of
    client-side samples (empty: no percentiles and an error rate of 1); the p99 with the number of samples
    it rests on (those at or above it) and its bootstrap 95% interval."""
    latencies = np.asarray(latencies_ms, dtype=float)
    ok = np.asarray(ok, dtype=bool)
    if latencies.size == 0:
        return {"requests": 0, "avg_ms": None, "p50_ms": None, "p95_ms": None, "p99_ms": None,
                "p99_tail_samples": 0, "p99_ci_ms": None, "error_rate": 1.0, "throughput_per_s": 0.0}
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    interval = percentile_interval(latencies)
    return {"requests": int(latencies.size), "avg_ms": float(latencies.mean()), "p50_ms": float(p50),
            "p95_ms": float(p95), "p99_ms": float(p99), "p99_tail_samples": int((latencies >= p99).sum()),
            "p99_ci_ms": list(interval) if interval else None, "error_rate": float(1 - ok.mean()),
            "throughput_per_s": float(ok.sum() / seconds)}


def phase_means(samples: list) -> dict | None:
    """The mean ms of each Server-Timing phase over the successful samples that carry one, the client's mean
    latency over the same samples, and the rest (`network_and_proxy`: client minus the server's phases); None
    when no answer carried the header."""
    timed = [(s[0], parse(s[3])) for s in samples if s[1] and len(s) > 3 and s[3]]
    if not timed:
        return None
    names = list(dict.fromkeys(name for _, phases in timed for name in phases))
    means = {name: float(np.mean([phases.get(name, 0.0) for _, phases in timed])) for name in names}
    client = float(np.mean([latency for latency, _ in timed]))
    return {**means, "network_and_proxy": max(0.0, client - sum(means.values())), "client": client,
            "samples": len(timed)}


def mean_batch_size(samples: list) -> float | None:
    """The mean size of the server batch each successful answer came from (its Server-Timing `batch` entry): how
    full the batches really were; None when no answer said."""
    sizes = [size for s in samples if s[1] and len(s) > 3 and (size := batch_size(s[3])) is not None]
    return float(np.mean(sizes)) if sizes else None


# Locust runs in one process: at this share of a core it, not the server, sets the pace of the level
LOAD_GENERATOR_LIMIT = 0.9


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the finished children this process waited for
    return usage.ru_utime + usage.ru_stime


class LocustRun:
    """Locust running headless in the background against a server (loopback, `users` users spawned at once, for
    `duration_s` seconds): `wait()` returns every request's sample, [latency ms, ok, route label, Server-Timing,
    HTTP status (0: no answer), the wall-clock second it ended], and Locust's share of a core; with `backoff_ms`
    a user refused with 429 or 503 waits that long before its next request, and with `rate_per_user` each user
    sends at most that many requests a second. The process is
    stopped by its pid on `stop()` or when the context ends, also on an error or an interrupt."""

    def __init__(self, server: Live, name: str, locustfile: Path, users: int, duration_s: float,
                 max_requests: int = 20000, routes: list[dict] | None = None, tag: str = "", backoff_ms: float = 0,
                 rate_per_user: float = 0):
        locustfile = Path(locustfile).resolve()  # Locust runs in the serving folder: a relative path would miss
        self.serve = locustfile.parent
        self.duration_s = duration_s
        self.samples_file = self.serve / f"samples_{name}_{users}{tag}.json"
        self.samples_file.unlink(missing_ok=True)
        env = dict(os.environ, LAB2PROD_TOKEN=server.keys["inference"], LAB2PROD_IMAGES=str(self.serve / "requests"),
                   LAB2PROD_MODEL=name, LAB2PROD_SAMPLES=str(self.samples_file),
                   LAB2PROD_MAX_REQUESTS=str(max_requests), LAB2PROD_ROUTES=json.dumps(routes or []),
                   LAB2PROD_BACKOFF_MS=str(backoff_ms), LAB2PROD_RATE_PER_USER=str(rate_per_user))
        command = [tool_path("locust"), "-f", str(locustfile), "--headless", "-u", str(users), "-r", str(users),
                   "--run-time", f"{max(1, int(round(duration_s)))}s", "--host", server.inference_url,
                   "--only-summary", "--stop-timeout", "5", "--loglevel", "ERROR"]
        self.began, self.used = time.monotonic(), _children_cpu_s()
        self.process = subprocess.Popen(command, cwd=self.serve, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> LocustRun:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop Locust if it still runs (by the pid this object started). Safe to call twice."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def wait(self) -> tuple[list, float, float]:
        """(samples, seconds it ran, Locust's share of one core) once Locust has ended."""
        try:
            _, stderr = self.process.communicate(timeout=self.duration_s + 120)
        finally:
            self.stop()
        elapsed = time.monotonic() - self.began
        locust_cpu = (_children_cpu_s() - self.used) / max(elapsed, 1e-9)  # Locust's share of one core
        if not self.samples_file.exists():
            raise Lab2ProdError(f"locust wrote no samples (exit {self.process.returncode}): "
                                f"{(stderr or '').strip()[-300:]}")
        samples = json.loads(self.samples_file.read_text())
        self.samples_file.unlink()
        return samples, elapsed, locust_cpu


def run_locust(server: Live, name: str, locustfile: Path, users: int, duration_s: float,
               max_requests: int = 20000, routes: list[dict] | None = None) -> dict:
    """Run Locust headless against the server (loopback, `users` users spawned at once, for
    `duration_s` seconds) and compute the percentiles from every request's latency. With
    `routes` ([{path, weight, label}]) each request goes to one route drawn by weight, and
    `by_route` holds the same statistics per label, with the raw `latencies_ms`."""
    with LocustRun(server, name, locustfile, users, duration_s, max_requests, routes) as run:
        samples, elapsed, locust_cpu = run.wait()
    seconds = max(min(elapsed, duration_s), 1e-9)
    row = {"users": users, **latency_stats([s[0] for s in samples], [s[1] for s in samples], seconds),
           "locust_cpu": round(locust_cpu, 3), "limited_by_load_generator": locust_cpu >= LOAD_GENERATOR_LIMIT,
           "phases_ms": phase_means(samples), "mean_batch_size": mean_batch_size(samples)}
    if routes:
        row["by_route"] = {}
        for route in routes:
            mine = [s for s in samples if s[2] == route["label"]]
            row["by_route"][route["label"]] = {**latency_stats([s[0] for s in mine], [s[1] for s in mine], seconds),
                                               "latencies_ms": [s[0] for s in mine]}
    return row


def load_sweep(server: Live, name: str, locustfile: Path, config: ServerConfig, users_levels,
               duration_s: float, progress: bool = False) -> list[dict]:
    """One Locust run per number of users, each row tagged with the serving configuration."""
    from tqdm import tqdm

    rows = []
    for users in tqdm(list(users_levels), desc="load", unit="level", disable=not progress):
        row = run_locust(server, name, locustfile, users, duration_s)
        rows.append({**row, "workers": config.workers, "threads": config.threads, "batch_size": config.batch_size})
    return rows
