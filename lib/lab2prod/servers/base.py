"""What every server shares: one `ServerConfig`, the `Server` protocol a server implements to be measured by the
serving study, and the HTTP helpers the clients use (loopback only)."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lab2prod.core.errors import Lab2ProdError

__all__ = ["TOKEN_ENV", "read_token", "Started", "ServerConfig", "grid", "modes_of", "artifacts_of", "Server", "Live",
           "Resilient", "ServerClient", "queue_bound", "tool_path", "free_port", "http_request", "limits_check"]


TOKEN_ENV = "LAB2PROD_TOKEN"  # on a cluster the token comes from a Secret through this variable


def read_token(token_file: str = "") -> str:
    """The bearer token a server process checks: LAB2PROD_TOKEN, else the key file lab2prod wrote (mode 0600)."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    if token_file and Path(token_file).exists():
        return json.loads(Path(token_file).read_text())["inference"]
    raise Lab2ProdError(f"no token: set {TOKEN_ENV} or pass token_file (a key file lab2prod wrote)")


class Started:
    """A server process lab2prod starts (`start()`) and stops (`stop()`, safe to call twice): as a context
    manager, or through `start_cleanly()`, it is stopped again when starting fails half-way."""

    def start_cleanly(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __enter__(self):
        return self.start_cleanly()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class ServerConfig:
    """How any server serves the model: workers (TorchServe workers, Ray Serve replicas), torch threads per
    worker (0 = torch's default, a thread per core), server-side batching (`batch_size` requests gathered for
    at most `max_batch_delay_ms`), the body limit, the CPUs reserved per worker (0: the machine's CPUs
    shared evenly), the server's start-time mode (one of its `modes`; "default" is how it starts
    untouched), the artifact it serves (one of its `artifacts`, lab2prod.servers.artifacts), and the bound on
    requests waiting for a worker (`max_queue`; 0 is the server's own default, unbounded or large: past a bound
    the server refuses at once with 503). Each server maps it to its own settings (`Server.native`)."""

    workers: int = 1
    threads: int = 1
    batch_size: int = 1
    max_batch_delay_ms: int = 5
    max_request_size: int = 1_000_000
    cpus_per_worker: float = 0.0
    mode: str = "default"
    artifact: str = "torchscript"
    max_queue: int = 0


def queue_bound(rate_per_s: float, sla_ms: float, workers: int = 1, batch_size: int = 1) -> int:
    """How many requests may wait for a worker (`ServerConfig.max_queue`), by Little's law: at the measured rate a
    queue of rate x SLA/2 is drained in half the SLA, so an admitted request still has the other half for its
    own work; never below one full batch per worker."""
    return max(workers * batch_size, math.ceil(max(rate_per_s, 0.0) * sla_ms / 2000))


def grid(workers: Iterable[int], threads: Iterable[int], batch_sizes: Iterable[int], max_batch_delay_ms: int = 5,
         max_request_size: int = 1_000_000) -> list[ServerConfig]:
    """Every combination of workers x threads per worker x server batch size, for any server."""
    return [ServerConfig(w, t, b, max_batch_delay_ms, max_request_size)
            for w in workers for t in threads for b in batch_sizes]


class Live(Protocol):
    """A running server with the model deployed: what the serving study measures. Requests go to
    `{inference_url}/predictions/{model}` with `Authorization: Bearer {keys["inference"]}`."""

    model: str
    inference_url: str
    keys: dict
    served_file: str

    def predict(self, name: str, body: bytes, token: str | None = "", content_type: str | None = None) -> tuple:
        """(HTTP status, body) of one request."""

    def deploy(self, config: ServerConfig) -> None:
        """Serve the model with `config` from now on (the tuning sweep calls it per configuration)."""

    def scrape(self) -> list[dict]:
        """The server's Prometheus metrics, one row per sample or total: metric, labels, value."""

    def limits(self, body: bytes, max_request_size: int, content_type: str | None) -> list[dict]:
        """What the server answers without a token, with a wrong one and to an oversized body."""


class Resilient(Live, Protocol):
    """What the resilience study needs beyond `Live` (lab2prod.studies.resilience): the processes that run the
    model, the processes lab2prod started (a process is killed only when one of them is its ancestor), and an
    update to a new version of the model the way the server does it, under load. A server whose live object
    lacks them has those measurements skipped, saying so."""

    def model_pids(self) -> list[int]:
        """The pids of the processes that run the model now, as the server itself reports them."""

    def own_pids(self) -> list[int]:
        """The pids of the processes lab2prod started for this server (their descendants may be killed)."""

    def update(self, version: str) -> None:
        """Serve the same model as `version` in place of the running one, as the server updates in production;
        answers name their version in the Server-Timing header (lab2prod.servers.timing.version_of)."""


class ServerClient:
    """The HTTP side of a `Live` whose `server` attribute is a running server object with `inference_url`,
    `keys` and `predict` (TorchServe's and Ray Serve's)."""

    server: object

    @property
    def inference_url(self) -> str:
        return self.server.inference_url

    @property
    def keys(self) -> dict:
        return self.server.keys

    def predict(self, name: str, body: bytes, token: str | None = "", content_type: str | None = None):
        return self.server.predict(name, body, token, content_type=content_type)


class Server(Protocol):
    """A server lab2prod can start, deploy the model on, measure and stop. `name` is its key in
    `lab2prod.servers.registry.SERVERS`, `gate_prefix` names its gates (`<prefix>:parity`, `:errors`, `:sla`),
    `maintained` says whether it still gets releases and security patches (the pick weighs it), and `modes`
    are the ways it can be started that the tuning sweep tries beside workers, threads and batching (the first
    is how it starts untouched; a server without the attribute has one, "default"), and `artifacts` the files
    it can serve (TorchScript for every server; ONNX Runtime for those that host Python), tuned over those this
    run verified. `extra`, where a server has one, is the pyproject extra that installs it: a study that needs a
    server whose extra is missing is skipped with the install line."""

    name: str
    title: str
    gate_prefix: str
    maintained: bool
    modes: tuple[str, ...]
    artifacts: tuple[str, ...]

    def check(self) -> None:
        """Raise Lab2ProdError with the install line when the server cannot run here."""

    def default_config(self, config: ServerConfig) -> ServerConfig:
        """What an untuned server does (the first row of the tuning table)."""

    def native(self, config: ServerConfig):
        """The server's own settings for `config` (a dataclass with a `label`)."""

    def serve(self, loaded, run_dir: Path, config: ServerConfig, seed: int = 0,
              guard_max_bytes: int | None = None, folder: str = "serving") -> AbstractContextManager[Live]:
        """Start the server in `run_dir/<folder>` with the model deployed under `config` (its input guard refusing
        bodies over `guard_max_bytes`, default the server's own limit), serving the run's exported artifacts;
        stopped when the context ends, also on an error or an interrupt."""

    def write_files(self, loaded, run_dir: Path, chosen: ServerConfig, seed: int = 0) -> dict[str, str]:
        """Write the deployment files for the chosen configuration; {what: path relative to run_dir}."""

    def stop_recorded(self, run_dir: Path) -> bool:
        """Stop what a crashed run of this server left behind (by the pids it recorded); True if there was some."""

    def audit(self, run_dir: Path) -> tuple[Path | None, list[dict]]:
        """The server's config file the run wrote (None when there is none) and its security audit: one row per
        item with `item`, `passed`, `value` and the `fix`."""


def modes_of(server) -> tuple[str, ...]:
    """The start-time modes a server tunes over; ("default",) for a server that declares none."""
    return tuple(getattr(server, "modes", ("default",))) or ("default",)


def artifacts_of(server) -> tuple[str, ...]:
    """The artifacts a server can serve; ("torchscript",) for a server that declares none."""
    return tuple(getattr(server, "artifacts", ("torchscript",))) or ("torchscript",)


def tool_path(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_request(method: str, url: str, token: str | None = None, body: bytes | None = None,
                 timeout: float = 30, content_type: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", content_type or "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError) as exc:  # the server closed the connection
        reason = getattr(exc, "reason", exc)
        return 0, json.dumps({"message": f"no HTTP answer: {reason}"}).encode()


def limits_check(server: Live, name: str, body: bytes, max_request_size: int,
                 content_type: str | None = None) -> list[dict]:
    """What the server answers to a missing token, a wrong token (on /predictions and /ping) and
    a body over max_request_size: the status codes actually returned."""
    url = f"{server.inference_url}/predictions/{name}"
    oversized = body + b" " * (max_request_size + 1024 - len(body))
    key = server.keys["inference"]
    cases = [
        ("predict, no token", http_request("POST", url, None, body, content_type=content_type)),
        ("predict, wrong token", http_request("POST", url, "wrong-token", body, content_type=content_type)),
        ("ping, no token", http_request("GET", f"{server.inference_url}/ping", None)),
        ("predict, right token", http_request("POST", url, key, body, content_type=content_type)),
        (f"predict, body of {len(oversized)} bytes > max_request_size",
         http_request("POST", url, key, oversized, content_type=content_type)),
    ]
    rows = []
    for case, (status, payload) in cases:
        try:
            message = json.loads(payload).get("message", "") if payload else ""
        except (json.JSONDecodeError, AttributeError):
            message = payload[:80].decode(errors="replace")
        rows.append({"request": case, "status": status, "refused": status != 200, "message": str(message)[:100]})
    return rows
