"""Hugging Face checkpoints from a local folder: a small BERT built from a config, a tokenizer
trained here, both saved with save_pretrained and loaded through `hf:` (no hub)."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

from lab2prod.core import inputs
from lab2prod.core.errors import Lab2ProdError  # noqa: E402
from lab2prod.examples import save_hf_example  # noqa: E402
from lab2prod.models.load import load_model  # noqa: E402
from lab2prod.studies import (
    export,
    quantization,  # noqa: E402
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {task: save_hf_example(str(root / task), task=task) for task in ("classifier", "embedder")}


def test_a_sequence_classifier_loads_with_its_tokenizer_and_labels(checkpoints):
    loaded = load_model(f"hf:{checkpoints['classifier']}")
    assert loaded.task == "classifier" and loaded.family == "text" and not loaded.takes_images
    assert loaded.class_names == ["complaint", "question", "news", "praise"]
    batch = loaded.make_inputs(3, 0)
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].dtype == torch.int64
    assert inputs.call(loaded.module, batch).shape == (3, 4)
    assert loaded.card()["inputs"] == "input_ids [64] int64, attention_mask [64] int64"
    assert torch.equal(loaded.make_inputs(3, 0)["input_ids"], batch["input_ids"])  # seeded
    assert not torch.equal(loaded.make_inputs(3, 0, "train")["input_ids"], batch["input_ids"])


def test_an_encoder_is_an_embedder_judged_by_cosine(checkpoints):
    loaded = load_model(f"hf:{checkpoints['embedder']}")
    assert loaded.task == "embedder"
    embeddings = inputs.call(loaded.module, loaded.make_inputs(4, 0))
    assert embeddings.shape == (4, 64)
    data = quantization.EvalData(loaded.make_inputs(40, 1), None, loaded.task)
    reference = inputs.outputs_of(loaded.module, data.inputs)
    int8 = quantization.quantize(loaded.module, "torch_ao_dynamic", quantization.resolve_module_types(["Linear"]))
    row = quantization.quality(reference, inputs.outputs_of(int8, data.inputs), None, loaded.task)
    assert row["top1_agreement"] is None and 0.9 < row["cosine"] <= 1.0  # never the argmax of a vector
    assert export.compare_outputs(reference, reference, classifier=False)["top1_agreement"] is None


def test_export_skips_what_does_not_apply_and_torch_export_reloads_at_other_lengths(checkpoints, tmp_path):
    loaded = load_model(f"hf:{checkpoints['classifier']}")
    artifacts = [export.export_model(loaded, fmt, tmp_path, 0) for fmt in export.PORTABLE_FORMATS]
    rows = export.check_exports(loaded, artifacts, [1, 4], ["cpu"], 0)
    gates = {g["name"]: g for g in export.format_gates(artifacts, rows, 1e-4, auto=True)}
    assert gates["parity:torch_export"]["passed"] is True
    assert {(r.inputs, r.batch_size) for r in rows if r.format == "torch_export"} >= {("shorter", 4), ("other-ids", 4)}
    assert next(a for a in artifacts if a.format == "torch_export").dynamic_dims == "batch+seq"
    scripted = gates["parity:torchscript_script"]
    assert scripted["passed"] is None and "does not apply to this model (not produced" in scripted["detail"]
    asked = {g["name"]: g["passed"] for g in export.format_gates(artifacts, rows, 1e-4, auto=False)}
    assert asked["parity:torchscript_script"] is False  # asked for by name: it must work


@pytest.mark.parametrize("remove, message", [
    ("config.json", "config.json' is missing"),
    ("model.safetensors", "no weights in"),
    ("tokenizer.json", "no tokenizer in"),
])
def test_a_folder_that_lacks_a_file_is_refused_naming_it(checkpoints, tmp_path, remove, message):
    import shutil

    folder = tmp_path / "partial"
    shutil.copytree(checkpoints["classifier"], folder)
    (folder / remove).unlink()
    if remove == "tokenizer.json":
        for other in folder.glob("tokenizer*"):
            other.unlink()
    with pytest.raises(Lab2ProdError, match=message):
        load_model(f"hf:{folder}")
    with pytest.raises(Lab2ProdError, match="does not exist"):
        load_model(f"hf:{tmp_path / 'nowhere'}")


def test_a_corrupt_checkpoint_is_a_clear_error(checkpoints, tmp_path):
    import shutil

    folder = tmp_path / "corrupt"
    shutil.copytree(checkpoints["classifier"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 96  # no longer the saved weights' shape
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(Lab2ProdError, match="does not load with transformers"):
        load_model(f"hf:{folder}")
