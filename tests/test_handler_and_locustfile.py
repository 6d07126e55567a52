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

from lab2prod.kinds.codec import codec_for, lab_answer  # noqa: E402
from lab2prod.models.load import load_model  # noqa: E402
from lab2prod.servers.loadtest import LOCUSTFILE, write_locustfile  # noqa: E402
from lab2prod.servers.timing import batch_size, parse  # noqa: E402
from lab2prod.servers.torchserve.handler import Lab2ProdHandler  # noqa: E402
from lab2prod.servers.torchserve.server import trace_to_file  # noqa: E402
from lab2prod.studies.serving import request_images  # noqa: E402


class FakeContext:
    """What TorchServe hands a handler: system properties, the manifest, the model's yaml config,
    and a place for per-request response statuses and headers."""

    def __init__(self, model_dir, serialized="model.pt"):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 8}
        self.manifest = {"model": {"serializedFile": serialized, "modelName": "model"}}
        self.model_yaml_config = {"handler": {"threads": 1}}
        self.statuses, self.headers = {}, {}

    def set_response_status(self, code, phrase, idx=0):
        self.statuses[idx] = (code, phrase)

    def set_response_header(self, idx, key, value):
        self.headers.setdefault(idx, {})[key] = value


def _model_dir(loaded, folder):
    """What build_archive puts in an archive, written to a folder as TorchServe unpacks it."""
    trace_to_file(loaded.module, loaded.make_inputs(2, 0, "train"), folder / "model.pt")
    spec, _ = codec_for(loaded).archive(folder)
    (folder / "lab2prod.json").write_text(json.dumps({"family": loaded.family, "task": loaded.task, "codec": spec}))
    threads = torch.get_num_threads()
    handler = Lab2ProdHandler()
    handler.initialize(FakeContext(folder))
    torch.set_num_threads(threads)  # the handler sets one thread, as in a worker
    return handler


@pytest.fixture(scope="module")
def handler_and_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model_dir")
    loaded = load_model("digits_cnn")
    return _model_dir(loaded, folder), loaded, folder


def _lab_answers(loaded, requests):
    lab = codec_for(loaded, guarded=False)
    with torch.inference_mode():
        return torch.stack([lab_answer(loaded.module, lab, body, loaded.task) for _, body in requests])


def test_handler_answers_like_the_lab_and_refuses_bad_requests_with_a_reason(handler_and_model):
    handler, loaded, folder = handler_and_model
    requests = request_images(loaded, 3)
    context = FakeContext(folder)
    rows = [{"data": body} for _, body in requests] + [{"body": b"not an image"}, {"data": b""}]
    outputs = handler.handle(rows, context)
    assert len(outputs) == 5
    expected = _lab_answers(loaded, requests)
    for output, probabilities in zip(outputs[:3], expected, strict=True):
        assert output["top1"] == int(probabilities.argmax())
        assert max(abs(a - b) for a, b in zip(output["probabilities"], probabilities.tolist(), strict=True)) < 1e-5
    assert outputs[3]["rejected"] and outputs[4]["rejected"]
    assert context.statuses == {3: (400, outputs[3]["rejected"]), 4: (400, outputs[4]["rejected"])}
    # each answered request's phases in its Server-Timing header; a refused one has none
    assert sorted(context.headers) == [0, 1, 2]
    phases = parse(context.headers[0]["Server-Timing"])
    assert list(phases) == ["codec", "inference", "postprocess"] and all(ms >= 0 for ms in phases.values())
    # the batch held the three answered requests of the five sent (two were refused before it)
    assert {batch_size(h["Server-Timing"]) for h in context.headers.values()} == {3}


def test_an_onnx_runtime_int8_file_is_served_like_the_recipe_in_process(tmp_path):
    import shutil

    from lab2prod.models.onnx_rt import OrtModule
    from lab2prod.studies.quantization import quantize

    loaded = load_model("digits_mlp")
    recipe = quantize(loaded.module, "onnxruntime_int8_dynamic_per_channel", (), example=loaded.make_inputs(2, 0))
    shutil.copyfile(recipe.path, tmp_path / "model.onnx")
    spec, _ = codec_for(loaded).archive(tmp_path)
    (tmp_path / "lab2prod.json").write_text(json.dumps({"family": loaded.family, "task": loaded.task, "codec": spec}))
    threads = torch.get_num_threads()
    handler = Lab2ProdHandler()
    handler.initialize(FakeContext(tmp_path, "model.onnx"))
    torch.set_num_threads(threads)
    assert isinstance(handler.model, OrtModule)
    requests = request_images(loaded, 3)
    # one request a call: dynamic int8 quantizes activations by the range of the batch it is given
    outputs = [handler.handle([{"data": body}], FakeContext(tmp_path, "model.onnx"))[0] for _, body in requests]
    lab = codec_for(loaded, guarded=False)
    with torch.inference_mode():
        expected = torch.stack([lab_answer(recipe, lab, body, loaded.task) for _, body in requests])
    for output, probabilities in zip(outputs, expected, strict=True):
        assert max(abs(a - b) for a, b in zip(output["probabilities"], probabilities.tolist(), strict=True)) < 1e-5


