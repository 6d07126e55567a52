"""A tiny server, added the way docs/architecture.md says (one module with a `SERVER`, one registry line): the
standard library's threading HTTP server in this process, on 127.0.0.1, serving the model through lab2prod's
codec with a bearer token, a body limit and Prometheus metrics."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lab2prod.core.inputs import call, first_tensor
from lab2prod.kinds.codec import answers, codec_for
from lab2prod.kinds.guard import Rejected
from lab2prod.servers.base import ServerConfig, http_request, limits_check

__all__ = ["TinyServer", "SERVER"]


@dataclass(frozen=True)
class TinyConfig:
    threads: int

    @property
    def label(self) -> str:
        return f"1 thread(s) of HTTP x {self.threads} torch thread(s)"


class _Live:
    def __init__(self, loaded, run_dir: Path, config: ServerConfig, guard_max_bytes: int):
        self.model, self.keys, self.served_file = "model", {"inference": secrets.token_hex(16)}, "in process"
        self.codec = codec_for(loaded, max_bytes=guard_max_bytes)
        self.module, self.task, self.limit = loaded.module, loaded.task, config.max_request_size
        self.registry = CollectorRegistry()
        self.requests = Counter("tiny_requests", "requests by status", ["status"], registry=self.registry)
        self.lock = threading.Lock()
        live = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
                live.requests.labels(str(status)).inc()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                if self.path == "/metrics":
                    return self._send(200, generate_latest(live.registry), "text/plain")
                return self._send(404, b"{}")

            def do_POST(self):
                if not secrets.compare_digest(self.headers.get("Authorization", ""),
                                              f"Bearer {live.keys['inference']}"):
                    return self._send(401, json.dumps({"message": "missing or wrong token"}).encode())
                size = int(self.headers.get("Content-Length", "0"))
                if size > live.limit:
                    return self._send(413, json.dumps({"message": "body too large"}).encode())
                body = self.rfile.read(size)
                try:
                    inputs = live.codec(body)
                except Rejected as exc:
                    return self._send(400, json.dumps({"rejected": exc.code, "message": exc.message}).encode())
                with live.lock, torch.inference_mode():
                    answer = answers(live.task, first_tensor(call(live.module, inputs)))[0]
                return self._send(200, json.dumps(answer).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.inference_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def predict(self, name: str, body: bytes, token: str | None = "", content_type: str | None = None):
        token = self.keys["inference"] if token == "" else token
        return http_request("POST", f"{self.inference_url}/predictions/{name}", token, body, content_type=content_type)

    def deploy(self, config: ServerConfig) -> None:
        self.config = config  # in process: torch's threads are the test process's own, left as they are

    def scrape(self) -> list[dict]:
        _, body = http_request("GET", f"{self.inference_url}/metrics")
        return [{"metric": s.name, "labels": ", ".join(f"{k}={v}" for k, v in s.labels.items()), "value": s.value}
                for family in text_string_to_metric_families(body.decode()) if family.name.startswith("tiny")
                for s in family.samples if s.name.endswith("_total")]

    def limits(self, body: bytes, max_request_size: int, content_type: str | None) -> list[dict]:
        return [row for row in limits_check(self, self.model, body, max_request_size, content_type)
                if not row["request"].startswith("ping")]


class TinyServer:
    name, title, gate_prefix, maintained = "tiny", "Tiny HTTP", "tiny", True

    def check(self) -> None:
        pass

    def default_config(self, config: ServerConfig) -> ServerConfig:
        return ServerConfig(1, 1, 1, 0, config.max_request_size)

    def native(self, config: ServerConfig) -> TinyConfig:
        return TinyConfig(config.threads)

    @contextmanager
    def serve(self, loaded, run_dir: Path, config: ServerConfig, seed: int = 0,
              guard_max_bytes: int | None = None, folder: str = "serving") -> Iterator[_Live]:
        live = _Live(loaded, Path(run_dir), config, guard_max_bytes or config.max_request_size)
        live.thread.start()
        try:
            yield live
        finally:
            live.httpd.shutdown()
            live.httpd.server_close()

    def write_files(self, loaded, run_dir: Path, chosen: ServerConfig, seed: int = 0) -> dict[str, str]:
        path = Path(run_dir) / "serving" / "tiny.json"
        path.write_text(json.dumps({"threads": chosen.threads, "max_request_size": chosen.max_request_size}))
        return {"tiny_config": str(path.relative_to(run_dir))}

    def stop_recorded(self, run_dir: Path) -> bool:
        return False  # it lives in this process: nothing outlives it

    def audit(self, run_dir: Path) -> tuple[Path | None, list[dict]]:
        path = Path(run_dir) / "serving" / "tiny.json"
        if not path.exists():
            return None, []
        size = json.loads(path.read_text())["max_request_size"]
        return path, [{"item": "tiny: max_request_size", "passed": 0 < size <= 10_000_000, "value": size,
                       "fix": "max_request_size at most 10000000"}]


SERVER = TinyServer()
