"""Dynamic int8 quantization: methods, coverage, quality, sensitivity, selective recipe, export."""

import pytest
import torch
from torch import nn

from lab2prod.core.errors import Lab2ProdError
from lab2prod.models.load import LoadedModel
from lab2prod.studies import quantization as q

LINEAR = q.resolve_module_types(["Linear", "LSTM", "GRU"])


def _loaded(module: nn.Module, shape: tuple[int, ...]) -> LoadedModel:
    def make_inputs(batch_size, seed=0, split="test"):
        generator = torch.Generator().manual_seed(seed + (0 if split == "test" else 1000))
        return torch.randn(batch_size, *shape, generator=generator)

    return LoadedModel("test", module.eval(), "factory", False, shape, make_inputs)


class ConvLinearLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x):  # x: batch x 4 x 12
        features = self.conv(x).transpose(1, 2)
        output, _ = self.lstm(features)
        return self.head(output[:, -1])


def test_bad_method_engine_and_module_type_are_clear_errors():
    with pytest.raises(Lab2ProdError, match="'int4_magic'.*torch_ao_dynamic"):
        q.check_methods(["int4_magic"])
    with pytest.raises(Lab2ProdError, match="engine 'tpu' is not supported.*auto"):
        q.resolve_engine("tpu")
    with pytest.raises(Lab2ProdError, match="Conv2d.*Linear"):
        q.resolve_module_types(["Conv2d"])
    assert q.resolve_engine("auto") == torch.backends.quantized.engine


def test_each_method_quantizes_the_layer_types_it_supports():
    model = ConvLinearLSTM()
    assert q.quantized_layers(model, "torch_ao_dynamic", LINEAR) == ["lstm", "head"]
    assert q.quantized_layers(model, "torchao_int8_dynamic", LINEAR) == ["head"]
    assert q.quantized_layers(model, "torch_ao_dynamic", q.resolve_module_types("Linear")) == ["head"]
    quantized = q.quantize(model, "torch_ao_dynamic", LINEAR)
    assert "quantized" in type(quantized.lstm).__module__ and isinstance(quantized.conv, nn.Conv1d)
    assert isinstance(model.head, nn.Linear) and type(model.head) is nn.Linear  # the original is untouched


def test_coverage_counts_parameters_and_flops_of_the_quantized_layers():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    params, flops = q.coverage(model, ["0"], torch.randn(3, 8))
    assert params == pytest.approx((8 * 16 + 16) / (8 * 16 + 16 + 16 * 4 + 4))
    assert flops == pytest.approx((2 * 8 * 16) / (2 * 8 * 16 + 2 * 16 * 4))
    assert q.coverage(model, [], torch.randn(3, 8)) == (0.0, 0.0)


def test_coverage_counts_the_lstm_matmuls_the_flop_counter_misses():
    model = ConvLinearLSTM()
    x = torch.randn(2, 4, 12)
    lstm = 2 * 4 * 16 * (8 + 16) * 12 * 2  # gates x hidden x (input + hidden), 12 steps, batch 2
    head = 2 * 16 * 5 * 2
    conv = 2 * 8 * 4 * 3 * 12 * 2
    _, flops = q.coverage(model, ["lstm"], x)
    assert flops == pytest.approx(lstm / (lstm + head + conv))


def test_quality_numbers_on_known_outputs():
    reference = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    flipped = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    row = q.quality(reference, flipped, torch.tensor([0, 1, 0, 1]))
    assert row["top1_agreement"] == pytest.approx(0.75)
    assert row["accuracy"] == pytest.approx(0.5)  # predictions 0, 0, 0, 0
    assert row["cosine"] == pytest.approx((1 + 0 + 1 + 1) / 4)
    assert q.quality(reference, reference, None)["relative_error"] == 0.0


def test_a_model_with_nothing_to_quantize_reports_zero_coverage_and_passes():
    loaded = _loaded(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten()), (3, 8, 8))
    data = q.eval_data(loaded, count=16)
    results = q.evaluate_methods(loaded, ["torch_ao_dynamic", "torchao_int8_dynamic"], LINEAR, [1], threads=1,
                                 min_run_time=0.01, data=data, progress=False)
    fp32 = results[0]
    for result in results[1:]:
        (row,) = result.rows(fp32)
        assert row["coverage_params"] == 0.0 and row["coverage_flops"] == 0.0 and row["quantized_layers"] == 0
        assert row["accuracy_drop_pts"] == 0.0 and row["size_ratio"] == pytest.approx(1.0, rel=0.05)
        assert row["latency_ms"] > 0
    best = q.recommended(results, 1.0, 1)
    accuracy_gate, _ = q.quantization_gates(results, best, {"produced": True, "max_abs_diff": 0.0,
                                                            "top1_agreement": 1.0, "format": "x", "error": None}, 1.0)
    assert accuracy_gate["passed"] and "0% coverage" in accuracy_gate["detail"]


