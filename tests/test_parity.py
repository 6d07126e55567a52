"""Preprocessing parity: the serving path, the bug catalog, and the numbers the notebook shows."""

import functools
import io
import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as v1

from lab2prod.core.errors import Lab2ProdError
from lab2prod.kinds.preprocess import ServingPath, decode_request, lab_transform_for
from lab2prod.kinds.transforms import (
    DIGITS_RECIPE,
    IMAGENET_RECIPE,
    digits_lab_transform,
    recipe_of,
    recipe_transform,
)
from lab2prod.models.images import parity_images
from lab2prod.studies import parity

RECIPES = {"digits": DIGITS_RECIPE, "imagenet": IMAGENET_RECIPE}


def _colour_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A non-square colour image with structure and noise, so every resize and colour bug shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([255 * x / width, 255 * y / height, 127 + 100 * np.sin(x / 3.0) * np.cos(y / 5.0)], -1)
    array = np.clip(array + rng.normal(0, 20, array.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


@pytest.mark.parametrize("family", ["digits", "imagenet"])
@pytest.mark.parametrize("bug", parity.BUGS, ids=lambda b: b.name)
def test_every_bug_changes_a_non_square_colour_image(bug, family):
    recipe = RECIPES[family]
    image = _colour_image(61, 43) if family == "digits" else _colour_image(640, 430)  # both shrink
    data, lab_image = parity.encode_request(image, bug.client)
    lab = recipe_transform(recipe)(lab_image)
    try:
        served = bug.path(recipe)(data)
    except Exception:
        return  # the request fails: a change a client sees as an error
    assert served.shape != lab.shape or float((served - lab).abs().max()) > 1e-3, bug.name


@pytest.mark.parametrize("client", list(parity.CLIENTS))
def test_lab_path_through_serving_code_is_exact(client):
    transform, recipe = lab_transform_for("digits")
    assert recipe == DIGITS_RECIPE
    image = _colour_image(50, 37, seed=3)
    data, lab_image = parity.encode_request(image, client)
    assert torch.equal(ServingPath(transform)(data), transform(lab_image))


def test_exif_rotated_request_decodes_to_the_original_pixels():
    image = _colour_image(40, 25)
    data, lab_image = parity.encode_request(image, "exif_rotated")
    assert Image.open(io.BytesIO(data)).size == (25, 40)  # stored turned
    assert np.array_equal(np.asarray(decode_request(data)), np.asarray(image))
    assert lab_image.size == (40, 25)


def test_decode_request_rejects_empty_and_garbage_bytes():
    with pytest.raises(Lab2ProdError, match="empty"):
        decode_request(b"")
    with pytest.raises(Lab2ProdError, match="not a readable image"):
        decode_request(b"GIF89a" + b"\x00" * 10)


def test_recipe_is_read_from_torchvision_composes():
    assert recipe_of(digits_lab_transform()) == DIGITS_RECIPE
    classic = v1.Compose([v1.Resize(256), v1.CenterCrop(224), v1.ToTensor(),
                          v1.Normalize(IMAGENET_RECIPE.mean, IMAGENET_RECIPE.std)])
    assert recipe_of(classic) == IMAGENET_RECIPE
    assert recipe_of(lambda image: image) is None
    assert recipe_of(v1.Compose([v1.Resize((224, 224)), v1.ToTensor()])) is None


def test_select_bugs_and_clients_name_the_valid_choices():
    assert [b.name for b in parity.select_bugs(["bgr_channel_order", "square_resize"])] == [
        "square_resize", "bgr_channel_order"]  # catalog order
    assert len(parity.select_bugs("all")) == len(parity.BUGS)
    with pytest.raises(Lab2ProdError, match="not catalogued.*square_resize"):
        parity.select_bugs(["resize_square"])
    with pytest.raises(Lab2ProdError, match="client 'heic' is not known"):
        parity.encode_request(_colour_image(10, 10), "heic")
    assert len({b.name for b in parity.BUGS}) == len(parity.BUGS)
    assert all(b.client in parity.CLIENTS and b.what and b.where for b in parity.BUGS)


class _FirstPixelClassifier(nn.Module):
    """Predicts class round(x[0, 0, 0]) out of 4: the test decides every prediction."""

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].round().long().clamp(0, 3), 4).float()


def _tensor(value, size=2):
    return torch.full((3, size, size), float(value))


