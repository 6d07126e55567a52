import json

import pytest
import torch

from lab2prod.core.errors import Lab2ProdError
from lab2prod.studies import environment as env


def test_fingerprint_names_versions_hardware_and_locale():
    fp = env.fingerprint()
    assert fp["package.torch"] == torch.__version__.split("+")[0]
    assert fp["cuda.available"] == torch.cuda.is_available()
    assert fp["torch.threads"] == torch.get_num_threads()
    assert "x86" in fp["torch.quantized_engines"] or "qnnpack" in fp["torch.quantized_engines"]
    assert {"encoding.preferred", "timezone", "env.OMP_NUM_THREADS", "cpu.model"} <= set(fp)


@pytest.mark.parametrize("key, lab, here, severity", [
    ("python", "3.9.18", "3.11.7", "fail"),
    ("python", "3.11.4", "3.11.7", "warn"),
    ("package.torch", "2.13.0", "2.14.1", "fail"),
    ("package.torch", "2.14.0", "2.14.1", "warn"),
    ("cuda.available", True, False, "fail"),
    ("cuda.available", False, True, "info"),
    ("package.numpy", "1.26.4", "2.4.6", "warn"),
    ("timezone", "UTC", "CET", "warn"),
    ("cpu.count", 8, 2, "info"),
])
def test_diff_severities(key, lab, here, severity):
    assert env.diff_fingerprints({key: lab}, {key: here}) == [
        {"key": key, "lab": lab, "here": here, "severity": severity}]


def test_diff_lists_fail_first_and_skips_equal_keys():
    diffs = env.diff_fingerprints({"a": 1, "cpu.count": 8, "python": "3.9.0"},
                                  {"a": 1, "cpu.count": 2, "python": "3.11.0"})
    assert [d["key"] for d in diffs] == ["python", "cpu.count"]


def test_smoke_matches_own_lock_and_catches_a_changed_reference(tmp_path):
    lock = env.read_lock(env.write_lock(tmp_path / "lock.json"))
    rows = env.compare_smoke(lock["smoke"], 1e-6)
    assert {r["op"] for r in rows} >= {"gelu", "softmax", "conv2d", "scaled_dot_product_attention",
                                       "quantized_dynamic_linear"}
    assert all(r["passed"] for r in rows if r["device"] == "cpu")
    lock["smoke"]["gelu"][0][0] += 0.01
    tampered = {r["op"]: r for r in env.compare_smoke(lock["smoke"], 1e-6) if r["device"] == "cpu"}
    assert not tampered["gelu"]["passed"] and tampered["gelu"]["max_abs_diff"] == pytest.approx(0.01, rel=1e-3)


def test_read_lock_errors(tmp_path):
    with pytest.raises(Lab2ProdError, match="does not exist; create one with `lab2prod env lock"):
        env.read_lock(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(Lab2ProdError, match="is not valid JSON"):
        env.read_lock(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(Lab2ProdError, match="has no fingerprint/smoke"):
        env.read_lock(tmp_path / "empty.json")


def test_exported_ops_check_names_the_failing_operator():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    program = torch.export.export(model, (torch.randn(1, 3, 8, 8),)).module()
    ok = env.exported_ops_check(program, torch.randn(1, 3, 8, 8))
    assert {r["op"] for r in ok} >= {"aten.conv2d.default", "aten.relu.default"} and all(r["ran"] for r in ok)

    class FunctionalConv(torch.nn.Module):
        def forward(self, x):
            return torch.relu(torch.nn.functional.conv2d(x, torch.ones(4, 3, 3, 3)))

    graph = torch.fx.symbolic_trace(FunctionalConv())  # no shape guards: the conv fails on 5 channels
    rows = env.exported_ops_check(graph, torch.randn(1, 5, 8, 8))
    failed = [r for r in rows if not r["ran"]]
    assert len(failed) == 1 and "conv2d" in failed[0]["op"] and "RuntimeError" in failed[0]["error"]


def test_utf8_demo_shows_the_failure_and_the_fix():
    rows = {r["locale"]: r for r in env.utf8_round_trip_demo(["café", "日本"])}
    c_locale = rows["C locale, no UTF-8"]
    assert c_locale["naive open()"].startswith("UnicodeEncodeError")
    assert c_locale["open(encoding='utf-8')"] == "round trip ok"


def test_hour_demo_naive_differs_aware_agrees():
    rows = env.hour_of_day_demo(1764151200.0, ["UTC", "Asia/Tokyo"])
    assert [r["naive hour"] for r in rows] == [10, 19]
    assert [r["aware hour (UTC)"] for r in rows] == [10, 10]
