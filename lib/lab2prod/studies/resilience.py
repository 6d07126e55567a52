"""Resilience: what production does to a service, measured on the real server (the `Resilient` protocol of
lab2prod.servers.base) under Locust load on loopback.

One server after the other is started once (in `run_dir/resilience`) and goes through:

- **cold start**: the seconds from start to the first ready answer, the first request against the warm median, and
  how many requests warm-up takes; the numbers become a Kubernetes startupProbe and readinessProbe;
- **the fuzzed front door, live**: seeded mutations of valid bodies (lab2prod.studies.fuzz) sent to the server;
- **soak**: steady load while the model processes' RSS is sampled; the growth slope is judged by its 95%
  interval, so noise does not fail and growth does;
- **a worker killed under load**: the process that runs the model, found from the server and killed by its pid
  (only a descendant of a process lab2prod started), the failed requests, the seconds until the rate is back, and
  whether the server replaced the worker by itself;
- **an update under load**: v1 replaced by v2 the way the server does it, the failed requests and the seconds
  until every answer comes from v2;
- **overload**: a burst of `overload_factor` x the users, first with the server's own queue, then with the
  queue bounded (`max_queue`), recording answers by status, the p99 of the admitted requests and the seconds
  back to normal.

Every Locust process is stopped by its pid, and every server by the context that started it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.progress import Counter as ProgressCounter
from lab2prod.core.results import gate, load_results
from lab2prod.core.schema import Measure, Results, described
from lab2prod.kinds.codec import codec_for
from lab2prod.models.requests import request_bodies
from lab2prod.servers.base import Server, ServerConfig, queue_bound
from lab2prod.servers.frontdoor import FrontDoor, audit_config, client_keys, haproxy_binary, write_config
from lab2prod.servers.loadtest import LocustRun, write_locustfile
from lab2prod.servers.timing import version_of
from lab2prod.studies.fuzz import fuzz_codec, mutations

__all__ = ["MAX_USERS", "MAX_SECONDS", "ResilienceResults", "Settings", "check_bounds", "slope_interval",
           "tuned_config", "rate_buckets", "recovery_seconds", "probes", "write_probes", "in_process_fuzz", "evaluate",
           "gates_of", "summary_rows", "plot_timeline", "results"]

MAX_USERS = 512  # Locust users in one process on loopback: beyond this the load generator, not the server, is measured
MAX_SECONDS = 3600  # a soak or a phase longer than an hour belongs to a load-test job, not a run
BUCKET_S = 0.5  # width of the timeline's buckets
# In a burst a refused user waits this long before its next request, as a client that honours 503 does: retried at
# once, thousands of refusals a second would measure the load generator's loop, not the server's queue
BURST_BACKOFF_MS = 100
# The flooder sends this many times its limit: well past it, yet not so many refusals that the load generator, on
# the same cores as the server, is what the other client waits for (a real flood comes from other machines)
FLOOD_FACTOR = 3


@dataclass(kw_only=True)
class ResilienceResults(Results):
    """What its notebook records under results/resilience.json; the schema is derived from these fields."""

    study: ClassVar[str] = "resilience"
    measures: ClassVar[tuple[Measure, ...]] = ()

    backends: list = described("the servers measured")
    settings: dict = described("users, burst, durations and bounds the study ran with")
    servers: dict = described("per server: cold start, live fuzz, soak, recovery, update and overload, each with "
                              "its numbers, and the timeline of every phase")
    in_process_fuzz: dict = described("the mutations sent through the guard in process (this run's security "
                                      "study's, else sent here)")


@dataclass(frozen=True)
class Settings:
    """What the study runs with; `check_bounds` refuses what would exceed the machine before anything starts."""

    users: int = 8
    overload_factor: int = 4
    soak_s: float = 10.0
    phase_s: float = 20.0
    burst_s: float = 5.0
    fuzz_requests: int = 1000
    fuzz_mutations: int = 10000
    sla_ms: float = 100.0
    cold_start_max_s: float = 120.0
    soak_max_kb_per_request: float = 2.0
    overload_p99_factor: float = 5.0
    recovery_max_s: float = 20.0
    rate_limit_per_s: int = 0  # each client's limit at the front door; 0: a third of the rate the soak answered

    @property
    def burst_users(self) -> int:
        return self.users * self.overload_factor


def check_bounds(settings: Settings) -> Settings:
    """`settings`, or a one-line Lab2ProdError naming the bound a value exceeds and the fix."""
    if settings.burst_users > MAX_USERS:
        raise Lab2ProdError(f"users={settings.users} x overload_factor={settings.overload_factor} = "
                            f"{settings.burst_users} Locust users, over the bound of {MAX_USERS} one load generator "
                            f"on this machine can drive; lower users or overload_factor")
    for name in ("soak_s", "phase_s", "burst_s"):
        if getattr(settings, name) > MAX_SECONDS:
            raise Lab2ProdError(f"{name}={getattr(settings, name):g} s is over the bound of {MAX_SECONDS} s; run a "
                                "longer soak as its own load-test job against the deployment")
    if settings.phase_s < 5:
        raise Lab2ProdError(f"phase_s={settings.phase_s:g} leaves no time to kill a worker and see it come back; "
                            "use at least 5")
    return settings


# ---------------------------------------------------------------- measurements


def slope_interval(times_s, values_mb) -> dict:
    """The least-squares growth of `values_mb` over `times_s` in MB per minute with its 95% interval (normal
    approximation of the slope's standard error) and the samples it rests on; None values with under 5 samples."""
    t, y = np.asarray(times_s, dtype=float), np.asarray(values_mb, dtype=float)
    if t.size < 5 or np.ptp(t) <= 0:
        return {"mb_per_min": None, "ci_mb_per_min": None, "samples": int(t.size)}
    centered = t - t.mean()
    slope = float((centered * (y - y.mean())).sum() / (centered ** 2).sum())
    residuals = y - (y.mean() + slope * centered)
    se = math.sqrt(float((residuals ** 2).sum()) / (t.size - 2) / float((centered ** 2).sum()))
    return {"mb_per_min": slope * 60, "ci_mb_per_min": [(slope - 1.96 * se) * 60, (slope + 1.96 * se) * 60],
            "samples": int(t.size)}


def rate_buckets(samples: list, t0: float, end: float, width: float = BUCKET_S) -> list[dict]:
    """Answered and failed requests per second in buckets of `width` seconds from `t0` to `end` (wall clock; a
    sample's time is when it ended)."""
    count = max(1, int(math.ceil((end - t0) / width)))
    ok, failed = np.zeros(count), np.zeros(count)
    for sample in samples:
        index = int((sample[5] - t0) // width)
        if 0 <= index < count:
            (ok if sample[1] else failed)[index] += 1
    return [{"t": round(i * width, 3), "ok_per_s": float(ok[i] / width), "failed_per_s": float(failed[i] / width)}
            for i in range(count)]


def recovery_seconds(samples: list, event: float, before_rate: float, end: float, share: float = 0.6,
                     width: float = 1.0) -> float | None:
    """Seconds from `event` until the answered rate stays at `share` of `before_rate` or more with no failure, in
    buckets of `width` seconds up to `end` (the last, partial bucket left out); None when it never does."""
    buckets = rate_buckets(samples, event, end - width, width)
    good = [b["ok_per_s"] >= share * before_rate and b["failed_per_s"] == 0 for b in buckets]
    for index in range(len(good)):
        if all(good[index:]):
            return index * width
    return None


class _RssSampler:
    """The RSS of the model's processes every `every` seconds in a thread; the pids asked from the server again
    every `refresh` seconds (a killed worker is replaced by a new pid)."""

    def __init__(self, live, every: float = 0.25, refresh: float = 2.0):
        import psutil

        self.psutil, self.live, self.every, self.refresh = psutil, live, every, refresh
        self.rows: list[tuple[float, float, tuple[int, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pids, asked = (), 0.0
        while not self._stop.is_set():
            now = time.time()
            if now - asked >= self.refresh:
                try:
                    pids, asked = tuple(self.live.model_pids()), now
                except Exception:  # a server in the middle of replacing a worker: ask again next round
                    asked = now
            total = 0.0
            for pid in pids:
                try:
                    total += self.psutil.Process(pid).memory_info().rss / 2**20
                except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                    pass
            if pids:
                self.rows.append((now, total, pids))
            self._stop.wait(self.every)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _timed(live, body: bytes, content_type: str) -> tuple[int, float, bytes]:
    began = time.perf_counter()
    status, payload = live.predict(live.model, body, content_type=content_type)
    return status, (time.perf_counter() - began) * 1000, payload


def probes(start_s: float, period_s: int = 5) -> dict:
    """Kubernetes probes from a measured start: a startupProbe whose failureThreshold x periodSeconds covers
    twice the start, and a readinessProbe that follows it (ready only once the model answers)."""
    threshold = max(1, math.ceil(2 * start_s / period_s))
    return {"startupProbe": {"periodSeconds": period_s, "failureThreshold": threshold, "timeoutSeconds": 5},
            "readinessProbe": {"periodSeconds": period_s, "failureThreshold": 3, "timeoutSeconds": 5},
            "covers_s": threshold * period_s}


def _cold_start(began: float, live, bodies: list[bytes], content_type: str, warm: int = 30) -> dict:
    status, first_ms, _ = _timed(live, bodies[0], content_type)
    start_s = time.monotonic() - began
    series = [_timed(live, bodies[i % len(bodies)], content_type)[1] for i in range(1, warm + 1)]
    p50 = statistics.median(series[len(series) // 2:])  # the second half: warm by then
    everything = [first_ms, *series]
    warmup = next((i for i, ms in enumerate(everything) if ms <= 2 * p50), len(everything))
    return {"start_s": start_s, "first_status": status, "first_ms": first_ms, "warm_p50_ms": p50,
            "first_over_warm": first_ms / max(p50, 1e-9), "warmup_requests": warmup,
            "warm_samples": len(series) - len(series) // 2, **probes(start_s)}


def _fuzz_live(live, good: list[bytes], content_type: str, count: int, seed: int) -> dict:
    """`count` mutations of the valid bodies sent to the live server: answers by status, server errors, refusals
    without a reason, and whether a good request is still answered afterwards."""
    statuses: dict[str, int] = {}
    without_reason, server_errors, first_errors = 0, 0, []
    for kind, body in mutations(good, count, seed):
        status, payload = live.predict(live.model, body, content_type=content_type)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status == 0 or status >= 500:
            server_errors += 1
            if len(first_errors) < 5:
                first_errors.append({"mutation": kind, "status": status, "body_head": body[:48].hex(),
                                     "answer": payload[:120].decode(errors="replace")})
        elif status != 200:
            try:
                answer = json.loads(payload)
                reason = answer.get("rejected") or answer.get("message") if isinstance(answer, dict) else None
            except (ValueError, UnicodeDecodeError):
                reason = None
            without_reason += not reason
    status, _ = live.predict(live.model, good[0], content_type=content_type)
    return {"requests": count, "by_status": dict(sorted(statuses.items())), "server_errors": server_errors,
            "refusals_without_reason": without_reason, "good_after": status == 200, "first_errors": first_errors}


def _load(live, locustfile: Path, users: int, seconds: float, tag: str, during=None, backoff_ms: float = 0) -> tuple:
    """Locust for `seconds` at `users`, calling `during()` while it runs: (samples, start, end, what `during`
    returned), times on the wall clock."""
    began = time.time()
    with LocustRun(live, live.model, locustfile, users, seconds, max_requests=0, tag=tag,
                   backoff_ms=backoff_ms) as run:
        outcome = during() if during else None
        samples, _, _ = run.wait()
    return samples, began, time.time(), outcome


def _soak(live, locustfile: Path, users: int, seconds: float, sampler: _RssSampler) -> dict:
    samples, began, ended, _ = _load(live, locustfile, users, seconds, "_soak")
    rows = [r for r in sampler.rows if began + 0.25 * (ended - began) <= r[0] <= ended]  # the first quarter warms
    pids = rows[-1][2] if rows else ()
    rows = [r for r in rows if r[2] == pids]
    fit = slope_interval([r[0] - began for r in rows], [r[1] for r in rows])
    ok = [s for s in samples if s[1]]
    rate = len(ok) / max(ended - began, 1e-9)
    per_request = fit["mb_per_min"] * 1024 / (rate * 60) if fit["mb_per_min"] is not None and rate else None
    interval = [v * 1024 / (rate * 60) for v in fit["ci_mb_per_min"]] if per_request is not None else None
    return {"seconds": ended - began, "users": users, "requests": len(samples), "failed": len(samples) - len(ok),
            "rss_start_mb": rows[0][1] if rows else None, "rss_end_mb": rows[-1][1] if rows else None, **fit,
            "kb_per_request": per_request, "ci_kb_per_request": interval,
            "p99_ms": float(np.percentile([s[0] for s in ok], 99)) if ok else None,
            "timeline": rate_buckets(samples, began, ended), "t": (began, ended)}


def _soak_confirmed(live, locustfile: Path, users: int, seconds: float, sampler: _RssSampler,
                    max_kb_per_request: float) -> dict:
    """A soak, and a second one right after when the first grew past the bound: a leak grows in both windows,
    while an allocator's warm-up (on a large model, a step of a few MB that then holds) grows in the first
    only. The second window is the one judged; the first is kept beside it."""
    first = _soak(live, locustfile, users, seconds, sampler)
    if first["ci_kb_per_request"] is None or first["ci_kb_per_request"][0] <= max_kb_per_request:
        return first
    second = _soak(live, locustfile, users, seconds, sampler)
    second["first_window"] = {key: first[key] for key in ("seconds", "requests", "kb_per_request",
                                                            "ci_kb_per_request", "mb_per_min")}
    return second


def _descendant(pid: int, roots: list[int]) -> bool:
    import psutil

    try:
        return any(parent.pid in roots for parent in psutil.Process(pid).parents())
    except psutil.NoSuchProcess:
        return False


def _recovery(live, locustfile: Path, users: int, seconds: float, kill_at: float = 3.0) -> dict:
    before = live.model_pids()
    roots = live.own_pids()
    victims = [pid for pid in before if _descendant(pid, roots)]
    if not victims:
        raise Lab2ProdError(f"no model process of {before} descends from the processes lab2prod started ({roots}); "
                            "nothing is killed")
    victim, moments = victims[0], {}

    def kill():
        time.sleep(kill_at)
        moments["kill"] = time.time()
        os.kill(victim, signal.SIGKILL)  # the worker lab2prod's server started, by its pid
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                now = [p for p in live.model_pids() if p != victim]
            except Exception:
                now = []
            if now and len(now) >= len(before):
                moments["replaced"] = time.time()
                return now
            time.sleep(0.25)
        return []

    samples, began, ended, after = _load(live, locustfile, users, seconds, "_kill", kill)
    event = moments["kill"]
    before_ok = [s for s in samples if s[1] and began + 1.5 <= s[5] <= event]
    before_rate = len(before_ok) / max(event - (began + 1.5), 1e-9)
    window = [s for s in samples if s[5] >= event]
    failed = sum(not s[1] for s in window)
    recovered = recovery_seconds(samples, event, before_rate, ended)
    answered = sum(s[1] for s in samples)
    return {"killed_pid": victim, "replaced_by": after, "replaced": bool(after),
            "replaced_s": moments["replaced"] - event if "replaced" in moments else None,
            "requests": len(samples), "failed": sum(not s[1] for s in samples), "failed_after_kill": failed,
            "rate_before_per_s": before_rate, "recovered_s": recovered,
            "availability_pct": 100.0 * answered / max(len(samples), 1),
            "timeline": rate_buckets(samples, began, ended), "t": (began, ended), "kill_at": event - began}


def _update(live, locustfile: Path, users: int, seconds: float, version: str = "2.0", switch_at: float = 2.0) -> dict:
    moments = {}

    def switch():
        time.sleep(switch_at)
        moments["switch"] = time.time()
        live.update(version)
        moments["done"] = time.time()

    samples, began, ended, _ = _load(live, locustfile, users, seconds, "_update", switch)
    if moments["done"] > ended - 2.0:  # a slow switch ended with the load: a short extension sees its answers
        more, _, ended, _ = _load(live, locustfile, users, 3.0, "_update_more")
        samples += more
    event = moments["switch"]
    after = [s for s in samples if s[5] >= event]
    old = [s for s in after if s[1] and version_of(s[3]) != version]
    new = [s for s in after if s[1] and version_of(s[3]) == version]
    return {"version": version, "requests": len(samples), "failed": sum(not s[1] for s in samples),
            "failed_during_switch": sum(not s[1] for s in after),
            "failed_statuses": sorted({s[4] for s in after if not s[1]}), "answers_from_new": len(new),
            "switch_s": moments["done"] - event,
            "all_new_after_s": (max(s[5] for s in old) - event) if old else 0.0 if new else None,
            "timeline": rate_buckets(samples, began, ended), "t": (began, ended), "switch_at": event - began}


def _by_status(samples: list) -> dict[str, int]:
    """How many samples got each HTTP status (0: no answer), in the order they first came."""
    return dict(Counter(str(s[4]) for s in samples))


def _paced(client, path: str, body: bytes, content_type: str, count: int, per_s: float) -> list[tuple[int, float]]:
    """`count` requests of one client at most `per_s` a second: (status, ms) each."""
    out = []
    for _ in range(count):
        began = time.perf_counter()
        status, _, ms = client.post(path, body, content_type)
        out.append((status, ms))
        time.sleep(max(0.0, 1.0 / per_s - (time.perf_counter() - began)))
    return out


def _tls(door, path: str, body: bytes, content_type: str, samples: int = 40) -> dict:
    """What the front door's TLS does: a client that verifies the generated certificate is answered, one that trusts
    only the machine's store is refused, plain HTTP to the TLS port gets no answer; and the latency cost, measured
    interleaved on the same door, with the connection kept (TLS's record cost) and new per request (its handshake)."""
    verified = door.client("tls_kept").post(path, body, content_type)
    untrusted = door.client("tls_new", verify=False).post(path, body, content_type)
    plain_to_tls = door.client("plain_kept", tls=False, port=door.port)
    plain_status = plain_to_tls.post(path, body, content_type)[0]
    plain_to_tls.close()
    modes = {"tls_kept": door.client("tls_kept"), "tls_new": door.client("tls_new", keep_alive=False),
             "plain_kept": door.client("plain_kept", tls=False),
             "plain_new": door.client("plain_new", tls=False, keep_alive=False)}
    timings: dict[str, list[float]] = {mode: [] for mode in modes}
    every = 2.0 / door.rate_per_s  # each mode has its own key: half its rate keeps the limit out of the numbers
    for _ in range(samples):
        began = time.perf_counter()
        for mode, client in modes.items():
            status, _, ms = client.post(path, body, content_type)
            if status == 200:
                timings[mode].append(ms)
        time.sleep(max(0.0, every - (time.perf_counter() - began)))
    for client in modes.values():
        client.close()
    p50 = {mode: float(np.median(ms)) if ms else None for mode, ms in timings.items()}
    cost = (p50["tls_kept"] - p50["plain_kept"]) if None not in (p50["tls_kept"], p50["plain_kept"]) else None
    handshake = (p50["tls_new"] - p50["plain_new"]) if None not in (p50["tls_new"], p50["plain_new"]) else None
    return {"verified_status": verified[0], "untrusted_refused": untrusted[0] == 0,
            "untrusted_error": untrusted[1][:120].decode(errors="replace"), "plain_refused": plain_status == 0,
            "p50_ms": p50, "samples": {mode: len(ms) for mode, ms in timings.items()},
            "cost_ms": cost, "handshake_ms": handshake}


def _rate_limit(door, locustfile: Path, path: str, body: bytes, content_type: str, users: int, seconds: float,
                sla_ms: float) -> dict:
    """One client floods the front door (Locust, `users` users, its own key, `FLOOD_FACTOR` x its limit) while
    another sends a quarter of the limit per second with its own: the flooder's answers by status and its admitted
    rate against the limit, the reason a 429 carries, and the other client's refusals and p99 against the SLA."""
    flooder = SimpleNamespace(keys={"inference": door.keys["flooder"]}, inference_url=door.url, model=door.live.model)
    steady = door.client("steady")
    per_s = max(1.0, door.rate_per_s / 4)
    began = time.time()
    with LocustRun(flooder, door.live.model, locustfile, users, seconds, max_requests=0, tag="_flood",
                   rate_per_user=FLOOD_FACTOR * door.rate_per_s / users) as run:
        time.sleep(min(1.0, seconds / 4))  # the flood first fills its limit
        prober = door.client("flooder")
        for _ in range(200):  # the flooder's own key, until one request lands past its limit
            probe = prober.post(path, body, content_type)
            if probe[0] == 429:
                break
        prober.close()
        calm = _paced(steady, path, body, content_type, max(5, int(per_s * (seconds - 1.5))), per_s)
        samples, _, _ = run.wait()
    ended = time.time()
    steady.close()
    statuses = _by_status(samples)
    window = max(ended - began, 1e-9)
    try:
        reason = json.loads(probe[1]).get("code") if probe[0] == 429 else None
    except ValueError:
        reason = None
    answered = [ms for status, ms in calm if status == 200]
    return {"limit_per_s": door.rate_per_s, "flooder_users": users, "flooder_by_status": statuses,
            "flooder_admitted_per_s": statuses.get("200", 0) / window, "flooder_refused": statuses.get("429", 0),
            "refusal_code": reason, "steady_per_s": per_s, "steady_requests": len(calm),
            "steady_refused": len(calm) - len(answered),
            "steady_p99_ms": float(np.percentile(answered, 99)) if answered else None,
            "steady_p50_ms": float(np.median(answered)) if answered else None, "sla_ms": sla_ms,
            "timeline": rate_buckets(samples, began, ended), "t": (began, ended)}


def _front_door(live, run_dir: Path, name: str, locustfile: Path, settings: Settings, rate_per_s: int,
                body: bytes, content_type: str) -> dict:
    """HAProxy in front of the live server (lab2prod.servers.frontdoor): TLS checked and its cost measured, then
    the per-client rate limit under a flood; the deployment's own front door config (TLS only, the measured
    limit) written to frontdoor/<server>/haproxy.cfg and audited."""
    folder = Path(run_dir) / "resilience" / f"{name}-frontdoor"
    path = f"/predictions/{live.model}"
    with FrontDoor(live, folder, ["tls_kept", "tls_new", "plain_kept", "plain_new", "flooder", "steady"],
                   rate_per_s) as door:
        tls = _tls(door, path, body, content_type)
        limited = _rate_limit(door, locustfile, path, body, content_type, settings.users, settings.burst_s,
                              settings.sla_ms)
    backend = live.inference_url.split("://", 1)[-1]
    deployed = write_config(Path(run_dir) / "frontdoor" / name, backend, client_keys(["client"]), rate_per_s)
    return {"tls": tls, "rate_limit": limited, "config": str(deployed.config.relative_to(run_dir)),
            "audit": audit_config(deployed.config), "t": limited.pop("t")}


def _back_to_normal(live, body: bytes, content_type: str, warm_p50_ms: float, limit_s: float = 30.0) -> float | None:
    """Seconds after a burst until three answers in a row take at most twice the warm median; None past limit_s."""
    began, streak = time.monotonic(), 0
    while time.monotonic() - began < limit_s:
        status, ms, _ = _timed(live, body, content_type)
        streak = streak + 1 if status == 200 and ms <= 2 * warm_p50_ms else 0
        if streak >= 3:
            return time.monotonic() - began
    return None


def _burst(live, locustfile: Path, settings: Settings, users: int, label: str, body: bytes, content_type: str,
           warm_p50_ms: float) -> dict:
    samples, began, ended, _ = _load(live, locustfile, users, settings.burst_s, f"_{label}",
                                     backoff_ms=BURST_BACKOFF_MS)
    timeout_ms = 10 * settings.sla_ms  # a client's patience: over it, the request counts as timed out
    statuses = _by_status(samples)
    admitted = [s[0] for s in samples if s[1]]
    return {"queue": label, "users": users, "requests": len(samples), "by_status": statuses,
            "admitted": len(admitted), "refused_fast": sum(1 for s in samples if s[4] in (429, 503)),
            "timed_out": sum(1 for s in samples if s[4] == 0 or s[0] > timeout_ms), "timeout_ms": timeout_ms,
            "server_errors": sum(1 for s in samples if s[4] >= 500 and s[4] != 503),
            "admitted_p99_ms": float(np.percentile(admitted, 99)) if admitted else None,
            "admitted_p99_samples": max(1, len(admitted) // 100) if admitted else 0,
            "back_to_normal_s": _back_to_normal(live, body, content_type, warm_p50_ms),
            "timeline": rate_buckets(samples, began, ended), "t": (began, ended)}


def tuned_config(run_dir: Path, name: str, fallback: ServerConfig) -> tuple[ServerConfig, str]:
    """The configuration the serving study chose for server `name` in this run (its workers, threads, batching,
    mode and artifact), else `fallback`; with where it came from."""
    serving = load_results(run_dir)[0].get("serving") or {}
    chosen = ((serving.get("servers") or {}).get(name) or {}).get("chosen_config")
    if not chosen:
        return fallback, "the notebook's workers and threads (no tuned configuration of this server in the run)"
    fields = {k: v for k, v in chosen.items() if k in ServerConfig.__dataclass_fields__}
    return replace(fallback, **fields), "the serving study's tuned configuration"


def in_process_fuzz(run_dir: Path, loaded, count: int, seed: int = 0) -> dict:
    """This run's security study's fuzz when it sent at least `count` mutations of this model's requests, else
    `count` mutations of the held-out request bodies sent through the guard here."""
    recorded = (load_results(run_dir)[0].get("security") or {}).get("fuzz") or {}
    if recorded.get("mutations", 0) >= count:
        return {**recorded, "source": "security study"}
    good = [body for _, body in request_bodies(loaded, 64, seed)]
    return {**fuzz_codec(codec_for(loaded), good, count, seed).summary(), "source": "resilience study"}


def write_probes(run_dir: Path, name: str, cold_start: dict) -> str:
    """resilience/<name>-probes.yaml: the container probes of a Deployment from the measured cold start (paste
    them into the container of the serving study's manifest); the path relative to run_dir."""
    import yaml

    path = Path(run_dir) / "resilience" / f"{name}-probes.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    comment = (f"# measured: ready {cold_start['start_s']:.1f} s after start; the startupProbe allows "
               f"{cold_start['covers_s']} s (twice that), and readiness follows once the model answers\n")
    body = {k: {**v, "httpGet": {"path": "/ping", "port": "http"}} for k, v in cold_start.items()
            if k in ("startupProbe", "readinessProbe")}
    path.write_text(comment + yaml.safe_dump(body, sort_keys=False))
    return str(path.relative_to(run_dir))


def _answered_rate(out: dict, warm_p50_ms: float) -> float:
    """The rate the soak answered, the server's capacity at `users`; without a soak, one request at a time at the
    warm median."""
    soak = out.get("soak")
    return (soak["requests"] - soak["failed"]) / max(soak["seconds"], 1e-9) if soak else 1000 / max(warm_p50_ms, 1e-3)


def _rate_limit_of(out: dict, warm_p50_ms: float) -> int:
    """Each client's limit when none is set: a third of the rate the soak answered, so that one client at its
    limit leaves the server room to answer the others within the SLA (at half, a 22M-parameter encoder's other
    client missed its 100 ms p99 on 2 cores: 110 ms)."""
    return max(1, int(_answered_rate(out, warm_p50_ms) / 3))


def _relative(phase: dict, t0: float) -> dict:
    """A phase with its wall-clock window made relative to the server's start (for the timeline)."""
    began, ended = phase.pop("t")
    return {**phase, "began_s": began - t0, "ended_s": ended - t0}


def evaluate(server: Server, loaded, run_dir: Path, config: ServerConfig, settings: Settings, seed: int = 0,
             progress: bool = False) -> dict:
    """Start `server` once in run_dir/resilience with the configuration the serving study chose for it in this run
    (else `config`) and run every phase (module docstring); the server is stopped before this returns, also on an
    error or an interrupt. Phases the server cannot run (its live object lacks a `Resilient` method) are left out
    with the reason."""
    server.check()
    check_bounds(settings)
    run_dir = Path(run_dir)
    lab = codec_for(loaded, guarded=False)
    requests = request_bodies(loaded, 64, seed)
    good = [body for _, body in requests]
    locustfile = write_locustfile(run_dir, requests, lab.suffix, lab.content_type, folder="resilience")
    config, source = tuned_config(run_dir, server.name, config)
    # half the CPUs reserved for the workers: room for a rolling update to place the new version beside the old;
    # the queue as the server has it by default (the overload phase bounds it)
    config = replace(config, cpus_per_worker=1.0 / max(config.workers, 1), max_queue=0)
    out: dict = {"server": server.name, "title": server.title, "config": config.__dict__ | {}, "config_source": source}
    phases = ProgressCounter(7, server.title, "phase", show=progress)
    began = time.monotonic()
    with server.serve(loaded, run_dir, config, seed, folder="resilience") as live:
        t0 = time.time()
        out["cold_start"] = _cold_start(began, live, good, lab.content_type)
        phases.update()
        out["fuzz"] = _fuzz_live(live, good, lab.content_type, settings.fuzz_requests, seed)
        phases.update()
        resilient = all(callable(getattr(live, name, None)) for name in ("model_pids", "own_pids", "update"))
        if resilient:
            with _RssSampler(live) as sampler:
                out["soak"] = _relative(_soak_confirmed(live, locustfile, settings.users, settings.soak_s, sampler,
                                                        settings.soak_max_kb_per_request), t0)
                phases.update()
                out["recovery"] = _relative(_recovery(live, locustfile, settings.users, settings.phase_s), t0)
                phases.update()
                out["update"] = _relative(_update(live, locustfile, settings.users, settings.phase_s), t0)
                phases.update()
            out["rss"] = [{"t": r[0] - t0, "mb": r[1]} for r in sampler.rows]
        else:
            out["skipped"] = f"{server.title} does not report its model processes or update in place here"
            phases.update(3)
        warm = out["cold_start"]["warm_p50_ms"]
        rate = settings.rate_limit_per_s or _rate_limit_of(out, warm)
        try:
            haproxy_binary()
        except Lab2ProdError as exc:
            out["front_door_skipped"] = str(exc)
        else:
            out["front_door"] = _relative(_front_door(live, run_dir, server.name, locustfile, settings, rate, good[0],
                                                      lab.content_type), t0)
        phases.update()
        bound = queue_bound(_answered_rate(out, warm), settings.sla_ms, config.workers, config.batch_size)
        # closed-loop users hold one request each: past twice the bound and what the workers hold, it overflows
        users = min(MAX_USERS, max(settings.burst_users, 2 * (bound + config.workers * config.batch_size)))
        overload = [_relative(_burst(live, locustfile, settings, users, "server default", good[0], lab.content_type,
                                     warm), t0)]
        live.deploy(replace(config, max_queue=bound))
        overload.append(_relative(_burst(live, locustfile, settings, users, f"bounded at {bound}", good[0],
                                         lab.content_type, warm), t0))
        out["overload"] = overload
        out["queue_bound"] = bound
        phases.update()
    phases.close()
    return out


# ---------------------------------------------------------------- gates and tables


def _worst(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def gates_of(servers: dict, settings: Settings, in_process: dict) -> list[dict]:
    """The resilience gates, each over every server measured (its value the worst server's, its detail each
    server's numbers)."""
    named = list(servers.values())

    def each(text):
        return "; ".join(f"{s['title']}: {text(s)}" for s in named)

    gates = []
    cold = [s["cold_start"] for s in named]
    started = all(c["first_status"] == 200 and c["start_s"] <= settings.cold_start_max_s for c in cold)
    gates.append(gate("resilience:cold_start", started,
                      _worst([c["start_s"] for c in cold]), settings.cold_start_max_s,
                      each(lambda s: f"ready in {s['cold_start']['start_s']:.1f} s, first answer "
                                     f"{s['cold_start']['first_ms']:.0f} ms vs warm p50 "
                                     f"{s['cold_start']['warm_p50_ms']:.1f} ms; startupProbe covers "
                                     f"{s['cold_start']['covers_s']} s")))

    def bounded(s):
        return s["overload"][-1]

    limit = settings.overload_p99_factor * settings.sla_ms
    over_ok = [bounded(s)["timed_out"] == 0 and bounded(s)["server_errors"] == 0
               and (bounded(s)["admitted_p99_ms"] or math.inf) <= limit and bounded(s)["back_to_normal_s"] is not None
               for s in named]
    gates.append(gate("resilience:overload", all(over_ok), _worst([bounded(s)["admitted_p99_ms"] for s in named]),
                      limit, each(lambda s: f"{s['overload'][-1]['users']} users, queue {s['overload'][-1]['queue']}: "
                                            f"{s['overload'][-1]['refused_fast']} refused fast, "
                                            f"{s['overload'][-1]['timed_out']} timed out, admitted p99 "
                                            f"{_ms(s['overload'][-1]['admitted_p99_ms'])}; server default queue: "
                                            f"admitted p99 {_ms(s['overload'][0]['admitted_p99_ms'])}")))
    measured = [s for s in named if "recovery" in s]
    reason = "; ".join(s.get("skipped", "") for s in named if "recovery" not in s)
    if not measured:
        for name in ("recovery", "soak", "update"):
            gates.append(gate(f"resilience:{name}", False, None, None, reason, skipped=True))
    else:
        rec = [s["recovery"] for s in measured]
        gates.append(gate("resilience:recovery", all(r["replaced"] and r["recovered_s"] is not None
                                                     and r["recovered_s"] <= settings.recovery_max_s for r in rec),
                          _worst([r["recovered_s"] if r["recovered_s"] is not None else math.inf for r in rec]),
                          settings.recovery_max_s,
                          "; ".join(f"{s['title']}: worker {s['recovery']['killed_pid']} killed, "
                                    f"{'replaced' if s['recovery']['replaced'] else 'NOT replaced'}, "
                                    f"{s['recovery']['failed_after_kill']} failed, back in "
                                    f"{_seconds(s['recovery']['recovered_s'])}, availability "
                                    f"{s['recovery']['availability_pct']:.2f}%" for s in measured)))
        soak = [s["soak"] for s in measured]
        gates.append(gate("resilience:soak", all(k["ci_kb_per_request"] is not None
                                                 and k["ci_kb_per_request"][0] <= settings.soak_max_kb_per_request
                                                 for k in soak),
                          _worst([k["kb_per_request"] for k in soak]), settings.soak_max_kb_per_request,
                          "; ".join(f"{s['title']}: RSS {_slope(s['soak'])} over {s['soak']['seconds']:.0f} s "
                                    f"({s['soak']['samples']} samples)" for s in measured)))
        upd = [s["update"] for s in measured]
        gates.append(gate("resilience:update", all(u["failed_during_switch"] == 0 and u["answers_from_new"] > 0
                                                   and u["all_new_after_s"] is not None for u in upd),
                          _worst([u["failed_during_switch"] for u in upd]), 0,
                          "; ".join(f"{s['title']}: {s['update']['failed_during_switch']} failed during the switch, "
                                    f"every answer from v{s['update']['version']} after "
                                    f"{_seconds(s['update']['all_new_after_s'])}" for s in measured)))
    doors = [s for s in named if "front_door" in s]
    if not doors:
        reason = "; ".join(s.get("front_door_skipped", "") for s in named)
        gates += [gate(f"resilience:{name}", False, None, None, reason, skipped=True) for name in ("rate_limit", "tls")]
    else:
        limits = [s["front_door"]["rate_limit"] for s in doors]
        gates.append(gate("resilience:rate_limit", all(_limited(r) for r in limits),
                          _worst([r["steady_p99_ms"] if r["steady_p99_ms"] is not None else math.inf for r in limits]),
                          settings.sla_ms,
                          "; ".join(f"{s['title']}: flooder ({s['front_door']['rate_limit']['flooder_users']} users) "
                                    f"admitted {s['front_door']['rate_limit']['flooder_admitted_per_s']:.0f}/s of a "
                                    f"limit of {s['front_door']['rate_limit']['limit_per_s']}/s, "
                                    f"{s['front_door']['rate_limit']['flooder_refused']} answered 429 "
                                    f"({s['front_door']['rate_limit']['refusal_code'] or 'no reason code'}); the "
                                    f"other client: {s['front_door']['rate_limit']['steady_refused']} refused, p99 "
                                    f"{_ms(s['front_door']['rate_limit']['steady_p99_ms'])}" for s in doors)))
        tls = [s["front_door"]["tls"] for s in doors]
        gates.append(gate("resilience:tls", all(t["verified_status"] == 200 and t["untrusted_refused"]
                                                and t["plain_refused"] for t in tls)
                          and all(r["passed"] for s in doors for r in s["front_door"]["audit"]),
                          _worst([t["cost_ms"] for t in tls]), None,
                          "; ".join(f"{s['title']}: verified {s['front_door']['tls']['verified_status']}, untrusted "
                                    f"{'refused' if s['front_door']['tls']['untrusted_refused'] else 'ACCEPTED'}, "
                                    f"plain HTTP {'refused' if s['front_door']['tls']['plain_refused'] else 'ANSWERED'}"
                                    f"; TLS costs {_ms_fine(s['front_door']['tls']['cost_ms'])} per request on a kept "
                                    f"connection, {_ms_fine(s['front_door']['tls']['handshake_ms'])} with a handshake "
                                    f"each" for s in doors)))
    live_bad = [s["fuzz"]["server_errors"] + s["fuzz"]["refusals_without_reason"] + (not s["fuzz"]["good_after"])
                for s in named]
    in_bad = in_process.get("crashes", 0) + in_process.get("refusals_without_code", 0) \
        + in_process.get("not_finite_accepted", 0)
    gates.append(gate("resilience:fuzz", not in_bad and not any(live_bad)
                      and in_process.get("mutations", 0) >= settings.fuzz_mutations
                      and all(s["fuzz"]["requests"] >= settings.fuzz_requests for s in named),
                      in_bad + sum(live_bad), 0,
                      f"in process: {in_process.get('mutations', 0)} mutations, {in_process.get('crashes', 0)} "
                      f"crashes; " + each(lambda s: f"{s['fuzz']['requests']} sent, {s['fuzz']['server_errors']} "
                                                    f"5xx or unanswered, {s['fuzz']['refusals_without_reason']} "
                                                    f"refusals without a reason, good request afterwards "
                                                    f"{'answered' if s['fuzz']['good_after'] else 'NOT answered'}")))
    return gates


def _limited(r: dict) -> bool:
    """The rate limit held: the flooder was refused with a reason code and admitted at most its limit (a tenth
    over, for the sliding window's edges), and the other client was never refused and kept within the SLA."""
    return (r["flooder_refused"] > 0 and r["refusal_code"] == "rate_limited"
            and r["flooder_admitted_per_s"] <= 1.1 * r["limit_per_s"] + 1 and r["steady_refused"] == 0
            and r["steady_p99_ms"] is not None and r["steady_p99_ms"] <= r["sla_ms"])


def _ms_fine(value) -> str:
    return f"{value:+.2f} ms" if value is not None else "unmeasured"


def _ms(value) -> str:
    return f"{value:.0f} ms" if value is not None else "none admitted"


def _seconds(value) -> str:
    return f"{value:.1f} s" if value is not None and value != math.inf else "never within the window"


def _slope(soak: dict) -> str:
    first = soak.get("first_window")
    if first is not None:
        before = (f"{first['kb_per_request']:+.2f} KB per request" if first["kb_per_request"] is not None
                  else f"{first['mb_per_min']:+.1f} MB/min")
        return f"{_slope({k: v for k, v in soak.items() if k != 'first_window'})}, in a second window after {before}"
    if soak["mb_per_min"] is None:
        return "too few samples"
    low, high = soak["ci_mb_per_min"]
    if soak.get("ci_kb_per_request") is None:
        return f"{soak['mb_per_min']:+.1f} MB/min (95% interval {low:+.1f} to {high:+.1f})"
    low_kb, high_kb = soak["ci_kb_per_request"]
    return (f"{soak['kb_per_request']:+.2f} KB per request (95% interval {low_kb:+.2f} to {high_kb:+.2f}), "
            f"{soak['mb_per_min']:+.1f} MB/min")


def summary_rows(servers: dict) -> list[dict]:
    """One row per server: the numbers README's resilience table shows."""
    rows = []
    for s in servers.values():
        bounded = s["overload"][-1]
        rows.append({
            "server": s["title"], "cold_start_s": s["cold_start"]["start_s"],
            "first_ms": s["cold_start"]["first_ms"], "warm_p50_ms": s["cold_start"]["warm_p50_ms"],
            "overload_users": bounded["users"], "refused_fast": bounded["refused_fast"],
            "admitted_p99_ms": bounded["admitted_p99_ms"], "default_queue_p99_ms": s["overload"][0]["admitted_p99_ms"],
            "recovery_s": s.get("recovery", {}).get("recovered_s"),
            "availability_pct": s.get("recovery", {}).get("availability_pct"),
            "soak_mb_per_min": s.get("soak", {}).get("mb_per_min"),
            "update_failed": s.get("update", {}).get("failed_during_switch"),
            "rate_limit_per_s": s.get("front_door", {}).get("rate_limit", {}).get("limit_per_s"),
            "other_client_p99_ms": s.get("front_door", {}).get("rate_limit", {}).get("steady_p99_ms"),
            "tls_cost_ms": s.get("front_door", {}).get("tls", {}).get("cost_ms"),
            "fuzz_sent": s["fuzz"]["requests"], "fuzz_5xx": s["fuzz"]["server_errors"]})
    return rows


def plot_timeline(served: dict):
    """Answered and failed requests per second over the server's session, phase after phase, with the model
    processes' RSS on a second axis; the kill, the switch and the bursts marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.6))
    phases = [("soak", served.get("soak")), ("kill", served.get("recovery")), ("update", served.get("update")),
              ("flood past a client's limit", served.get("front_door")),
              *[(f"burst, {b['queue']}", b) for b in served["overload"]]]
    for label, phase in phases:
        if not phase:
            continue
        if "rate_limit" in phase:  # the front door: its flood's timeline, placed where the phase ran
            phase = {**phase["rate_limit"], "began_s": phase["began_s"], "ended_s": phase["ended_s"]}
        times = [phase["began_s"] + b["t"] for b in phase["timeline"]]
        ax.plot(times, [b["ok_per_s"] for b in phase["timeline"]], color="tab:blue", lw=1.2)
        ax.bar(times, [b["failed_per_s"] for b in phase["timeline"]], width=BUCKET_S, color="tab:red", align="edge")
        ax.axvspan(phase["began_s"], phase["ended_s"], color="orange" if label.startswith("burst") else "grey",
                   alpha=0.08)
        ax.text(phase["began_s"], 1.0, label, transform=ax.get_xaxis_transform(), fontsize=8, va="bottom")
    if served.get("recovery"):
        ax.axvline(served["recovery"]["began_s"] + served["recovery"]["kill_at"], color="tab:red", ls="--",
                   label="worker killed")
    if served.get("update"):
        ax.axvline(served["update"]["began_s"] + served["update"]["switch_at"], color="tab:green", ls="--",
                   label="switch to v2")
    ax.set_xlabel("seconds since the server started")
    ax.set_ylabel("answered / s (blue), failed / s (red)")
    if served.get("rss"):
        rss = ax.twinx()
        rss.plot([r["t"] for r in served["rss"]], [r["mb"] for r in served["rss"]], color="tab:purple", lw=1,
                 alpha=0.7)
        rss.set_ylabel("model processes' RSS (MB)", color="tab:purple")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(served["title"], loc="left")
    fig.tight_layout()
    return fig


def results(servers: dict, backends, settings: Settings, in_process: dict) -> ResilienceResults:
    return ResilienceResults(backends=list(backends), settings=settings.__dict__ | {}, servers=servers,
                             in_process_fuzz=in_process)

