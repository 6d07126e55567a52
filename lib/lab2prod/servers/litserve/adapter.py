"""LitServe behind the `Server` protocol: a LitServe process lab2prod starts on 127.0.0.1 (its pid recorded,
stopped by that pid), restarted per configuration (workers x threads x max batch size x batch timeout), its
Prometheus metrics, and the config file and Kubernetes Deployment of the chosen configuration. LitServe is
maintained (Lightning AI); it has no authorization of its own beyond an X-API-Key, so lab2prod's API checks
a bearer token as the other servers do."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from lab2prod.core.errors import Lab2ProdError
from lab2prod.servers.artifacts import ARTIFACT_TITLES, ARTIFACTS, copy_artifact, verified_artifacts
from lab2prod.servers.base import TOKEN_ENV, ServerClient, ServerConfig, Started, free_port, http_request, limits_check
from lab2prod.servers.kubernetes import validate, write_manifests
from lab2prod.servers.rayserve.server import write_model_dir
from lab2prod.servers.torchserve.server import exported_torchscript

__all__ = ["LitConfig", "LitServeProcess", "LitServeServer", "SERVER", "audit_lit_config", "lit_manifests",
           "stop_recorded"]

APP = "lab2prod.servers.litserve.app"  # the module the LitServe process runs
PATH = "/predictions/model"


@dataclass(frozen=True)
class LitConfig:
    """LitServe's knobs: inference workers on the CPU (`workers_per_device`), torch threads per worker, the
    LitAPI's `max_batch_size` and `batch_timeout` (seconds), and `max_payload_size` bytes."""

    workers: int = 1
    threads: int = 1
    max_batch_size: int = 1
    batch_timeout_s: float = 0.0
    max_request_size: int = 1_000_000
    artifact: str = "torchscript"

    @property
    def label(self) -> str:
        threads = f"{self.threads} thread(s)" if self.threads else "default threads"
        served = f", {ARTIFACT_TITLES[self.artifact]}" if self.artifact != "torchscript" else ""
        return f"{self.workers} worker(s) x {threads}, batch {self.max_batch_size}{served}"


def _serve_dir(run_dir: Path, folder: str = "serving") -> Path:
    return Path(run_dir) / folder / "litserve"


def config_content(model_dir: str, config: LitConfig, port: int = 8000, host: str = "127.0.0.1",
                   token_file: str = "") -> dict:
    """litserve.json: what `python -m lab2prod.servers.litserve.app litserve.json` serves."""
    return {"model_dir": model_dir, "host": host, "port": int(port), "path": PATH, "timeout_s": 30,
            **({"token_file": token_file} if token_file else {}), **asdict(config)}


class LitServeProcess(Started):
    """One LitServe process on 127.0.0.1 in its own process group, its pid in `serve_dir/litserve.pid`; a fresh
    bearer token per start in a key file with mode 0600. Use as a context manager."""

    def __init__(self, serve_dir: Path, model_dir: Path, config: LitConfig, timeout_s: float = 120):
        self.serve_dir, self.model_dir, self.config = Path(serve_dir), Path(model_dir), config
        self.timeout_s = timeout_s
        self.key_file, self.pid_file = self.serve_dir / "key_file.json", self.serve_dir / "litserve.pid"
        self.port, self.token, self.process = 0, "", None

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def keys(self) -> dict:
        return {"inference": self.token}

    def start(self) -> LitServeProcess:
        self.serve_dir.mkdir(parents=True, exist_ok=True)
        self.token, self.port = secrets.token_hex(16), free_port()
        self.key_file.write_text(json.dumps({"inference": self.token}))
        os.chmod(self.key_file, 0o600)
        config_file = self.serve_dir / "running.json"
        config_file.write_text(json.dumps(config_content(str(self.model_dir), self.config, self.port,
                                                         token_file=str(self.key_file))))
        log = (self.serve_dir / "litserve.log").open("ab")
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        self.process = subprocess.Popen([sys.executable, "-m", APP, str(config_file)], stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self.pid_file.write_text(str(self.process.pid))
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.serve_dir / "litserve.log").read_text(errors="replace")[-400:]
                raise Lab2ProdError(f"LitServe exited with {self.process.returncode} while starting: {tail}")
            try:
                if http_request("GET", f"{self.inference_url}/health", None, timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        raise Lab2ProdError(f"LitServe did not answer /health within {self.timeout_s:.0f} s; see "
                            f"{self.serve_dir / 'litserve.log'}")

    def predict(self, name: str, body: bytes, token: str | None = "", content_type: str | None = None):
        token = self.token if token == "" else token
        return http_request("POST", f"{self.inference_url}/predictions/{name}", token, body,
                            content_type=content_type)

    def stop(self) -> None:
        """SIGTERM the process group lab2prod started (SIGKILL after 20 s); remove the token. Safe to call twice."""
        if self.process is not None:
            _stop_group(self.process.pid, self.process)
            self.process = None
        self.pid_file.unlink(missing_ok=True)
        self.key_file.unlink(missing_ok=True)



def _stop_group(pid: int, process: subprocess.Popen | None = None) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)  # what is left of the group lab2prod started (its workers)
    except ProcessLookupError:
        pass
    if process is not None:
        process.wait(timeout=10)


