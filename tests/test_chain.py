"""One golden set traced from the lab to the wire: stages, their order, the first break, the report's opening."""

import torch

from lab2prod.core.results import gate
from lab2prod.models.load import load_model
from lab2prod.run import report
from lab2prod.studies import chain, export, serving

TABULAR = "lab2prod.examples:tabular_inputs"


def _probabilities(rows: int = 8, classes: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.softmax(torch.randn(rows, classes, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_a_stage_counts_top1_agreement_and_the_largest_difference():
    lab = _probabilities()
    same = chain.stage("export: x", "export", lab, lab.clone(), "classifier", 1e-4, 1.0, "8 requests")
    assert same["passed"] and same["agreement"] == 1.0 and same["max_abs_diff"] == 0.0
    flipped = lab.clone()
    flipped[0] = flipped[0].flip(0)  # another top-1 on one row of eight
    changed = lab.argmax(1)[0] != flipped.argmax(1)[0]
    row = chain.stage("export: x", "export", lab, flipped, "classifier", 1e-4, 1.0, "8 requests")
    assert row["passed"] is False and row["max_abs_diff"] > 1e-4
    assert row["agreement"] == (7 / 8 if changed else 1.0)
    wrong_shape = chain.stage("export: x", "export", lab, lab[:3], "classifier", 1e-4, 1.0, "8 requests")
    assert wrong_shape["passed"] is False and "shape (3, 4)" in wrong_shape["detail"]


def test_an_embedder_stage_is_judged_by_cosine_never_by_argmax():
    lab = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    noisy = lab + 0.3 * torch.randn(6, 16, generator=torch.Generator().manual_seed(2))
    row = chain.stage("quantized: q", "quantize", lab, noisy, "embedder", None, 0.99, "6 requests")
    cosines = torch.nn.functional.cosine_similarity(noisy, lab, dim=1)
    assert row["measure"] == "min cosine" and abs(row["agreement"] - float(cosines.min())) < 1e-6
    assert row["passed"] is (float(cosines.min()) >= 0.99)
    mean = chain.stage("quantized: q", "quantize", lab, noisy, "embedder", None, 0.0, "6", measure="mean cosine")
    assert abs(mean["agreement"] - float(cosines.mean())) < 1e-6
    # an exported embedder answering the very vectors holds, though float cosines of equal vectors fall under 1
    same = chain.stage("export: onnx", "export", lab, lab.clone(), "embedder", 1e-4, 0.9999, "6")
    assert same["passed"] and same["agreement"] > 0.9999


def test_the_chain_runs_in_deployment_order_and_names_the_first_break():
    lab = _probabilities()
    wrong = lab.roll(1, dims=0)
    served = chain.measured_stage("server: TorchServe", "serve", "64", "answers over HTTP", "top-1 agreement",
                                  0.5, 0.4, "top-1 agreement 1", False)
    results = {  # recorded in this order by the studies; the chain puts them in deployment order
        "serving": {"stages": [served]},
        "quantization": {"stages": [chain.stage("quantized: q", "quantize", lab, wrong, "classifier", None, 0.99,
                                                "64")]},
        "export": {"stages": [chain.stage("export: onnx", "export", lab, lab, "classifier", 1e-4, 1.0, "64")]},
        "environment": {"python": "3.11"},
    }
    stages = chain.chain_of(results)
    assert [s["step"] for s in stages] == ["lab", "export", "quantize", "serve"]
    assert chain.first_break(stages)["stage"] == "quantized: q"
    assert chain.chain_text(stages).startswith("the chain first breaks at quantized: q")
    assert chain.chain_of({"environment": {}}) == []
    assert "no stage" in chain.chain_text([])
    fig = chain.plot_chain(stages)
    assert len(fig.axes[0].patches) == len(stages)


def test_every_exported_file_answers_the_golden_set_in_its_fresh_process(tmp_path):
    loaded = load_model("lab2prod.examples:gated_net", example_inputs=TABULAR)
    artifacts = [export.export_model(loaded, fmt, tmp_path) for fmt in ("torchscript_script", "torch_export")]
    stages = []
    export.check_exports(loaded, artifacts, [4, 16], ["cpu"], stages=stages, atol=1e-4)
    by_name = {s["stage"]: s for s in stages}
    assert list(by_name) == ["export: torchscript_script", "export: torch_export"]
    script = by_name["export: torchscript_script"]
    assert script["passed"] and script["max_abs_diff"] <= 1e-4 and script["inputs"].startswith(
        f"{chain.GOLDEN_COUNT} held-out requests")
    # torch.export refuses the data-dependent branch: no file, no answers (its parity gate fails it); the stage
    # stays in the chain with why, and is no break of the golden set
    assert by_name["export: torch_export"]["passed"] is None
    assert "not produced at " in by_name["export: torch_export"]["detail"]
    assert "in forward: `if x.mean() > 0:" in by_name["export: torch_export"]["detail"]


def test_a_live_server_stage_is_its_parity_judged_as_its_gate():
    answered = serving.ServingReport(True, requests="JSON arrays", served_file="model.pt", title="Ray Serve",
                                     parity={"requests": 64, "failed": 0, "measure": "classifier",
                                             "top1_agreement": 1.0, "max_prob_diff": 2e-7})
    row = serving.chain_stage(answered)
    assert row["passed"] and row["stage"] == "server: Ray Serve" and row["inputs"].startswith("64 held-out")
    answered.parity = {**answered.parity, "failed": 3, "top1_agreement": 61 / 64}
    row = serving.chain_stage(answered)
    assert row["passed"] is False and row["detail"] == "3 of 64 requests failed"
    assert serving.chain_stage(serving.ServingReport(False, "Java is missing"))["passed"] is None


def test_the_report_opens_with_the_chain(tmp_path):
    lab = _probabilities()
    summary = {"run_id": "r", "params": {}, "environment": {}, "notebooks": [],
               "results": {"export": {"stages": [
                   chain.stage("export: onnx", "export", lab, lab.roll(1, dims=0), "classifier", 1e-4, 1.0, "64")]}},
               "gates": [{"notebook": "01_export", **gate("parity:onnx", False, 0.5, 1e-4, "differs")}]}
    page = report.write_report(summary, tmp_path).read_text()
    assert page.index("From the lab to the wire") < page.index("<h2>Scorecard</h2>")
    assert "the chain first breaks at export: onnx" in page and "data:image/png;base64," in page
    summary["results"] = {}
    assert "no stage of the chain ran" in report.write_report(summary, tmp_path).read_text()
