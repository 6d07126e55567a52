import inspect
import json

import pytest
import torch

from lab2prod import examples
from lab2prod.models.load import load_model
from lab2prod.studies import export

TABULAR = "lab2prod.examples:tabular_inputs"


def test_compare_outputs_measures_diffs_and_agreement():
    reference = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])
    candidate = torch.tensor([[1.0, 2.5, 0.0], [0.0, 4.0, 1.0]])
    result = export.compare_outputs(reference, candidate)
    assert result["max_abs_diff"] == pytest.approx(4.0)
    assert result["max_rel_diff"] == pytest.approx(4.0 / 3.0)
    assert result["top1_agreement"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="output shape"):
        export.compare_outputs(reference, candidate[:1])


def test_every_format_of_a_factory_model_reloads_and_matches(tmp_path):
    loaded = load_model("lab2prod.examples:tabular_mlp", example_inputs=TABULAR)
    artifacts = [export.export_model(loaded, fmt, tmp_path / "models") for fmt in export.PORTABLE_FORMATS]
    assert all(a.produced and a.dynamic_batch for a in artifacts)
    rows = export.check_exports(loaded, artifacts, [1, 5], ["cpu"])
    assert {r.batch_size for r in rows} == {1, 5}
    assert all(r.loaded and r.max_abs_diff <= 1e-6 and r.top1_agreement == 1.0 for r in rows)
    gates = export.format_gates(artifacts, rows, atol=1e-4)
    assert [g["name"] for g in gates] == [f"parity:{f}" for f in export.PORTABLE_FORMATS]
    assert all(g["passed"] for g in gates)


def test_trace_of_data_dependent_model_fails_its_gate(tmp_path):
    loaded = load_model("lab2prod.examples:gated_net", example_inputs=TABULAR)
    artifacts = [export.export_model(loaded, fmt, tmp_path) for fmt in export.PORTABLE_FORMATS]
    by_format = {a.format: a for a in artifacts}
    assert any("boolean" in w for w in by_format["torchscript_trace"].warnings)
    assert not by_format["torch_export"].produced and by_format["torch_export"].error
    rows = export.check_exports(loaded, artifacts, [4], ["cpu"])
    gates = {g["name"]: g for g in export.format_gates(artifacts, rows, atol=1e-4)}
    assert gates["parity:torchscript_script"]["passed"]  # script keeps both branches
    assert not gates["parity:torchscript_trace"]["passed"]
    assert gates["parity:torchscript_trace"]["value"] > 1e-2
    assert not gates["parity:torch_export"]["passed"]
    assert "not produced" in gates["parity:torch_export"]["detail"]
    # both point at the model's own line that branches on the data
    lines, first = inspect.getsourcelines(examples.GatedNet.forward)
    branch = f"examples.py:{first + next(i for i, text in enumerate(lines) if 'x.mean() > 0' in text)}"
    assert f"{branch}: `if x.mean() > 0:" in by_format["torchscript_trace"].source
    assert f"{branch} in forward: `if x.mean() > 0:" in by_format["torch_export"].source
    assert f"at {by_format['torch_export'].source}" in gates["parity:torch_export"]["detail"]
    assert gates["parity:torchscript_trace"]["detail"].startswith(
        f"tracer warning at {by_format['torchscript_trace'].source}")


def test_unloadable_file_is_reported_not_raised(tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"junk")
    status, outputs = export.reload_in_fresh_process("torchscript_script", bogus,
                                                     {"held-out:1": torch.zeros(1, 20)})
    assert not status["loaded"] and status["load_error"] and outputs == {}


def test_manifest_records_checksum_and_versions(tmp_path):
    import hashlib

    loaded = load_model("lab2prod.examples:tabular_mlp", example_inputs=TABULAR)
    artifact = export.export_model(loaded, "torch_export", tmp_path / "models")
    entries = export.write_manifest(loaded, [artifact], tmp_path)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == entries and len(entries) == 1
    entry = entries[0]
    assert entry["sha256"] == hashlib.sha256(artifact.path.read_bytes()).hexdigest()
    assert entry["bytes"] == artifact.path.stat().st_size
    assert entry["input_shape"] == [None, 20] and entry["dtype"] == "float32"
    assert entry["torch"] == torch.__version__ and entry["file"] == "models/model.torch_export.pt2"


def test_unknown_format_is_an_error(tmp_path):
    loaded = load_model("lab2prod.examples:tabular_mlp", example_inputs=TABULAR)
    with pytest.raises(ValueError, match="format 'tflite' is not known"):
        export.export_model(loaded, "tflite", tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; run the same pytest command on one")
def test_files_reload_on_cuda_and_match(tmp_path):
    loaded = load_model("digits_cnn")
    artifacts = [export.export_model(loaded, fmt, tmp_path) for fmt in export.PORTABLE_FORMATS]
    rows = export.check_exports(loaded, artifacts, [1, 8], ["cpu", "cuda"])
    cuda_rows = [r for r in rows if r.device == "cuda"]
    assert cuda_rows and all(r.loaded and r.error is None for r in cuda_rows)
    assert all(r.top1_agreement == 1.0 for r in cuda_rows)


def test_an_example_sliced_from_a_large_tensor_does_not_travel_in_the_exported_file(tmp_path):
    from lab2prod.core.inputs import export_program

    data = torch.randn(200_000, 16)  # 12.8 MB of "training data"
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    example = data[100:104]  # a view: its storage is the whole data set
    assert example.untyped_storage().nbytes() == data.untyped_storage().nbytes()
    _, program = export_program(model, example)
    torch.export.save(program, str(tmp_path / "model.pt2"))
    assert (tmp_path / "model.pt2").stat().st_size < 200_000  # weights and a 4-row example, not 12.8 MB
    assert example.data_ptr() == data[100:104].data_ptr()  # the caller's tensor is left as it was


def test_a_model_fed_slices_of_a_preloaded_tensor_exports_files_without_the_data_set(tmp_path):
    """64 MB of preloaded rows, batches sliced from it: every archive carries its weights and a batch (the
    manifest says how much stored input each holds), and the torch.export file stays under 1 MB."""
    loaded = load_model("lab2prod.examples:tabular_mlp", example_inputs="lab2prod.examples:sliced_tabular_inputs")
    artifacts = [export.export_model(loaded, fmt, tmp_path / "models")
                 for fmt in ("torch_export", "torchscript_trace")]
    entries = export.write_manifest(loaded, artifacts, tmp_path)
    assert (tmp_path / "models" / "model.torch_export.pt2").stat().st_size < 1_000_000
    for entry in entries:
        payload = entry["payload"]
        assert entry["example_bytes"] == export.TRACE_BATCH_SIZE * 20 * 4
        assert payload["weights_bytes"] >= (20 * 64 + 64 + 64 * 3 + 3) * 4
        assert payload["data_bytes"] < 64_000, entry
