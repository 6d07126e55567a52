"""Canary statistics, the rollback rule, and a real two-version rollout on TorchServe."""

import numpy as np
import pytest
import torch

from lab2prod.core.errors import Lab2ProdError
from lab2prod.studies import canary


def test_mcnemar_matches_scipy_exact_binomial_test():
    from scipy.stats import binomtest

    for v1_only, v2_only in [(0, 0), (3, 0), (7, 2), (12, 30), (5, 5)]:
        n = v1_only + v2_only
        expected = 1.0 if n == 0 else binomtest(v2_only, n, 0.5).pvalue
        assert canary.mcnemar_p_value(v1_only, v2_only) == pytest.approx(expected, rel=1e-9)


def test_paired_accuracy_counts_discordant_pairs_and_brackets_the_change():
    rng = np.random.default_rng(1)
    v1 = rng.random(2000) < 0.9
    v2 = v1.copy()
    v2[np.flatnonzero(v1)[:60]] = False  # v2 loses 60 inputs v1 got right: -3 points
    result = canary.paired_accuracy(v1, v2, seed=0)
    assert result["accuracy_delta_pts"] == pytest.approx(-3.0)
    assert result["v1_only_correct"] == 60 and result["v2_only_correct"] == 0
    assert result["ci_low"] < -3.0 < result["ci_high"] < 0
    assert result["mcnemar_p"] < 1e-10
    same = canary.paired_accuracy(v1, v1)
    assert same["ci_low"] == same["ci_high"] == 0.0 and same["mcnemar_p"] == 1.0


def test_paired_accuracy_rejects_unpaired_inputs():
    with pytest.raises(Lab2ProdError, match="same non-empty inputs"):
        canary.paired_accuracy([True, False], [True])
    with pytest.raises(Lab2ProdError, match="confidence 1.5"):
        canary.paired_accuracy([True], [True], confidence=1.5)


def test_latency_delta_interval_contains_a_real_shift():
    rng = np.random.default_rng(0)
    v1 = rng.exponential(5.0, 4000)
    change = canary.latency_delta_ci(v1, v1 + 20.0, 99)
    assert change["delta_ms"] == pytest.approx(20.0)
    assert 10.0 < change["ci_low"] < 20.0 < change["ci_high"]
    with pytest.raises(Lab2ProdError, match="both versions"):
        canary.latency_delta_ci([], [1.0])
    with pytest.raises(Lab2ProdError, match="latency_percentile 100"):
        canary.latency_delta_ci([1.0], [1.0], 100)


def _offline(delta, low, high, agreement=1.0):
    return {"inputs": 360, "agreement": agreement, "disagreements": round((1 - agreement) * 360),
            "accuracy": {"accuracy_delta_pts": delta, "ci_low": low, "ci_high": high, "confidence": 0.95,
                         "mcnemar_p": 0.5}}


def _live(v1_p95=20.0, v2_p95=21.0, v2_errors=0.0, v2_requests=400, ci=(-5.0, 6.0)):
    return {"v1": {"requests": 1600, "error_rate": 0.0}, "v2": {"requests": v2_requests, "error_rate": v2_errors},
            "latency_delta": {"percentile": 95, "v1_ms": v1_p95, "v2_ms": v2_p95, "delta_ms": v2_p95 - v1_p95,
                              "ci_low": ci[0], "ci_high": ci[1]}}