def test_handler_stages_can_be_called_one_by_one(handler_and_model):
    handler, loaded, folder = handler_and_model
    handler.context = FakeContext(folder)
    tensors, kept, outputs = handler.preprocess([{"data": body} for _, body in request_images(loaded, 2)])
    assert kept == [0, 1] and outputs == [None, None] and tensors[0].shape == (1, *loaded.input_shape)
    answers = handler.postprocess(handler.inference(tensors))
    assert [len(a["probabilities"]) for a in answers] == [10, 10]


def test_a_tensor_model_is_served_from_json_arrays_and_a_bad_body_gets_its_reason(tmp_path):
    loaded = load_model("lab2prod.examples:token_classifier", example_inputs="lab2prod.examples:token_inputs")
    handler = _model_dir(loaded, tmp_path)
    requests = request_images(loaded, 4)
    assert json.loads(requests[0][1]).keys() == {"input_ids", "attention_mask"}
    context = FakeContext(tmp_path)
    # TorchServe hands an application/json body over parsed; a body it could not parse stays bytes.
    rows = [{"data": json.loads(body)} for _, body in requests] + [{"body": b'{"input_ids": [1]}'}]
    outputs = handler.handle(rows, context)
    expected = _lab_answers(loaded, requests)
    for output, probabilities in zip(outputs[:4], expected, strict=True):
        assert output["top1"] == int(probabilities.argmax())
        assert max(abs(a - b) for a, b in zip(output["probabilities"], probabilities.tolist(), strict=True)) < 1e-5
    assert outputs[4]["rejected"] == "keys" and context.statuses == {4: (400, "keys")}


def test_a_hugging_face_encoder_is_served_from_text_with_its_archived_tokenizer(tmp_path):
    os.environ["HF_HUB_OFFLINE"] = "1"
    pytest.importorskip("transformers")
    from lab2prod.examples import save_hf_example

    folder = save_hf_example(str(tmp_path / "encoder"), task="embedder", layers=1, hidden=32)
    loaded = load_model(f"hf:{folder}")
    served = tmp_path / "served"
    served.mkdir()
    handler = _model_dir(loaded, served)
    assert (served / "tokenizer.json").exists()  # the archive carries the tokenizer
    requests = request_images(loaded, 3)
    outputs = handler.handle([{"data": body} for _, body in requests] + [{"data": b'{"text": ""}'}],
                             FakeContext(served))
    expected = _lab_answers(loaded, requests)
    for output, vector in zip(outputs[:3], expected, strict=True):
        assert "top1" not in output and len(output["embedding"]) == vector.numel()
        assert torch.allclose(torch.tensor(output["embedding"]), vector, atol=1e-5)
    assert outputs[3]["rejected"] == "empty_text"


class _Stub(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, self.headers.get("Authorization"), len(body)))
        try:
            self.send_response(200 if self.headers.get("Authorization") == "Bearer secret" else 400)
            self.send_header("Server-Timing", "codec;dur=0.5, inference;dur=1.5")
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
    assert all(ok and status == 200 for _, ok, _, _, status, _ in recorded)  # every request carried the token
    assert all(timing == "codec;dur=0.5, inference;dur=1.5" for _, _, _, timing, _, _ in recorded)  # the header
    ends = [ended for *_, ended in recorded]  # each request's wall-clock end, for the resilience timeline
    assert max(ends) - min(ends) < 60 and sorted(ends)[0] > 1.7e9
    share_v2 = sum(label == "v2" for _, _, label, _, _, _ in recorded) / len(recorded)
    assert 0.12 < share_v2 < 0.28
    assert {path for path, _, _ in _Stub.seen} == {"/predictions/model/1.0", "/predictions/model/2.0"}
    assert {size for _, _, size in _Stub.seen} == {8, 9}  # both request images were sent


def test_each_p99_says_how_many_samples_it_rests_on_and_its_bootstrap_interval():
    import numpy as np

    from lab2prod.servers.loadtest import latency_stats, percentile_interval

    rng = np.random.default_rng(0)
    latencies = rng.lognormal(2.0, 0.5, 2000)
    row = latency_stats(latencies, [True] * 2000, 10.0)
    assert row["p99_tail_samples"] == 20 and row["throughput_per_s"] == 200.0
    low, high = row["p99_ci_ms"]
    assert low < row["p99_ms"] < high and high - low < 0.5 * row["p99_ms"]
    assert latency_stats(latencies[:200], [True] * 200, 1.0)["p99_tail_samples"] == 2  # a P99 on 2 samples
    assert percentile_interval(latencies[:10]) is None  # too few to say anything
    assert latency_stats([], [], 1.0)["p99_ci_ms"] is None
    assert percentile_interval(latencies) == percentile_interval(latencies)  # seeded: the same twice
