"""The notebook tier: `lab2prod run` executes the real notebooks with papermill on quick parameters."""

import json
import subprocess

import pytest

QUICK = ["--no-progress", "-p", "batch_sizes=[1,3]"]
TABULAR = ["--example-inputs", "lab2prod.examples:tabular_inputs"]


def _summary(out, run_id):
    return json.loads((out / run_id / "summary.json").read_text())


@pytest.mark.parametrize("model, extra", [
    ("digits_mlp", []),
    ("resnet18", []),
    ("lab2prod.examples:tabular_mlp", TABULAR),
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
        "parity:torchscript_script", "parity:torchscript_trace", "parity:torch_export", "parity:onnx"}
    formats = summary["results"]["export"]["formats"]
    assert {(f["format"], f["batch_size"]) for f in formats if f["inputs"] == "held-out"} >= {
        ("torch_export", 1), ("torch_export", 3)}
    assert all(set(f) >= {"format", "batch_size", "loaded", "max_abs_diff", "top1_agreement"} for f in formats)
    run = out / "r"
    assert (run / "01_export.ipynb").exists() and (run / "results" / "export.json").exists()
    assert "READY" in (run / "report.html").read_text()
    manifest = json.loads((run / "manifest.json").read_text())
    assert all((run / entry["file"]).exists() for entry in manifest)


def test_traced_data_dependent_model_fails_with_exit_1(run_cli, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "export", "--model", "lab2prod.examples:gated_net", *TABULAR,
                   *QUICK, "--out", str(out), "--run-id", "r")
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
    assert variants == {(v, b) for v in ("eager", "torchscript", "torch_export", "dynamic_int8", "onnxruntime",
                                         "onnxruntime_int8") for b in (1, 4)}
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


def test_serving_run_serves_loads_tunes_and_leaves_no_server(run_cli, tmp_path, torchserve):
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "serving", "--no-progress", "-p", "users=[1,4]", "-p", "duration_s=2.0",
                   "-p", "tune_workers=[1]", "-p", "tune_threads=[1]", "-p", "tune_batch_sizes=[1,4]",
                   "-p", "parity_requests=16", "--out", str(out), "--run-id", "r")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    values = _summary(out, "r")["results"]["serving"]
    assert values["parity_top1_agreement"] == 1.0 and values["max_prob_diff"] <= 1e-4
    assert [r["users"] for r in values["load"]] == [1, 4]
    assert set(values["tuned"]) == {"workers", "threads", "batch_size", "users", "p99_ms", "throughput_per_s",
                                   "meets_sla"}
    assert values["default"]["threads"] == 0 and len(values["tuning"]) == 3
    serve = out / "r" / "serving"
    assert (serve / "locustfile.py").exists() and "models=" in (serve / "config.properties").read_text()
    assert values["kubernetes"] == "serving/kubernetes/kubernetes.yaml" and (out / "r" / values["kubernetes"]).exists()
    assert not (serve / "torchserve.pgid").exists() and not (serve / "key_file.json").exists()
    running = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(serve) not in running  # no TorchServe of this run is left


def test_both_servers_are_measured_side_by_side_and_nothing_is_left_running(run_cli, tmp_path, torchserve):
    pytest.importorskip("ray.serve")
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "export,serving", "--no-progress", "-p", "backend=both",
                   "-p", "export.formats=['torchscript_trace']", "-p", "users=[2]", "-p", "duration_s=2",
                   "-p", "tune_workers=[1]", "-p", "tune_threads=[1]", "-p", "tune_batch_sizes=[4]",
                   "-p", "parity_requests=16", "--out", str(out), "--run-id", "r")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = _summary(out, "r")
    gates = {g["name"]: g["passed"] for g in summary["gates"]}
    assert all(gates[f"{server}:{what}"] for server in ("serving", "rayserve") for what in ("parity", "errors", "sla"))
    serving = summary["results"]["serving"]
    rows = {(r["server"], r["config"]) for r in serving["side_by_side"]}
    assert rows == {(s, c) for s in ("TorchServe", "Ray Serve") for c in ("default", "tuned")}
    assert serving["pick"].startswith("pick ") and all(r["share_of_in_process"] > 0 for r in serving["side_by_side"])
    ray = serving["rayserve"]
    assert [r["status"] for r in ray["limits"]] == [401, 401, 200, 413]
    assert (out / "r" / ray["serve_config"]).exists() and (out / "r" / ray["rayservice"]).exists()
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
                   "-p", "attack_images=40", "-p", f"live_server={live}", "--out", str(out), "--run-id", "r")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = _summary(out, "r")["results"]
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


# One short load level and one tuned configuration: enough to serve and check parity.
QUICK_SERVING = ("-p", "serving.users=[1]", "-p", "serving.duration_s=1", "-p", "serving.tune_workers=[1]",
                 "-p", "serving.tune_threads=[1]", "-p", "serving.tune_batch_sizes=[1]",
                 "-p", "serving.parity_requests=16")


