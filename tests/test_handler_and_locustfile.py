"""The served handler and the locustfile are real files of the package, tested in process: the handler
against a fake TorchServe context (as TorchServe's own handler tests do), the locustfile against a
stub server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

pytest.importorskip("ts.torch_handler.base_handler", reason="torchserve is not installed")

from lab2prod.loadtest import LOCUSTFILE, write_locustfile  # noqa: E402
from lab2prod.models import load_model  # noqa: E402
from lab2prod.serving import request_images  # noqa: E402
from lab2prod.torchserve import guard_settings  # noqa: E402
from lab2prod.ts_handler import Lab2ProdHandler  # noqa: E402


class FakeContext:
    """What TorchServe hands a handler: system properties, the manifest, the model's yaml config,
    and a place for per-request response statuses."""

    def __init__(self, model_dir):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 8}
        self.manifest = {"model": {"serializedFile": "model.pt", "modelName": "model"}}
        self.model_yaml_config = {"handler": {"threads": 1}}
        self.statuses = {}

    def set_response_status(self, code, phrase, idx=0):
        self.statuses[idx] = (code, phrase)


@pytest.fixture(scope="module")
def handler_and_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model_dir")
    loaded = load_model("digits_cnn")
    torch.jit.save(torch.jit.trace(loaded.module.eval(), loaded.make_inputs(2, 0, "train")), str(folder / "model.pt"))
    (folder / "lab2prod.json").write_text(json.dumps({"family": loaded.family, "guard": guard_settings(loaded)}))
    threads = torch.get_num_threads()
    handler = Lab2ProdHandler()
    handler.initialize(FakeContext(folder))
    torch.set_num_threads(threads)  # the handler sets one thread, as in a worker
    return handler, loaded, folder


def test_handler_answers_like_the_lab_and_refuses_bad_requests_with_a_reason(handler_and_model):
    handler, loaded, folder = handler_and_model
    requests = request_images(loaded, 3)
    context = FakeContext(folder)
    rows = [{"data": body} for _, body in requests] + [{"body": b"not an image"}, {"data": b""}]
    outputs = handler.handle(rows, context)
    assert len(outputs) == 5
    from lab2prod.preprocess import ServingPath, lab_transform_for

    lab = ServingPath(lab_transform_for(loaded.family)[0])
    with torch.inference_mode():
        expected = torch.softmax(loaded.module(torch.stack([lab(body) for _, body in requests])), dim=1)
    for output, probabilities in zip(outputs[:3], expected, strict=True):
        assert output["top1"] == int(probabilities.argmax())
        assert max(abs(a - b) for a, b in zip(output["probabilities"], probabilities.tolist(), strict=True)) < 1e-5
    assert outputs[3]["rejected"] and outputs[4]["rejected"]
    assert context.statuses == {3: (400, outputs[3]["rejected"]), 4: (400, outputs[4]["rejected"])}


def test_handler_stages_can_be_called_one_by_one(handler_and_model):
    handler, loaded, folder = handler_and_model
    handler.context = FakeContext(folder)
    tensors, kept, outputs = handler.preprocess([{"data": body} for _, body in request_images(loaded, 2)])
    assert kept == [0, 1] and outputs == [None, None] and tensors[0].shape == loaded.input_shape
    answers = handler.postprocess(handler.inference(tensors))
    assert [len(a["probabilities"]) for a in answers] == [10, 10]


class _Stub(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, self.headers.get("Authorization"), len(body)))
        try:
            self.send_response(200 if self.headers.get("Authorization") == "Bearer secret" else 400)
            self.end_headers()
            self.wfile.write(b"{}")
        except BrokenPipeError:
            pass  # Locust quit with this request in flight

    def log_message(self, *args):
        pass


def test_the_locustfile_splits_traffic_by_weight_sends_the_token_and_records_every_request(tmp_path):
    locustfile = write_locustfile(tmp_path, [("a", b"\x89PNG one"), ("b", b"\x89PNG two!")])
    assert locustfile.read_text() == LOCUSTFILE.read_text()  # the packaged file, not a template
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    samples = tmp_path / "samples.json"
    routes = [{"path": "/predictions/model/1.0", "weight": 80, "label": "v1"},
              {"path": "/predictions/model/2.0", "weight": 20, "label": "v2"}]
    env = {"LAB2PROD_TOKEN": "secret", "LAB2PROD_IMAGES": str(locustfile.parent / "requests"),
           "LAB2PROD_SAMPLES": str(samples), "LAB2PROD_MAX_REQUESTS": "400", "LAB2PROD_ROUTES": json.dumps(routes)}
    try:
        proc = subprocess.run([sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", "2",
                               "-r", "2", "--run-time", "20s", "--host", f"http://127.0.0.1:{server.server_port}",
                               "--only-summary", "--loglevel", "ERROR"], capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env}, cwd=tmp_path)
    finally:
        server.shutdown()
    recorded = json.loads(samples.read_text())
    assert len(recorded) >= 400, proc.stderr[-500:]
    assert all(ok for _, ok, _ in recorded)  # every request carried the token and got 200
    share_v2 = sum(label == "v2" for _, _, label in recorded) / len(recorded)
    assert 0.12 < share_v2 < 0.28
    assert {path for path, _, _ in _Stub.seen} == {"/predictions/model/1.0", "/predictions/model/2.0"}
    assert {size for _, _, size in _Stub.seen} == {8, 9}  # both request images were sent