def stop_recorded(run_dir: Path) -> bool:
    """Stop a LitServe a crashed run left (the group of the pid it recorded, when that pid still runs lab2prod's
    LitServe module); True when there was one."""
    markers = list(Path(run_dir).glob("**/litserve/litserve.pid"))
    for marker in markers:
        pid = int(marker.read_text().strip() or 0)
        try:
            running = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            running = ""
        if pid and APP in running:
            _stop_group(pid)
        marker.unlink(missing_ok=True)
        (marker.parent / "key_file.json").unlink(missing_ok=True)
    return bool(markers)


def metric_rows(body: str) -> list[dict]:
    """The lab2prod_litserve_* samples of /metrics, parsed with prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    return [{"metric": s.name, "labels": ", ".join(f"{k}={v}" for k, v in s.labels.items()) or "all",
             "value": s.value}
            for family in text_string_to_metric_families(body) if family.name.startswith("lab2prod_litserve")
            for s in family.samples if not s.name.endswith("_created") and "_bucket" not in s.name]


@dataclass
class _Live(ServerClient):
    server: LitServeProcess
    run_dir: Path
    model: str = "model"

    @property
    def served_file(self) -> str:
        return str((self.server.model_dir / "model.pt").relative_to(self.run_dir))

    def deploy(self, config: ServerConfig) -> None:
        native = SERVER.native(config)
        if native != self.server.config:  # LitServe takes its settings at start: a new process per configuration
            self.server.stop()
            self.server = LitServeProcess(self.server.serve_dir, self.server.model_dir, native).start_cleanly()

    def scrape(self) -> list[dict]:
        status, body = http_request("GET", f"{self.server.inference_url}/metrics", None)
        return metric_rows(body.decode("utf-8", "replace")) if status == 200 else []

    def limits(self, body: bytes, max_request_size: int, content_type: str | None) -> list[dict]:
        # LitServe's /health is open (probes need no token); TorchServe's /ping rows are left out
        return [row for row in limits_check(self, self.model, body, max_request_size, content_type)
                if not row["request"].startswith("ping")]


def audit_lit_config(path: Path, max_request_size: int = 10_000_000) -> list[dict]:
    """Check the litserve.json the serving study wrote: each item pass/fail with the fix."""
    content = json.loads(Path(path).read_text())
    size = int(content.get("max_request_size", 0) or 0)
    return [
        {"item": "litserve: token checked by the API", "passed": content.get("app", "") == APP,
         "value": content.get("app", "(not lab2prod's app)"),
         "fix": f"serve with python -m {APP} (its LitAPI refuses a missing or wrong bearer token); LitServe's own "
                "check is an X-API-Key header"},
        {"item": "litserve: bind address", "passed": content.get("host") in ("127.0.0.1", "localhost"),
         "value": str(content.get("host")), "fix": "host 127.0.0.1 on a machine; in a pod, a Service and a proxy "
                                                   "with TLS"},
        {"item": "litserve: max_request_size", "passed": 0 < size <= max_request_size, "value": str(size),
         "fix": f"max_request_size at most {max_request_size}"},
    ]


def lit_manifests(name: str, config: LitConfig, image: str = "lab2prod-litserve:1.0", replicas: int = 2) -> list[dict]:
    """Deployment and Service for the chosen configuration: the config file from a ConfigMap, the token from a
    Secret through LAB2PROD_TOKEN, readiness on LitServe's /health, CPUs of workers x threads."""
    cpus = max(1, config.workers * max(config.threads, 1))
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "lab2prod"}
    content = config_content("/model", config, port=8000, host="0.0.0.0")
    content["app"] = APP
    resources = {"cpu": str(cpus), "memory": f"{2 * cpus}Gi"}
    container = {
        "name": "litserve", "image": image, "command": ["python", "-m", APP, "/config/litserve.json"],
        "env": [{"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": f"{name}-token", "key": "token"}}}],
        "ports": [{"containerPort": 8000, "name": "http"}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 5},
        "resources": {"requests": resources, "limits": resources},
        "volumeMounts": [{"name": "config", "mountPath": "/config"}],
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-config", "labels": labels},
         "data": {"litserve.json": json.dumps(content, indent=2)}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
         "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"containers": [container],
                                        "volumes": [{"name": "config", "configMap": {"name": f"{name}-config"}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
         "spec": {"selector": labels, "ports": [{"name": "http", "port": 8000, "targetPort": 8000}],
                  "type": "ClusterIP"}},
    ]


