"""Ray Serve behind the `Server` protocol: a local Ray on 127.0.0.1, the model folder deployed per
configuration (replicas x threads x `@serve.batch`), Ray's Prometheus metrics, and the Serve config file and
KubeRay RayService manifest of the chosen configuration. Ray Serve is maintained."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from lab2prod.core.errors import Lab2ProdError
from lab2prod.servers.artifacts import ARTIFACTS, copy_artifact, verified_artifacts
from lab2prod.servers.base import ServerClient, ServerConfig, http_request, limits_check
from lab2prod.servers.rayserve.server import (
    DEPLOYMENT,
    RayConfig,
    RayServer,
    rayservice_manifest,
    serve_config,
    stop_recorded,
    validate_rayservice,
    write_model_dir,
    write_serve_config,
)
from lab2prod.servers.torchserve.server import exported_torchscript

__all__ = ["RayServeServer", "SERVER", "metric_rows", "audit_ray_config"]

# The CPUs the local Ray gets; the replicas share them evenly, so each can be placed.
NUM_CPUS = 2
# Counters and latency sums of the deployment, totalled over replicas for the metrics table.
METRICS = ("request_counter", "processing_latency_ms_sum", "processing_latency_ms_count", "num_router_requests",
           "request_latency_ms_count", "batch_size_count")


def metric_rows(samples: list[dict]) -> list[dict]:
    """Ray Serve's request counters and latency sums for the deployment, one row per metric."""
    totals: dict[str, float] = {}
    for sample in samples:
        name = sample["metric"]
        if any(key in name for key in METRICS):
            totals[name] = totals.get(name, 0.0) + float(sample["value"])
    return [{"metric": name, "labels": "all replicas", "value": value} for name, value in sorted(totals.items())]


def _model_dir(run_dir: Path, folder: str = "serving") -> Path:
    return Path(run_dir) / folder / "rayserve" / "model"


@dataclass
class _Live(ServerClient):
    server: RayServer
    model_dir: Path
    run_dir: Path
    model: str = "model"
    loaded: object = None
    seed: int = 0
    config: ServerConfig | None = None

    @property
    def served_file(self) -> str:
        return str((self.model_dir / "model.pt").relative_to(self.run_dir))

    def deploy(self, config: ServerConfig) -> None:
        native = SERVER.native(config)
        if native.high_throughput != self.server.high_throughput:
            # the mode is read when Ray's processes start: a Ray in the other mode is stopped and a new one started
            self.server.stop()
            self.server = RayServer(self.server.serve_dir, self.server.num_cpus, native.high_throughput).start_cleanly()
        self.server.deploy(self.model_dir, native, self.model)
        self.config = config

    def scrape(self) -> list[dict]:
        return metric_rows(self.server.scrape_metrics())

    def limits(self, body: bytes, max_request_size: int, content_type: str | None) -> list[dict]:
        # Ray Serve has no /ping of TorchServe's: its rows are left out
        return [row for row in limits_check(self.server, self.model, body, max_request_size, content_type)
                if not row["request"].startswith("ping")]

    def model_pids(self) -> list[int]:
        """The replicas' pids, each as the replica says (its settings route); asked until every running replica
        answered, at most 20 times."""
        replicas = max(1, (self.config or ServerConfig()).workers)
        pids: set[int] = set()
        for _ in range(20):
            status, body = http_request("GET", f"{self.server.url}/predictions/{self.model}/settings",
                                        self.server.token, timeout=10)
            if status == 200:
                pids.add(int(json.loads(body)["pid"]))
            if len(pids) >= replicas:
                break
        return sorted(pids)

    def own_pids(self) -> list[int]:
        return self.server.recorded_pids()

    def update(self, version: str) -> None:
        """Ray Serve's update: the application redeployed with a model folder of the new version, a rolling
        update (new replicas start before the old ones drain)."""
        folder = self.model_dir.with_name(f"model_v{version}")
        shutil.copytree(self.model_dir, folder, dirs_exist_ok=True)
        spec = json.loads((folder / "lab2prod.json").read_text())
        (folder / "lab2prod.json").write_text(json.dumps({**spec, "version": version}))
        self.server.update(folder, SERVER.native(self.config or ServerConfig()), self.model)
        self.model_dir = folder


