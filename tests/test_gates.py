"""Every gate is computed by a library function: each one passes on a good case and fails on a bad one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lab2prod.studies import benchmark, canary, drift, environment, export, quantization, security, serving


def _verdicts(gates):
    return {g["name"]: g["passed"] for g in gates}


def test_export_format_gates():
    artifact = export.ExportArtifact("torch_export", path=Path("model.pt2"))
    good = [export.ComparisonRow("torch_export", 4, "held-out", "cpu", True, 1e-7, 1e-6, 1.0)]
    bad = [export.ComparisonRow("torch_export", 4, "negated", "cpu", True, 0.3, 0.5, 0.7)]
    assert _verdicts(export.format_gates([artifact], good, 1e-4)) == {"parity:torch_export": True}
    (failed,) = export.format_gates([artifact], good + bad, 1e-4)
    assert failed["passed"] is False and "max abs diff 0.3 > 0.0001" in failed["detail"]
    missing = export.ExportArtifact("torchscript_script", error="RuntimeError: cannot script")
    assert _verdicts(export.format_gates([missing], [], 1e-4)) == {"parity:torchscript_script": False}


def _method(name, drop):
    return quantization.MethodResult(name, torch.nn.Identity(), ["fc"], [], 10, 1.0, 1.0,
                                     {"accuracy": 0.9}, drop, {1: 1.0})


def test_quantization_gates():
    fp32, int8 = _method("fp32", 0.0), _method("torch_ao_dynamic", 0.4)
    exported = {"produced": True, "max_abs_diff": 0.0, "top1_agreement": 1.0, "format": "torchscript",
                "error": None}
    assert _verdicts(quantization.quantization_gates([fp32, int8], int8, exported, 1.0)) == {
        "quantization:accuracy": True, "quantization:export": True}
    drifted = {**exported, "max_abs_diff": 0.2}
    assert _verdicts(quantization.quantization_gates([fp32, int8], int8, drifted, 1.0))["quantization:export"] is False
    assert _verdicts(quantization.quantization_gates([fp32, _method("x", 5.0)], None, None, 1.0)) == {
        "quantization:accuracy": False, "quantization:export": False}


def test_benchmark_sla_gate():
    met = {"met": True, "p99_ms": 3.0, "variant": "eager", "batch_size": 16}
    assert benchmark.sla_gate(met, 100.0, "cpu")["passed"] is True
    missed = benchmark.sla_gate({**met, "met": False, "p99_ms": 300.0}, 100.0, "cpu")
    assert missed["passed"] is False and missed["detail"] == "no correct configuration has p99 <= 100 ms on cpu"


def test_environment_gate():
    smoke = [{"op": "gelu", "passed": True}]
    ops = [{"op": "aten.conv2d", "ran": True}]
    assert environment.environment_gate([{"key": "tz", "severity": "warn", "lab": "UTC", "here": "CET"}], smoke,
                                        ops)["passed"] is True
    failed = environment.environment_gate([{"key": "torch", "severity": "fail", "lab": "2.9", "here": "2.14"}],
                                          [{"op": "gelu", "passed": False}], ops)
    assert failed["passed"] is False and failed["value"] == 2 and "torch: lab 2.9 vs here 2.14" in failed["detail"]


def _scenarios(no_shift_rate, darker_rate):
    test = drift.PRIMARY_TEST
    return [{"scenario": "no shift", "test": test, "detection_rate": no_shift_rate, "accuracy_change_pts": 0.0},
            {"scenario": "darker", "test": test, "detection_rate": darker_rate, "accuracy_change_pts": -40.0}]


def test_drift_gate():
    assert drift.drift_gate(drift.DriftReport(True, scenarios=_scenarios(0.04, 1.0)))["passed"] is True
    assert drift.drift_gate(drift.DriftReport(True, scenarios=_scenarios(0.3, 1.0)))["passed"] is False
    missed = drift.drift_gate(drift.DriftReport(True, scenarios=_scenarios(0.0, 0.5)))
    assert missed["passed"] is False and "missed: darker" in missed["detail"]
    skipped = drift.drift_gate(drift.DriftReport(False, reason="takes tensors"))
    assert skipped["passed"] is None and skipped["detail"] == "takes tensors"


def test_security_gates():
    refused = [{"input": "empty", "rejected": True, "reason": "empty", "crashed": False, "server_alive": True}]
    checks = [{"check": "sha256", "passed": True}]
    audit = [{"item": "token auth", "passed": True, "fix": ""}]
    assert set(_verdicts(security.security_gates(refused, checks, audit)).values()) == {True}
    crashed = [{**refused[0], "rejected": False, "reason": None, "crashed": True}]
    dead = [{**refused[0], "server_alive": False}]
    assert _verdicts(security.security_gates(crashed, checks, audit))["security:inputs"] is False
    assert _verdicts(security.security_gates(dead, checks, audit))["security:inputs"] is False
    bad = security.security_gates(None, [{"check": "tampered copy refused", "passed": False}],
                                  [{"item": "bind address", "passed": False, "fix": "use 127.0.0.1"}], "tensors")
    assert _verdicts(bad) == {"security:inputs": None, "security:integrity": False, "security:config": False}
    assert "bind address: use 127.0.0.1" in bad[2]["detail"]


def _served(max_prob_diff=0.0, error_rate=0.0, p99=20.0):
    return serving.ServingReport(True, parity={"failed": 0, "top1_agreement": 1.0, "max_prob_diff": max_prob_diff,
                                               "requests": 8},
                                 load=[{"users": 1, "error_rate": error_rate, "p99_ms": p99},
                                       {"users": 8, "error_rate": 0.0, "p99_ms": p99 * 3}])


def test_serving_gates_and_results():
    assert set(_verdicts(serving.serving_gates(_served(), 100.0)).values()) == {True}
    assert _verdicts(serving.serving_gates(_served(max_prob_diff=0.1), 100.0))["serving:parity"] is False
    assert _verdicts(serving.serving_gates(_served(error_rate=0.5), 100.0))["serving:errors"] is False
    assert _verdicts(serving.serving_gates(_served(p99=150.0), 100.0))["serving:sla"] is False
    results = serving.serving_results(_served())
    assert results.parity_top1_agreement == 1.0 and results.tuned is None and len(results.load) == 2


@pytest.mark.parametrize("decision, verified, expected", [("promote", True, True), ("rollback", False, False)])
def test_canary_gates(decision, verified, expected):
    served = {"1.0": {"failed": 0, "top1_agreement": 1.0, "max_prob_diff": 0.0, "requests": 10}}
    applied = {"verified": verified, "default_answered_by": "v2", "expected": "v2", "action": "set-default",
               "status": 200}
    report = canary.CanaryReport("v1", "v2", {"agreement": 1.0}, [], rollout={
        "served_like_offline": served, "applied": applied}, decision=decision,
        rules=[{"rule": "accuracy", "outcome": decision, "detail": "interval below the budget"}])
    assert _verdicts(canary.canary_gates(report)) == {"canary:decision": expected, "canary:served": True,
                                                      "canary:rollback": verified}
