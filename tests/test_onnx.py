"""ONNX: export, reload in ONNX Runtime, quantization and benchmark variants, environment."""

from __future__ import annotations

import json

import pytest
import torch

from lab2prod.core.errors import Lab2ProdError
from lab2prod.models.load import load_model
from lab2prod.models.onnx_rt import OrtModule
from lab2prod.studies import benchmark as bm
from lab2prod.studies import export
from lab2prod.studies import quantization as q

pytest.importorskip("onnxruntime")

TABULAR = "lab2prod.examples:tabular_inputs"


def test_onnx_export_is_checked_reloaded_and_hashed_with_its_external_data(tmp_path):
    loaded = load_model("digits_cnn")
    artifact = export.export_model(loaded, "onnx", tmp_path / "models")
    assert artifact.produced and artifact.path.name == "model.onnx" and artifact.opset >= 17
    assert artifact.dynamic_dims == "batch" and [f.name for f in artifact.extra_files] == ["model.onnx.data"]
    rows = export.check_exports(loaded, [artifact], [1, 4], ["cpu"])
    assert all(r.loaded and r.max_abs_diff < 1e-4 and r.top1_agreement == 1.0 for r in rows)
    (gate,) = export.format_gates([artifact], rows, 1e-4)
    assert gate["name"] == "parity:onnx" and gate["passed"]
    (entry,) = export.write_manifest(loaded, [artifact], tmp_path)
    assert entry["opset"] == artifact.opset and entry["onnxruntime"]
    (data,) = entry["external_data"]
    assert data["file"] == "models/model.onnx.data" and len(data["sha256"]) == 64


def test_a_tampered_external_data_file_fails_the_integrity_check(tmp_path):
    from lab2prod.studies.security import integrity_checks

    loaded = load_model("digits_mlp")
    artifact = export.export_model(loaded, "onnx", tmp_path / "models")
    export.write_manifest(loaded, [artifact], tmp_path)
    data = artifact.extra_files[0]
    blob = bytearray(data.read_bytes())
    blob[100] ^= 0xFF
    data.write_bytes(bytes(blob))
    rows = {r["check"]: r for r in integrity_checks(tmp_path, tmp_path / "work")}
    assert rows["models/model.onnx matches the manifest"]["passed"]
    assert not rows["models/model.onnx.data matches the manifest"]["passed"]


def test_named_integer_inputs_export_with_a_dynamic_length_and_reload_by_name(tmp_path):
    loaded = load_model("lab2prod.examples:token_classifier", example_inputs="lab2prod.examples:token_inputs")
    artifact = export.export_model(loaded, "onnx", tmp_path)
    assert artifact.produced and artifact.dynamic_dims == "batch+seq"
    batch = loaded.make_inputs(3, 5)
    short = {k: v[:, :12] for k, v in batch.items()}  # another length than the export saw
    session = OrtModule(artifact.path)
    with torch.inference_mode():
        for inputs in (batch, short):
            assert torch.allclose(session(**inputs), loaded.module(**inputs), atol=1e-5)


def test_a_model_that_does_not_export_fails_only_parity_onnx(tmp_path):
    loaded = load_model("lab2prod.examples:gated_net", example_inputs=TABULAR)
    artifacts = [export.export_model(loaded, fmt, tmp_path, 0) for fmt in ("torchscript_script", "onnx")]
    assert artifacts[0].produced and not artifacts[1].produced and artifacts[1].error
    assert not list(tmp_path.glob("model.onnx*"))  # nothing half-written
    gates = {g["name"]: g for g in export.format_gates(artifacts, export.check_exports(loaded, artifacts, [4], ["cpu"]),
                                                       1e-4)}
    assert gates["parity:torchscript_script"]["passed"] is True
    assert gates["parity:onnx"]["passed"] is False and "not produced" in gates["parity:onnx"]["detail"]


