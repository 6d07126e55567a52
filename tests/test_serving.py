"""TorchServe serving: configuration, archive, limits, load and the guarantee that servers stop."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from lab2prod.core.errors import Lab2ProdError
from lab2prod.servers import loadtest
from lab2prod.servers.torchserve import server as torchserve
from lab2prod.studies import serving


def _have_torchserve() -> bool:
    try:
        torchserve.check_requirements()
        return True
    except Lab2ProdError:
        return False


requires_torchserve = pytest.mark.skipif(not _have_torchserve(), reason="needs Java 17, torchserve and locust")


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_config_binds_loopback_keeps_tokens_and_sets_limits(tmp_path):
    config = torchserve.ServeConfig(workers=2, threads=1, batch_size=4, max_request_size=12345)
    path = torchserve.write_config(tmp_path, config, {"inference": 1, "management": 2, "metrics": 3})
    text = path.read_text()
    assert "inference_address=http://127.0.0.1:1" in text and "metrics_address=http://127.0.0.1:3" in text
    assert "metrics_mode=prometheus" in text and "max_request_size=12345" in text
    assert "default_workers_per_model=2" in text
    assert "disable_token" not in text and "0.0.0.0" not in text
    assert config.label == "2 worker(s) x 1 thread(s), batch 4"
    assert torchserve.DEFAULT_CONFIG.threads == 0 and "default threads" in torchserve.DEFAULT_CONFIG.label


def test_deployment_config_names_the_chosen_configuration(tmp_path):
    chosen = {"workers": 1, "threads": 1, "batch_size": 4, "max_batch_delay_ms": 5}
    text = torchserve.write_deployment_config(tmp_path, "model", chosen, torchserve.ServeConfig()).read_text()
    (line,) = [line for line in text.splitlines() if line.startswith("models=")]
    models = json.loads(line[len("models="):])
    assert models["model"]["1.0"]["batchSize"] == 4 and models["model"]["1.0"]["minWorkers"] == 1
    assert "load_models=model.mar" in text


def test_tuning_grid_and_choice():
    grid = serving.tuning_grid([1, 2], [1, 2], [1, 4], 5)
    assert len(grid) == 8 and {(c.workers, c.threads, c.batch_size) for c in grid} >= {(1, 1, 1), (2, 2, 4)}
    rows = [{"throughput_per_s": 500, "meets_sla": False}, {"throughput_per_s": 300, "meets_sla": True},
            {"throughput_per_s": 200, "meets_sla": True}]
    assert serving.choose(rows) is rows[1]
    missed = [{"throughput_per_s": 50, "meets_sla": False, "p99_ms": 300},
              {"throughput_per_s": 20, "meets_sla": False, "p99_ms": 150}]
    assert serving.choose(missed) is missed[1]  # none meets the SLA: the closest one, flagged
    assert serving.choose([]) is None
    # p99 95% intervals that overlap are not ranked by p99: throughput decides; apart, the lower p99 wins
    close = [{"throughput_per_s": 50, "meets_sla": False, "p99_ms": 160, "p99_ci_ms": [140, 190]},
             {"throughput_per_s": 20, "meets_sla": False, "p99_ms": 150, "p99_ci_ms": [120, 170]}]
    assert serving.p99_overlap(*close) and serving.choose(close) is close[0]
    close[0]["p99_ci_ms"] = [175, 190]
    assert not serving.p99_overlap(*close) and serving.choose(close) is close[1]
    # an artifact whose live parity failed is never chosen, however fast
    wrong = [{"throughput_per_s": 900, "meets_sla": True, "parity_passed": False}, rows[2]]
    assert serving.choose(wrong) is rows[2]


def test_server_timing_is_written_parsed_and_averaged_against_what_the_client_saw():
    from lab2prod.servers.loadtest import phase_means
    from lab2prod.servers.timing import header_value, parse

    value = header_value({"codec": 0.5, "queue": 1.25, "inference": 2.0, "postprocess": 0.25})
    assert value == "codec;dur=0.500, queue;dur=1.250, inference;dur=2.000, postprocess;dur=0.250"
    assert parse(value) == {"codec": 0.5, "queue": 1.25, "inference": 2.0, "postprocess": 0.25}
    assert parse('cache;desc="hit", db;dur=abc, app;dur=3') == {"app": 3.0}  # entries without a duration left out
    samples = [[6.0, True, "model", "codec;dur=1, inference;dur=2"],
               [10.0, True, "model", "codec;dur=3, inference;dur=2"],
               [99.0, False, "model", ""], [5.0, True, "model", ""]]
    means = phase_means(samples)
    assert means == {"codec": 2.0, "inference": 2.0, "network_and_proxy": 4.0, "client": 8.0, "samples": 2}
    assert phase_means([[5.0, True, "model", ""]]) is None


def test_the_batches_a_server_reports_are_averaged_and_an_unfilled_batch_is_named_with_its_cause():
    from lab2prod.servers.loadtest import mean_batch_size, phase_means
    from lab2prod.servers.timing import batch_size, header_value

    value = header_value({"inference": 2.0}, batch=3)
    assert value == "inference;dur=2.000, batch;desc=3" and batch_size(value) == 3
    assert phase_means([[4.0, True, "m", value]])["inference"] == 2.0  # the batch is no phase
    samples = [[4.0, True, "m", header_value({"inference": 1}, 1)], [4.0, True, "m", header_value({"inference": 1}, 2)],
               [9.0, False, "m", ""]]
    assert mean_batch_size(samples) == 1.5 and mean_batch_size([[1.0, True, "m", ""]]) is None
    row = {"batch_size": 4, "mean_batch_size": 1.2, "users": 2, "workers": 1, "max_batch_delay_ms": 5}
    assert serving.batch_limit(row).startswith("client concurrency")
    assert serving.batch_limit({**row, "users": 8, "max_ongoing_requests": 2}).startswith("max_ongoing_requests 2")
    assert serving.batch_limit({**row, "users": 8}).startswith("the batch delay")
    assert serving.batch_limit({**row, "mean_batch_size": 3.5}) is None  # filled well enough
    assert serving.batch_limit({**row, "batch_size": 1}) is None  # no batching


def test_missing_java_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torchserve.shutil, "which", lambda name: None)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(Lab2ProdError, match="Java 17.*openjdk-17-jre-headless"):
        torchserve.check_requirements()


def test_exported_torchscript_prefers_script(tmp_path):
    assert torchserve.exported_torchscript(tmp_path) is None
    (tmp_path / "models").mkdir()
    for name in ("a.pt", "b.pt"):
        (tmp_path / "models" / name).write_bytes(b"x")
    manifest = [{"format": "torchscript_trace", "file": "models/a.pt"},
                {"format": "torchscript_script", "file": "models/b.pt"}]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert torchserve.exported_torchscript(tmp_path) == tmp_path / "models" / "b.pt"


def test_locustfile_is_valid_python_and_sends_the_token(tmp_path):
    path = loadtest.write_locustfile(tmp_path, [("a", b"\x89PNG fake")])
    subprocess.run([sys.executable, "-m", "py_compile", str(path)], check=True)
    text = path.read_text()
    assert 'f"Bearer {TOKEN}"' in text and "/predictions/{MODEL}" in text and "MAX_REQUESTS" in text
    assert (tmp_path / "serving" / "requests" / "0000.png").read_bytes() == b"\x89PNG fake"


def test_stop_recorded_kills_the_recorded_process_group(tmp_path):
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "torchserve.pgid").write_text(str(process.pid))
    assert torchserve.stop_recorded(tmp_path)
    process.wait(timeout=10)
    assert not _alive(process.pid) and not (tmp_path / "serving" / "torchserve.pgid").exists()
    assert not torchserve.stop_recorded(tmp_path)


def test_gates_skip_models_that_take_tensors():
    gates = serving.serving_gates(serving.ServingReport(False, "takes tensors"), 100.0)
    assert [g["passed"] for g in gates] == [None, None, None]


@requires_torchserve
def test_a_real_torchserve_predicts_refuses_serves_load_and_stops(tmp_path):
    from lab2prod.models.load import load_model

    loaded = load_model("digits_cnn")
    server = torchserve.TorchServe(tmp_path / "serving", torchserve.ServeConfig(max_request_size=200_000))
    try:
        server.start()
        archive = torchserve.build_archive(loaded, tmp_path / "serving", "model", 1)
        name = server.register(archive, torchserve.ServeConfig(workers=1, threads=1))
        (effective,) = server.describe(name)  # read back from TorchServe's management API
        assert (effective["workers"], effective["batch_size"], effective["max_batch_delay_ms"]) == (1, 1, 5)
        # registered with batch 1 where the configuration says 4: named, not silently run
        with pytest.raises(Lab2ProdError, match="batch_size declared 4, TorchServe runs 1"):
            torchserve.check_applied(torchserve.ServeConfig(workers=1, batch_size=4), effective, name)
        requests = serving.request_images(loaded, 12)
        parity = serving.live_parity(server, name, loaded, requests)
        assert parity["failed"] == 0 and parity["top1_agreement"] == 1.0 and parity["max_prob_diff"] <= 1e-4
        checks = torchserve.limits_check(server, name, requests[0][1], 200_000)
        limits = [(row["request"], row["status"]) for row in checks]
        assert [status for _, status in limits[:4]] == [400, 400, 400, 200]  # no token, wrong token, ping, right
        assert "max_request_size" in limits[4][0] and limits[4][1] in (413, 0)  # 413, or the connection closed
        locustfile = loadtest.write_locustfile(tmp_path, requests)
        rows = loadtest.load_sweep(server, name, locustfile, torchserve.ServeConfig(), [1, 4], 2)
        assert [r["users"] for r in rows] == [1, 4]
        assert all(r["requests"] > 0 and r["error_rate"] == 0 and r["p99_ms"] >= r["p50_ms"] for r in rows)
        metrics = {row["metric"]: row["value"] for row in torchserve.scrape_metrics(server)}
        assert metrics["ts_inference_requests_total"] >= sum(r["requests"] for r in rows)
        # The Kubernetes readiness probe, run against this live server: ready with the key file,
        # not ready with a stale one.
        from lab2prod.servers.kubernetes import ping_probe

        key_file = tmp_path / "serving" / "key_file.json"
        probe = [sys.executable, "-c", ping_probe(str(key_file), server.ports["inference"])]
        assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
        stale = tmp_path / "stale_key.json"
        stale.write_text(key_file.read_text().replace(server.keys["inference"], "stale-key"))
        probe = [sys.executable, "-c", ping_probe(str(stale), server.ports["inference"])]
        assert subprocess.run(probe, capture_output=True, timeout=30).returncode != 0
        pid = server.process.pid
    finally:
        server.stop()
    time.sleep(1)
    assert not _alive(pid)
    assert not (tmp_path / "serving" / "key_file.json").exists()
    assert shutil.which("java")  # the requirement check above found it
