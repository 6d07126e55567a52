"""The resilience study: the numbers it judges by (slope interval, rate buckets, recovery), the bounds it refuses,
and the real servers through every phase, a leaking model failing its soak."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from lab2prod.core.errors import Lab2ProdError
from lab2prod.models.load import load_model
from lab2prod.servers.base import ServerConfig, queue_bound
from lab2prod.servers.registry import SERVERS
from lab2prod.servers.timing import header_value, version_of
from lab2prod.studies import resilience

GATES = {f"resilience:{name}" for name in ("cold_start", "overload", "recovery", "soak", "update", "rate_limit", "tls",
                                            "fuzz")}
QUICK = dict(users=4, overload_factor=4, soak_s=6.0, phase_s=12.0, burst_s=2.0, fuzz_requests=200,
             fuzz_mutations=1000)


def test_the_slope_interval_passes_noise_and_catches_growth():
    rng = np.random.default_rng(0)
    t = np.arange(0, 30, 0.25)
    flat = resilience.slope_interval(t, 700 + rng.normal(0, 0.3, t.size))
    low, high = flat["ci_mb_per_min"]
    assert low <= 0 <= high and flat["samples"] == t.size  # noise: the interval holds zero
    growing = resilience.slope_interval(t, 700 + t * 0.5 + rng.normal(0, 0.3, t.size))  # 30 MB/min
    assert growing["ci_mb_per_min"][0] > 20 and abs(growing["mb_per_min"] - 30) < 3
    assert resilience.slope_interval([0, 1], [1, 2])["mb_per_min"] is None  # too few samples to say


def test_rate_buckets_and_recovery_read_the_samples_by_their_end_time():
    t0, rng = 1000.0, random.Random(0)
    # 100 answers a second, none between the kill at t0+3 and t0+5, failures in that gap
    samples = [[5.0, True, "m", "", 200, t0 + i / 100] for i in range(1000) if not 300 <= i < 500]
    samples += [[5.0, False, "m", "", 0, t0 + 3 + rng.random() * 2] for _ in range(4)]
    buckets = resilience.rate_buckets(samples, t0, t0 + 10, width=0.5)
    assert len(buckets) == 20 and buckets[0]["ok_per_s"] == 100 and buckets[7]["ok_per_s"] == 0
    assert sum(b["failed_per_s"] for b in buckets) * 0.5 == 4
    assert resilience.recovery_seconds(samples, t0 + 3, 100, t0 + 10) == 2.0
    assert resilience.recovery_seconds(samples[:300], t0 + 3, 100, t0 + 10) is None  # never came back


def test_the_queue_bound_follows_littles_law_and_never_drops_below_a_batch_per_worker():
    assert queue_bound(400, 100) == 20  # 400 requests a second drain 20 in half of a 100 ms SLA
    assert queue_bound(10, 100, workers=2, batch_size=4) == 8
    assert queue_bound(0, 100) == 1 and queue_bound(401, 100) == 21


def test_each_server_starts_as_the_serving_study_tuned_it_in_the_same_run(tmp_path):
    fallback = ServerConfig(workers=1, threads=1)
    config, source = resilience.tuned_config(tmp_path, "rayserve", fallback)
    assert config == fallback and "no tuned configuration" in source  # the serving study did not run
    (tmp_path / "results").mkdir()
    chosen = {"workers": 2, "threads": 1, "batch_size": 4, "mode": "high_throughput", "artifact": "onnx",
              "max_queue": 12, "throughput_per_s": 240.0}  # a tuning row carries more than the configuration
    (tmp_path / "results" / "serving.json").write_text(json.dumps({"name": "serving", "gates": [], "values": {
        "servers": {"rayserve": {"chosen_config": chosen}}}}))
    config, source = resilience.tuned_config(tmp_path, "rayserve", fallback)
    assert (config.workers, config.batch_size, config.mode, config.artifact) == (2, 4, "high_throughput", "onnx")
    assert source == "the serving study's tuned configuration"
    assert resilience.tuned_config(tmp_path, "torchserve", fallback)[0] == fallback  # not tuned in this run


def test_the_rate_limit_holds_only_when_the_flooder_is_refused_and_the_other_client_is_not():
    held = {"flooder_refused": 900, "refusal_code": "rate_limited", "flooder_admitted_per_s": 80, "limit_per_s": 84,
            "steady_refused": 0, "steady_p99_ms": 20.0, "sla_ms": 100.0}
    assert resilience._limited(held)
    assert not resilience._limited({**held, "flooder_refused": 0})  # the limit never bit
    assert not resilience._limited({**held, "refusal_code": None})  # a 429 without its reason
    assert not resilience._limited({**held, "flooder_admitted_per_s": 120})  # let through past the limit
    assert not resilience._limited({**held, "steady_refused": 1})  # the other client paid for the flood
    assert not resilience._limited({**held, "steady_p99_ms": 150.0})


def test_probes_cover_twice_the_measured_start_and_the_version_travels_in_server_timing():
    probe = resilience.probes(23.0)
    assert probe["covers_s"] >= 46 and probe["startupProbe"]["failureThreshold"] * 5 == probe["covers_s"]
    assert version_of(header_value({"inference": 1.0}, 2, "2.0")) == "2.0"
    assert version_of(header_value({"inference": 1.0}, 2)) is None


@pytest.mark.parametrize("settings, message", [
    (resilience.Settings(users=200, overload_factor=4), "800 Locust users, over the bound of 512"),
    (resilience.Settings(soak_s=7200), "soak_s=7200 s is over the bound of 3600 s"),
    (resilience.Settings(phase_s=2), "phase_s=2 leaves no time to kill a worker"),
])
def test_a_soak_or_burst_beyond_the_machine_is_refused_before_anything_starts(settings, message):
    with pytest.raises(Lab2ProdError, match=message):
        resilience.check_bounds(settings)


def _every_gate_has_a_value(servers: dict, settings: resilience.Settings) -> dict:
    gates = {g["name"]: g for g in resilience.gates_of(servers, settings, {"mutations": settings.fuzz_mutations})}
    assert set(gates) == GATES
    assert all(g["value"] is not None and g["passed"] is not None for g in gates.values()), gates
    return gates


def test_ray_serve_replaces_a_killed_replica_and_updates_without_a_failed_request(tmp_path):
    pytest.importorskip("ray.serve")
    settings = resilience.Settings(**{**QUICK, "phase_s": 20.0})
    loaded = load_model("digits_cnn")
    served = resilience.evaluate(SERVERS["rayserve"], loaded, tmp_path, ServerConfig(), settings)
    gates = _every_gate_has_a_value({"rayserve": served}, settings)
    assert served["recovery"]["replaced"] and served["recovery"]["killed_pid"] not in served["recovery"]["replaced_by"]
    assert served["update"]["failed_during_switch"] == 0 and served["update"]["answers_from_new"] > 0
    assert gates["resilience:update"]["passed"] and gates["resilience:fuzz"]["passed"]
    default, bounded = served["overload"]
    assert bounded["refused_fast"] > 0 and bounded["timed_out"] == 0  # max_queued_requests: 503 at once
    # the front door: the flooder refused with a reason, the other client never; TLS verified, plain refused
    limited, tls = served["front_door"]["rate_limit"], served["front_door"]["tls"]
    assert limited["flooder_refused"] > 0 and limited["refusal_code"] == "rate_limited"
    assert limited["steady_refused"] == 0 and limited["steady_requests"] >= 5
    assert tls["verified_status"] == 200 and tls["plain_refused"] and tls["untrusted_refused"]
    assert gates["resilience:tls"]["passed"] and (tmp_path / served["front_door"]["config"]).exists()
    assert not (tmp_path / "resilience" / "rayserve" / "ray.pids").exists()


def _window(kb: float, low: float) -> dict:
    return {"seconds": 10.0, "requests": 700, "kb_per_request": kb, "ci_kb_per_request": [low, kb + 1],
            "mb_per_min": kb * 4, "ci_mb_per_min": [low * 4, kb * 4 + 4], "samples": 40}


@pytest.mark.parametrize("windows, judged, confirmed", [
    ([_window(8.4, 6.5), _window(0.1, -0.8)], 0.1, True),  # an allocator's step in the first window, then flat
    ([_window(8.4, 6.5), _window(8.1, 6.0)], 8.1, True),  # a leak grows in both
    ([_window(0.9, -0.2)], 0.9, False),  # within the bound: no second window
])
def test_a_soak_over_the_bound_is_confirmed_in_a_second_window(monkeypatch, windows, judged, confirmed):
    left = list(windows)
    monkeypatch.setattr(resilience, "_soak", lambda *args: left.pop(0))
    soak = resilience._soak_confirmed(None, Path("locustfile.py"), 4, 10.0, None, max_kb_per_request=2.0)
    assert soak["kb_per_request"] == judged and not left and ("first_window" in soak) == confirmed
    if confirmed:
        assert soak["first_window"]["kb_per_request"] == 8.4
        assert resilience._slope(soak).endswith("in a second window after +8.40 KB per request")


def test_torchserve_goes_through_every_phase_and_a_model_keeping_its_inputs_fails_the_soak(run_cli, torchserve,
                                                                                            tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "export,resilience", "--model", "lab2prod.examples:leaky_cnn",
                   "--example-inputs", "lab2prod.examples:digits_inputs", "--no-progress",
                   "-p", "export.formats=[torchscript_script]", "-p", "export.batch_sizes=[1]",
                   *[arg for name, value in QUICK.items() for arg in ("-p", f"resilience.{name}={value}")],
                   "--out", str(out), "--run-id", "r")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads((out / "r" / "summary.json").read_text())
    gates = {g["name"]: g for g in summary["gates"] if g["name"].startswith("resilience:")}
    assert set(gates) == GATES and all(g["value"] is not None for g in gates.values())
    soak = gates["resilience:soak"]
    assert soak["passed"] is False and soak["value"] > soak["threshold"], soak  # it grows with every request
    assert "KB per request" in soak["detail"] and "FAIL resilience:soak" in proc.stdout
    served = summary["results"]["resilience"]["servers"]["torchserve"]
    # a leak grows in the second window too, so the soak that confirms it fails as the first did
    assert "in a second window after" in soak["detail"] and served["soak"]["first_window"]["kb_per_request"] > 2
    assert served["soak"]["samples"] >= 10 and served["cold_start"]["first_status"] == 200
    assert served["cold_start"]["covers_s"] >= 2 * served["cold_start"]["start_s"]
    # the fuzzed bodies: every one answered or refused with a reason, none a server error
    assert served["fuzz"]["requests"] == 200 and gates["resilience:fuzz"]["passed"]
    assert set(served["fuzz"]["by_status"]) <= {"200", "400", "413"}
    # the killed worker was one TorchServe started, and TorchServe replaced it with another pid
    recovery = served["recovery"]
    assert recovery["replaced"] and recovery["killed_pid"] not in recovery["replaced_by"]
    # every answer after the switch names v2 (read from the Server-Timing header), and none failed
    assert served["update"]["answers_from_new"] > 0 and served["update"]["failed_during_switch"] == 0
    # the queue bounded: the burst's excess refused at once with 503, nothing timed out
    default, bounded = served["overload"]
    assert default["queue"] == "server default" and bounded["refused_fast"] > 0 and bounded["timed_out"] == 0
    assert set(bounded["by_status"]) <= {"200", "503"}
    assert not (out / "r" / "resilience" / "torchserve.pgid").exists()  # stopped, by the pid it started
    # the front door in front of TorchServe: a flooder refused at its limit, the other client answered
    limited = served["front_door"]["rate_limit"]
    assert limited["flooder_refused"] > 0 and limited["steady_refused"] == 0
    assert limited["flooder_admitted_per_s"] <= 1.1 * limited["limit_per_s"] + 1
    assert gates["resilience:tls"]["passed"], gates["resilience:tls"]
    door = (out / "r" / served["front_door"]["config"]).read_text()
    assert "ssl crt" in door and f"ge {limited['limit_per_s']}" in door  # the measured limit, written
    probes = yaml.safe_load((out / "r" / "resilience" / "torchserve-probes.yaml").read_text())
    assert probes["startupProbe"]["failureThreshold"] * probes["startupProbe"]["periodSeconds"] >= \
        served["cold_start"]["start_s"] * 2


@pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="needs locust (requirements.txt)")
def test_a_server_in_one_file_gets_the_phases_it_can_run(tmp_path, monkeypatch):
    # Locust runs as a command: importing it here would let gevent patch this process's threads
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "tiny_server"))
    tiny = __import__("tiny_http").SERVER
    monkeypatch.setitem(SERVERS, tiny.name, tiny)
    settings = resilience.Settings(**{**QUICK, "burst_s": 1.0, "fuzz_requests": 100})
    served = resilience.evaluate(tiny, load_model("digits_cnn"), tmp_path, ServerConfig(), settings)
    assert served["cold_start"]["first_status"] == 200 and served["fuzz"]["server_errors"] == 0
    assert "does not report its model processes" in served["skipped"] and "recovery" not in served
    gates = {g["name"]: g for g in resilience.gates_of({"tiny": served}, settings, {"mutations": 1000})}
    assert gates["resilience:recovery"]["passed"] is None and "Tiny HTTP" in gates["resilience:recovery"]["detail"]
    assert gates["resilience:cold_start"]["passed"]
