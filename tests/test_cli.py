"""The notebook tier: `lab2prod run` executes the real notebooks with papermill on quick parameters."""

import json

import pytest

QUICK = ["--no-progress", "-p", "batch_sizes=[1,3]"]
TABULAR = ["--example-inputs", "lab2prod.examples:tabular_inputs"]


def _summary(out, run_id):
    return json.loads((out / run_id / "summary.json").read_text())


PORTABLE = ["-p", "formats=[torchscript_script,torchscript_trace,torch_export,onnx]"]


@pytest.mark.parametrize("model, extra", [
    ("digits_mlp", []),  # every format: AOTInductor too
    ("resnet18", PORTABLE),
    ("lab2prod.examples:tabular_mlp", TABULAR + PORTABLE),
])
def test_export_run_passes(run_cli, tmp_path, model, extra):
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "export", "--model", model, *extra, *QUICK,
                   "--out", str(out), "--run-id", "r")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = _summary(out, "r")
    assert set(summary) >= {"run_id", "params", "environment", "notebooks", "results", "gates"}
    assert summary["notebooks"][0]["status"] == "ok"
    assert {g["name"] for g in summary["gates"]} == {
        "parity:torchscript_script", "parity:torchscript_trace", "parity:torch_export", "parity:onnx",
        *(["parity:aoti"] if not extra else [])}
    formats = summary["results"]["export"]["formats"]
    assert {(f["format"], f["batch_size"]) for f in formats if f["inputs"] == "held-out"} >= {
        ("torch_export", 1), ("torch_export", 3)}
    assert all(set(f) >= {"format", "batch_size", "loaded", "max_abs_diff", "top1_agreement"} for f in formats)
    run = out / "r"
    assert (run / "01_export.ipynb").exists() and (run / "results" / "export.json").exists()
    assert "READY" in (run / "report.html").read_text()
    manifest = json.loads((run / "manifest.json").read_text())
    assert all((run / entry["file"]).exists() for entry in manifest)
    if not extra:  # the AOTInductor package names the CPU it was compiled for
        assert next(e for e in manifest if e["format"] == "aoti")["compiled_for"].startswith("x86_64")


def test_traced_data_dependent_model_fails_with_exit_1(run_cli, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "export", "--model", "lab2prod.examples:gated_net", *TABULAR,
                   *QUICK, *PORTABLE, "--out", str(out), "--run-id", "r")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL parity:torchscript_trace" in proc.stdout
    gates = {g["name"]: g["passed"] for g in _summary(out, "r")["gates"]}
    assert gates["parity:torchscript_trace"] is False and gates["parity:torchscript_script"] is True