@pytest.mark.parametrize("offline, live, decision, deciding_rule", [
    (_offline(0.0, -0.3, 0.3), _live(), "promote", None),
    (_offline(-0.5, -1.6, 0.4), _live(), "hold", "accuracy"),  # the interval straddles the budget
    (_offline(-3.0, -4.2, -1.8), _live(), "roll back", "accuracy"),  # clearly beyond the budget
    (_offline(0.0, -0.3, 0.3, agreement=0.9), _live(), "hold", "agreement"),
    (_offline(0.0, -0.3, 0.3), _live(v2_requests=40), "hold", "live requests to v2"),
    (_offline(0.0, -0.3, 0.3), _live(v2_errors=0.01), "roll back", "error rate"),
    (_offline(0.0, -0.3, 0.3), _live(v2_p95=45.0, ci=(-2.0, 40.0)), "hold", "p95 latency"),  # noisy
    (_offline(0.0, -0.3, 0.3), _live(v2_p95=60.0, ci=(30.0, 50.0)), "roll back", "p95 latency"),
    (_offline(-3.0, -4.2, -1.8), _live(v2_requests=40), "roll back", "accuracy"),  # roll back wins
])
def test_rollback_rule(offline, live, decision, deciding_rule):
    got, rules = canary.decide(offline, live, canary.Policy())
    assert got == decision
    outcomes = {r["rule"]: r["outcome"] for r in rules}
    if deciding_rule:
        assert outcomes[deciding_rule] == decision
    else:
        assert set(outcomes.values()) == {"promote"}


def test_rule_without_labels_or_live_traffic_decides_on_agreement():
    offline = {"inputs": 64, "agreement": 1.0, "disagreements": 0, "accuracy": None}
    decision, rules = canary.decide(offline, None, canary.Policy())
    assert decision == "promote"
    assert {r["rule"]: r["outcome"] for r in rules}["accuracy"] == "not evaluated"


def test_int8_candidate_differs_but_agrees(tmp_path):
    from lab2prod.models.load import load_model

    loaded = load_model("digits_cnn")
    v2, label = canary.candidate_model(loaded, "int8")
    assert "int8" in label and any("quantized" in type(m).__module__ for m in v2.modules())
    offline = canary.compare_offline(loaded, v2)
    assert offline["agreement"] >= 0.97 and offline["max_prob_change"] > 0
    assert offline["accuracy"]["inputs"] == 360
    with pytest.raises(Lab2ProdError, match="drop-in replacement"):
        canary.candidate_model(loaded, "resnet18")


def test_v2_is_the_recipe_the_quantization_study_recommended_where_the_canary_can_serve_it(tmp_path):
    import json
    import shutil

    from lab2prod.core.inputs import trace
    from lab2prod.models.load import load_model
    from lab2prod.models.onnx_rt import OrtModule
    from lab2prod.studies.quantization import quantize, resolve_module_types

    loaded = load_model("digits_mlp")
    recipe = quantize(loaded.module, "torch_ao_dynamic", resolve_module_types(["Linear"])).eval()
    (tmp_path / "models").mkdir()
    torch.jit.save(trace(recipe, loaded.make_inputs(2, 0, "train")), str(tmp_path / "models" / "quantized_x.pt"))

    def quantization_said(recommended, fmt, file="models/quantized_x.pt"):
        (tmp_path / "results").mkdir(exist_ok=True)
        export = {"method": recommended, "format": fmt, "file": file, "produced": True,
                  "error": None}
        (tmp_path / "results" / "quantization.json").write_text(json.dumps({
            "values": {"recommended": recommended, "export": export, "model": loaded.card()},
            "gates": [{"name": "quantization:accuracy", "passed": True}]}))

    _, label = canary.candidate_model(loaded, "recommended", run_dir=tmp_path)  # no quantization study yet
    assert "torch_ao_dynamic" in label and "has not run" in label
    quantization_said("torch_ao_dynamic_selective", "torchscript_trace")
    v2, label = canary.candidate_model(loaded, "recommended", run_dir=tmp_path)
    assert "torch_ao_dynamic_selective" in label and isinstance(v2, torch.jit.ScriptModule)
    probe = loaded.make_inputs(8, 1)
    assert torch.equal(v2(probe), recipe(probe))  # the very recipe, from its file
    onnx_recipe = quantize(loaded.module, "onnxruntime_int8_dynamic_per_channel", (), example=probe)
    shutil.copyfile(onnx_recipe.path, tmp_path / "models" / "quantized_x.onnx")
    quantization_said("onnxruntime_int8_dynamic_per_channel", "onnx", "models/quantized_x.onnx")
    v2, label = canary.candidate_model(loaded, "recommended", run_dir=tmp_path)  # ONNX Runtime's int8 file itself
    assert "onnxruntime_int8_dynamic_per_channel" in label and isinstance(v2, OrtModule)
    assert torch.equal(v2(probe), onnx_recipe(probe))
    quantization_said("torchao_int8_dynamic", "torch_export", "models/quantized_x.pt2")
    v2, label = canary.candidate_model(loaded, "recommended", run_dir=tmp_path)
    assert "does not serve" in label and any("quantized" in type(m).__module__ for m in v2.modules())
    other = load_model("digits_cnn")  # the quantization study measured digits_mlp, not this v1
    quantization_said("torch_ao_dynamic_selective", "torchscript_trace")
    _, label = canary.candidate_model(other, "recommended", run_dir=tmp_path)
    assert "measured digits_mlp, not digits_cnn" in label


