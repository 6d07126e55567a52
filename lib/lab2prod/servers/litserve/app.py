"""The LitServe server process lab2prod starts: `python -m lab2prod.servers.litserve.app litserve.json`.

It serves the same model folder as Ray Serve (TorchScript `model.pt`, `lab2prod.json`, the codec's files) through
the same codec object with its guard, and answers what the TorchServe handler answers:
- the request body reaches the codec byte for byte: LitServe's API parses only JSON or forms, so a thin ASGI
  adapter (`RawBody`) wraps any body sent to the model's path into JSON `{"body_b64": ...}` first;
- a bearer token (LitAPI.authorize; LitServe's own key is an X-API-Key header), read from LAB2PROD_TOKEN or
  the key file;
- bodies over `max_request_size` are refused with 413 by that adapter (LitServe's own `max_payload_size` raises
  its 413 from inside the body stream, which an ASGI middleware in front of the app turns into a 500), a refused
  input with 400 and its reason code;
- Prometheus metrics of the API process at /metrics (prometheus_client), requests by status and latency;
- each answer's phases in a Server-Timing header: the worker times codec, inference and postprocess and hands
  them back inside the answer (`_timing`); the adapter moves them into the header, with the rest of the time
  the request spent in the server (LitServe's queues to and from the worker, and batch filling) as `queue`.
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import time
from pathlib import Path

import litserve
import torch
from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from lab2prod.core.inputs import cat
from lab2prod.kinds.codec import answers, from_spec
from lab2prod.kinds.guard import Rejected
from lab2prod.servers.artifacts import load_artifact
from lab2prod.servers.base import read_token
from lab2prod.servers.timing import BATCH, HEADER, Stopwatch, header_value

__all__ = ["RawBody", "LabAPI", "main"]

REQUESTS = Counter("lab2prod_litserve_requests", "Requests to the model's path, by HTTP status", ["status"])
LATENCY = Histogram("lab2prod_litserve_request_latency_seconds", "Time from request to response in the API process",
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


class RawBody:
    """ASGI middleware: the body of a POST to `path`, whatever its content type, becomes JSON
    `{"body_b64": <base64>}`, so LitServe (which parses JSON or forms) hands the codec the exact bytes the
    client sent; a body over `max_size` bytes is refused with 413 before it is read to the end. It also counts
    the path's requests and latencies for /metrics."""

    def __init__(self, app, path: str, max_size: int):
        self.app, self.path, self.max_size = app, path, int(max_size)

    async def _too_large(self, receive, send, read: int) -> None:
        # read what is left of a body up to a bound (a client that writes its whole body before it reads the
        # answer would otherwise see a reset connection, not the 413), then refuse
        more = receive is not _nothing
        while more and read <= 4 * self.max_size:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            read += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = json.dumps({"code": 413, "message": f"body over {self.max_size} bytes"}).encode()
        REQUESTS.labels("413").inc()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_size:
            return await self._too_large(receive, send, 0)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size, more = size + len(chunks[-1]), message.get("more_body", False)
            if size > self.max_size:
                return await self._too_large(receive if more else _nothing, send, size)
        wrapped = json.dumps({"body_b64": base64.b64encode(b"".join(chunks)).decode("ascii")}).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(wrapped)).encode())]
        sent = False

        async def replay():
            nonlocal sent
            if sent:  # the body was given: what comes next is the client's (a disconnect)
                return await receive()
            sent = True
            return {"type": "http.request", "body": wrapped, "more_body": False}

        start, body = None, []

        async def counted(message):
            nonlocal start
            if message["type"] == "http.response.start":
                REQUESTS.labels(str(message["status"])).inc()
                LATENCY.observe(time.perf_counter() - started)
                if message["status"] == 200:
                    start = message  # held until the body is whole: its timing becomes a header
                    return None
            elif start is not None and message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return None
                await self._timed(start, b"".join(body), started, send)
                return None
            await send(message)

        return await self.app({**scope, "headers": headers}, replay, counted)

    @staticmethod
    async def _timed(start: dict, body: bytes, started: float, send) -> None:
        """Send an answer with its `_timing` moved from the JSON body into a Server-Timing header."""
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        try:
            answer = json.loads(body)
            phases = answer.pop("_timing")
        except (ValueError, KeyError, TypeError, AttributeError):
            answer, phases = None, None
        if phases is not None:
            in_server = (time.perf_counter() - started) * 1000
            size = phases.pop(BATCH, None)
            phases = {"codec": phases["codec"], "queue": max(0.0, in_server - sum(phases.values())),
                      "inference": phases["inference"], "postprocess": phases["postprocess"]}
            body = json.dumps(answer).encode()
            headers.append((HEADER.lower().encode(), header_value(phases, size).encode()))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _nothing():
    return {"type": "http.request", "body": b"", "more_body": False}


