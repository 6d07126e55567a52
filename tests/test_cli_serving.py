"""The notebook tier, serving: TorchServe and Ray Serve started by one run and measured side by side, drift and
security live, and two runs compared."""

import json
import subprocess

import pytest
import yaml

from lab2prod.servers.base import queue_bound


def _summary(out, run_id):
    return json.loads((out / run_id / "summary.json").read_text())


def test_both_servers_are_measured_side_by_side_and_nothing_is_left_running(run_cli, tmp_path, torchserve):
    pytest.importorskip("ray.serve")
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "export,serving", "--no-progress", "-p", "backends=both",
                   "-p", "export.formats=['torchscript_trace']", "-p", "users=[2]", "-p", "duration_s=2",
                   "-p", "tune_workers=[1]", "-p", "tune_threads=[1]", "-p", "tune_batch_sizes=[4]",
                   "-p", "parity_requests=16", "-p", "sla_ms=10000", "--out", str(out), "--run-id", "r")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a generous SLA: this checks what the run does
    summary = _summary(out, "r")
    gates = {g["name"]: g["passed"] for g in summary["gates"]}
    assert all(gates[f"{server}:{what}"] for server in ("serving", "rayserve") for what in ("parity", "errors", "sla"))
    serving = summary["results"]["serving"]
    # TorchServe's own results: live parity, the load level, the tuning rows, the files a deployment takes
    assert serving["parity_top1_agreement"] == 1.0 and serving["max_prob_diff"] <= 1e-4
    assert [r["users"] for r in serving["load"]] == [2] and serving["default"]["threads"] == 0
    assert set(serving["tuned"]) == {"workers", "threads", "batch_size", "users", "p99_ms", "throughput_per_s",
                                     "meets_sla"}
    serve = out / "r" / "serving"
    assert (serve / "locustfile.py").exists() and "models=" in (serve / "config.properties").read_text()
    # the written config bounds the queue (Little's law on the chosen configuration's rate), not TorchServe's 100
    queue = int(next(line for line in (serve / "config.properties").read_text().splitlines()
                     if line.startswith("job_queue_size=")).split("=")[1])
    tuned = serving["tuned"]
    assert queue == queue_bound(tuned["throughput_per_s"], 10000, tuned["workers"], tuned["batch_size"])
    assert (out / "r" / serving["kubernetes"]).exists()
    assert not (serve / "torchserve.pgid").exists() and not (serve / "key_file.json").exists()
    rows = {(r["server"], r["config"]) for r in serving["side_by_side"]}
    assert rows == {(s, c) for s in ("TorchServe", "Ray Serve") for c in ("default", "tuned")}
    assert serving["pick"].startswith("pick ") and all(r["share_of_in_process"] > 0 for r in serving["side_by_side"])
    ray = serving["rayserve"]
    assert [r["status"] for r in ray["limits"]] == [401, 401, 200, 413]
    assert (out / "r" / ray["serve_config"]).exists() and (out / "r" / ray["rayservice"]).exists()
    written = yaml.safe_load((out / "r" / ray["serve_config"]).read_text())
    assert written["applications"][0]["args"]["max_queued_requests"] >= 1  # bounded, not Ray's -1
    executed = (out / "r" / "05_serving.ipynb").read_text()
    assert "share_of_in_process" in executed and "pick " in executed and "image/png" in executed  # table, line, plot
    report = (out / "r" / "report.html").read_text()
    assert "rayserve:parity" in report
    leftovers = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.strip()
    assert not leftovers and not list(out.glob("**/ray.pids")) and not list(out.glob("**/key_file.json"))


def test_drift_and_security_run_refuses_every_bad_input(run_cli, tmp_path):
    from lab2prod.servers.torchserve.server import check_requirements

    try:
        check_requirements()
        live = "True"
    except Exception:
        live = "False"  # no Java here: the guard is still tried in process
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "drift,security", "--no-progress", "-p", "batches=12",
                   "-p", "attack_images=40", "-p", f"live_server={live}", "-p", "fuzz_mutations=2000",
                   "--out", str(out), "--run-id", "r")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS security:fuzz: 2000 mutations" in proc.stdout
    results = _summary(out, "r")["results"]
    fuzzed = results["security"]["fuzz"]
    assert fuzzed["mutations"] == 2000 and fuzzed["crashes"] == 0 and fuzzed["refused"] > 0
    assert results["drift"]["false_positive_rate"] <= 0.1
    scenarios = {(r["scenario"], r["test"]): r for r in results["drift"]["scenarios"]}
    assert scenarios[("motivating_case", "mmd_embedding")]["detection_rate"] >= 0.8
    inputs = results["security"]["inputs"]
    assert len(inputs) >= 12 and all(r["rejected"] and r["reason"] for r in inputs)
    if live == "True":
        assert all(r["server_alive"] is not False for r in inputs)
        assert {r["input"] for r in inputs} >= {"no token", "wrong token"}
    adversarial = results["security"]["adversarial"]
    assert adversarial["pgd_accuracy"] <= adversarial["fgsm_accuracy"] <= adversarial["clean_accuracy"]


def test_compare_flags_a_run_made_with_a_slower_variant(run_cli, tmp_path):
    out = tmp_path / "out"
    # 0.8 s of timing per row: at least 100 calls even for the 4x slower variant, or compare
    # will not judge a P99 that rests on a handful of calls.
    quick = ["--only", "benchmark", "--device", "cpu", "--no-progress", "-p", "batch_sizes=[1]",
             "-p", "min_run_time=0.8", "-p", "variants=['eager']", "--out", str(out)]
    assert run_cli("run", *quick, "--run-id", "before").returncode == 0
    slower = run_cli("run", *quick, "--model", "lab2prod.examples:digits_cnn_tta",
                     "--example-inputs", "lab2prod.examples:digits_inputs", "--run-id", "after")
    assert slower.returncode == 0, slower.stdout + slower.stderr
    proc = run_cli("compare", str(out / "before"), str(out / "after"), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    flagged = {c["name"] for c in json.loads(proc.stdout)["changes"] if c["verdict"] == "REGRESSION"}
    assert flagged == {"benchmark.rows[eager/cpu/1].p99_ms"}
    same = run_cli("compare", str(out / "before"), str(out / "before"))
    assert same.returncode == 0 and "no regression" in same.stdout

