"""The notebook tier on text models: a Hugging Face classifier through every notebook, and the reference
text model through text parity and drift."""

import json

from lab2prod.studies import chain


def _summary(out, run_id):
    return json.loads((out / run_id / "summary.json").read_text())


def test_a_hugging_face_classifier_runs_every_notebook(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lab2prod.examples import save_hf_example

    save_hf_example(str(tmp_path / "tiny-bert"))
    out = tmp_path / "out"
    # a path relative to where the user runs lab2prod (run_cli's cwd), as README writes it
    # resilience has its own tests (tests/test_resilience.py): its phases are seconds of load each
    proc = run_cli("run", "--model", "hf:tiny-bert", "--no-progress", "--skip", "resilience",
                   "-p", "benchmark.batch_sizes=[1,4]",
                   "-p", "benchmark.min_run_time=0.1", "-p", "quantization.min_run_time=0.1",
                   "-p", "quantization.batch_sizes=[1,4]", "-p", "export.batch_sizes=[1,4]", "-p", "drift.batches=4",
                   "-p", "serving.users=[1]", "-p", "serving.duration_s=1", "-p", "serving.tune_workers=[1]",
                   "-p", "serving.tune_threads=[1]", "-p", "serving.tune_batch_sizes=[1]",
                   "-p", "serving.parity_requests=16", "-p", "canary.duration_s=2", "-p", "canary.min_requests=10",
                   # the export notebook compiles AOTInductor once; the benchmark measures the other variants, and
                   # quantization one recipe of each kind of library (every recipe runs in the quantization tests)
                   "-p", "benchmark.variants=[eager,torchscript,torch_export,onnxruntime]",
                   "-p", "quantization.methods=[torch_ao_dynamic,onnxruntime_int8_dynamic]",
                   "-p", "quantization.sensitivity_max_s=5",  # per layer only when a recipe is over the budget
                   # generous SLAs: this checks what every notebook does, not this shared machine's speed
                   "-p", "benchmark.sla_ms=10000", "-p", "serving.sla_ms=10000",
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
    # the golden set through every stage: the tokenization, each file, the int8 recipe, the live server
    stages = chain.chain_of(results)
    assert stages[0]["step"] == "lab" and {"preprocess", "export", "quantize", "serve"} <= {s["step"] for s in stages}
    assert all(s["passed"] for s in stages if s["step"] in ("preprocess", "serve", "quantize"))
    assert f"chain: {chain.chain_text(stages)}" in proc.stdout


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