def test_notebook_error_is_saved_and_exits_1(run_cli, tmp_path, monkeypatch):
    # An input function that works for the check before the run (batch 2) and fails inside the
    # notebook (batch 4): the error is the notebook's, so the run still saves it and exits 1.
    (tmp_path / "fragile_inputs.py").write_text(
        "import torch\n\n\ndef make(batch_size, seed):\n"
        "    if batch_size > 2:\n        raise RuntimeError('the data source is down')\n"
        "    return torch.randn(batch_size, 20)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "export", "--model", "lab2prod.examples:tabular_mlp",
                   "--example-inputs", "fragile_inputs:make", "--no-progress", "-p", "batch_sizes=[4]",
                   "--out", str(out), "--run-id", "r")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    notebook = _summary(out, "r")["notebooks"][0]
    assert notebook["status"] == "error" and "the data source is down" in notebook["error"]
    assert "the data source is down" in (out / "r" / "01_export.ipynb").read_text()
    assert "export" not in _summary(out, "r")["results"]  # nothing half-recorded


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet_nine"], "model 'resnet_nine' is not known"),
    (["--weights", "missing.pt"], "weights file 'missing.pt' does not exist"),
    (["--model", "nowhere.module:factory"], "does not import"),
    (["-p", "atol=big"], "atol='big' has the wrong type"),
    (["-p", "formats=['tflite']"], "format 'tflite' is not known"),
    (["--only", "canary", "-p", "traffic_split=[80]"], "traffic_split=[80] is out of range: it needs exactly 2 items"),
    (["--only", "canary", "-p", "latency_percentile=100.0"], "latency_percentile 100.0 must be between 0 and 100"),
    (["--only", "environment", "-p", "lock_path=nowhere.json"], "lock file"),
    (["--only", "drift", "-p", "layer=fc9"], "layer 'fc9' is not in the model; use one of features"),
    (["--device", "cuda"], "CUDA"),
])
def test_bad_input_exits_2_with_one_line_and_no_run_folder(run_cli, tmp_path, args, message):
    import torch

    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is present, so cuda is valid here")
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "export", *args, "--out", str(out), "--no-progress")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lab2prod: error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and message in errors[0]
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_out_exits_2(run_cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_cli("run", "--only", "export", "--out", str(blocker), "--no-progress")
    assert proc.returncode == 2 and "is not writable" in proc.stderr


def test_list_shows_notebooks_and_defaults(run_cli):
    proc = run_cli("run", "--list")
    assert proc.returncode == 0
    assert "notebooks/01_export.ipynb" in proc.stdout and "batch_sizes = [1, 4, 16]" in proc.stdout


def test_environment_passes_against_own_lock_and_fails_against_an_edited_one(run_cli, tmp_path):
    lock = tmp_path / "lab.lock.json"
    assert run_cli("env", "lock", str(lock)).returncode == 0
    out = tmp_path / "out"
    ok = run_cli("run", "--only", "environment", "--no-progress", "-p", f"lock_path={lock}",
                 "--out", str(out), "--run-id", "same")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    edited = json.loads(lock.read_text())
    edited["fingerprint"].update({"package.torch": "2.9.1", "cuda.available": True})
    lock.write_text(json.dumps(edited))
    bad = run_cli("run", "--only", "environment", "--no-progress", "-p", f"lock_path={lock}",
                  "--out", str(out), "--run-id", "edited")
    assert bad.returncode == 1
    assert "package.torch: lab 2.9.1" in bad.stdout and "cuda.available" in bad.stdout
    diffs = _summary(out, "edited")["results"]["environment"]["diffs"]
    assert {d["key"] for d in diffs if d["severity"] == "fail"} == {"package.torch", "cuda.available"}
    assert run_cli("env", "diff", str(lock)).returncode == 1


def test_parity_run_passes_and_records_the_bug_table(run_cli, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "parity", "--no-progress", "-p", "max_images=60",
                   "--out", str(out), "--run-id", "r")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS parity:serving" in proc.stdout
    values = _summary(out, "r")["results"]["parity"]
    assert values["serving_max_abs_diff"] == 0.0 and values["images"] == 60
    assert 0.8 < values["lab_accuracy"] <= 1.0
    bugs = {b["bug"]: b for b in values["bugs"]}
    assert set(bugs) >= {"motivating_case", "missing_normalize", "bgr_channel_order", "exif_orientation_ignored"}
    assert all(set(b) >= {"bug", "max_abs_diff", "top1_agreement", "accuracy", "accuracy_drop_pts"}
               for b in bugs.values())
    assert bugs["motivating_case"]["accuracy_drop_pts"] > 20


@pytest.mark.parametrize("transform", ["serving_bicubic", "serving_resize_without_crop"])
def test_parity_run_with_a_differing_serving_transform_exits_1(run_cli, tmp_path, transform):
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "parity", "--no-progress", "-p", "max_images=40", "-p", "bugs=[]",
                   "-p", f"serving_transform=lab2prod.examples:{transform}", "--out", str(out), "--run-id", "r")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL parity:serving" in proc.stdout and "requests differ" in proc.stdout
    (gate,) = _summary(out, "r")["gates"]
    assert gate["passed"] is False
    executed = (out / "r" / "02_preprocessing_parity.ipynb").read_text()
    assert "digit#" in executed and "lab_prediction" in executed  # the where-it-differs table
    if transform == "serving_bicubic":  # named by replaying the whole catalog, though bugs=[] measured none
        assert "the serving path matches known bug(s)" in executed
        assert '"bicubic_interpolation (rgb requests): reproduces 100.0% of the difference' in executed
    # the report opens with the chain, which breaks at the serving transform
    page = (out / "r" / "report.html").read_text()
    assert "the chain first breaks at serving transform: in process" in page
    assert "chain: the chain first breaks at serving transform: in process" in proc.stdout
    assert page.index("From the lab to the wire") < page.index("<h2>Scorecard</h2>")


