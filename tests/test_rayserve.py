"""Ray Serve beside TorchServe: the deployment, its token and limits, the Serve config that
`serve run` starts, the RayService manifest, and the side-by-side choice."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")

from lab2prod.core.errors import Lab2ProdError  # noqa: E402
from lab2prod.kinds import codec  # noqa: E402
from lab2prod.models.load import load_model  # noqa: E402
from lab2prod.models.requests import request_bodies  # noqa: E402
from lab2prod.servers.rayserve import server as rayserve  # noqa: E402
from lab2prod.servers.torchserve.server import free_port, http_request, tool_path  # noqa: E402
from lab2prod.studies import serving  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return load_model("digits_cnn")


def test_ray_serve_answers_like_the_lab_and_refuses_what_it_should(digits, tmp_path):
    model_dir = rayserve.write_model_dir(digits, tmp_path / "model")
    bodies = request_bodies(digits, 12)
    # in the high-throughput mode: HAProxy in front, the throughput-optimized settings, the same answers
    with rayserve.RayServer(tmp_path / "ray", high_throughput=True) as server:
        assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        assert oct(server.key_file.stat().st_mode & 0o777) == "0o600"
        assert (tmp_path / "ray" / "ray.pids").read_text().strip()  # recorded for the runner
        server.deploy(model_dir, rayserve.RayConfig(max_batch_size=4))
        parity = serving.live_parity(server, "model", digits, bodies)
        assert parity["failed"] == 0 and parity["top1_agreement"] == 1.0 and parity["max_prob_diff"] < 1e-4
        # what Ray runs, read back from Ray: a configuration it does not run is named by its field
        effective = server.effective("model")
        assert (effective["replicas"], effective["max_batch_size"], effective["max_ongoing_requests"]) == (1, 4, 5)
        with pytest.raises(Lab2ProdError, match="max_batch_size declared 8, Ray Serve runs 4"):
            rayserve.check_applied(rayserve.RayConfig(max_batch_size=8), effective)
        statuses = {row["request"]: row["status"] for row in
                    serving.limits_check(server, "model", bodies[0][1], 1_000_000)}
        assert statuses["predict, no token"] == 401 and statuses["predict, wrong token"] == 401
        assert statuses["predict, right token"] == 200
        assert [s for r, s in statuses.items() if r.startswith("predict, body of")] == [413]
        status, payload = server.predict("model", b"GIF89a not really")
        assert status == 400 and json.loads(payload)["rejected"] == "format"
        assert server.predict("model", bodies[0][1])[0] == 200  # still answering after a refusal
        assert any(m["metric"].startswith("ray_serve") for m in server.scrape_metrics())
        assert any("haproxy" in line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                                                 text=True).stdout.splitlines())
        # the same folder served from its ONNX file in ONNX Runtime, redeployed on the running Ray
        from lab2prod.models.onnx_rt import export_onnx

        export_onnx(digits.module, digits.make_inputs(2, 0, "train"), model_dir / "model.onnx")
        server.deploy(model_dir, rayserve.RayConfig(max_batch_size=4, artifact="onnx"))
        parity = serving.live_parity(server, "model", digits, bodies)
        assert parity["failed"] == 0 and parity["top1_agreement"] == 1.0 and parity["max_prob_diff"] < 1e-4
    assert not (tmp_path / "ray" / "key_file.json").exists() and not (tmp_path / "ray" / "ray.pids").exists()
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ  # the mode was set for that Ray only


def test_ray_is_shut_down_after_an_error(tmp_path):
    import ray

    with pytest.raises(RuntimeError, match="boom"):
        with rayserve.RayServer(tmp_path / "ray"):
            raise RuntimeError("boom")
    assert not ray.is_initialized() and not (tmp_path / "ray" / "ray.pids").exists()


def test_a_start_that_times_out_is_tried_once_more_after_what_it_started_is_stopped(tmp_path, monkeypatch):
    import ray

    attempts, left = [], []

    def busy_machine_init(**kwargs):  # what ray.init leaves when its node does not register in time
        left.append(subprocess.Popen(["sleep", "60"]))
        attempts.append(kwargs["_temp_dir"])
        message = ("The current node timed out during startup. This could happen because some of the raylet "
                   "failed to startup or the GCS has become overloaded.")
        raise Exception(message if len(attempts) == 1 else "port 6379 is taken")

    monkeypatch.setattr(ray, "init", busy_machine_init)
    with pytest.raises(Lab2ProdError, match="^Ray did not start: Exception: port 6379 is taken$") as error:
        rayserve.RayServer(tmp_path / "ray").start()
    assert "\n" not in str(error.value) and len(attempts) == 2  # retried on the timeout, not on the other error
    assert [proc.wait(timeout=10) for proc in left] == [-signal.SIGKILL] * 2  # stopped by their pids
    assert not any(Path(folder).exists() for folder in attempts)
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ and not ray.is_initialized()
    assert not (tmp_path / "ray" / "key_file.json").exists()


def test_the_serve_config_starts_with_serve_run_and_answers_the_right_class(digits, tmp_path, monkeypatch):
    import ray
    from ray import serve

    from lab2prod.kinds.image import encode_request
    from lab2prod.models.images import parity_images

    model_dir = rayserve.write_model_dir(digits, tmp_path / "model")
    port, token = free_port(), "a-test-token"
    config = rayserve.write_serve_config(tmp_path / "serve_config.yaml",
                                         rayserve.serve_config(str(model_dir), rayserve.RayConfig(), port=port))
    _, images, _ = parity_images("digits", 6)
    temp = Path(tempfile.mkdtemp(prefix="r"))  # Ray's unix socket paths must stay under 108 bytes
    # The replicas read the token from the node's environment, as a RayService's pods get it from a Secret.
    monkeypatch.setenv(rayserve.TOKEN_ENV, token)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(temp), log_to_driver=False)
    proc = None
    try:
        address = ray.get_runtime_context().gcs_address
        proc = subprocess.Popen([tool_path("serve"), "run", "--address", address, str(config)],
                                env={**os.environ, rayserve.TOKEN_ENV: token}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        url = f"http://127.0.0.1:{port}/predictions/model"
        deadline, status = time.monotonic() + 180, 0
        while time.monotonic() < deadline and status != 200 and proc.poll() is None:
            try:
                status, _ = http_request("POST", url, token, encode_request(images[0], "rgb")[0], timeout=10)
            except OSError:  # the proxy is up before the application: a request may wait and time out
                status = 0
            time.sleep(1)
        assert status == 200, proc.stdout.read() if proc.poll() is not None else f"no answer, last {status}"
        answers = [json.loads(http_request("POST", url, token, encode_request(image, "rgb")[0])[1])["top1"]
                   for image in images]
        lab = codec.codec_for(digits, guarded=False)
        expected = [int(codec.lab_answer(digits.module, lab, encode_request(image, "rgb")[0], "classifier").argmax())
                    for image in images]
        assert answers == expected  # the class the lab answers (not the label: weights differ between CPUs)
        assert http_request("POST", url, "wrong", encode_request(images[0], "rgb")[0])[0] == 401
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_the_rayservice_manifest_and_the_serve_config_are_checked_against_their_schemas():
    chosen = rayserve.RayConfig(replicas=2, cpus_per_replica=1.0, threads=1, max_batch_size=4)
    content = rayserve.serve_config("/model", chosen)
    manifest = rayserve.rayservice_manifest(content, chosen)
    assert rayserve.validate_rayservice(manifest) == []
    worker = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert worker["rayStartParams"]["num-cpus"] == "2"  # replicas x CPUs per replica
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "2"
    assert "0.0.0.0" in manifest["spec"]["serveConfigV2"] and "token_file" not in manifest["spec"]["serveConfigV2"]
    broken = json.loads(json.dumps(manifest))
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["cpu"] = 2
    assert any("PodTemplate" in p for p in rayserve.validate_rayservice(broken))
    broken = json.loads(json.dumps(manifest))
    broken["spec"]["serveConfigV2"] = "applications: [{name: m}]"  # no import_path
    assert any(p.startswith("spec.serveConfigV2") for p in rayserve.validate_rayservice(broken))
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    with pytest.raises(ValidationError, match="import_path"):
        ServeDeploySchema.model_validate({**content, "applications": [{"name": "m"}]})


def test_the_high_throughput_mode_is_a_tuning_dimension_written_into_the_deployment_files(tmp_path):
    ray = serving.SERVERS["rayserve"]
    assert ray.modes == ("default", "high_throughput") and ray.default_config(serving.ServerConfig()).mode == "default"
    untouched = ray.native(ray.default_config(serving.ServerConfig()))
    assert untouched.max_ongoing_requests == 5 and not untouched.high_throughput  # Ray Serve's own defaults
    fast = ray.native(serving.ServerConfig(workers=2, batch_size=8, mode="high_throughput"))
    assert fast.high_throughput and fast.max_ongoing_requests == 16 and fast.label.endswith("high-throughput")
    with pytest.raises(Lab2ProdError, match="no mode 'turbo'"):
        ray.native(serving.ServerConfig(mode="turbo"))
    content = rayserve.serve_config("/model", fast)
    written = rayserve.write_serve_config(tmp_path / "serve_config.yaml", content).read_text()
    assert written.startswith("# Tuned in Ray Serve's high-throughput mode: start Ray with RAY_SERVE_ENABLE_HA_PROXY=1")
    manifest = rayserve.rayservice_manifest(content, fast)
    assert rayserve.validate_rayservice(manifest) == []
    for group in (manifest["spec"]["rayClusterConfig"]["headGroupSpec"],
                  *manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]):
        env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    plain = rayserve.rayservice_manifest(rayserve.serve_config("/model", untouched), untouched)
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in json.dumps(plain)
    assert not rayserve.write_serve_config(tmp_path / "plain.yaml", rayserve.serve_config("/model", untouched)) \
        .read_text().startswith("#")
    from lab2prod.servers.rayserve.deployment import _typed

    assert _typed(False, "true") is True and _typed(False, "0") is False and _typed(5, "16") == 16


def test_the_security_audit_covers_the_ray_serve_config(tmp_path):
    from lab2prod.servers.rayserve.adapter import audit_ray_config

    good = rayserve.write_serve_config(tmp_path / "good.yaml", rayserve.serve_config("/model", rayserve.RayConfig()))
    assert all(row["passed"] for row in audit_ray_config(good))
    content = rayserve.serve_config("/model", rayserve.RayConfig(), host="0.0.0.0")
    content["applications"][0]["import_path"] = "mypkg.app:build"
    rows = {row["item"]: row["passed"] for row in audit_ray_config(rayserve.write_serve_config(tmp_path / "bad.yaml",
                                                                                               content))}
    assert rows == {"ray: token checked by the deployment": False, "ray: bind address": False,
                    "ray: max_request_size": True}


def test_the_grid_shares_the_cpus_and_the_backend_is_checked():
    grid = serving.ray_grid([1, 2], [1, 2], [1, 4], num_cpus=2)
    assert len(grid) == 8 and all(c.replicas * c.cpus_per_replica == 2 for c in grid)
    assert serving.check_backend(["both"]) == ["both"]
    assert [s.name for s in serving.selected_servers(["rayserve", "torchserve"])] == ["rayserve", "torchserve"]
    with pytest.raises(Lab2ProdError, match="use any of torchserve, rayserve, litserve, both, all"):
        serving.check_backend(["triton"])


def _row(server, config, throughput, p99, meets=True):
    return {"server": server, "config": config, "throughput_per_s": throughput, "p99_ms": p99, "meets_sla": meets}


def test_the_pick_follows_the_numbers_and_weighs_maintenance():
    close = [_row("TorchServe", "tuned", 110, 20), _row("Ray Serve", "tuned", 100, 25)]
    assert serving.pick_server(close, 100).startswith("pick Ray Serve: TorchServe is 1.10x faster")
    far = [_row("TorchServe", "tuned", 300, 20), _row("Ray Serve", "tuned", 100, 25)]
    assert serving.pick_server(far, 100).startswith("pick TorchServe: 3.00x")
    only = [_row("TorchServe", "tuned", 300, 200, meets=False), _row("Ray Serve", "tuned", 100, 25)]
    assert serving.pick_server(only, 100).startswith("pick Ray Serve: only it meets")
    assert "nothing to compare" in serving.pick_server(far[:1], 100)