def test_accuracy_agreement_and_drop_on_a_tiny_fixed_set():
    model = _FirstPixelClassifier()
    labels = np.array([0, 1, 2, 3, 3])
    lab_tensors = [_tensor(v) for v in (0, 1, 2, 3, 0)]  # lab: 4 of 5 right
    request_set = parity.RequestSet("rgb", [bytes([v]) for v in range(5)], lab_tensors,
                                    parity.predict(model, lab_tensors))
    served = {0: _tensor(0), 1: _tensor(2), 2: _tensor(2), 3: _tensor(3, size=3)}  # 3: another shape

    def path(data):
        if data[0] == 4:
            raise ValueError("broken request")
        return served[data[0]]

    result = parity.evaluate_path("p", path, request_set, model, labels)
    row = result.summary()
    assert row["lab_accuracy"] == pytest.approx(0.8)
    # predictions: 0 right, 1 wrong (2), 2 right, 3 right (one at a time, other shape), 4 failed
    assert row["accuracy"] == pytest.approx(0.6)
    assert row["accuracy_drop_pts"] == pytest.approx(20.0)
    assert row["top1_agreement"] == pytest.approx(3 / 5)
    assert row["failed_requests"] == 1 and row["shape_mismatches"] == 1
    assert np.isinf(result.max_abs_diff[[3, 4]]).all()
    assert result.max_abs_diff[1] == pytest.approx(1.0) and result.max_abs_diff[0] == 0.0
    worst = parity.worst_images(result, list("abcde"), request_set, atol=0.5)
    assert [w["image"] for w in worst] == ["d", "e", "b"]
    assert worst[1]["error"].startswith("ValueError")


def test_viewable_undoes_the_normalization():
    image = _colour_image(32, 32)
    unnormalized = digits_lab_transform(normalize=False)(image)
    shown = parity.viewable(digits_lab_transform()(image), DIGITS_RECIPE)
    assert shown.shape == (32, 32, 3)
    assert np.allclose(shown, unnormalized.permute(1, 2, 0).numpy(), atol=1e-5)


def test_photographs_come_from_packages_with_varied_shapes():
    names, images, labels = parity_images("imagenet", max_images=12, seed=1)
    assert labels is None and len(images) == 12 and len(set(names)) == 12
    assert {"china", "flower", "astronaut", "coffee", "chelsea", "rocket"} <= set(names)
    ratios = {round(im.width / im.height, 2) for im in images}
    assert len(ratios) >= 6 and all(im.mode == "RGB" for im in images)


def test_evaluate_parity_gate_passes_fails_and_skips():
    from lab2prod.models.load import load_model

    loaded = load_model("digits_cnn")
    report = parity.evaluate_parity(loaded, bugs=["missing_normalize"], max_images=16, progress=False)
    gate = parity.serving_gate(report, 1e-6)
    assert gate["passed"] is True and report.serving_max_abs_diff == 0.0
    (row,) = report.bug_rows()
    assert row["bug"] == "missing_normalize" and row["accuracy_drop_pts"] > 20
    assert report.lab_accuracy == pytest.approx(row["lab_accuracy"])

    bad = parity.evaluate_parity(loaded, serving_transform="lab2prod.examples:serving_resize_without_crop",
                                 bugs=[], max_images=16, progress=False)
    gate = parity.serving_gate(bad, 1e-6)
    assert gate["passed"] is False and "with another shape" in gate["detail"]

    tabular = load_model("lab2prod.examples:tabular_mlp", example_inputs="lab2prod.examples:tabular_inputs")
    skipped = parity.serving_gate(parity.evaluate_parity(tabular, progress=False), 1e-6)
    assert skipped["passed"] is None and "takes input [20] float32, not images" in skipped["detail"]


def _serving_report(loaded, path, images: int = 30):
    """The parity report of `path` as the user's serving transform (every client sends to it)."""
    from unittest import mock

    with mock.patch.object(parity, "load_transform", lambda spec, what: path):
        return parity.evaluate_parity(loaded, "", "user:serving", [], images, 0, progress=False)


def _served_as(report, path, module):
    """`report` (the lab path served, every bug replayed) with `path` as the user's serving transform instead:
    the same request sets, so each injected bug costs its own serving pass only."""
    from dataclasses import replace

    serving = [parity.evaluate_path("serving", path, report.request_sets[result.client], module, report.labels)
               for result in report.serving]
    return replace(report, serving=serving)