class LitServeServer:
    """LitServe 0.2 (FastAPI, uvicorn), started as its own process group on 127.0.0.1 and stopped by its pid."""

    name, title, gate_prefix, maintained = "litserve", "LitServe", "litserve", True
    extra = "litserve"  # the pyproject extra that installs it: pip install 'lab2prod[litserve]'
    modes = ("default",)
    artifacts = ARTIFACTS  # it hosts Python: any verified artifact

    def check(self) -> None:
        try:
            import litserve  # noqa: F401  (heavy optional third-party package: LitServe)
        except ImportError:
            raise Lab2ProdError("LitServe is not installed; pip install 'lab2prod[litserve]'") from None

    def default_config(self, config: ServerConfig) -> ServerConfig:
        # LitServe's own defaults: one worker per device, torch's default threads, no batching
        return ServerConfig(1, 0, 1, 0, config.max_request_size)

    def native(self, config: ServerConfig) -> LitConfig:
        return LitConfig(config.workers, config.threads, config.batch_size,
                         config.max_batch_delay_ms / 1000 if config.batch_size > 1 else 0.0, config.max_request_size,
                         config.artifact)

    @contextmanager
    def serve(self, loaded, run_dir: Path, config: ServerConfig, seed: int = 0,
              guard_max_bytes: int | None = None, folder: str = "serving") -> Iterator[_Live]:
        run_dir = Path(run_dir)
        model_dir = write_model_dir(loaded, _serve_dir(run_dir, folder) / "model", exported_torchscript(run_dir), seed,
                                    guard_max_bytes or config.max_request_size)
        for artifact in verified_artifacts(run_dir):
            copy_artifact(run_dir, artifact, model_dir)
        live = _Live(LitServeProcess(_serve_dir(run_dir, folder), model_dir, self.native(config)).start_cleanly(),
                     run_dir)
        try:
            yield live
        finally:
            live.server.stop()

    def write_files(self, loaded, run_dir: Path, chosen: ServerConfig, seed: int = 0) -> dict[str, str]:
        run_dir = Path(run_dir)
        serve_dir, native = _serve_dir(run_dir), self.native(chosen)
        serve_dir.mkdir(parents=True, exist_ok=True)
        content = {**config_content(str(serve_dir / "model"), native), "app": APP}
        config_file = serve_dir / "litserve.json"
        config_file.write_text(json.dumps(content, indent=2))
        documents = lit_manifests("lab2prod-litserve", native)
        problems = validate(documents)
        if problems:  # never write a manifest that would not apply
            raise Lab2ProdError(f"the LitServe manifests do not validate: {'; '.join(problems[:3])}")
        manifest = write_manifests(serve_dir / "kubernetes", documents)
        return {"litserve_config": str(config_file.relative_to(run_dir)),
                "litserve_kubernetes": str(manifest.relative_to(run_dir))}

    def stop_recorded(self, run_dir: Path) -> bool:
        return stop_recorded(run_dir)

    def audit(self, run_dir: Path) -> tuple[Path | None, list[dict]]:
        path = _serve_dir(run_dir) / "litserve.json"  # when the serving study ran LitServe
        return (path, audit_lit_config(path)) if path.exists() else (None, [])


SERVER = LitServeServer()
