"""LitServe as the third server: the same codec and guard behind a bearer token, raw image bytes through the
JSON-only API (the RawBody adapter), a body limit, Prometheus metrics, one process per configuration stopped by
its pid, and the config file and Kubernetes manifests of the chosen configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

pytest.importorskip("litserve")

from lab2prod.models.load import load_model  # noqa: E402
from lab2prod.models.requests import request_bodies  # noqa: E402
from lab2prod.servers.base import ServerConfig  # noqa: E402
from lab2prod.servers.kubernetes import validate  # noqa: E402
from lab2prod.servers.litserve import adapter as lit  # noqa: E402
from lab2prod.servers.registry import SERVERS, servers_named  # noqa: E402
from lab2prod.studies import security, serving  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return load_model("digits_cnn")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_litserve_answers_like_the_lab_refuses_what_it_should_and_restarts_per_configuration(digits, tmp_path):
    assert SERVERS["litserve"] is lit.SERVER and lit.SERVER in servers_named(["all"])
    bodies = request_bodies(digits, 12)
    with lit.SERVER.serve(digits, tmp_path, ServerConfig(1, 1, 1, 5, 1_000_000)) as live:
        first = live.server.process.pid
        assert (tmp_path / "serving" / "litserve" / "litserve.pid").read_text() == str(first)
        assert oct(live.server.key_file.stat().st_mode & 0o777) == "0o600"
        parity = serving.live_parity(live, "model", digits, bodies)  # PNG bytes, byte for byte to the codec
        assert parity["failed"] == 0 and parity["top1_agreement"] == 1.0 and parity["max_prob_diff"] < 1e-4
        statuses = {row["request"].split(" of ")[0]: row["status"]
                    for row in live.limits(bodies[0][1], 1_000_000, None)}
        assert statuses == {"predict, no token": 401, "predict, wrong token": 401, "predict, right token": 200,
                            "predict, body": 413}
        status, payload = live.predict("model", b"GIF89a not really")
        assert status == 400 and json.loads(payload)["rejected"] == "format"
        metrics = {(row["metric"], row["labels"]): row["value"] for row in live.scrape()}
        assert metrics[("lab2prod_litserve_requests_total", "status=200")] >= 13
        live.deploy(ServerConfig(2, 1, 4, 5, 1_000_000))  # a new process with two workers and batching
        assert live.server.process.pid != first and not _running(first)
        assert serving.live_parity(live, "model", digits, bodies)["top1_agreement"] == 1.0
        last = live.server.process.pid
    assert not _running(last) and not (tmp_path / "serving" / "litserve" / "key_file.json").exists()
    assert not (tmp_path / "serving" / "litserve" / "litserve.pid").exists()


def test_the_chosen_configuration_is_written_validated_and_audited(digits, tmp_path):
    files = lit.SERVER.write_files(digits, tmp_path, ServerConfig(2, 1, 4, 5, 1_000_000))
    written = json.loads((tmp_path / files["litserve_config"]).read_text())
    assert (written["workers"], written["max_batch_size"], written["batch_timeout_s"]) == (2, 4, 0.005)
    assert (tmp_path / files["litserve_kubernetes"]).exists()
    documents = lit.lit_manifests("lab2prod-litserve", lit.SERVER.native(ServerConfig(2, 2, 4)))
    assert validate(documents) == []
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["cpu"] == "4"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    audit, audited = security.audit_servers(tmp_path)
    assert tmp_path / files["litserve_config"] in audited
    rows = {row["item"]: row["passed"] for row in audit if row["item"].startswith("litserve")}
    assert rows == {"litserve: token checked by the API": True, "litserve: bind address": True,
                    "litserve: max_request_size": True}
    (tmp_path / files["litserve_config"]).write_text(json.dumps({**written, "host": "0.0.0.0"}))
    assert not {row["item"]: row["passed"] for row in lit.audit_lit_config(tmp_path / files["litserve_config"])}[
        "litserve: bind address"]


def test_a_litserve_left_by_a_crashed_run_is_stopped_by_its_recorded_pid_only(tmp_path):
    folder = tmp_path / "run" / "serving" / "litserve"
    folder.mkdir(parents=True)
    # a process that is not lab2prod's LitServe: its recorded pid is not signalled
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (folder / "litserve.pid").write_text(str(other.pid))
        assert lit.stop_recorded(tmp_path / "run") and _running(other.pid)
        assert not (folder / "litserve.pid").exists()
        assert not lit.stop_recorded(tmp_path / "run")  # nothing recorded any more
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()


def _call(middleware, body_chunks, headers=(), answer=b"{}"):
    """Drive the ASGI adapter by hand: what the inner app received, and what the client got."""
    import asyncio

    seen, sent = {}, []

    async def inner(scope, receive, send):
        message = await receive()
        seen.update(headers=dict(scope["headers"]), body=message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"99")]})
        await send({"type": "http.response.body", "body": answer[:5], "more_body": True})
        await send({"type": "http.response.body", "body": answer[5:]})

    messages = [{"type": "http.request", "body": c, "more_body": i < len(body_chunks) - 1}
                for i, c in enumerate(body_chunks)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predictions/model", "headers": list(headers)}
    asyncio.run(middleware(inner)(scope, receive, send))
    return seen, sent


def test_the_raw_body_adapter_hands_litserve_the_exact_bytes_and_refuses_a_body_over_the_limit():
    import base64

    from lab2prod.servers.litserve.app import RawBody
    from lab2prod.servers.timing import parse

    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    seen, sent = _call(lambda app: RawBody(app, "/predictions/model", 1000), [png[:100], png[100:]],
                       [(b"content-type", b"application/octet-stream")])
    assert base64.b64decode(json.loads(seen["body"])["body_b64"]) == png  # two chunks, one body, byte for byte
    assert seen["headers"][b"content-type"] == b"application/json" and sent[0]["status"] == 200
    seen, sent = _call(lambda app: RawBody(app, "/predictions/model", 100), [b"x" * 60, b"x" * 60])
    assert not seen and sent[0]["status"] == 413  # counted as it arrives, never passed on
    seen, sent = _call(lambda app: RawBody(app, "/predictions/model", 100), [b"x" * 10],
                       [(b"content-length", b"5000")])
    assert not seen and sent[0]["status"] == 413 and json.loads(sent[1]["body"])["message"] == "body over 100 bytes"
    # the worker's phases leave the answer and become a Server-Timing header, the rest of the server's time `queue`
    timed = json.dumps({"top1": 3, "_timing": {"codec": 0.5, "inference": 1.5, "postprocess": 0.1}}).encode()
    _, sent = _call(lambda app: RawBody(app, "/predictions/model", 1000), [png], answer=timed)
    headers = dict(sent[0]["headers"])
    assert json.loads(sent[1]["body"]) == {"top1": 3}
    assert headers[b"content-length"] == str(len(sent[1]["body"])).encode()
    assert list(parse(headers[b"server-timing"].decode())) == ["codec", "queue", "inference", "postprocess"]


def _verified_run(digits, run_dir):
    """A run folder as the export notebook leaves it: the AOTInductor package and the ONNX file in the manifest,
    and parity:aoti and parity:onnx passed."""
    from lab2prod.studies import export

    for fmt in ("aoti", "onnx"):
        assert export.export_model(digits, fmt, run_dir / "models").produced
    (run_dir / "manifest.json").write_text(json.dumps([{"format": "aoti", "file": "models/model.aoti.pt2"},
                                                       {"format": "onnx", "file": "models/model.onnx"}]))
    (run_dir / "results").mkdir()
    (run_dir / "results" / "export.json").write_text(json.dumps(
        {"values": {}, "gates": [{"name": "parity:aoti", "passed": True}, {"name": "parity:onnx", "passed": True}]}))
    return run_dir


def _timing(live, body: bytes) -> dict:
    """The Server-Timing phases of one answered request."""
    import urllib.request

    from lab2prod.servers.timing import parse

    request = urllib.request.Request(live.inference_url + "/predictions/model", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {live.keys['inference']}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return parse(response.headers.get("Server-Timing"))


def test_verified_artifacts_are_served_only_once_their_parity_gate_passed_and_report_their_phases(digits, tmp_path):
    from lab2prod.servers.artifacts import load_artifact, verified_artifacts

    run_dir = _verified_run(digits, tmp_path / "run")
    assert verified_artifacts(run_dir) == ["torchscript", "aoti", "onnx"]
    failed = json.dumps({"values": {}, "gates": [{"name": "parity:aoti", "passed": False},
                                                 {"name": "parity:onnx", "passed": False}]})
    (tmp_path / "failed").mkdir()
    for name in ("manifest.json", "models"):
        (tmp_path / "failed" / name).symlink_to(run_dir / name)
    (tmp_path / "failed" / "results").mkdir()
    (tmp_path / "failed" / "results" / "export.json").write_text(failed)
    assert verified_artifacts(tmp_path / "failed") == ["torchscript"]  # a file that failed its gate is never served
    assert verified_artifacts(tmp_path / "nothing") == ["torchscript"]
    batch = digits.make_inputs(4, 1, "test")
    strided = batch.contiguous(memory_format=torch.channels_last)  # a decoded image's layout
    for artifact in ("aoti", "onnx"):
        run = load_artifact(run_dir / "models", artifact, threads=1)
        assert torch.allclose(run(batch), digits.module(batch), atol=1e-4)
        assert torch.allclose(run(strided), digits.module(batch), atol=1e-4)  # AOTInductor does not check strides
    with pytest.raises(ValueError, match="'tflite' is not servable"):
        load_artifact(run_dir / "models", "tflite")
    bodies = request_bodies(digits, 12)
    with lit.SERVER.serve(digits, run_dir, ServerConfig(1, 1, 4, 5, 1_000_000, artifact="aoti")) as live:
        assert (run_dir / "serving" / "litserve" / "model" / "model.aoti.pt2").exists()
        assert live.server.config.artifact == "aoti" and live.server.config.label.endswith("AOTInductor")
        parity = serving.live_parity(live, "model", digits, bodies)
        assert parity["failed"] == 0 and parity["top1_agreement"] == 1.0 and parity["max_prob_diff"] < 1e-4
        phases = _timing(live, bodies[0][1])
        assert list(phases) == ["codec", "queue", "inference", "postprocess"] and phases["inference"] > 0
        live.deploy(ServerConfig(1, 1, 1, 5, 1_000_000, artifact="onnx"))
        assert live.server.config.label.endswith("ONNX Runtime")
        assert serving.live_parity(live, "model", digits, bodies)["top1_agreement"] == 1.0
        assert _timing(live, bodies[1][1])["codec"] > 0  # unbatched too
