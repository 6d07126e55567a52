"""The notebook tier on models users bring: two integer inputs from an input function, and their own
class, weights, image folder and lab transform."""

import json


def _summary(out, run_id):
    return json.loads((out / run_id / "summary.json").read_text())


# One short load level and one tuned configuration: enough to serve and check parity; a generous SLA, since
# the notebook tier checks what a run does, not this shared machine's speed.
QUICK_SERVING = ("-p", "serving.users=[1]", "-p", "serving.duration_s=1", "-p", "serving.tune_workers=[1]",
                 "-p", "serving.tune_threads=[1]", "-p", "serving.tune_batch_sizes=[1]",
                 "-p", "serving.parity_requests=16", "-p", "serving.sla_ms=10000")


# AOTInductor compiles for tens of seconds per model: these runs check the other formats and variants, and one
# quantization recipe of each kind of library (every recipe runs in the quantization tests)
PORTABLE = ["-p", "export.formats=[torchscript_script,torchscript_trace,torch_export,onnx]",
            "-p", "quantization.methods=[torch_ao_dynamic,onnxruntime_int8_dynamic]",
            # the per-layer sensitivity only when a whole-model recipe is over the budget (its own tests run it)
            "-p", "quantization.sensitivity_max_s=5",
            "-p", "benchmark.variants=[eager,torchscript,torch_export,dynamic_int8,onnxruntime,onnxruntime_int8]"]


def test_a_model_with_two_integer_inputs_passes_export_quantization_benchmark_and_serving(run_cli, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "export,quantization,benchmark,serving", "--model",
                   "lab2prod.examples:token_classifier", "--example-inputs", "lab2prod.examples:token_inputs",
                   "--device", "cpu", "--no-progress", *QUICK_SERVING,
                   "-p", "export.batch_sizes=[1,8]", "-p", "quantization.batch_sizes=[1,8]",
                   "-p", "benchmark.batch_sizes=[1,8]", "-p", "benchmark.min_run_time=0.1",
                   "-p", "quantization.min_run_time=0.1", *PORTABLE, "--out", "out", "--run-id", "r")  # relative
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = _summary(out, "r")["results"]
    cases = {(f["format"], f["inputs"]) for f in results["export"]["formats"]}
    assert {("torch_export", "other-ids"), ("torch_export", "shorter"), ("torchscript_trace", "held-out")} <= cases
    manifest = {m["format"]: m for m in results["export"]["manifest"]}
    assert manifest["torch_export"]["dynamic_dims"] == "batch+seq"
    assert manifest["torch_export"]["inputs"]["attention_mask"] == {"shape": [32], "dtype": "int64"}
    assert results["quantization"]["recommended"] and results["quantization"]["export"]["produced"]
    assert all(r["correct"] and r["error"] is None for r in results["benchmark"]["rows"])
    # served from JSON arrays, answering like the lab
    assert results["serving"]["requests"].startswith("JSON of named arrays")
    assert results["serving"]["parity_top1_agreement"] == 1.0 and results["serving"]["max_prob_diff"] <= 1e-4


def test_your_model_weights_and_image_folder_give_the_reference_accuracies(run_cli, tmp_path):
    from lab2prod.examples import save_digits_example
    from lab2prod.models.load import load_model

    data, weights = save_digits_example(str(tmp_path / "mine"))
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "export,parity,quantization,serving", "--model",
                   "lab2prod.examples:digits_cnn_factory", "--weights", weights, "--data", data,
                   "--lab-transform", "lab2prod.examples:digits_transform", "--no-progress", *QUICK_SERVING,
                   "-p", "quantization.min_run_time=0.1", "-p", "export.batch_sizes=[1,4]", *PORTABLE[:6],
                   "--out", str(out), "--run-id", "r")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = _summary(out, "r")["results"]
    reference = load_model("digits_cnn").metrics["heldout_accuracy"]
    assert results["export"]["model"]["heldout_accuracy"] == reference
    assert round(results["parity"]["lab_accuracy"], 4) == reference and results["parity"]["images"] == 360
    fp32 = next(m for m in results["quantization"]["methods"] if m["method"] == "fp32")
    assert round(fp32["accuracy"], 4) == reference
    # the served handler runs your lab transform (carried in the archive) on your images
    assert results["serving"]["parity_top1_agreement"] == 1.0 and results["serving"]["max_prob_diff"] <= 1e-4
    served = out / "r" / "serving" / "archive" / "model" / "lab2prod.json"
    assert '"spec": "lab2prod.examples:digits_transform"' in served.read_text()