def test_onnx_runtime_int8_is_measured_beside_torch_ao_and_torchao(tmp_path):
    loaded = load_model("digits_mlp")
    data = q.eval_data(loaded, count=64)
    methods = ["torch_ao_dynamic", "torchao_int8_dynamic", "onnxruntime_fp32", "onnxruntime_int8_dynamic",
               "onnxruntime_int8_dynamic_per_channel"]
    results = q.evaluate_methods(loaded, methods, q.resolve_module_types(["Linear"]), [1, 16], threads=1,
                                 min_run_time=0.02, data=data, progress=False)
    by_name = {r.method: r for r in results}
    assert set(by_name) == {"fp32", *methods}
    for name in ("onnxruntime_int8_dynamic", "onnxruntime_int8_dynamic_per_channel"):
        assert by_name[name].size_bytes < by_name["fp32"].size_bytes / 3  # int8 weights
        assert abs(by_name[name].accuracy_drop_pts) <= 2
        assert set(by_name[name].module.quantized_ops) >= {"MatMulInteger"}
    assert by_name["onnxruntime_fp32"].quality["cosine"] > 0.9999
    lines = q.findings(results, [1, 16])
    assert any("from ONNX Runtime itself (its fp32 session)" in line and "torch.ao int8 is" in line for line in lines)
    best = q.recommended(results, 1.0, 16)
    assert best.method != "onnxruntime_fp32"  # a reference, not a recipe
    status = q.export_quantized(by_name["onnxruntime_int8_dynamic"], loaded, tmp_path, [1, 4])
    assert status["format"] == "onnx" and status["produced"] and status["max_abs_diff"] < 1e-5


def test_onnx_runtime_methods_are_skipped_with_the_reason_for_a_model_that_does_not_export():
    loaded = load_model("lab2prod.examples:gated_net", example_inputs=TABULAR)
    skipped = {}
    results = q.evaluate_methods(loaded, ["torch_ao_dynamic", "onnxruntime_int8_dynamic"],
                                 q.resolve_module_types(["Linear"]), [1], min_run_time=0.02,
                                 data=q.eval_data(loaded, count=16), progress=False, skipped=skipped)
    assert [r.method for r in results] == ["fp32", "torch_ao_dynamic"]
    assert "does not export to ONNX" in skipped["onnxruntime_int8_dynamic"]


def test_the_canary_refuses_an_onnx_runtime_candidate():
    with pytest.raises(Lab2ProdError, match="does not serve"):
        q.check_method("onnxruntime_int8_dynamic")


def test_onnx_runtime_benchmark_variants_are_checked_against_eager():
    loaded = load_model("digits_mlp")
    assert {"onnxruntime", "onnxruntime_int8"} <= set(bm.check_variants("auto", "cpu"))
    assert {"onnxruntime_cuda", "onnxruntime_tensorrt"} <= set(bm.check_variants("auto", "cuda"))
    rows = bm.run_sweep(loaded, ["onnxruntime", "onnxruntime_int8", "onnxruntime_cuda"], "cpu", [4], 1, 0.02,
                        progress=False)
    by_name = {r.variant: r for r in rows}
    assert by_name["onnxruntime"].correct and by_name["onnxruntime"].max_abs_diff < 1e-4
    assert by_name["onnxruntime_int8"].correct and by_name["onnxruntime_int8"].p50_ms > 0
    assert "needs a CUDA device" in by_name["onnxruntime_cuda"].error


def test_the_session_follows_the_harness_threads(tmp_path):
    loaded = load_model("digits_mlp")
    artifact = export.export_model(loaded, "onnx", tmp_path)
    session = OrtModule(artifact.path, threads=0)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        session(loaded.make_inputs(2, 0))
        assert session.threads == 1
    finally:
        torch.set_num_threads(previous)


def test_the_fingerprint_names_onnx_runtime_and_its_providers():
    from lab2prod.studies.environment import diff_fingerprints, fingerprint

    here = fingerprint()
    assert here["package.onnxruntime"] and "CPUExecutionProvider" in here["onnxruntime.providers"]
    lab = {**here, "onnxruntime.providers": "CUDAExecutionProvider,CPUExecutionProvider"}
    (diff,) = diff_fingerprints(lab, here)
    assert diff["key"] == "onnxruntime.providers" and diff["severity"] == "warn"
    json.dumps(here)  # the lock is JSON
