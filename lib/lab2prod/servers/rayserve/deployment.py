"""The Ray Serve deployment, imported by Ray (its import path, as `serve run` and a Serve config name it):
token and size checks, the request codec with its guard, `@serve.batch`, the answers the TorchServe handler gives."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import torch
from ray import serve
from starlette.responses import JSONResponse

from lab2prod.core.inputs import cat
from lab2prod.kinds.codec import answers, from_spec
from lab2prod.kinds.guard import Rejected
from lab2prod.servers.artifacts import load_artifact
from lab2prod.servers.base import read_token
from lab2prod.servers.rayserve.server import DEFAULT_RAY_CONFIG, RayConfig
from lab2prod.servers.timing import HEADER, Stopwatch, header_value

__all__ = ["LabModel", "app"]


class LabModel:
    """The Ray Serve deployment: token and size checks, the codec (guard + lab preprocessing) per
    request, a `@serve.batch` of requests through the TorchScript model, the answers of
    `lab2prod.kinds.codec.answers`. A refused request gets HTTP 400 with its reason code."""

    def __init__(self, model_dir: str, token_file: str = "", threads: int = 1, max_batch_size: int = 1,
                 batch_wait_timeout_s: float = 0.005, max_request_size: int = 1_000_000, artifact: str = "torchscript"):

        if int(threads) > 0:
            torch.set_num_threads(int(threads))  # one replica, its CPUs: no oversubscription
        spec = json.loads((Path(model_dir) / "lab2prod.json").read_text())
        self.task = spec.get("task", "classifier")
        self.codec = from_spec(spec["codec"], model_dir)
        self.version = str(spec.get("version", ""))  # each answer names the version of the model folder
        self.model = load_artifact(Path(model_dir), artifact, int(threads))  # any verified artifact
        self.token = read_token(token_file)
        self.max_request_size = int(max_request_size)
        self.infer.set_max_batch_size(int(max_batch_size))
        self.infer.set_batch_wait_timeout_s(float(batch_wait_timeout_s))

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.005)
    async def infer(self, items: list) -> list[tuple[dict, dict, int]]:
        """(answer, {inference, postprocess} ms of its batch, the batch's size) per request."""
        watch = Stopwatch()
        with torch.inference_mode():
            raw = self.model(cat(items))
        phases = {"inference": watch.lap()}
        answered = answers(self.task, raw)
        phases["postprocess"] = watch.lap()
        return [(answer, phases, len(items)) for answer in answered]

    def settings(self) -> dict:
        """What this replica runs with, read from Ray and torch themselves: lab2prod compares it with what it
        deployed (`RayServer.effective`)."""
        context = serve.get_replica_context()
        deployed = getattr(context, "_deployment_config", None)
        # @serve.batch keeps its queue's getters on the wrapper ("so they can be accessed in user code")
        return {"max_batch_size": self.infer._get_max_batch_size(),
                "batch_wait_timeout_s": self.infer._get_batch_wait_timeout_s(),
                "max_ongoing_requests": getattr(deployed, "max_ongoing_requests", None),
                "threads": torch.get_num_threads(), "pid": os.getpid(), "version": self.version}

    async def __call__(self, request):
        if not secrets.compare_digest(request.headers.get("authorization", ""), f"Bearer {self.token}"):
            return JSONResponse({"code": 401, "type": "Unauthorized", "message": "missing or wrong token"},
                                status_code=401)
        if request.method == "GET" and request.url.path.endswith("/settings"):
            return JSONResponse(self.settings())
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_request_size:
            return JSONResponse({"code": 413, "message": f"body over {self.max_request_size} bytes"}, status_code=413)
        body = await request.body()
        if len(body) > self.max_request_size:
            return JSONResponse({"code": 413, "message": f"body over {self.max_request_size} bytes"}, status_code=413)
        watch = Stopwatch()
        try:
            item = self.codec(body)
        except Rejected as exc:
            return JSONResponse({"code": 400, "rejected": exc.code, "message": exc.message}, status_code=400)
        codec_ms = watch.lap()
        answer, batch, size = await self.infer(item)
        waited = watch.lap()  # the batch's queue and its run: what is not the batch's own phases was waiting
        phases = {"codec": codec_ms, "queue": max(0.0, waited - sum(batch.values())), **batch}
        return JSONResponse(answer, headers={HEADER: header_value(phases, size, self.version)})



HEALTH_CHECK_PERIOD_S = 2.0


def _typed(default, value):
    if isinstance(default, bool) and isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return type(default)(value)


def app(args: dict):
    """The application builder `serve run` and a Serve config file name
    (`import_path: lab2prod.servers.rayserve.deployment:app`): args are model_dir, token_file and the RayConfig
    fields, and optionally how long a stopping replica drains (Ray's defaults: 2 s loops, 20 s at most)."""
    config = RayConfig(**{k: _typed(getattr(DEFAULT_RAY_CONFIG, k), v) for k, v in args.items()
                          if k in RayConfig.__dataclass_fields__})
    deployment = serve.deployment(LabModel, name="LabModel").options(
        num_replicas=config.replicas, ray_actor_options={"num_cpus": config.cpus_per_replica},
        max_ongoing_requests=config.max_ongoing_requests, max_queued_requests=config.max_queued_requests,
        # Ray's default checks a replica's health every 10 s: a killed replica is noticed, and replaced, that late
        # (measured by the resilience study); every 2 s it is replaced within seconds
        health_check_period_s=float(args.get("health_check_period_s", HEALTH_CHECK_PERIOD_S)),
        graceful_shutdown_wait_loop_s=float(args.get("graceful_shutdown_wait_loop_s", 2.0)),
        graceful_shutdown_timeout_s=float(args.get("graceful_shutdown_timeout_s", 20.0)))
    return deployment.bind(str(args["model_dir"]), str(args.get("token_file", "")), config.threads,
                           config.max_batch_size, config.batch_wait_timeout_s, config.max_request_size,
                           config.artifact)