def audit_ray_config(path: Path, max_request_size: int = 10_000_000) -> list[dict]:
    """Check a Ray Serve config file written by the serving notebook: each item pass/fail with the
    fix, as for TorchServe. Ray Serve has no authorization of its own, so the application must be
    lab2prod's (its deployment checks a bearer token)."""
    content = yaml.safe_load(Path(path).read_text())
    host = (content.get("http_options") or {}).get("host", "(default: 127.0.0.1)")
    apps = content.get("applications") or []
    sizes = [int(a.get("args", {}).get("max_request_size", 0) or 0) for a in apps]
    return [
        {"item": "ray: token checked by the deployment",
         "passed": bool(apps) and all(a.get("import_path") == f"{DEPLOYMENT}:app" for a in apps),
         "value": ", ".join(a.get("import_path", "?") for a in apps) or "(no application)",
         "fix": f"serve {DEPLOYMENT}:app (its deployment refuses a missing or wrong bearer token); "
                "Ray Serve has no authorization of its own"},
        {"item": "ray: bind address", "passed": host in ("127.0.0.1", "localhost", "(default: 127.0.0.1)"),
         "value": host, "fix": "http_options.host: 127.0.0.1 on a machine; in a pod, a Service and a proxy with TLS"},
        {"item": "ray: max_request_size", "passed": bool(sizes) and all(0 < n <= max_request_size for n in sizes),
         "value": ", ".join(map(str, sizes)) or "(unset)", "fix": f"max_request_size at most {max_request_size}"},
    ]


class RayServeServer:
    """Ray Serve 2.x, embedded: its deployment checks a bearer token and the body size (Ray Serve has no
    authorization of its own), Ray is always shut down, and its processes are recorded for the runner."""

    name, title, gate_prefix, maintained = "rayserve", "Ray Serve", "rayserve", True
    extra = "ray"  # the pyproject extra that installs it: pip install 'lab2prod[ray]'
    # how Ray Serve starts untouched, and its high-throughput mode (HAProxy ingress, throughput-optimized)
    modes = ("default", "high_throughput")
    artifacts = ARTIFACTS  # it hosts Python: any verified artifact

    def check(self) -> None:
        try:
            import ray.serve  # noqa: F401  (heavy optional third-party package: Ray)
        except ImportError:
            raise Lab2ProdError("Ray Serve is not installed; pip install 'lab2prod[ray]'") from None

    def default_config(self, config: ServerConfig) -> ServerConfig:
        # Ray Serve's own defaults for a deployment: one replica, one CPU, torch's default threads, no batching.
        return ServerConfig(1, 0, 1, 5, config.max_request_size, cpus_per_worker=1.0)

    def native(self, config: ServerConfig) -> RayConfig:
        if config.mode not in self.modes:
            raise Lab2ProdError(f"Ray Serve has no mode {config.mode!r}; use one of {', '.join(self.modes)}")
        cpus = config.cpus_per_worker or NUM_CPUS / config.workers
        # Ray's default of 5 ongoing requests per replica caps a batch at 5: a replica takes two batches' worth
        ongoing = 5 if config.batch_size <= 2 else 2 * config.batch_size
        # max_queue counts every request waiting for a worker: in Ray those a replica holds beyond its batch too
        held = config.workers * max(0, ongoing - config.batch_size)
        queued = max(1, config.max_queue - held) if config.max_queue else -1
        return RayConfig(config.workers, cpus, config.threads, config.batch_size, config.max_batch_delay_ms / 1000,
                         config.max_request_size, ongoing, config.mode == "high_throughput", config.artifact, queued)

    @contextmanager
    def serve(self, loaded, run_dir: Path, config: ServerConfig, seed: int = 0,
              guard_max_bytes: int | None = None, folder: str = "serving") -> Iterator[_Live]:
        run_dir = Path(run_dir)
        model_dir = write_model_dir(loaded, _model_dir(run_dir, folder), exported_torchscript(run_dir), seed,
                                    guard_max_bytes or config.max_request_size)
        for artifact in verified_artifacts(run_dir):
            copy_artifact(run_dir, artifact, model_dir)
        live = _Live(RayServer(model_dir.parent, NUM_CPUS, self.native(config).high_throughput).start_cleanly(),
                     model_dir, run_dir, loaded=loaded, seed=seed)
        try:
            live.deploy(config)
            yield live
        finally:
            live.server.stop()  # the Ray of the last mode deployed

    def write_files(self, loaded, run_dir: Path, chosen: ServerConfig, seed: int = 0) -> dict[str, str]:
        run_dir = Path(run_dir)
        ray_dir, native = _model_dir(run_dir).parent, self.native(chosen)
        content = serve_config(str(_model_dir(run_dir)), native)
        config_file = write_serve_config(ray_dir / "serve_config.yaml", content)
        manifest, document = ray_dir / "rayservice.yaml", rayservice_manifest(content, native)
        problems = validate_rayservice(document)
        if problems:  # never write a manifest that would not apply
            raise Lab2ProdError(f"the RayService manifest does not validate: {'; '.join(problems[:3])}")
        manifest.write_text(yaml.safe_dump(document, sort_keys=False))
        return {"serve_config": str(config_file.relative_to(run_dir)), "rayservice": str(manifest.relative_to(run_dir))}

    def stop_recorded(self, run_dir: Path) -> bool:
        return stop_recorded(run_dir)

    def audit(self, run_dir: Path) -> tuple[Path | None, list[dict]]:
        path = _model_dir(run_dir).parent / "serve_config.yaml"  # when the serving study ran Ray Serve
        return (path, audit_ray_config(path)) if path.exists() else (None, [])


SERVER = RayServeServer()
