"""Real serving with TorchServe: archive, config, start/stop, live parity, Locust load, Prometheus metrics."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import Lab2ProdError

__all__ = [
    "check_requirements",
    "ServeConfig",
    "DEFAULT_CONFIG",
    "exported_torchscript",
    "build_archive",
    "guard_settings",
    "tuning_grid",
    "choose",
    "write_deployment_config",
    "write_config",
    "TorchServe",
    "stop_recorded",
    "request_images",
    "live_parity",
    "write_locustfile",
    "latency_stats",
    "run_locust",
    "load_sweep",
    "tune",
    "scrape_metrics",
    "limits_check",
    "ServingReport",
    "evaluate_serving",
    "serving_gates",
    "serving_results",
]

HANDLER_SOURCE = '''"""TorchServe handler by lab2prod: the input guard and preprocessing are lab2prod's."""

import json
import os

import torch
from ts.torch_handler.base_handler import BaseHandler

from lab2prod.guard import InputGuard, Rejected
from lab2prod.preprocess import ServingPath, lab_transform_for


class Lab2ProdHandler(BaseHandler):
    def initialize(self, context):
        properties = context.system_properties
        with open(os.path.join(properties.get("model_dir"), "lab2prod.json")) as spec_file:
            spec = json.load(spec_file)
        threads = int((getattr(context, "model_yaml_config", None) or {}).get("handler", {}).get("threads", 0))
        if threads > 0:
            torch.set_num_threads(threads)  # one worker, one thread: no oversubscription
        super().initialize(context)
        transform, _ = lab_transform_for(spec["family"])
        self.serving_path = ServingPath(transform, InputGuard(**spec["guard"]))

    def handle(self, data, context):
        # Each request is checked on its own: a refused one gets HTTP 400 with its reason code,
        # the others of the same server batch are still answered.
        self.context = context
        outputs, kept, tensors = [None] * len(data), [], []
        for index, row in enumerate(data):
            body = row.get("data") if row.get("data") is not None else row.get("body")
            if isinstance(body, str):
                body = body.encode("latin-1")
            try:
                tensors.append(self.serving_path(bytes(body or b"")))
                kept.append(index)
            except Rejected as exc:
                context.set_response_status(400, exc.code, idx=index)
                outputs[index] = {"rejected": exc.code, "message": exc.message}
        if tensors:
            with torch.inference_mode():
                logits = self.model(torch.stack(tensors).to(self.device))
            for index, p in zip(kept, torch.softmax(logits.float(), dim=1).cpu()):
                outputs[index] = {"top1": int(p.argmax()), "probabilities": p.tolist()}
        return outputs
'''

LOCUSTFILE = '''"""Locust load test written by lab2prod: POST image bytes to a TorchServe model with its token.

Run it against any deployment (also distributed: one --master and several --worker processes):
    LAB2PROD_TOKEN=... LAB2PROD_IMAGES=requests locust -f locustfile.py --host http://HOST:PORT
Split traffic between model versions by weight (a canary), as a weighted router would:
    LAB2PROD_ROUTES='[{{"path": "/predictions/model/1.0", "weight": 80, "label": "v1"}},
                      {{"path": "/predictions/model/2.0", "weight": 20, "label": "v2"}}]'
"""

import itertools
import json
import os
import random
from pathlib import Path

from locust import FastHttpUser, constant, events, task

MODEL = os.environ.get("LAB2PROD_MODEL", "{model}")
IMAGES = [p.read_bytes() for p in sorted(Path(os.environ.get("LAB2PROD_IMAGES", "requests")).glob("*.png"))]
TOKEN = os.environ.get("LAB2PROD_TOKEN", "")
SAMPLES = os.environ.get("LAB2PROD_SAMPLES", "")
MAX_REQUESTS = int(os.environ.get("LAB2PROD_MAX_REQUESTS", "0"))  # 0: bounded by --run-time only
ROUTES = json.loads(os.environ.get("LAB2PROD_ROUTES", "[]")) or [
    {{"path": f"/predictions/{{MODEL}}", "weight": 1, "label": MODEL}}]
WEIGHTS = [route["weight"] for route in ROUTES]
_latencies = []
_user_seeds = itertools.count()