def test_parity_is_skipped_for_a_model_that_takes_tensors(run_cli, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "parity", "--model", "lab2prod.examples:tabular_mlp", *TABULAR,
                   "--no-progress", "--out", str(out), "--run-id", "r")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SKIP parity:serving" in proc.stdout
    assert _summary(out, "r")["gates"][0]["passed"] is None


QUICK_QUANT = ["--no-progress", "-p", "batch_sizes=[1,4]", "-p", "min_run_time=0.05"]


@pytest.mark.parametrize("model, extra", [
    ("digits_mlp", []),
    ("lab2prod.examples:lstm_classifier", ["--example-inputs", "lab2prod.examples:sequence_inputs",
                                           "-p", "eval_count=64"]),
])
def test_quantization_run_compares_both_libraries(run_cli, tmp_path, model, extra):
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "quantization", "--model", model, *extra, *QUICK_QUANT,
                   "--out", str(out), "--run-id", "r")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS quantization:accuracy" in proc.stdout and "PASS quantization:export" in proc.stdout
    values = _summary(out, "r")["results"]["quantization"]
    rows = {(r["method"], r["batch_size"]): r for r in values["methods"]}
    methods = {m for m, _ in rows}
    ort = {"onnxruntime_fp32", "onnxruntime_int8_dynamic", "onnxruntime_int8_dynamic_per_channel"}
    assert methods - ort == {"fp32", "torch_ao_dynamic", "torchao_int8_dynamic", "torchao_int8_weight_only"}
    assert ort <= methods | set(values["skipped"])  # ONNX Runtime measured beside them, or skipped with the reason
    assert model != "digits_mlp" or ort <= methods
    ao = rows[("torch_ao_dynamic", 4)]
    assert set(ao) >= {"latency_ms", "speedup", "size_bytes", "size_ratio", "accuracy", "accuracy_drop_pts",
                       "cosine", "top1_agreement", "coverage_params", "coverage_flops"}
    assert ao["size_ratio"] > 3 and ao["coverage_params"] > 0.9 and ao["cosine"] > 0.99
    assert (ao["accuracy"] is not None) == (model == "digits_mlp")
    assert (out / "r" / values["export"]["file"]).exists()


def test_quantization_bad_method_exits_2_before_a_run_folder(run_cli, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "quantization", "-p", "methods=['int4']", "--out", str(out))
    assert proc.returncode == 2 and "quantization methods ['int4'] are not known" in proc.stderr
    assert not out.exists()


QUICK_BENCH = ["--no-progress", "-p", "batch_sizes=[1,4]", "-p", "min_run_time=0.05"]


def test_benchmark_run_picks_a_configuration_under_the_sla(run_cli, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "benchmark", "--device", "cpu", *QUICK_BENCH, "--out", str(out), "--run-id", "r")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS sla" in proc.stdout
    values = _summary(out, "r")["results"]["benchmark"]
    variants = {(r["variant"], r["batch_size"]) for r in values["rows"]}
    assert variants == {(v, b) for v in ("eager", "torchscript", "torch_export", "aoti", "dynamic_int8",
                                         "onnxruntime", "onnxruntime_int8") for b in (1, 4)}
    assert all(r["correct"] and r["p99_ms"] >= r["p50_ms"] > 0 for r in values["rows"])
    sla = values["sla"]
    assert sla["met"] and sla["p99_ms"] <= sla["sla_ms"] == 100.0 and sla["batch_size"] in (1, 4)
    assert values["machine"]["cores"] >= 1


def test_benchmark_run_exits_1_when_no_configuration_meets_the_sla(run_cli, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "benchmark", "--device", "cpu", *QUICK_BENCH, "-p", "variants=['eager']",
                   "-p", "sla_ms=0.0001", "--out", str(out), "--run-id", "r")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL sla" in proc.stdout and "no correct configuration has p99 <= 0.0001 ms" in proc.stdout


def test_bad_paths_and_names_exit_2_with_one_line_and_no_traceback(run_cli, tmp_path):
    cases = [(["--out", "/proc/lab2prod-x"], "output folder '/proc/lab2prod-x' is not writable"),
             (["--model", "nope"], "text_langid, a torchvision name"),
             (["--data", str(tmp_path / "none.csv")], "or a .pt of {'inputs': ..., 'labels': ...}")]
    for args, message in cases:
        proc = run_cli("run", "--only", "export", *args, "--no-progress")
        errors = [line for line in proc.stderr.splitlines() if line.startswith("lab2prod: error:")]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(errors) == 1 and message in errors[0], errors