def test_a_model_with_two_integer_inputs_passes_export_quantization_benchmark_and_serving(run_cli, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "export,quantization,benchmark,serving", "--model",
                   "lab2prod.examples:token_classifier", "--example-inputs", "lab2prod.examples:token_inputs",
                   "--device", "cpu", "--no-progress", *QUICK_SERVING,
                   "-p", "export.batch_sizes=[1,8]", "-p", "quantization.batch_sizes=[1,8]",
                   "-p", "benchmark.batch_sizes=[1,8]", "-p", "benchmark.min_run_time=0.1",
                   "-p", "quantization.min_run_time=0.1", "--out", "out", "--run-id", "r")  # relative, as typed
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


def test_a_hugging_face_classifier_runs_every_notebook(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lab2prod.examples import save_hf_example

    save_hf_example(str(tmp_path / "tiny-bert"))
    out = tmp_path / "out"
    # a path relative to where the user runs lab2prod (run_cli's cwd), as README writes it
    proc = run_cli("run", "--model", "hf:tiny-bert", "--no-progress", "-p", "benchmark.batch_sizes=[1,4]",
                   "-p", "benchmark.min_run_time=0.1", "-p", "quantization.min_run_time=0.1",
                   "-p", "quantization.batch_sizes=[1,4]", "-p", "export.batch_sizes=[1,4]", "-p", "drift.batches=4",
                   "-p", "serving.users=[1,4]", "-p", "serving.duration_s=2", "-p", "serving.tune_workers=[1]",
                   "-p", "serving.tune_threads=[1]", "-p", "serving.tune_batch_sizes=[1]",
                   "-p", "serving.parity_requests=16", "-p", "canary.duration_s=4", "-p", "canary.min_requests=10",
                   "--out", str(out), "--run-id", "r")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = _summary(out, "r")
    assert all(n["status"] == "ok" for n in summary["notebooks"]) and len(summary["notebooks"]) == 10
    gates = {g["name"]: g for g in summary["gates"]}
    assert gates["parity:torch_export"]["passed"] and gates["quantization:accuracy"]["passed"]
    assert gates["sla"]["passed"] and gates["canary:decision"]["passed"]
    # Served from JSON texts through the archived tokenizer, answering like the lab; every hostile
    # text refused with a reason; both canary versions served.
    assert gates["serving:parity"]["passed"] and gates["serving:errors"]["passed"]
    assert gates["security:inputs"]["passed"] and gates["canary:served"]["passed"]
    results = summary["results"]
    assert results["serving"]["requests"].startswith("JSON") and results["serving"]["parity_top1_agreement"] == 1.0
    reasons = {r["reason"] for r in results["security"]["inputs"]}
    assert {"not_utf8", "too_many_tokens", "empty_text", "keys"} <= reasons
    # Text preprocessing parity: the served tokenization is the lab's on every sample text.
    assert gates["parity:serving"]["passed"] and results["parity"]["kind"] == "text"
    skipped = [g for g in summary["gates"] if g["passed"] is None]
    # TorchScript formats skip for a transformer (torch.export passes); drift needs the user's texts.
    assert {g["name"] for g in skipped} == {"drift", "parity:torchscript_script", "parity:torchscript_trace"}
    assert all(g["detail"] for g in skipped)  # every skip says why


def test_the_reference_text_model_passes_text_parity_and_drift_and_a_short_tokenizer_fails(run_cli, tmp_path):
    out = tmp_path / "out"
    ok = run_cli("run", "--model", "text_langid", "--only", "parity,drift", "--no-progress", "-p", "max_texts=90",
                 "-p", "drift.batches=6", "--out", str(out), "--run-id", "ok")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    summary = _summary(out, "ok")
    gates = {g["name"]: g for g in summary["gates"]}
    assert gates["parity:serving"]["passed"] and gates["drift"]["passed"]
    parity = summary["results"]["parity"]
    assert parity["kind"] == "text" and parity["texts"] == 90 and len(parity["bugs"]) >= 10
    assert parity["bugs"][0]["accuracy_drop_pts"] > 20  # sorted by impact
    bad = run_cli("run", "--model", "text_langid", "--only", "parity", "--no-progress", "-p", "max_texts=30",
                  "-p", "bugs=[]", "-p", "serving_transform=lab2prod.examples:tokenizer_max_length_16",
                  "--out", str(out), "--run-id", "bad")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL parity:serving" in bad.stdout and "30 of 30 requests encoded differently" in bad.stdout
    executed = (out / "bad" / "02_preprocessing_parity.ipynb").read_text()
    assert "text#0" in executed and "length 16 vs 72" in executed  # the requests that differ, listed


def test_your_model_weights_and_image_folder_give_the_reference_accuracies(run_cli, tmp_path):
    from lab2prod.examples import save_digits_example
    from lab2prod.models.load import load_model

    data, weights = save_digits_example(str(tmp_path / "mine"))
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "export,parity,quantization,serving", "--model",
                   "lab2prod.examples:digits_cnn_factory", "--weights", weights, "--data", data,
                   "--lab-transform", "lab2prod.examples:digits_transform", "--no-progress", *QUICK_SERVING,
                   "-p", "quantization.min_run_time=0.1", "-p", "export.batch_sizes=[1,4]",
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