def test_an_embedder_canary_speaks_of_cosine_not_top1():
    offline = {"inputs": 360, "agreement": 0.5, "disagreements": 180, "mean_cosine": 0.931, "accuracy": None}
    _, rules = canary.decide(offline, None, canary.Policy())
    detail = {r["rule"]: r["detail"] for r in rules}["agreement"]
    assert "cosine" in detail and "top-1" not in detail


def test_a_slow_model_gets_traffic_long_enough_for_the_policys_minimum_of_v2_requests():
    # 5 ms a request: 10 s at 80/20 gives v2 about 400 requests, more than enough
    assert canary.traffic_duration(10.0, 0.005, [80, 20], 100) == 10.0
    # 80 ms a request (a 22M-parameter encoder): 10 s would give v2 about 25, so it runs 50 s
    assert canary.traffic_duration(10.0, 0.08, [80, 20], 100) == 50.0
    # never past the bound, nor shorter than asked
    assert canary.traffic_duration(10.0, 1.0, [80, 20], 100) == 60.0
    assert canary.traffic_duration(120.0, 1.0, [80, 20], 100) == 120.0
    assert canary.traffic_duration(10.0, 0.08, [100, 0], 100) == 10.0


def test_log_distance_tells_close_versions_apart():
    p = torch.tensor([0.999999, 1e-6])
    q = torch.tensor([0.999998, 2e-6])
    assert canary._log_distance(p, p) == 0.0
    assert canary._log_distance(p, q) > 0.5  # invisible in probabilities, plain in log space


def test_a_real_rollout_serves_both_versions_splits_traffic_and_applies_the_decision(tmp_path, torchserve):
    from lab2prod.models.load import load_model

    loaded = load_model("digits_cnn")
    v2, label = canary.candidate_model(loaded, "int8")
    # An impossible latency allowance forces a decision other than promote: the rule must then
    # either hold (both versions stay) or roll back (2.0 is unregistered), and say so.
    policy = canary.Policy(max_latency_increase_ms=-1000.0, min_requests=10)
    report = canary.evaluate_canary(loaded, v2, label, tmp_path, (50, 50), users=2, duration_s=2.0,
                                    policy=policy, min_run_time=0.1)
    live = report.rollout["live"]
    assert live["v1"]["requests"] > 10 and live["v2"]["requests"] > 10
    assert live["v1"]["error_rate"] == live["v2"]["error_rate"] == 0.0
    assert report.decision == "roll back"
    applied = report.rollout["applied"]
    assert applied["action"] == "unregistered 2.0" and applied["verified"]
    assert applied["default_answered_by"] == "1.0"
    gates = {g["name"]: g for g in canary.canary_gates(report)}
    assert gates["canary:decision"]["passed"] is False and gates["canary:served"]["passed"]
    assert gates["canary:rollback"]["passed"]
    assert not (tmp_path / "canary" / "torchserve.pgid").exists()
    assert not (tmp_path / "canary" / "key_file.json").exists()
    results = report.results()  # what the notebook records under results["canary"]
    assert isinstance(results, canary.CanaryResults) and results.decision == "roll back"
    assert results.ci_low <= results.accuracy_delta_pts <= results.ci_high
    assert results.latency_delta["percentile"] == 95.0
    share = live["v2"]["requests"] / (live["v1"]["requests"] + live["v2"]["requests"])
    assert 0.3 < share < 0.7  # a 50/50 split
