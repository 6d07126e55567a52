"""The input guard, hostile inputs, adversarial examples, integrity and the config audit."""

import numpy as np
import pytest
import torch
from PIL import Image

from lab2prod.kinds.guard import InputGuard, Rejected, lab_input_stats, sniff_format
from lab2prod.kinds.image import ImageCodec, bad_inputs
from lab2prod.kinds.preprocess import ServingPath
from lab2prod.kinds.transforms import DIGITS_RECIPE, digits_lab_transform
from lab2prod.servers.torchserve.adapter import audit_config
from lab2prod.studies import security


def _photo(width=48, height=36):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8))


def test_every_bad_input_is_refused_with_a_reason_and_nothing_crashes():
    guard = InputGuard(max_bytes=200_000, expected_shape=(3, 32, 32))
    rows = security.try_inputs(ImageCodec(digits_lab_transform(), guard), bad_inputs(_photo(), 200_000))
    assert len(rows) == 12
    bad = [r for r in rows if not r["rejected"] or not r["reason"] or r["crashed"]]
    assert not bad, bad
    reasons = {r["input"]: r["reason"] for r in rows}
    assert reasons["empty body"] == "empty" and reasons["text"] == "format"
    assert reasons["truncated JPEG"] == "corrupt" and reasons["PNG bomb (100000x100000 declared)"] == "too_many_pixels"
    assert reasons["animated PNG (2 frames)"] == "multi_frame" and reasons["NaN tensor"] == "not_finite"
    assert reasons["CMYK JPEG"] == "mode" and reasons["16-bit PNG"] == "mode"


def test_a_good_image_passes_and_formats_are_sniffed_not_named():
    import io

    buffer = io.BytesIO()
    _photo().save(buffer, format="PNG")
    guard = InputGuard(expected_shape=(3, 32, 32))
    assert ServingPath(digits_lab_transform(), guard)(buffer.getvalue()).shape == (3, 32, 32)
    assert ImageCodec(digits_lab_transform(), guard)(buffer.getvalue()).shape == (1, 3, 32, 32)
    assert sniff_format(buffer.getvalue()) == "PNG" and sniff_format(b"GIF89a...") == "GIF"
    assert sniff_format(b"hello") is None


def test_z_score_screen_flags_inputs_far_from_the_lab():
    transform = digits_lab_transform()
    lab = torch.stack([transform(_photo()) for _ in range(3)] + [transform(_photo(40, 40).rotate(90))])
    guard = InputGuard(lab_stats={"mean": [0.0] * 3, "std": [0.1] * 3}, z_limit=5)
    with pytest.raises(Rejected, match="out_of_distribution"):
        guard.check_tensor(torch.full((3, 32, 32), 2.0))
    assert guard.check_tensor(torch.zeros(3, 32, 32)) is not None
    stats = lab_input_stats(lab)
    assert len(stats["mean"]) == 3 and all(s > 0 for s in stats["std"])


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))

    def forward(self, x):
        return self.net(x)


def test_attacks_stay_in_the_budget_and_hurt_accuracy():
    model = _Tiny().eval()
    x01 = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model((x01 - 0.5) / 0.25).argmax(1)  # the clean model is right by construction
    guard = InputGuard(lab_stats={"mean": [0.0] * 3, "std": [1.0] * 3})
    numbers, examples = security.adversarial_report(model, x01, labels, (0.5,) * 3, (0.25,) * 3, 0.05, guard)
    assert numbers["clean_accuracy"] == 1.0
    assert numbers["pgd_accuracy"] <= numbers["fgsm_accuracy"] < 1.0
    for key in ("fgsm", "pgd"):
        delta = (examples[key] - x01).abs().max()
        assert delta <= 0.05 + 1e-6 and examples[key].min() >= 0 and examples[key].max() <= 1
    assert 0.0 <= numbers["screen_detection_rate"] <= 1.0


def test_integrity_refuses_tampered_and_pickled_files(tmp_path):
    import json

    from lab2prod.core.files import sha256_file

    (tmp_path / "models").mkdir()
    model_file = tmp_path / "models" / "m.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), model_file)
    manifest = [{"format": "x", "file": "models/m.pt", "sha256": sha256_file(model_file)}]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    rows = security.integrity_checks(tmp_path, tmp_path / "security")
    assert [r["passed"] for r in rows] == [True, True, True]
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    rows = security.integrity_checks(tmp_path, tmp_path / "security")
    assert rows[0]["passed"] is False and "does not match the manifest" in rows[0]["detail"]


def test_integrity_fails_an_archive_that_carries_the_data_set_it_was_exported_with(tmp_path):
    import json

    from lab2prod.core.files import archive_payload, sha256_file

    data = torch.randn(100_000, 16)  # 6.4 MB of preloaded rows
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    (tmp_path / "models").mkdir()
    entries = []
    for name, example in (("leaky", data[:4]), ("clean", data[:4].clone())):  # a view keeps the whole storage
        path = tmp_path / "models" / f"{name}.pt2"
        torch.export.save(torch.export.export(model, (example,)), str(path))
        entries.append({"format": "torch_export", "file": f"models/{name}.pt2", "sha256": sha256_file(path),
                        "payload": archive_payload(path), "example_bytes": example.nbytes})
    (tmp_path / "manifest.json").write_text(json.dumps(entries))
    rows = {r["check"]: r for r in security.integrity_checks(tmp_path, tmp_path / "security")}
    leaky, clean = rows["models/leaky.pt2 carries no data set"], rows["models/clean.pt2 carries no data set"]
    assert not leaky["passed"] and "clone()" in leaky["detail"] and entries[0]["payload"]["data_bytes"] > 6_000_000
    assert clean["passed"], clean


def test_config_audit_passes_the_deployment_config_and_fails_a_loose_one(tmp_path):
    from lab2prod.servers.torchserve.server import ServeConfig, write_config, write_deployment_config

    deployed = write_deployment_config(tmp_path / "ok", "model", None, ServeConfig())
    assert all(r["passed"] for r in audit_config(deployed)), audit_config(deployed)
    loose = write_config(tmp_path, ServeConfig(max_request_size=50_000_000), {"inference": 1, "management": 2,
                                                                              "metrics": 3})
    loose.write_text(loose.read_text().replace("127.0.0.1", "0.0.0.0") + "disable_token_authorization=true\n")
    failed = {r["item"] for r in audit_config(loose) if not r["passed"]}
    assert failed == {"token authorization", "bind addresses", "allowed_urls", "max_request_size",
                      "model API (register/unregister)"}


def test_digits_recipe_is_what_the_attack_undoes():
    assert len(DIGITS_RECIPE.mean) == 3  # the attack normalizes inside the model with these
