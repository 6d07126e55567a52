import sys

import pytest
import torch

from lab2prod.core.errors import Lab2ProdError
from lab2prod.models.load import available_models, load_model, load_state_dict_file
from lab2prod.models.reference import digits_batch, evaluate_accuracy, photo_batch


@pytest.mark.parametrize("name, minimum", [("digits_cnn", 0.93), ("digits_mlp", 0.88)])
def test_reference_models_learn_the_digits(name, minimum):
    loaded = load_model(name)
    assert loaded.trained and loaded.source == "reference"
    assert evaluate_accuracy(loaded.module, "test") >= minimum
    assert loaded.metrics["heldout_accuracy"] == pytest.approx(evaluate_accuracy(loaded.module), abs=1e-4)


def test_reference_cache_is_checksummed_and_retrains_when_corrupt(tmp_path):
    first = load_model("digits_mlp", cache_dir=tmp_path)
    cached = next(tmp_path.glob("digits_mlp-*.pt"))
    cached.write_bytes(b"corrupted")
    again = load_model("digits_mlp", cache_dir=tmp_path)
    for key, value in first.module.state_dict().items():
        assert torch.equal(value, again.module.state_dict()[key])  # training is deterministic
    assert load_state_dict_file(cached)  # the cache was rewritten with a valid file


def test_digits_mlp_is_linear_heavy():
    module = load_model("digits_mlp").module
    linear = sum(p.numel() for m in module.modules() if isinstance(m, torch.nn.Linear)
                 for p in m.parameters())
    assert linear / sum(p.numel() for p in module.parameters()) > 0.99
    assert linear > 3_000_000


def test_torchvision_model_is_labelled_untrained():
    loaded = load_model("mobilenet_v3_small")
    assert not loaded.trained and loaded.label == "mobilenet_v3_small (untrained)"
    assert loaded.input_shape == (3, 224, 224)
    assert "resnet18" in available_models()


def test_input_batches_are_seeded_and_splits_differ():
    assert torch.equal(digits_batch(4, seed=3), digits_batch(4, seed=3))
    assert not torch.equal(digits_batch(4, seed=3), digits_batch(4, seed=4))
    assert not torch.equal(photo_batch(2, 0, "train"), photo_batch(2, 0, "test"))


def test_weights_file_round_trip(model_files):
    loaded = load_model("lab2prod.models.reference:DigitsCNN", weights=str(model_files["state.pt"]),
                        example_inputs="lab2prod.models.reference:digits_batch")
    expected = torch.load(model_files["state.pt"], weights_only=True)
    assert loaded.trained and loaded.source == "factory"
    assert torch.equal(loaded.module.state_dict()["head.3.weight"], expected["head.3.weight"])


def test_a_factory_is_not_labelled_untrained_since_it_may_load_its_own_weights():
    loaded = load_model("lab2prod.models.reference:DigitsCNN", example_inputs="lab2prod.models.reference:digits_batch")
    assert loaded.trained and loaded.label == "lab2prod.models.reference:DigitsCNN"
    assert loaded.notes.startswith("weights as your factory made them") and "meaningless" not in loaded.notes


@pytest.mark.parametrize("name, source", [("scripted.pt", "torchscript"), ("exported.pt2", "torch.export")])
def test_user_model_files_load(model_files, name, source):
    loaded = load_model(str(model_files[name]), example_inputs="lab2prod.models.reference:digits_batch")
    assert loaded.source == source
    assert loaded.module(digits_batch(3)).shape == (3, 10)


@pytest.mark.parametrize("kwargs, message", [
    ({"spec": "resnet_nine"}, "model 'resnet_nine' is not known; use one of digits_cnn"),
    ({"spec": "digits_cnn", "weights": "/no/such.pt"}, "does not exist"),
    ({"spec": "digits_cnn", "weights": "@corrupt.pt"}, "is corrupt or not a torch file"),
    ({"spec": "digits_cnn", "weights": "@whole.pt"}, "needs unsafe unpickling of lab2prod.models.reference.DigitsCNN"),
    ({"spec": "no_such_pkg.mod:make"}, "does not import"),
    ({"spec": "lab2prod.examples:missing"}, "has no attribute 'missing'"),
    ({"spec": "lab2prod.examples:NUM_FEATURES"}, "is not callable"),
    ({"spec": "lab2prod.examples:tabular_inputs"}, "raised TypeError"),
    ({"spec": "builtins:dict"}, "returned dict, not a torch.nn.Module"),
    ({"spec": "lab2prod.examples:tabular_mlp"}, "pass --example-inputs"),
    ({"spec": "@whole.pt"}, "is not a TorchScript archive"),
])
def test_bad_model_inputs_raise_clear_errors(model_files, kwargs, message):
    kwargs = {k: str(model_files[v[1:]]) if isinstance(v, str) and v.startswith("@") else v
              for k, v in kwargs.items()}
    with pytest.raises(Lab2ProdError, match=message.replace("(", r"\(").replace(".", r"\.")) as info:
        load_model(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("body, message", [
    ("def make():\n    return torch.zeros(2, 8)\n", r"cannot be called as fn\(batch_size, seed\) \(too many"),
    ("def make(batch_size, seed):\n    raise RuntimeError('no data here')\n",
     r"raised RuntimeError: no data here when called as fn\(2, 0\); it must be def make_batch"),
    ("make = 3\n", "is not callable; define def make_batch"),
])
def test_an_input_function_that_cannot_be_called_names_itself_and_the_signature(tmp_path, monkeypatch, body,
                                                                                 message):
    (tmp_path / "user_inputs.py").write_text("import torch\n\n" + body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_inputs", raising=False)  # each case imports its own file
    with pytest.raises(Lab2ProdError, match=message):
        load_model("lab2prod.examples:tabular_mlp", example_inputs="user_inputs:make")


def test_the_task_is_inferred_from_unit_length_outputs_declared_or_refused():
    from lab2prod.models.load import load_model

    embedder = load_model("lab2prod.examples:image_embedder")
    assert embedder.task == "embedder" and "inferred: its outputs are unit vectors" in embedder.notes
    tabular = load_model("lab2prod.examples:tabular_mlp", example_inputs="lab2prod.examples:tabular_inputs")
    assert tabular.task == "classifier" and "pass --task embedder" in tabular.notes
    declared = load_model("lab2prod.examples:tabular_mlp", example_inputs="lab2prod.examples:tabular_inputs",
                          task="embedder")
    assert declared.task == "embedder" and "declared" in declared.notes
    assert load_model("digits_cnn", task="auto").task == "classifier"
    with pytest.raises(Lab2ProdError, match="task 'regressor' is not known"):
        load_model("digits_cnn", task="regressor")
