"""The request codecs: what a served model takes over HTTP (image bytes, JSON texts, JSON arrays),
each guard's refusals with their reason codes, and the archive round trip the handler relies on."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from lab2prod.kinds import codec
from lab2prod.kinds.base import TRANSFORM_FILE
from lab2prod.kinds.guard import Rejected, TensorGuard, TextGuard, read_json
from lab2prod.models.load import load_model
from lab2prod.models.requests import request_bodies
from lab2prod.studies import security


@pytest.fixture(scope="module")
def token_model():
    return load_model("lab2prod.examples:token_classifier", example_inputs="lab2prod.examples:token_inputs")


@pytest.mark.parametrize("body, code", [
    (b"", "empty"),
    (b"x" * 101, "too_large"),
    (b'{"text": "\xff"}', "not_utf8"),
    (b"{text: 1}", "not_json"),
    (b"[1, 2]", "not_object"),
    ([1, 2], "not_object"),  # TorchServe parsed it already
])
def test_read_json_refuses_with_a_reason(body, code):
    with pytest.raises(Rejected) as info:
        read_json(body, 100)
    assert info.value.code == code


def test_read_json_takes_bytes_text_and_parsed_bodies():
    assert read_json(b'{"a": 1}', 100) == read_json('{"a": 1}', 100) == read_json({"a": 1}, 100) == {"a": 1}


@pytest.mark.parametrize("value, code", [
    ({"txt": "hi"}, "keys"),
    ({"text": "hi", "lang": "en"}, "keys"),
    ({"text": ["hi"]}, "type"),
    ({"text": " \n "}, "empty_text"),
    ({"text": "a" * 51}, "too_long"),
    ({"text": "bell\x07"}, "control_chars"),
])
def test_text_guard_reasons(value, code):
    with pytest.raises(Rejected) as info:
        TextGuard(max_chars=50).check(json.dumps(value).encode())
    assert info.value.code == code
    assert TextGuard().check(b'{"text": "caf\\u00e9 \\n ok"}') == "caf\u00e9 \n ok"


def test_tensor_guard_checks_names_dtypes_shapes_values_and_ranges():
    guard = TensorGuard({"ids": {"shape": [3], "dtype": "int64"}, "x": {"shape": [2, 2], "dtype": "float32"},
                         "m": {"shape": [3], "dtype": "bool"}}, ranges={"ids": [0, 9]})
    good = {"ids": [1, 2, 9], "x": [[0.5, 1], [2, 3]], "m": [1, 0, True]}
    arrays = guard.check(json.dumps(good).encode())
    assert arrays["x"].shape == (2, 2) and arrays["ids"].tolist() == [1, 2, 9]
    cases = {"keys": {**good, "y": 1}, "shape": {**good, "x": [0.5, 1, 2, 3]}, "dtype": {**good, "ids": [1.5, 2, 3]},
             "range": {**good, "ids": [1, 2, 10]}, "not_finite": {**good, "x": [[float("nan"), 1], [2, 3]]}}
    cases["dtype (bool)"] = {**good, "m": [2, 0, 1]}
    for code, value in cases.items():
        with pytest.raises(Rejected) as info:
            guard.check(json.dumps(value).encode())
        assert info.value.code == code.split(" ")[0], code


def test_a_tensor_model_takes_json_items_as_the_lab_made_them(token_model):
    lab = codec.codec_for(token_model, guarded=False)
    assert (lab.kind, lab.content_type, lab.structure) == ("tensor", "application/json", "dict")
    bodies = request_bodies(token_model, 3, seed=5)
    batch = token_model.make_inputs(3, 5, "test")
    for i, (_, body) in enumerate(bodies):
        decoded = lab(body)
        assert all(torch.equal(decoded[k], batch[k][i:i + 1]) and decoded[k].dtype == batch[k].dtype for k in batch)
    guarded = codec.codec_for(token_model, max_bytes=10_000)
    assert guarded.guard.ranges["input_ids"][0] == 0 and guarded.guard.ranges["input_ids"][1] < 1000
    rows = security.try_inputs(guarded, guarded.hostile(10_000, bodies[0][1]))
    assert len(rows) >= 11 and all(r["rejected"] and r["reason"] and not r["crashed"] for r in rows), rows
    reasons = {r["input"]: r["reason"] for r in rows}
    assert reasons["fractions in an integer input"] == "dtype" and reasons["value out of the lab's range"] == "range"
    assert reasons["missing input"] == "keys" and reasons["wrong shape"] == "shape"
    assert reasons["oversize body"] == "too_large"


def test_a_float_tuple_model_refuses_nan(tmp_path):
    loaded = load_model("lab2prod.examples:tabular_mlp", example_inputs="lab2prod.examples:tabular_inputs")
    guarded = codec.codec_for(loaded)
    assert guarded.structure == "tensor" and list(guarded.inputs) == ["input"]
    body = request_bodies(loaded, 1)[0][1]
    assert guarded(body).shape == (1, *loaded.input_shape)
    reasons = {r["input"]: r["reason"] for r in security.try_inputs(guarded, guarded.hostile(10_000, body))}
    assert reasons["NaN value"] == "not_finite"


def test_answers_are_probabilities_for_a_classifier_and_vectors_for_an_embedder():
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    classified = codec.answers("classifier", logits)
    assert [a["top1"] for a in classified] == [0, 1] and abs(sum(classified[0]["probabilities"]) - 1) < 1e-6
    embedded = codec.answers("embedder", logits)
    assert embedded[1] == {"embedding": [0.0, 3.0]} and torch.equal(codec.answer_vector(embedded[1]), logits[1])


def test_the_users_transform_travels_in_the_archive_and_loads_where_its_package_is_absent(tmp_path, monkeypatch):
    package = tmp_path / "src"
    package.mkdir()
    (package / "my_lab.py").write_text(
        "from lab2prod.kinds.transforms import digits_lab_transform\n"
        "_t = digits_lab_transform()\n"
        "def lab(image):\n    return _t(image)\n")
    monkeypatch.syspath_prepend(str(package))
    loaded = load_model("digits_cnn", lab_transform="my_lab:lab")
    assert loaded.lab_transform == "my_lab:lab" and loaded.metrics["heldout_accuracy"] > 0.9
    served = tmp_path / "served"
    served.mkdir()
    spec, files = codec.codec_for(loaded).archive(served)
    assert files == [served / TRANSFORM_FILE] and spec["transform"]["spec"] == "my_lab:lab"
    body = request_bodies(loaded, 1)[0][1]
    expected = codec.codec_for(loaded, guarded=False)(body)
    # Where the server runs, the user's package is not installed: the archived source is used.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(package)])
    monkeypatch.delitem(sys.modules, "my_lab")
    rebuilt = codec.from_spec(json.loads(json.dumps(spec)), served)
    assert rebuilt.transform.__module__ == "lab2prod_archived_transform"
    assert torch.equal(rebuilt(body), expected)
    os.remove(served / TRANSFORM_FILE)
    with pytest.raises(Exception, match="my_lab"):
        codec.from_spec(spec, served)


def test_text_requests_are_tokenized_like_the_lab_and_long_texts_refused(tmp_path):
    os.environ["HF_HUB_OFFLINE"] = "1"
    pytest.importorskip("transformers")
    from lab2prod.examples import save_hf_example

    loaded = load_model(f"hf:{save_hf_example(str(tmp_path / 'bert'), layers=1, hidden=32, train_steps=0)}")
    lab, guarded = codec.codec_for(loaded, guarded=False), codec.codec_for(loaded, max_bytes=10_000)
    assert lab.kind == "text" and guarded.guard.max_tokens == lab.max_length == 64
    bodies = request_bodies(loaded, 4)
    texts = [json.loads(body)["text"] for _, body in bodies]
    from lab2prod.models.hf import tokenize

    expected = tokenize(loaded.tokenizer, texts)
    for i, (_, body) in enumerate(bodies):
        assert all(torch.equal(guarded(body)[k], expected[k][i:i + 1]) for k in expected)
    rows = security.try_inputs(guarded, guarded.hostile(10_000, bodies[0][1]))
    assert all(r["rejected"] and r["reason"] and not r["crashed"] for r in rows), rows
    assert {r["reason"] for r in rows} >= {"empty", "not_utf8", "not_json", "keys", "type", "empty_text",
                                           "too_many_tokens", "too_large", "control_chars"}
    assert len(rows) == 11


def test_a_transform_object_archives_the_users_module_not_its_class_module(tmp_path, monkeypatch):
    (tmp_path / "my_compose.py").write_text(
        "# my_compose: the user's module\nfrom lab2prod.kinds.transforms import digits_lab_transform\n"
        "lab = digits_lab_transform()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model("digits_cnn", lab_transform="my_compose:lab")
    served = tmp_path / "served"
    served.mkdir()
    spec, files = codec.codec_for(loaded).archive(served)
    assert files and files[0].read_text().startswith("# my_compose: the user's module")


def test_each_kind_carries_its_serving_bug_catalog_and_its_drift_features():
    from PIL import Image

    image, text, tensor = (codec.kind_of(name) for name in ("image", "text", "tensor"))
    assert len(image.bugs) >= 10 and len(text.bugs) >= 10 and tensor.bugs == ()
    assert all(bug.name and bug.what and bug.where for bug in (*image.bugs, *text.bugs))
    assert len({bug.name for bug in (*image.bugs, *text.bugs)}) == len(image.bugs) + len(text.bugs)
    assert image.features([Image.new("RGB", (40, 20), "white")]).tolist() == [[1.0, 0.0, 40, 20, 2.0]]
    assert text.features(["Ab 1é"])[0][:2].tolist() == [5, 2]
    rows = tensor.features({"x": torch.ones(3, 4), "ids": torch.tensor([[5, 0], [7, 9], [0, 0]])})
    assert rows.shape == (3, 4) and rows[:, 2].tolist() == [1, 2, 0]  # non-zero ids per item
