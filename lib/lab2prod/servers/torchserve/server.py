"""A TorchServe started and stopped by lab2prod: requirements, configuration, the model archive
(with lab2prod's handler, `lab2prod.servers.torchserve.handler`), the process and its HTTP API, metrics and limits."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lab2prod.core.errors import Lab2ProdError, one_line
from lab2prod.core.inputs import trace
from lab2prod.kinds.codec import codec_for
from lab2prod.servers.base import free_port, http_request, limits_check, tool_path

__all__ = [
    "check_requirements",
    "free_port",
    "tool_path",
    "ServeConfig",
    "check_applied",
    "DEFAULT_CONFIG",
    "exported_torchscript",
    "build_archive",
    "trace_to_file",
    "write_config",
    "write_deployment_config",
    "http_request",
    "TorchServe",
    "stop_recorded",
    "scrape_metrics",
    "limits_check",
]

HANDLER_FILE = Path(__file__).with_name("handler.py")
TMP_PREFIX = "lab2prod-ts-"


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


def check_applied(declared: ServeConfig, effective: dict, name: str = "model") -> None:
    """Raise a Lab2ProdError naming each setting TorchServe does not run as declared (pytorch/serve#2365: batch
    size and max batch delay silently ignored); `effective` is one version of `TorchServe.describe`'s answer."""
    wanted = {"workers": declared.workers, "batch_size": declared.batch_size,
              "max_batch_delay_ms": declared.max_batch_delay_ms}
    wrong = [f"{key} declared {value}, TorchServe runs {effective.get(key)}" for key, value in wanted.items()
             if effective.get(key) != value]
    if wrong:
        raise Lab2ProdError(f"TorchServe did not apply the configuration of model {name} "
                            f"{effective.get('version')}: {'; '.join(wrong)}; "
                            "check the archive's model-config.yaml and config.properties, which override it")


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
                  model_file: Path | None = None, version: str = "1.0", archive_name: str = "",
                  max_bytes: int = 1_000_000, job_queue_size: int = 0) -> Path:
    """Build `archive_name` (default `name`).mar for model `name` at `version` from a TorchScript
    file (the export notebook's when given, else a trace made here) or an ONNX file (one file, its weights
    inside, as ONNX Runtime's quantizer writes it) with lab2prod's handler, the
    model's request codec (`lab2prod.kinds.codec`: its guard settings, and the user's lab transform
    source or the tokenizer's files), the class names and a model-config.yaml carrying the
    handler's thread count and, when `job_queue_size` is set, the model's own bound on waiting requests
    (TorchServe answers 503 past it). Returns the .mar path."""

    serve_dir = Path(serve_dir)
    archive_name = archive_name or name
    store, work = serve_dir / "model-store", serve_dir / "archive" / archive_name
    store.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    suffix = ".onnx" if model_file is not None and Path(model_file).suffix == ".onnx" else ".pt"
    if model_file is not None:
        for old in work.glob("model.*"):  # a version archived here before, maybe in the other format
            old.unlink()
        shutil.copyfile(model_file, work / f"model{suffix}")
    model_file = work / f"model{suffix}"
    if not model_file.exists():
        trace_to_file(loaded.module, loaded.make_inputs(2, seed, "train"), model_file)
    shutil.copyfile(HANDLER_FILE, work / "lab2prod_handler.py")
    codec_spec, codec_files = codec_for(loaded, max_bytes=max_bytes).archive(work)
    (work / "lab2prod.json").write_text(json.dumps({"family": loaded.family, "class_names": loaded.class_names,
                                                    "model": loaded.spec, "task": loaded.task,
                                                    "codec": codec_spec}))
    queue = f"jobQueueSize: {int(job_queue_size)}\n" if job_queue_size else ""
    (work / "model-config.yaml").write_text(f"{queue}handler:\n  threads: {int(threads)}\n")
    extra = ",".join(str(f) for f in [work / "lab2prod.json", *codec_files])
    command = [tool_path("torch-model-archiver"), "--model-name", name, "--version", version,
               "--serialized-file", str(model_file), "--handler", str(work / "lab2prod_handler.py"),
               "--extra-files", extra, "--config-file", str(work / "model-config.yaml"),
               "--export-path", str(work), "--force"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise Lab2ProdError(f"torch-model-archiver failed: {(proc.stderr or proc.stdout).strip()[-300:]}")
    # The archiver names the file after the model; versions of one model need their own files.
    return Path(shutil.move(work / f"{name}.mar", store / f"{archive_name}.mar"))


def trace_to_file(module: torch.nn.Module, example, path: Path) -> Path:
    """Trace `module` on `example` (a tensor, tuple or dict) to TorchScript at `path`, the format
    TorchServe 0.12 loads natively (the old path, deprecated upstream); a Lab2ProdError saying why
    when it does not trace."""
    import warnings


    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(trace(module.cpu().eval(), example), str(path))
    except Exception as exc:
        raise Lab2ProdError(f"the model cannot be traced to TorchScript for TorchServe ({one_line(exc)}); "
                            "serve a model whose forward traces, or export it with the export notebook") from None
    return Path(path)


def write_config(serve_dir: Path, config: ServeConfig, ports: dict[str, int]) -> Path:
    """config.properties: every address on 127.0.0.1, token authorization on (TorchServe's
    default), Prometheus metrics, the limits and the worker defaults of `config`."""
    lines = [
        f"inference_address=http://127.0.0.1:{ports['inference']}",
        f"management_address=http://127.0.0.1:{ports['management']}",
        f"metrics_address=http://127.0.0.1:{ports['metrics']}",
        # gRPC too: on loopback, and on ports of its own so that two servers can run side by side
        "grpc_inference_address=127.0.0.1",
        "grpc_management_address=127.0.0.1",
        f"grpc_inference_port={ports.get('grpc_inference', 7070)}",
        f"grpc_management_port={ports.get('grpc_management', 7071)}",
        # the backend workers' sockets (/tmp/.ts.sock.<port>, counting up) and torchrun's port, per server
        f"initial_worker_port={ports.get('workers', 9000)}",
        f"initial_distribution_port={ports.get('distribution', 29500)}",
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
    # Its temp folder: short, under the system's temp folder, because the backend workers' unix socket paths
    # live there and may not exceed 107 bytes (a run folder can be deep). Recorded in serve_dir/torchserve.tmp.
    tmp_dir: Path | None = None

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
        env = dict(os.environ, TMPDIR=str(self.tmp_dir), TEMP=str(self.tmp_dir))
        # The handler imports what this process imports (the user's model and transform modules).
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in [*sys.path, env.get("PYTHONPATH", "")]
                                                          if p and os.path.isdir(p)))
        env.pop("TS_CONFIG_FILE", None)
        return env

    def start(self, timeout_s: float = 120) -> TorchServe:
        """Start TorchServe and wait until /ping answers Healthy (with the inference token)."""
        check_requirements()
        self.serve_dir = Path(self.serve_dir).resolve()
        self.serve_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
        (self.serve_dir / "torchserve.tmp").write_text(str(self.tmp_dir))
        (self.serve_dir / "logs").mkdir(exist_ok=True)
        (self.serve_dir / "model-store").mkdir(exist_ok=True)
        self.ports = {name: free_port() for name in ("inference", "management", "metrics", "grpc_inference",
                                                    "grpc_management", "workers", "distribution")}
        config_file = write_config(self.serve_dir, self.config, self.ports)
        command = [tool_path("torchserve"), "--start", "--foreground", "--ncs", "--model-store",
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
                status, body = http_request("GET", f"{self.inference_url}/ping", self.keys["inference"], timeout=5) \
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
        status, body = http_request("POST", f"{self.management_url}/models?{query}", self.keys.get("management"),
                             timeout=timeout_s)
        if status != 200:
            raise Lab2ProdError(f"registering {name} failed: HTTP {status} {body[:200]!r}")
        for effective in self.describe(name):  # every version of the name is served with this configuration
            check_applied(config, effective, name)
        return name

    def describe(self, name: str) -> list[dict]:
        """What TorchServe itself says it runs for each version of model `name` (its management API's describe):
        workers, batch size, max batch delay and version, read back rather than assumed."""
        status, body = http_request("GET", f"{self.management_url}/models/{name}/all", self.keys.get("management"),
                                    timeout=30)
        if status != 200:
            raise Lab2ProdError(f"describing model {name} failed: HTTP {status} {body[:200]!r}")
        return [{"workers": len(info.get("workers", [])), "batch_size": info.get("batchSize"),
                 "max_batch_delay_ms": info.get("maxBatchDelay"), "version": info.get("modelVersion"),
                 "pids": [w["pid"] for w in info.get("workers", []) if w.get("pid") not in (None, -1)]}
                for info in json.loads(body)]

    def set_default(self, name: str, version: str) -> None:
        """Make `version` of model `name` the one /predictions/<name> answers with."""
        status, body = http_request("PUT", f"{self.management_url}/models/{name}/{version}/set-default",
                                    self.keys.get("management"), timeout=60)
        if status != 200:
            raise Lab2ProdError(f"making {name} {version} the default failed: HTTP {status} {body[:200]!r}")

    def switch(self, name: str, new: str, old: str, drain_s: float = 2.0) -> None:
        """TorchServe's update without a failed request, once `new` is registered beside `old`: make `new` the
        default, let `old` finish what it holds (`drain_s`), then unregister it (the resilience study measures
        this path under load; the canary's promote takes it too)."""
        self.set_default(name, new)
        time.sleep(drain_s)
        self.unregister(name, old)

    def unregister(self, name: str, version: str = "") -> None:
        path = f"{name}/{version}" if version else name
        http_request("DELETE", f"{self.management_url}/models/{path}", self.keys.get("management"), timeout=60)

    def predict(self, name: str, body: bytes, token: str | None = "",
                content_type: str | None = None) -> tuple[int, bytes]:
        token = self.keys.get("inference") if token == "" else token
        return http_request("POST", f"{self.inference_url}/predictions/{name}", token, body,
                            content_type=content_type)

    def stop(self) -> None:
        """Stop this instance: `torchserve --stop` with this instance's temp folder, then its
        process group if anything is left. Safe to call twice."""
        if self.process is None:
            return
        if self.process.poll() is None:
            subprocess.run([tool_path("torchserve"), "--stop"], env=self._env(), capture_output=True, timeout=60)
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
        _remove_tmp(self.serve_dir)


def _kill_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(1.0)


def _remove_tmp(serve_dir: Path) -> None:
    """Remove the temp folder a TorchServe of `serve_dir` recorded, only when it is one this module made."""
    record = Path(serve_dir) / "torchserve.tmp"
    if record.exists():
        tmp = Path(record.read_text().strip())
        if tmp.parent == Path(tempfile.gettempdir()) and tmp.name.startswith(TMP_PREFIX):
            shutil.rmtree(tmp, ignore_errors=True)
        record.unlink(missing_ok=True)


def stop_recorded(run_dir: Path) -> bool:
    """Stop every TorchServe a run left behind (each records its process group in a
    torchserve.pgid file in its folder); True when there was one."""
    markers = list(Path(run_dir).glob("**/torchserve.pgid"))
    for marker in markers:
        _kill_group(int(marker.read_text().strip()))
        marker.unlink(missing_ok=True)
        # As stop() does: the tokens die with the server, and its temp folder goes.
        (marker.parent / "key_file.json").unlink(missing_ok=True)
        _remove_tmp(marker.parent)
    return bool(markers)


def scrape_metrics(server: TorchServe) -> list[dict]:
    """Scrape /metrics and parse it with prometheus_client's parser: one row per sample of the
    ts_* request and latency families."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_request("GET", server.metrics_url, None)
    if status != 200:
        status, body = http_request("GET", server.metrics_url, server.keys.get("inference"))
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


