"""The user's data (--data): image folders, CSV/JSONL texts, .pt tensors, and every refusal."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from lab2prod.core.errors import Lab2ProdError
from lab2prod.models.data import load_user_data
from lab2prod.models.load import load_model
from lab2prod.models.reference import digits_tensors


def _image_folder(root, classes=("cat", "dog"), per_class=3, size=(40, 30)):
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, (40 * index + 10 * i, 80, 120)).save(root / name / f"{i:03d}.png")
    return root


def test_an_image_folder_reads_classes_in_sorted_order(tmp_path):
    data = load_user_data(str(_image_folder(tmp_path / "images", ("dog", "cat"))))
    assert data.kind == "images" and len(data) == 6 and data.class_names == ["cat", "dog"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1] and data.items[0].size == (40, 30)


@pytest.mark.parametrize("make, message", [
    (lambda root: root.mkdir(), "has no images in class folders"),
    (lambda root: (root.mkdir(), Image.new("RGB", (4, 4)).save(root / "a.png")), "images lie directly in it"),
    (lambda root: _image_folder(root, ("only",)), r"has one class \('only'\)"),
    (lambda root: (_image_folder(root), (root / "cat" / "bad.png").write_bytes(b"not a png")),
     r"bad.png' cannot be read"),
])
def test_an_image_folder_it_cannot_use_is_refused_naming_it(tmp_path, make, message):
    root = tmp_path / "images"
    make(root)
    with pytest.raises(Lab2ProdError, match=message):
        load_user_data(str(root))


def test_text_files_with_and_without_labels(tmp_path):
    csv_file = tmp_path / "texts.csv"
    csv_file.write_text('text,label\n"Great, thanks",praise\nWhere is my order?,question\nMeh,praise\n')
    data = load_user_data(str(csv_file))
    assert data.kind == "texts" and data.items[0] == "Great, thanks" and data.class_names == ["praise", "question"]
    assert data.resolve_labels(["complaint", "question", "news", "praise"], 4).tolist() == [3, 1, 3]
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in ("one", "two")) + "\n")
    unlabelled = load_user_data(str(jsonl))
    assert unlabelled.labels is None and unlabelled.items == ["one", "two"]
    numbered = tmp_path / "numbered.jsonl"
    numbered.write_text("\n".join(json.dumps({"text": t, "label": n}) for t, n in (("a", 2), ("b", 0))))
    assert load_user_data(str(numbered)).resolve_labels(None, 3).tolist() == [2, 0]
    with pytest.raises(Lab2ProdError, match="labels up to 2 .* but the model answers 2 scores"):
        load_user_data(str(numbered)).resolve_labels(None, 2)


@pytest.mark.parametrize("name, body, message", [
    ("none.csv", "words,label\nhi,1\n", "needs a 'text' column"),
    ("half.csv", "text,label\nhi,1\nho,\n", "labels some rows and not others"),
    ("one.csv", "text,label\nhi,1\nho,1\n", "has one label"),
    ("broken.jsonl", '{"text": "hi"}\n{not json\n', "is not JSON lines"),
    ("notes.txt", "hello", "use a folder of images, a .csv, a .jsonl or a .pt"),
])
def test_a_text_file_it_cannot_use_is_refused_naming_it(tmp_path, name, body, message):
    (tmp_path / name).write_text(body)
    with pytest.raises(Lab2ProdError, match=message):
        load_user_data(str(tmp_path / name))
    with pytest.raises(Lab2ProdError, match="does not exist"):
        load_user_data(str(tmp_path / "missing.csv"))


def test_a_tensor_file_of_inputs_and_labels(tmp_path):
    path = tmp_path / "batch.pt"
    torch.save({"inputs": torch.randn(12, 20), "labels": torch.arange(12) % 3}, path)
    data = load_user_data(str(path))
    assert data.kind == "tensors" and len(data) == 12 and data.labels.dtype == torch.long
    loaded = load_model("lab2prod.examples:tabular_mlp", example_inputs="lab2prod.examples:tabular_inputs",
                        data=str(path))
    assert loaded.data_labels.tolist() == (torch.arange(12) % 3).tolist()
    assert 0 <= loaded.metrics["heldout_accuracy"] <= 1 and loaded.data_inputs().shape == (12, 20)
    torch.save({"inputs": torch.randn(4, 20), "labels": torch.ones(5)}, path)
    with pytest.raises(Lab2ProdError, match="one label per input"):
        load_user_data(str(path))
    torch.save([1, 2], path)
    with pytest.raises(Lab2ProdError, match="holds list"):
        load_user_data(str(path))


def test_your_digits_as_png_files_give_the_reference_accuracy(tmp_path):
    from lab2prod.examples import save_digits_example

    data, weights = save_digits_example(str(tmp_path / "mine"))
    yours = load_model("lab2prod.examples:digits_cnn_factory", weights, data=data,
                       lab_transform="lab2prod.examples:digits_transform")
    reference = load_model("digits_cnn")
    assert yours.metrics["heldout_accuracy"] == reference.metrics["heldout_accuracy"]
    assert yours.family == "custom" and yours.lab_transform == "lab2prod.examples:digits_transform"
    images, labels = digits_tensors("test")  # the folder holds them class by class, in order
    assert torch.equal(yours.data_inputs(), images[torch.argsort(labels, stable=True)])
    with pytest.raises(Lab2ProdError, match="holds images but model .* takes"):
        load_model("lab2prod.examples:tabular_mlp", example_inputs="lab2prod.examples:tabular_inputs", data=data)


def test_texts_need_a_tokenizer_and_feed_a_hugging_face_model(tmp_path):
    os.environ["HF_HUB_OFFLINE"] = "1"
    from lab2prod.examples import save_hf_example
    from lab2prod.models.hf import SAMPLE_LABELS, SAMPLE_TEXTS

    names = ["complaint", "question", "news", "praise"]
    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"text": t, "label": names[n]}) for t, n in zip(SAMPLE_TEXTS, SAMPLE_LABELS,
                                                                                             strict=True)))
    with pytest.raises(Lab2ProdError, match="need the model's tokenizer"):
        load_model("digits_cnn", data=str(texts))
    loaded = load_model(f"hf:{save_hf_example(str(tmp_path / 'bert'))}", data=str(texts))
    assert loaded.data_labels.tolist() == SAMPLE_LABELS
    assert loaded.metrics["heldout_accuracy"] == 1.0  # the example was fine-tuned on exactly these