class LabAPI(litserve.LitAPI):
    """The model behind LitServe: token check, the codec (guard + lab preprocessing) per request, a batch
    through the TorchScript model, the answers of `lab2prod.kinds.codec.answers`."""

    def __init__(self, config: dict):
        super().__init__(max_batch_size=int(config["max_batch_size"]),
                         batch_timeout=float(config["batch_timeout_s"]), api_path=config["path"])
        self.config = config
        self.token = read_token(config.get("token_file", ""))

    def setup(self, device):
        if int(self.config["threads"]) > 0:
            torch.set_num_threads(int(self.config["threads"]))  # one worker, its threads: no oversubscription
        model_dir = Path(self.config["model_dir"])
        spec = json.loads((model_dir / "lab2prod.json").read_text())
        self.task = spec.get("task", "classifier")
        self.codec = from_spec(spec["codec"], model_dir)
        self.model = load_artifact(model_dir, self.config.get("artifact", "torchscript"), int(self.config["threads"]))

    def authorize(self, request: Request) -> None:
        if request.url.path == "/health":  # LitServe guards /health with the API's check too; probes carry no token
            return
        if not secrets.compare_digest(request.headers.get("authorization", ""), f"Bearer {self.token}"):
            raise HTTPException(status_code=401, detail={"code": 401, "message": "missing or wrong token"})

    def decode_request(self, request):  # unannotated: LitServe parses the (adapted) JSON body
        """(the model's inputs, codec ms)."""
        watch = Stopwatch()
        try:
            item = self.codec(base64.b64decode(request["body_b64"]))
        except Rejected as exc:
            raise HTTPException(status_code=400, detail={"code": 400, "rejected": exc.code,
                                                         "message": exc.message}) from None
        return item, watch.lap()

    def batch(self, inputs: list):
        return cat([item for item, _ in inputs]), [codec_ms for _, codec_ms in inputs]

    def predict(self, inputs):
        """(answer, phases) per request: its codec ms and its batch's inference and postprocess ms."""
        batch, codec = inputs
        codec = codec if isinstance(codec, list) else [codec]  # unbatched: one request
        watch = Stopwatch()
        with torch.inference_mode():
            raw = self.model(batch)
        inference_ms = watch.lap()
        answered = answers(self.task, raw)
        postprocess_ms = watch.lap()
        return [(answer, {"codec": ms, "inference": inference_ms, "postprocess": postprocess_ms, BATCH: len(codec)})
                for answer, ms in zip(answered, codec, strict=True)]

    def unbatch(self, outputs: list) -> list:
        return outputs

    def encode_response(self, output):
        answer, phases = output[0] if isinstance(output, list) else output  # unbatched: a list of one
        return {**answer, "_timing": phases}  # the adapter moves it into the Server-Timing header


def _flat(request, exc: HTTPException) -> JSONResponse:
    # the body the other servers send for a refusal ({"code", "rejected", "message"}), not FastAPI's {"detail"}
    body = exc.detail if isinstance(exc.detail, dict) else {"code": exc.status_code, "message": str(exc.detail)}
    return JSONResponse(body, status_code=exc.status_code)


def server(config: dict) -> litserve.LitServer:
    """The LitServer of a litserve.json config: workers on the CPU, the body limit, the raw-body adapter,
    /metrics."""
    built = litserve.LitServer(LabAPI(config), accelerator="cpu", devices=1,
                               workers_per_device=int(config["workers"]), timeout=float(config["timeout_s"]),
                               middlewares=[(RawBody, {"path": config["path"],
                                                       "max_size": int(config["max_request_size"])})],
                               disable_openapi_url=True)
    built.app.add_exception_handler(HTTPException, _flat)

    @built.app.get("/metrics")
    def metrics():
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return built


def main(argv: list[str]) -> None:
    config = json.loads(Path(argv[0]).read_text())
    server(config).run(host=config["host"], port=int(config["port"]), num_api_servers=1,
                       generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
