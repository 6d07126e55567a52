"""TorchServe behind the `Server` protocol: started with the run's config, the model archive registered per
configuration (the thread count lives in the archive), Prometheus counters, the config.properties and
Kubernetes files of the chosen configuration.

TorchServe's repository was archived on 2025-08-07: no releases and no security patches since. It stays the
seed's server here; the pick never recommends it on speed alone."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lab2prod.servers.base import ServerClient, ServerConfig, limits_check
from lab2prod.servers.kubernetes import write_deployment
from lab2prod.servers.torchserve.server import (
    DEFAULT_CONFIG,
    ServeConfig,
    TorchServe,
    build_archive,
    check_requirements,
    exported_torchscript,
    scrape_metrics,
    stop_recorded,
    write_deployment_config,
)

__all__ = ["TorchServeServer", "SERVER", "audit_config", "config_to_audit"]

MODEL_NAME = "model"


@dataclass
class _Live(ServerClient):
    """The running TorchServe and the archive registered now (`model`), built in `serve_dir`."""

    server: TorchServe
    loaded: object
    run_dir: Path
    seed: int
    model_file: Path | None
    guard_max_bytes: int = 1_000_000
    model: str = ""
    archives: dict = field(default_factory=dict)
    serve_dir: Path | None = None
    config: ServerConfig | None = None
    version: str = "1.0"

    @property
    def served_file(self) -> str:
        return str(self.model_file.relative_to(self.run_dir)) if self.model_file else "traced here"

    def _archive(self, config: ServerConfig, version: str = "1.0") -> Path:
        key = (config.threads, config.max_queue, version)
        if key not in self.archives:  # the first archive is the one the run leaves behind
            archive = MODEL_NAME if not self.archives else f"m_t{config.threads}_q{config.max_queue}_v{version}"
            self.archives[key] = build_archive(self.loaded, self.serve_dir or self.run_dir / "serving", MODEL_NAME,
                                               config.threads, self.seed, self.model_file, version=version,
                                               archive_name=archive, max_bytes=self.guard_max_bytes,
                                               job_queue_size=config.max_queue)
        return self.archives[key]

    def deploy(self, config: ServerConfig) -> None:
        if self.model:
            self.server.unregister(self.model)
        self.config, self.version = config, "1.0"
        self.model = self.server.register(self._archive(config), SERVER.native(config), name=MODEL_NAME)

    def scrape(self) -> list[dict]:
        return scrape_metrics(self.server)

    def limits(self, body: bytes, max_request_size: int, content_type: str | None) -> list[dict]:
        return limits_check(self.server, self.model, body, max_request_size, content_type)

    def model_pids(self) -> list[int]:
        return [pid for info in self.server.describe(self.model) for pid in info["pids"]]

    def own_pids(self) -> list[int]:
        return [self.server.process.pid] if self.server.process else []

    def update(self, version: str, drain_s: float = 2.0) -> None:
        """TorchServe's update: register the new version beside the running one, make it the default, let the
        requests the old one already holds finish (`drain_s`), then unregister it."""
        old, config = self.version, self.config or ServerConfig()
        self.server.register(self._archive(config, version), SERVER.native(config), name=self.model)
        self.server.switch(self.model, version, old, drain_s)
        self.version = version


def _properties(path: Path) -> dict:
    values = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def audit_config(path: Path, max_request_size: int = 10_000_000) -> list[dict]:
    """Check a TorchServe config.properties: each item pass/fail with the fix."""
    props = _properties(path)
    addresses = {k: v for k, v in props.items() if k.endswith("_address")}
    public = [k for k, v in addresses.items() if "0.0.0.0" in v or "[::]" in v]
    size = int(props.get("max_request_size", "6553500"))
    rows = [
        {"item": "token authorization", "passed": props.get("disable_token_authorization", "false") != "true",
         "value": props.get("disable_token_authorization", "(default: on)"),
         "fix": "remove disable_token_authorization=true"},
        {"item": "bind addresses", "passed": bool(addresses) and not public,
         "value": ", ".join(f"{k}={v}" for k, v in sorted(addresses.items())) or "(defaults)",
         "fix": "bind to 127.0.0.1 and put a proxy with TLS in front"},
        {"item": "allowed_urls", "passed": "allowed_urls" in props and "http" not in props["allowed_urls"],
         "value": props.get("allowed_urls", "(default: any http(s) or file URL)"),
         "fix": "allowed_urls=file://.*|... limited to the model store"},
        {"item": "max_request_size", "passed": size <= max_request_size, "value": size,
         "fix": f"max_request_size at most {max_request_size}"},
        {"item": "model API (register/unregister)", "passed": props.get("enable_model_api", "false") != "true",
         "value": props.get("enable_model_api", "(default: off)"),
         "fix": "enable_model_api=false; load models with load_models at start"},
    ]
    return rows


def config_to_audit(run_dir: Path) -> Path:
    """The serving notebook's config.properties in this run, else lab2prod's deployment config
    written to run_dir/security."""
    served = Path(run_dir) / "serving" / "config.properties"
    if served.exists():
        return served
    (Path(run_dir) / "security").mkdir(parents=True, exist_ok=True)
    return write_deployment_config(Path(run_dir) / "security", "model", None, ServeConfig())


class TorchServeServer:
    """TorchServe 0.12 (Java 17), token authorization on, bound to 127.0.0.1, stopped by the pid it started."""

    name, title, gate_prefix, maintained = "torchserve", "TorchServe", "serving", False
    extra = "serving"  # the pyproject extra that installs it: pip install 'lab2prod[serving]'
    modes = ("default",)  # one way to start it
    artifacts = ("torchscript",)  # what its handler loads

    def check(self) -> None:
        check_requirements()

    def default_config(self, config: ServerConfig) -> ServerConfig:
        default = DEFAULT_CONFIG  # a worker per core, each with torch's default threads
        return ServerConfig(default.workers, default.threads, default.batch_size, default.max_batch_delay_ms,
                            config.max_request_size)

    def native(self, config: ServerConfig) -> ServeConfig:
        return ServeConfig(config.workers, config.threads, config.batch_size, config.max_batch_delay_ms,
                           config.max_request_size, config.max_queue or ServeConfig.job_queue_size)

    @contextmanager
    def serve(self, loaded, run_dir: Path, config: ServerConfig, seed: int = 0,
              guard_max_bytes: int | None = None, folder: str = "serving") -> Iterator[_Live]:
        run_dir = Path(run_dir)
        server = TorchServe(run_dir / folder, self.native(config))
        try:
            server.start()
            live = _Live(server, loaded, run_dir, seed, exported_torchscript(run_dir),
                         guard_max_bytes or config.max_request_size, serve_dir=run_dir / folder)
            live.deploy(config)
            yield live
        finally:
            server.stop()

    def write_files(self, loaded, run_dir: Path, chosen: ServerConfig, seed: int = 0) -> dict[str, str]:
        run_dir = Path(run_dir)
        serve_dir = run_dir / "serving"
        native = self.native(chosen)
        # the archive the config names, with the chosen threads
        build_archive(loaded, serve_dir, MODEL_NAME, chosen.threads, seed, exported_torchscript(run_dir),
                      job_queue_size=chosen.max_queue)
        chosen_row = {"workers": native.workers, "threads": native.threads, "batch_size": native.batch_size,
                      "max_batch_delay_ms": native.max_batch_delay_ms}
        config_file = write_deployment_config(serve_dir, MODEL_NAME, chosen_row, native)
        kubernetes = write_deployment(serve_dir, MODEL_NAME, chosen_row, native.workers, native.threads,
                                      native.batch_size, native.max_batch_delay_ms)
        return {"config_file": str(config_file.relative_to(run_dir)),
                "kubernetes": str(kubernetes.relative_to(run_dir))}

    def stop_recorded(self, run_dir: Path) -> bool:
        return stop_recorded(run_dir)

    def audit(self, run_dir: Path) -> tuple[Path | None, list[dict]]:
        path = config_to_audit(run_dir)
        return path, audit_config(path)


SERVER = TorchServeServer()