@events.request.add_listener
def _record(request_type, name, response_time, response_length, exception, **kwargs):
    _latencies.append([response_time, exception is None, name])


@events.quitting.add_listener
def _save(environment, **kwargs):
    if SAMPLES:
        Path(SAMPLES).write_text(json.dumps(_latencies))


class Client(FastHttpUser):
    wait_time = constant(0)

    def on_start(self):
        self.index = 0
        self.router = random.Random(next(_user_seeds))  # each user draws its own, reproducible split

    @task
    def predict(self):
        body = IMAGES[self.index % len(IMAGES)]
        self.index += 1
        route = self.router.choices(ROUTES, weights=WEIGHTS)[0]
        headers = {{"Authorization": f"Bearer {{TOKEN}}", "Content-Type": "application/octet-stream"}}
        with self.client.post(route["path"], data=body, headers=headers, name=route["label"],
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {{response.status_code}}")
        if MAX_REQUESTS and len(_latencies) >= MAX_REQUESTS:
            self.environment.runner.quit()
'''


# ---------------------------------------------------------------- requirements and configuration


def _java_major() -> int | None:
    java = shutil.which("java") or (os.path.join(os.environ["JAVA_HOME"], "bin", "java")
                                    if os.environ.get("JAVA_HOME") else None)
    if not java:
        return None
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    text = out.stderr + out.stdout
    for token in text.replace('"', " ").split():
        head = token.split(".")[0]
        if head.isdigit() and int(head) >= 8:
            return int(head) if head != "1" else 8
    return None


def check_requirements() -> None:
    """Raise Lab2ProdError saying what to install when Java 17, TorchServe, the model archiver,
    captum or Locust is missing."""
    major = _java_major()
    if major is None:
        raise Lab2ProdError("TorchServe needs Java 17 and no java was found; "
                            "apt-get install openjdk-17-jre-headless (or set JAVA_HOME)")
    if major < 11:
        raise Lab2ProdError(f"TorchServe 0.12 needs Java 11 or newer (17 recommended); found Java {major}")
    bin_dir = Path(sys.executable).parent
    for tool, package in (("torchserve", "torchserve"), ("torch-model-archiver", "torch-model-archiver"),
                          ("locust", "locust")):
        if not (bin_dir / tool).exists() and not shutil.which(tool):
            raise Lab2ProdError(f"{tool} is not installed; pip install {package} (pinned in requirements.txt)")
    import importlib.util

    if importlib.util.find_spec("captum") is None:  # TorchServe's built-in handlers import it
        raise Lab2ProdError("captum is not installed (TorchServe imports it); pip install -r requirements.txt")


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class ServeConfig:
    """How the model is served: workers, torch threads per worker (0 = torch's default, all
    cores), server-side batching (batch_size with max_batch_delay_ms), and limits."""

    workers: int = 1
    threads: int = 1
    batch_size: int = 1
    max_batch_delay_ms: int = 5
    max_request_size: int = 1_000_000
    job_queue_size: int = 100
    netty_threads: int = 2

    @property
    def label(self) -> str:
        threads = f"{self.threads} thread(s)" if self.threads else "default threads"
        return f"{self.workers} worker(s) x {threads}, batch {self.batch_size}"


# What a user gets when nothing is tuned: a worker per core, each with torch's default threads.
DEFAULT_CONFIG = ServeConfig(workers=os.cpu_count() or 1, threads=0, batch_size=1)


def exported_torchscript(run_dir: Path) -> Path | None:
    """The TorchScript file the export notebook wrote in this run (script preferred: it keeps
    control flow), or None."""
    manifest = Path(run_dir) / "manifest.json"
    if not manifest.exists():
        return None
    entries = {e["format"]: e for e in json.loads(manifest.read_text())}
    for fmt in ("torchscript_script", "torchscript_trace"):
        if fmt in entries and (Path(run_dir) / entries[fmt]["file"]).exists():
            return Path(run_dir) / entries[fmt]["file"]
    return None


def build_archive(loaded, serve_dir: Path, name: str, threads: int, seed: int = 0,
                  model_file: Path | None = None, version: str = "1.0", archive_name: str = "") -> Path:
    """Build `archive_name` (default `name`).mar for model `name` at `version` from a TorchScript
    file (the export notebook's when given, else a trace made here) with lab2prod's handler, the
    class names and a model-config.yaml carrying the handler's thread count. Returns the .mar path."""
    serve_dir = Path(serve_dir)
    archive_name = archive_name or name
    store, work = serve_dir / "model-store", serve_dir / "archive" / archive_name
    store.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if model_file is not None:
        shutil.copyfile(model_file, work / "model.pt")
    model_file = work / "model.pt"
    if not model_file.exists():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(loaded.module.cpu().eval(), loaded.make_inputs(2, seed, "train"))
        torch.jit.save(traced, str(model_file))
    (work / "lab2prod_handler.py").write_text(HANDLER_SOURCE)
    (work / "lab2prod.json").write_text(json.dumps({"family": loaded.family, "class_names": loaded.class_names,
                                                    "model": loaded.spec, "guard": guard_settings(loaded)}))
    (work / "model-config.yaml").write_text(f"handler:\n  threads: {int(threads)}\n")
    command = [_tool("torch-model-archiver"), "--model-name", name, "--version", version,
               "--serialized-file", str(model_file), "--handler", str(work / "lab2prod_handler.py"),
               "--extra-files", str(work / "lab2prod.json"), "--config-file", str(work / "model-config.yaml"),
               "--export-path", str(work), "--force"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise Lab2ProdError(f"torch-model-archiver failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    # The archiver names the file after the model; versions of one model need their own files.
    return Path(shutil.move(work / f"{name}.mar", store / f"{archive_name}.mar"))


def guard_settings(loaded, max_bytes: int = 1_000_000) -> dict:
    """The InputGuard the handler builds: byte limit, the lab input shape, and the lab's input
    statistics for the z-score screen (from training inputs)."""
    from .guard import lab_input_stats

    return {"max_bytes": max_bytes, "expected_shape": list(loaded.input_shape),
            "lab_stats": lab_input_stats(loaded.make_inputs(256, 0, "train"))}


def write_config(serve_dir: Path, config: ServeConfig, ports: dict[str, int]) -> Path:
    """config.properties: every address on 127.0.0.1, token authorization on (TorchServe's
    default), Prometheus metrics, the limits and the worker defaults of `config`."""
    lines = [
        f"inference_address=http://127.0.0.1:{ports['inference']}",
        f"management_address=http://127.0.0.1:{ports['management']}",
        f"metrics_address=http://127.0.0.1:{ports['metrics']}",
        f"model_store={Path(serve_dir).resolve() / 'model-store'}",
        "metrics_mode=prometheus",
        "enable_model_api=true",
        "disable_system_metrics=true",
        f"max_request_size={config.max_request_size}",
        f"max_response_size={config.max_request_size}",
        f"default_workers_per_model={config.workers}",
        f"job_queue_size={config.job_queue_size}",
        f"number_of_netty_threads={config.netty_threads}",
        f"netty_client_threads={config.netty_threads}",
        "default_response_timeout=60",
        "install_py_dep_per_model=false",
    ]
    path = Path(serve_dir) / "config.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- the server


def _http(method: str, url: str, token: str | None = None, body: bytes | None = None,
          timeout: float = 30) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError) as exc:  # the server closed the connection
        reason = getattr(exc, "reason", exc)
        return 0, json.dumps({"message": f"no HTTP answer: {reason}"}).encode()


_RUNNING: dict[int, TorchServe] = {}


def _stop_all() -> None:
    for server in list(_RUNNING.values()):
        server.stop()


atexit.register(_stop_all)


@dataclass
class TorchServe:
    """A TorchServe started by this process in `serve_dir`: its own temp folder (so its pid file
    and `torchserve --stop` concern only this instance), its own process group, loopback ports.
    Stopped by `stop()`, at interpreter exit, or by `stop_recorded(run_dir)` from the runner."""

    serve_dir: Path
    config: ServeConfig = field(default_factory=ServeConfig)
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    def _env(self) -> dict:
        env = dict(os.environ, TMPDIR=str(self.serve_dir / "tmp"), TEMP=str(self.serve_dir / "tmp"))
        env.pop("TS_CONFIG_FILE", None)
        return env

    def start(self, timeout_s: float = 120) -> TorchServe:
        """Start TorchServe and wait until /ping answers Healthy (with the inference token)."""
        check_requirements()
        self.serve_dir = Path(self.serve_dir).resolve()
        (self.serve_dir / "tmp").mkdir(parents=True, exist_ok=True)
        (self.serve_dir / "logs").mkdir(exist_ok=True)
        (self.serve_dir / "model-store").mkdir(exist_ok=True)
        self.ports = {name: free_port() for name in ("inference", "management", "metrics")}
        config_file = write_config(self.serve_dir, self.config, self.ports)
        command = [_tool("torchserve"), "--start", "--foreground", "--ncs", "--model-store",
                   str(self.serve_dir / "model-store"), "--ts-config", str(config_file)]
        log = open(self.serve_dir / "logs" / "torchserve.out", "ab")
        self.process = subprocess.Popen(command, cwd=self.serve_dir, env=self._env(), stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        (self.serve_dir / "torchserve.pgid").write_text(str(self.process.pid))
        _RUNNING[id(self)] = self
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                tail = (self.serve_dir / "logs" / "torchserve.out").read_text(errors="replace")[-400:]
                self.stop()
                raise Lab2ProdError(f"TorchServe exited with code {code}: {tail.strip()}")
            if self._read_keys():
                status, body = _http("GET", f"{self.inference_url}/ping", self.keys["inference"], timeout=5) \
                    if self._port_open() else (0, b"")
                if status == 200 and b"Healthy" in body:
                    return self
            time.sleep(0.5)
        self.stop()
        raise Lab2ProdError(f"TorchServe did not answer /ping within {timeout_s:g} s; see {self.serve_dir / 'logs'}")

    def _port_open(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.ports["inference"])) == 0

    def _read_keys(self) -> bool:
        key_file = self.serve_dir / "key_file.json"
        if not key_file.exists():
            return False
        try:
            data = json.loads(key_file.read_text())
        except json.JSONDecodeError:
            return False
        self.keys = {name: data[name]["key"] for name in ("inference", "management") if name in data}
        return "inference" in self.keys

    def register(self, archive: Path, config: ServeConfig, timeout_s: float = 180, name: str = "") -> str:
        """Register `archive` as model `name` (default: the file's stem) with the workers and
        batching of `config`; a second archive under the same name adds a version. Returns the name."""
        name = name or Path(archive).stem
        query = (f"url={Path(archive).name}&model_name={name}&initial_workers={config.workers}"
                 f"&batch_size={config.batch_size}&max_batch_delay={config.max_batch_delay_ms}"
                 f"&synchronous=true&response_timeout=60")
        status, body = _http("POST", f"{self.management_url}/models?{query}", self.keys.get("management"),
                             timeout=timeout_s)
        if status != 200:
            raise Lab2ProdError(f"registering {name} failed: HTTP {status} {body[:200]!r}")
        return name

    def unregister(self, name: str) -> None:
        _http("DELETE", f"{self.management_url}/models/{name}", self.keys.get("management"), timeout=60)

    def predict(self, name: str, body: bytes, token: str | None = "") -> tuple[int, bytes]:
        token = self.keys.get("inference") if token == "" else token
        return _http("POST", f"{self.inference_url}/predictions/{name}", token, body)

    def stop(self) -> None:
        """Stop this instance: `torchserve --stop` with this instance's temp folder, then its
        process group if anything is left. Safe to call twice."""
        if self.process is None:
            return
        if self.process.poll() is None:
            subprocess.run([_tool("torchserve"), "--stop"], env=self._env(), capture_output=True, timeout=60)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(self.process.pid)
        self.process = None
        _RUNNING.pop(id(self), None)
        (self.serve_dir / "torchserve.pgid").unlink(missing_ok=True)
        # The tokens die with the server; do not leave them in a run folder people share.
        (self.serve_dir / "key_file.json").unlink(missing_ok=True)
        shutil.rmtree(self.serve_dir / "tmp", ignore_errors=True)


def _kill_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(1.0)


def stop_recorded(run_dir: Path) -> bool:
    """Stop every TorchServe a run left behind (each records its process group in a
    torchserve.pgid file in its folder); True when there was one."""
    markers = list(Path(run_dir).glob("**/torchserve.pgid"))
    for marker in markers:
        _kill_group(int(marker.read_text().strip()))
        marker.unlink(missing_ok=True)
        # As stop() does: the tokens die with the server, and its temp folder goes.
        (marker.parent / "key_file.json").unlink(missing_ok=True)
        shutil.rmtree(marker.parent / "tmp", ignore_errors=True)
    return bool(markers)


# ---------------------------------------------------------------- traffic


def request_images(loaded, count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """(name, PNG bytes) of held-out images for the model's family: what clients send."""
    from .parity import encode_request, parity_images

    names, images, _ = parity_images(loaded.family, count, seed)
    return [(name, encode_request(image, "rgb")[0]) for name, image in zip(names, images, strict=True)]


def live_parity(server: TorchServe, name: str, loaded, requests: list[tuple[str, bytes]],
                module: torch.nn.Module | None = None) -> dict:
    """Send each request to the server and compare with the lab path in process (through
    `module`, default the loaded model): top-1 agreement and the largest probability difference."""
    from .preprocess import ServingPath, lab_transform_for

    transform, _ = lab_transform_for(loaded.family)
    lab = ServingPath(transform)
    agree, max_diff, failures = [], 0.0, 0
    with torch.inference_mode():
        for _, body in requests:
            status, payload = server.predict(name, body)
            expected = torch.softmax((module or loaded.module)(lab(body).unsqueeze(0)).float(), dim=1)[0]
            if status != 200:
                failures += 1
                agree.append(False)
                continue
            served = json.loads(payload)
            agree.append(served["top1"] == int(expected.argmax()))
            max_diff = max(max_diff, float((torch.tensor(served["probabilities"]) - expected).abs().max()))
    return {"requests": len(requests), "failed": failures, "top1_agreement": float(np.mean(agree)),
            "max_prob_diff": max_diff}


def write_locustfile(run_dir: Path, model_name: str, requests: list[tuple[str, bytes]]) -> Path:
    """Save the locustfile and the request images in run_dir/serving, for reuse against any host."""
    serve = Path(run_dir) / "serving"
    images = serve / "requests"
    images.mkdir(parents=True, exist_ok=True)
    for i, (_, body) in enumerate(requests):
        (images / f"{i:04d}.png").write_bytes(body)
    path = serve / "locustfile.py"
    path.write_text(LOCUSTFILE.format(model=model_name))
    return path


def latency_stats(latencies_ms, ok, seconds: float) -> dict:
    """requests, avg/p50/p95/p99 in ms, error rate and successful requests per second of a set of
    client-side samples (empty: no percentiles and an error rate of 1)."""
    latencies = np.asarray(latencies_ms, dtype=float)
    ok = np.asarray(ok, dtype=bool)
    if latencies.size == 0:
        return {"requests": 0, "avg_ms": None, "p50_ms": None, "p95_ms": None, "p99_ms": None,
                "error_rate": 1.0, "throughput_per_s": 0.0}
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {"requests": int(latencies.size), "avg_ms": float(latencies.mean()), "p50_ms": float(p50),
            "p95_ms": float(p95), "p99_ms": float(p99), "error_rate": float(1 - ok.mean()),
            "throughput_per_s": float(ok.sum() / seconds)}


def run_locust(server: TorchServe, name: str, locustfile: Path, users: int, duration_s: float,
               max_requests: int = 20000, routes: list[dict] | None = None) -> dict:
    """Run Locust headless against the server (loopback, `users` users spawned at once, for
    `duration_s` seconds) and compute the percentiles from every request's latency. With
    `routes` ([{path, weight, label}]) each request goes to one route drawn by weight, and
    `by_route` holds the same statistics per label, with the raw `latencies_ms`."""
    serve = locustfile.parent
    samples_file = serve / f"samples_{name}_{users}.json"
    samples_file.unlink(missing_ok=True)
    env = dict(os.environ, LAB2PROD_TOKEN=server.keys["inference"], LAB2PROD_IMAGES=str(serve / "requests"),
               LAB2PROD_MODEL=name, LAB2PROD_SAMPLES=str(samples_file), LAB2PROD_MAX_REQUESTS=str(max_requests),
               LAB2PROD_ROUTES=json.dumps(routes or []))
    command = [_tool("locust"), "-f", str(locustfile), "--headless", "-u", str(users), "-r", str(users),
               "--run-time", f"{max(1, int(round(duration_s)))}s", "--host", server.inference_url,
               "--only-summary", "--stop-timeout", "5", "--loglevel", "ERROR"]
    began = time.monotonic()
    proc = subprocess.run(command, cwd=serve, env=env, capture_output=True, text=True, timeout=duration_s + 120)
    elapsed = time.monotonic() - began
    if not samples_file.exists():
        raise Lab2ProdError(f"locust wrote no samples (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    samples = json.loads(samples_file.read_text())
    samples_file.unlink()
    seconds = max(min(elapsed, duration_s), 1e-9)
    row = {"users": users, **latency_stats([s[0] for s in samples], [s[1] for s in samples], seconds)}
    if routes:
        row["by_route"] = {}
        for route in routes:
            mine = [s for s in samples if s[2] == route["label"]]
            row["by_route"][route["label"]] = {**latency_stats([s[0] for s in mine], [s[1] for s in mine], seconds),
                                               "latencies_ms": [s[0] for s in mine]}
    return row


def load_sweep(server: TorchServe, name: str, locustfile: Path, config: ServeConfig, users_levels,
               duration_s: float, progress: bool = False) -> list[dict]:
    """One Locust run per number of users, each row tagged with the serving configuration."""
    from tqdm import tqdm

    rows = []
    for users in tqdm(list(users_levels), desc="load", unit="level", disable=not progress):
        row = run_locust(server, name, locustfile, users, duration_s)
        rows.append({**row, "workers": config.workers, "threads": config.threads, "batch_size": config.batch_size})
    return rows


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
            server.predict(name, (Path(locustfile).parent / "requests" / "0000.png").read_bytes())  # warm
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


# ---------------------------------------------------------------- metrics and limits


def scrape_metrics(server: TorchServe) -> list[dict]:
    """Scrape /metrics and parse it with prometheus_client's parser: one row per sample of the
    ts_* request and latency families."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = _http("GET", server.metrics_url, None)
    if status != 200:
        status, body = _http("GET", server.metrics_url, server.keys.get("inference"))
    if status != 200:
        raise Lab2ProdError(f"metrics endpoint answered HTTP {status}")
    rows = []
    for family in text_string_to_metric_families(body.decode()):
        if not family.name.startswith("ts_"):
            continue
        for sample in family.samples:
            rows.append({"metric": sample.name, "labels": ", ".join(f"{k}={v}" for k, v in sorted(sample.labels.items())
                                                                  if k in ("model_name", "level", "Hostname")),
                         "value": sample.value})
    return rows


def limits_check(server: TorchServe, name: str, body: bytes, max_request_size: int) -> list[dict]:
    """What the server answers to a missing token, a wrong token (on /predictions and /ping) and
    a body over max_request_size: the status codes actually returned."""
    url = f"{server.inference_url}/predictions/{name}"
    oversized = body + b"\0" * (max_request_size + 1024 - len(body))
    cases = [
        ("predict, no token", _http("POST", url, None, body)),
        ("predict, wrong token", _http("POST", url, "wrong-token", body)),
        ("ping, no token", _http("GET", f"{server.inference_url}/ping", None)),
        ("predict, right token", _http("POST", url, server.keys["inference"], body)),
        (f"predict, body of {len(oversized)} bytes > max_request_size", _http("POST", url, server.keys["inference"],
                                                                             oversized)),
    ]
    rows = []
    for case, (status, payload) in cases:
        try:
            message = json.loads(payload).get("message", "") if payload else ""
        except (json.JSONDecodeError, AttributeError):
            message = payload[:80].decode(errors="replace")
        rows.append({"request": case, "status": status, "refused": status != 200, "message": str(message)[:100]})
    return rows


def tuning_grid(workers, threads, batch_sizes, max_batch_delay_ms: int) -> list[ServeConfig]:
    """Every combination of workers x threads per worker x server batch size."""
    return [ServeConfig(w, t, b, max_batch_delay_ms) for w in workers for t in threads for b in batch_sizes]


def write_deployment_config(serve_dir: Path, name: str, chosen: dict | None, config: ServeConfig) -> Path:
    """Rewrite serving/config.properties for deployment with the chosen configuration: its
    workers, batch size and delay in the model's entry, token authorization left on, loopback
    addresses on TorchServe's default ports (change them to deploy)."""
    use = ServeConfig(chosen["workers"], chosen["threads"], chosen["batch_size"], chosen["max_batch_delay_ms"],
                      config.max_request_size, config.job_queue_size, config.netty_threads) if chosen else config
    path = write_config(serve_dir, use, {"inference": 8080, "management": 8081, "metrics": 8082})
    # Deployed, nothing registers models at run time: no model API, no URLs to fetch from.
    path.write_text(path.read_text().replace("enable_model_api=true", "enable_model_api=false")
                    + "allowed_urls=file://.*\\.mar\n")
    models = {name: {"1.0": {"defaultVersion": True, "marName": f"{name}.mar", "minWorkers": use.workers,
                             "maxWorkers": use.workers, "batchSize": use.batch_size,
                             "maxBatchDelay": use.max_batch_delay_ms, "responseTimeout": 60}}}
    with path.open("a") as config_file:
        config_file.write(f"# chosen by lab2prod: {use.label}; torch threads per worker are in the archive\n")
        config_file.write(f"load_models={name}.mar\n")
        config_file.write(f"models={json.dumps(models)}\n")
    return path


@dataclass
class ServingReport:
    """What the serving notebook shows; `applies` is False (with `reason`) for tensor models."""

    applies: bool
    reason: str = ""
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
    if loaded.family == "tensor":
        return ServingReport(False, f"model {loaded.spec!r} takes tensors (example_inputs); the served handler "
                                    "takes images, so there is nothing to serve here")
    check_requirements()
    run_dir = Path(run_dir)
    serve_dir = run_dir / "serving"
    serve_dir.mkdir(parents=True, exist_ok=True)
    model_file = exported_torchscript(run_dir)
    name = "model"
    report = ServingReport(True, model_name=name,
                           served_file=str(model_file.relative_to(run_dir)) if model_file else "traced here")
    server = TorchServe(serve_dir, config)
    try:
        server.start()
        archive = build_archive(loaded, serve_dir, name, config.threads, seed, model_file)
        server.register(archive, config)
        requests = request_images(loaded, parity_count, seed)
        report.parity = live_parity(server, name, loaded, requests)
        report.limits = limits_check(server, name, requests[0][1], config.max_request_size)
        locustfile = write_locustfile(run_dir, name, requests)
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
    from .kubernetes import write_deployment

    report.kubernetes = str(write_deployment(serve_dir, name, report.chosen, config.workers, config.threads,
                                             config.batch_size, config.max_batch_delay_ms).relative_to(run_dir))
    return report


def serving_gates(report: ServingReport, sla_ms: float, prob_atol: float = 1e-4) -> list[dict]:
    """serving:parity (top-1 identical, probabilities within prob_atol), serving:errors (no
    failed request at any load level), serving:sla (p99 <= sla_ms at the lowest level)."""
    from .results import gate

    names = ("serving:parity", "serving:errors", "serving:sla")
    if not report.applies:
        return [gate(n, False, None, None, report.reason, skipped=True) for n in names]
    parity = report.parity
    parity_ok = parity["failed"] == 0 and parity["top1_agreement"] == 1.0 and parity["max_prob_diff"] <= prob_atol
    worst_errors = max(r["error_rate"] for r in report.load)
    lowest = min(report.load, key=lambda r: r["users"])
    return [
        gate(names[0], parity_ok, parity["max_prob_diff"], prob_atol,
             f"{parity['requests']} requests: top-1 agreement {parity['top1_agreement']:.3f}, "
             f"{parity['failed']} failed"),
        gate(names[1], worst_errors == 0, worst_errors, 0.0,
             f"levels {', '.join(str(r['users']) for r in report.load)} users"),
        gate(names[2], lowest["p99_ms"] is not None and lowest["p99_ms"] <= sla_ms, lowest["p99_ms"], sla_ms,
             f"p99 at {lowest['users']} user(s)"),
    ]


def serving_results(report: ServingReport) -> dict:
    """The named results the serving notebook records (results["serving"])."""
    keys = ["workers", "threads", "batch_size", "users", "p99_ms", "throughput_per_s"]
    return {
        "applies": report.applies,
        "served_file": report.served_file,
        "parity_top1_agreement": report.parity.get("top1_agreement"),
        "max_prob_diff": report.parity.get("max_prob_diff"),
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