def _outlier_model() -> nn.Module:
    """Layer 0 has one huge weight (in a unit that never fires): per-tensor int8 rounds every
    other weight of the layer to zero, so its useful outputs vanish."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 6))
    with torch.no_grad():
        model[0].weight[0, 0] = 60.0
        model[0].bias[0] = -1000.0  # ... and ReLU silences that unit, so no activation outlier reaches layer 2
    return model


def test_sensitivity_finds_the_fragile_layer_and_the_selective_recipe_keeps_it_fp32():
    loaded = _loaded(_outlier_model(), (16,))
    data = q.eval_data(loaded, count=200)
    results = q.evaluate_methods(loaded, ["torch_ao_dynamic"], LINEAR, [4], threads=1, min_run_time=0.01,
                                 data=data, progress=False)
    assert results[1].accuracy_drop_pts > 5  # whole-model int8 breaks it
    sensitivity = q.layer_sensitivity(loaded, "torch_ao_dynamic", LINEAR, data)
    assert sensitivity[0]["layer"] == "0" and sensitivity[0]["accuracy_drop_pts"] > 5
    steps = q.frontier(loaded, "torch_ao_dynamic", LINEAR, sensitivity, data, 4, 1, 0.01, 5.0)
    # fp32, then the least sensitive layer alone, then both: the fragile layer goes last
    assert [(s["quantized_layers"], s["added"]) for s in steps] == [(0, ""), (1, "2"), (2, "0")]
    assert [s["within_budget"] for s in steps] == [True, True, False] and steps[0]["speedup"] == 1.0
    assert q.best_step(steps) is steps[1]
    # over the budget the sensitivity is always measured; within it only when it is cheap enough
    assert q.sensitivity_wanted(results, loaded, "torch_ao_dynamic", LINEAR, data, 5.0, 0.0)[0] is True
    within, why, _, _ = q.sensitivity_wanted(results, loaded, "torch_ao_dynamic", LINEAR, data, 1000.0, 0.0)
    assert within is False and why.startswith("not measured") and "sensitivity_max_s=0" in why
    # over the budget with no time allowed, each phase shrinks to its floor: 64 inputs to rank, 3 steps, and says so
    over, why, inputs, max_steps = q.sensitivity_wanted(results, loaded, "torch_ao_dynamic", LINEAR, data, 5.0, 0.0)
    assert (over, inputs, max_steps) == (True, 64, 3) and "the ranking on 64 inputs, at most 3 frontier steps" in why
    assert q.sensitivity_inputs(data, 64).count == 64 and q.sensitivity_inputs(data, 0) is data
    assert q.sensitivity_wanted(results, loaded, "torch_ao_dynamic", LINEAR, data, 1000.0, 600.0)[0] is True
    assert q.sensitivity_wanted(results[:1], loaded, "torch_ao_dynamic", LINEAR, data, 5.0, 60.0)[0] is False
    # the whole-model recipe is over budget: the fragile layer is named as where it starts to go wrong
    why = q.over_budget_text(results, sensitivity, loaded.module, 5.0)
    assert "over the 5-point budget; the first layer over its share (2.5 points of 2 layers) is 0 (Linear)" in why
    assert q.over_budget_text(results, sensitivity, loaded.module, 1000.0) == ""
    message = q.add_selective(results, loaded, LINEAR, sensitivity, data, 5.0, [4], 1, 0.01, steps=steps)
    assert "1 of 2 layers in int8, 1 kept in fp32" in message
    selective = results[-1]
    assert selective.method == "torch_ao_dynamic_selective" and selective.layers == ["2"]
    assert selective.accuracy_drop_pts <= 5.0
    assert q.recommended(results, 5.0, 4, fp32_unless_faster=False) is selective


def test_onnx_runtime_frontier_keeps_the_fragile_layers_nodes_in_fp32():
    from lab2prod.models.onnx_rt import OrtModule

    loaded = _loaded(_outlier_model(), (3, 16))  # 3-D inputs: each Linear exports to a MatMul ONNX Runtime quantizes
    data = q.eval_data(loaded, count=200)
    results = q.evaluate_methods(loaded, ["torch_ao_dynamic", "onnxruntime_int8_dynamic"], LINEAR, [4], threads=1,
                                 min_run_time=0.01, data=data, progress=False)
    whole = results[-1]
    assert whole.method == "onnxruntime_int8_dynamic" and whole.accuracy_drop_pts > 5 and whole.layers == ["0", "2"]
    assert q.ort_method(results, 5.0) is whole and q.ort_method(results, 1000.0) is None
    sensitivity = q.layer_sensitivity(loaded, "torch_ao_dynamic", LINEAR, data)
    order = q.ort_layer_order(whole.module.source, loaded.module, sensitivity)
    assert [layer for layer, _ in order] == ["2", "0"] and all(len(nodes) == 1 for _, nodes in order)
    steps = q.ort_frontier(loaded, results, sensitivity, data, 4, 1, 0.01, 5.0)
    assert [(s["method"], s["quantized_layers"], s["added"]) for s in steps] == [
        ("fp32", 0, ""), ("onnxruntime_int8_dynamic", 1, "2"), ("onnxruntime_int8_dynamic", 2, "0")]
    assert [s["within_budget"] for s in steps] == [True, True, False] and steps[0]["speedup"] == 1.0
    assert q.ort_frontier(loaded, results, [], data, 4, 1, 0.01, 5.0) == []  # nothing to order the nodes by
    message = q.add_selective(results, loaded, LINEAR, sensitivity, data, 5.0, [4], 1, 0.01, steps=steps)
    assert "onnxruntime_int8_dynamic_selective: 1 of 2 layers' nodes in int8, 1 kept in fp32" in message
    assert "selective recipe: no step of the frontier fits" in message  # no torch.ao steps were given
    selective = results[-1]
    assert selective.method == "onnxruntime_int8_dynamic_selective" and isinstance(selective.module, OrtModule)
    assert selective.layers == ["2"] and selective.keep_fp32 == ["0"] and selective.accuracy_drop_pts <= 5.0
    assert selective.module.quantized_ops and 4 in selective.latency_ms


def _timed(method: str, ms: float, drop: float) -> q.MethodResult:
    quality = {"cosine": 1.0, "top1_agreement": 1.0, "relative_error": 0.0, "accuracy": None}
    return q.MethodResult(method, nn.Identity(), [] if method == "fp32" else ["0"], [], 1, 0.0, 0.0, quality, drop,
                          {16: ms})


def test_the_recommendation_is_the_fastest_recipe_of_any_runtime_and_fp32_when_none_beats_it():
    fp32 = _timed("fp32", 10.0, 0.0)
    ort = _timed("onnxruntime_int8_dynamic_per_channel_selective", 5.0, 0.8)
    results = [fp32, _timed("onnxruntime_fp32", 4.0, 0.0), _timed("torch_ao_dynamic_selective", 8.0, 0.5), ort,
               _timed("onnxruntime_int8_dynamic_per_channel", 3.0, 1.5)]
    assert q.recommended(results, 1.0, 16) is ort  # over the budget is never chosen, nor the unquantized session
    assert "2.00x fp32 at batch 16" in q.recommendation_text(results, ort, 1.0, 16)
    slower = [fp32, _timed("torch_ao_dynamic", 10.9, 0.2), _timed("torchao_int8_dynamic", 12.0, 0.1)]
    assert q.recommended(slower, 1.0, 16) is fp32
    assert q.recommended(slower, 1.0, 16, fp32_unless_faster=False).method == "torch_ao_dynamic"
    text = q.recommendation_text(slower, fp32, 1.0, 16)
    assert text.startswith("fp32: the fastest recipe within the 1-point budget, torch_ao_dynamic, is 0.92x fp32")
    exported = {"produced": True, "max_abs_diff": 0.0, "top1_agreement": 1.0, "format": "torchscript_trace",
                "error": None}
    accuracy_gate, _ = q.quantization_gates(slower, fp32, exported, 1.0)
    assert accuracy_gate["passed"] and accuracy_gate["detail"].startswith("fp32: the fastest recipe within")
    assert q.recommended([fp32, _timed("torch_ao_dynamic", 5.0, 3.0)], 1.0, 16) is None


def test_the_frontier_recommends_the_fastest_step_within_the_budget_not_the_most_quantized():
    steps = [{"quantized_layers": 0, "within_budget": True, "latency_ms": 10.0},
             {"quantized_layers": 3, "within_budget": True, "latency_ms": 6.0},
             {"quantized_layers": 6, "within_budget": True, "latency_ms": 7.0},  # more int8, yet slower
             {"quantized_layers": 9, "within_budget": False, "latency_ms": 4.0}]
    assert q.best_step(steps)["quantized_layers"] == 3
    assert q.best_step([steps[0], steps[3]]) is None


def test_the_first_layer_over_its_share_is_named_in_the_models_order_not_by_rank():
    module = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    rows = [{"layer": "3", "type": "Linear", "accuracy_drop_pts": 2.0, "relative_error": 0.4},  # most sensitive
            {"layer": "2", "type": "Linear", "accuracy_drop_pts": 0.5, "relative_error": 0.1},
            {"layer": "0", "type": "Linear", "accuracy_drop_pts": 0.1, "relative_error": 0.01}]
    first = q.first_layer_over_share(rows, module, 1.0)  # share: 1/3 point each
    assert first["layer"] == "2" and abs(first["share_pts"] - 1 / 3) < 1e-9
    assert q.first_layer_over_share(rows, module, 9.0) is None
    assert q.first_layer_over_share([], module, 1.0) is None


def test_every_recipe_over_budget_fails_the_gate():
    loaded = _loaded(_outlier_model(), (16,))
    results = q.evaluate_methods(loaded, ["torch_ao_dynamic"], LINEAR, [1], threads=1, min_run_time=0.01,
                                 data=q.eval_data(loaded, count=200), progress=False)
    assert q.recommended(results, 0.5, 1) is None
    accuracy_gate, export_gate = q.quantization_gates(results, None, None, 0.5, why_over="layer 0 loses it")
    assert accuracy_gate["passed"] is False and export_gate["passed"] is False
    assert accuracy_gate["detail"] == "every recipe exceeds the budget; layer 0 loses it"


@pytest.mark.parametrize("method", ["torch_ao_dynamic", "torchao_int8_dynamic"])
def test_quantized_export_reloads_in_a_fresh_process_and_matches(tmp_path, method):
    loaded = _loaded(nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3)), (12,))
    results = q.evaluate_methods(loaded, [method], LINEAR, [2], threads=1, min_run_time=0.01,
                                 data=q.eval_data(loaded, count=8), progress=False)
    stages = []
    status = q.export_quantized(results[1], loaded, tmp_path / "models", [1, 5], stages=stages, budget_pts=1.0)
    assert status["produced"] and status["error"] is None, status
    assert status["max_abs_diff"] <= 1e-5 and status["top1_agreement"] == 1.0
    # the same fresh process answered the golden set: the chain's quantize stage, against fp32 eager
    (stage,) = stages
    assert stage["stage"] == f"quantized: {method}" and stage["step"] == "quantize"
    assert 0.0 <= stage["agreement"] <= 1.0 and stage["max_abs_diff"] is not None
    assert stage["passed"] is (results[1].accuracy_drop_pts <= 1.0)
    assert (tmp_path / status["file"]).exists()
    _, export_gate = q.quantization_gates(results, results[1], status, 1.0)
    assert export_gate["passed"]


def test_findings_name_the_fastest_recipe_from_the_numbers():
    loaded = _loaded(nn.Sequential(nn.Linear(12, 32)), (12,))
    results = q.evaluate_methods(loaded, ["torch_ao_dynamic"], LINEAR, [1], threads=1, min_run_time=0.01,
                                 data=q.eval_data(loaded, count=8), progress=False)
    results[1].latency_ms[1], results[0].latency_ms[1] = 1.0, 3.0  # fixed numbers: the sentence must follow them
    lines = q.findings(results, [1])
    assert lines[0] == "batch 1: fastest is torch_ao_dynamic at 1 ms, 3.00x fp32 (3 ms)"
    assert "100.0% of parameters" in lines[1]


def test_findings_say_when_no_int8_recipe_beats_fp32():
    loaded = _loaded(nn.Sequential(nn.Linear(12, 32)), (12,))
    results = q.evaluate_methods(loaded, ["torch_ao_dynamic"], LINEAR, [1], threads=1, min_run_time=0.01,
                                 data=q.eval_data(loaded, count=8), progress=False)
    results[1].latency_ms[1], results[0].latency_ms[1] = 2.0, 1.0
    line = q.findings(results, [1])[0]
    assert line.startswith("batch 1: fastest is torch_ao_dynamic at 2 ms, 0.50x fp32") and "for size, not speed" in line
