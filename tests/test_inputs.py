"""Inputs of any structure: one tensor, a tuple (positional) or a dict (keyword) of tensors of any dtype."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lab2prod.core import inputs as I
from lab2prod.core.errors import Lab2ProdError
from lab2prod.examples import VOCAB_SIZE, token_classifier, token_inputs


class PairModel(nn.Module):
    """Two positional inputs: float features and an int64 category id."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.fc = nn.Linear(8, 3)

    def forward(self, features, category):
        return self.fc(torch.cat([features, self.embed(category)], dim=1))


def pair_inputs(batch_size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 4, generator=generator), torch.randint(0, 10, (batch_size,), generator=generator)


@pytest.mark.parametrize("bad, message", [
    ("text", "returned str"),
    ({"ids": [1, 2]}, "returned a dict of ids: list"),
    ((torch.zeros(2, 3), torch.zeros(3, 3)), "same batch size in dimension 0"),
    (torch.tensor(1.0), "same batch size"),
    ({}, "returned a dict of"),
])
def test_check_inputs_refuses_what_is_not_a_batch(bad, message):
    with pytest.raises(Lab2ProdError, match=message):
        I.check_inputs(bad, "example_inputs 'm:f'")


def test_structures_are_called_moved_sliced_and_joined():
    ids = token_inputs(6, 0)
    model = token_classifier().eval()
    assert I.call(model, ids).shape == (6, 4)
    assert I.batch_size_of(ids) == 6 and I.batch_size_of(pair_inputs(5)) == 5
    parts = [I.take(ids, 0, 2), I.take(ids, 2, 6)]
    joined = I.cat(parts)
    assert all(torch.equal(joined[k], ids[k]) for k in ids)
    assert I.describe(ids) == {"input_ids": {"shape": [32], "dtype": "int64"},
                               "attention_mask": {"shape": [32], "dtype": "int64"}}
    assert I.describe(pair_inputs(2)) == {"input_0": {"shape": [4], "dtype": "float32"},
                                          "input_1": {"shape": [], "dtype": "int64"}}
    assert I.call(PairModel().eval(), I.to_device(pair_inputs(3), "cpu")).shape == (3, 3)


def test_varied_cases_keep_integer_inputs_valid():
    ids = token_inputs(8, 0)
    cases = I.varied_cases(ids, torch.Generator().manual_seed(1))
    assert set(cases) == {"other-ids", "shorter"}  # no negation of token ids
    other = cases["other-ids"]
    assert other["input_ids"].min() >= 0 and other["input_ids"].max() < VOCAB_SIZE
    assert set(other["attention_mask"].unique().tolist()) <= {0, 1}
    assert not torch.equal(other["input_ids"], ids["input_ids"])
    assert cases["shorter"]["input_ids"].shape == (8, 16) and cases["shorter"]["attention_mask"].shape == (8, 16)
    floats = I.varied_cases(torch.ones(4, 3), torch.Generator().manual_seed(0))
    assert set(floats) == {"negated", "noise"} and torch.equal(floats["negated"], -torch.ones(4, 3))
    mixed = I.varied_cases(pair_inputs(4), torch.Generator().manual_seed(0))
    assert set(mixed) == {"negated", "noise", "other-ids"}
    assert torch.equal(mixed["negated"][1], pair_inputs(4)[1])  # the id input is never negated


def test_export_and_trace_take_keyword_and_positional_inputs():
    model = token_classifier().eval()
    dims, program = I.export_program(model, token_inputs(4, 0))
    assert dims == "batch+seq"
    other = I.take(token_inputs(7, 3), 0, 7)
    other = {k: v[:, :20] for k, v in other.items()}  # another batch size and sequence length
    assert torch.allclose(I.call(program.module(), other), I.call(model, other), atol=1e-5)
    traced = I.trace(model, token_inputs(4, 0))
    assert torch.allclose(I.call(traced, token_inputs(5, 9)), I.call(model, token_inputs(5, 9)), atol=1e-5)
    pair = PairModel().eval()
    dims, program = I.export_program(pair, pair_inputs(4))
    assert dims == "batch"
    assert torch.allclose(I.call(program.module(), pair_inputs(9, 2)), I.call(pair, pair_inputs(9, 2)), atol=1e-6)


def test_an_input_function_may_return_labels_and_they_are_used_where_labels_are():
    from lab2prod.models.load import load_model
    from lab2prod.studies.quantization import eval_data

    loaded = load_model("lab2prod.examples:token_classifier", example_inputs="lab2prod.examples:labelled_token_inputs")
    assert set(loaded.make_inputs(3, 0)) == {"input_ids", "attention_mask"}  # the inputs alone
    labels = loaded.make_labels(5, 1)
    lengths = loaded.make_inputs(5, 1)["attention_mask"].sum(1)
    assert torch.equal(labels, ((lengths - 4) // 8).clamp(max=3))
    data = eval_data(loaded, 40)
    assert data.labels is not None and len(data.labels) == data.count == 40
    assert 0 <= loaded.metrics["heldout_accuracy"] <= 1 and "labelled draws" in loaded.metrics["data"]
    unlabelled = load_model("lab2prod.examples:token_classifier", example_inputs="lab2prod.examples:token_inputs")
    assert unlabelled.make_labels is None and eval_data(unlabelled, 8).labels is None


@pytest.mark.parametrize("labels, message", [
    ("torch.rand(batch_size)", "not .* class indices"),
    ("torch.zeros(batch_size + 1, dtype=torch.long)", "not .* class indices"),
    ("torch.full((batch_size,), 9)", "labels up to 9 but the model answers 4 scores"),
])
def test_bad_labels_from_an_input_function_are_refused_naming_it(tmp_path, monkeypatch, labels, message):
    from lab2prod.core.errors import Lab2ProdError
    from lab2prod.models.load import load_model

    name = f"my_inputs_{abs(hash(labels))}"  # one module per case: imports are cached
    (tmp_path / f"{name}.py").write_text(
        "import torch\nfrom lab2prod.examples import token_inputs\n"
        f"def fn(batch_size, seed):\n    return {{'inputs': token_inputs(batch_size, seed), 'labels': {labels}}}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(Lab2ProdError, match=f"example_inputs '{name}:fn'.*{message}"):
        load_model("lab2prod.examples:token_classifier", example_inputs=f"{name}:fn")