@pytest.mark.parametrize("model, images", [("digits_cnn", 30), ("photo_cnn", 12)])
def test_every_catalogued_bug_served_as_the_users_transform_is_named_by_its_signature(model, images):
    """Each image bug as the service's preprocessing: the diagnosis ranks the whole catalog on the same
    requests and names it first (a tie is a path that also makes the tied mistake: the palette handler reads
    the array without EXIF and without .convert, so it is named with those two)."""
    from lab2prod.models.load import load_model

    loaded = load_model(model)
    _, recipe = lab_transform_for(loaded.family, "")
    lab = parity.evaluate_parity(loaded, bugs=["all"], max_images=images, progress=False)
    for bug in parity.BUGS:
        rows = parity.diagnose(_served_as(lab, bug.path(recipe), loaded.module))  # catalog replayed once
        first = {r["bug"] for r in rows if r["explained"] >= rows[0]["explained"] - 1e-9}
        assert bug.name in first and rows[0]["explained"] > 0.99, (bug.name, rows[:3])
        if bug.name == "palette_as_indices":
            assert first == {"palette_as_indices", "exif_orientation_ignored", "rgba_not_converted"}


@functools.lru_cache(maxsize=2)
def _lab_report(model: str, images: int):
    """A reference model's parity report with the lab path served and the whole catalog replayed, once."""
    from lab2prod.models.load import load_model

    loaded = load_model(model)
    return loaded, parity.evaluate_parity(loaded, bugs=["all"], max_images=images, progress=False)


def _composable_pairs() -> list[tuple[str, str]]:
    from lab2prod.kinds.image_bugs import PARTS, composed

    by_name = {bug.name: bug for bug in parity.BUGS}
    return [(a, b) for a, b in itertools.combinations(PARTS, 2) if composed(by_name[a], by_name[b]) is not None]


@pytest.mark.parametrize("model, pair", [
    *[("digits_cnn", pair) for pair in _composable_pairs()],  # every pair that can happen together
    ("photo_cnn", ("square_resize", "missing_normalize")),
    ("photo_cnn", ("bicubic_interpolation", "bgr_channel_order")),
])
def test_a_service_making_two_mistakes_is_named_with_both(model, pair):
    """Two catalogued mistakes in one serving path: no single bug reproduces it, the pair does, and the diagnosis
    names both (a tie is the part that shows alone on another client: EXIF shows only on rotated photos; on
    photo_cnn a square resize without Normalize is the catalog's motivating case, which names both)."""
    from lab2prod.kinds.image_bugs import composed

    loaded, lab = _lab_report(model, 30 if model == "digits_cnn" else 12)
    by_name = {bug.name: bug for bug in parity.BUGS}
    report = _served_as(lab, composed(by_name[pair[0]], by_name[pair[1]]).path(lab.recipe), loaded.module)
    rows = parity.diagnose(report, loaded.module)
    first = {r["bug"] for r in rows if r["explained"] >= rows[0]["explained"] - 1e-9}
    names = {" + ".join(pair), " + ".join(pair[::-1])}
    if set(pair) == {"square_resize", "missing_normalize"}:
        names.add("motivating_case")
    assert names & first and rows[0]["explained"] > 0.99, rows[:3]
    assert parity.diagnosis_text(report, rows).startswith("the serving path matches known bug(s)")


def test_only_mistakes_that_can_happen_together_are_paired():
    from lab2prod.kinds.image_bugs import composed

    by_name = {bug.name: bug for bug in parity.BUGS}
    assert composed(by_name["nearest_interpolation"], by_name["bicubic_interpolation"]) is None  # one kernel
    assert composed(by_name["nearest_interpolation"], by_name["tensor_resize_no_antialias"]) is None  # a no-op
    assert composed(by_name["bgr_channel_order"], by_name["exif_orientation_ignored"]) is None  # one decoder
    assert composed(by_name["jpeg_recompressed"], by_name["missing_normalize"]) is None  # not composable
    pair = composed(by_name["square_resize"], by_name["exif_orientation_ignored"])
    assert pair.client == "exif_rotated" and pair.name == "square_resize + exif_orientation_ignored"


def test_a_mistake_outside_the_catalog_is_described_by_its_signature():
    from lab2prod.models.load import load_model

    loaded = load_model("digits_cnn")
    from dataclasses import replace

    from lab2prod.kinds.image_bugs import _pil
    from lab2prod.kinds.transforms import recipe_transform

    _, recipe = lab_transform_for(loaded.family, "")
    other = replace(recipe, mean=tuple(m + 0.1 for m in recipe.mean))  # Normalize with other statistics
    report = _serving_report(loaded, lambda data: recipe_transform(other)(_pil(data)), 40)
    rows = parity.diagnose(report, loaded.module)
    text = parity.diagnosis_text(report, rows)
    assert rows[0]["explained"] < parity.MATCH_NAMED and text.startswith("no catalogued bug reproduces")
    assert "every channel is offset by a constant; scale matches" in text

