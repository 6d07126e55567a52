"""The fuzzed front door: seeded mutations through each kind's guard end accepted or refused with a reason."""

import json

import pytest

from lab2prod.core.errors import Lab2ProdError
from lab2prod.kinds.codec import codec_for
from lab2prod.kinds.guard import Rejected, TensorGuard
from lab2prod.models.load import load_model
from lab2prod.models.requests import request_bodies
from lab2prod.studies import fuzz

MODELS = {
    "image": ("digits_cnn", {}),
    "text": ("text_langid", {}),
    "tensor": ("lab2prod.examples:tabular_mlp", {"example_inputs": "lab2prod.examples:tabular_inputs"}),
    "token ids": ("lab2prod.examples:token_classifier", {"example_inputs": "lab2prod.examples:token_inputs"}),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_every_mutation_is_accepted_or_refused_with_a_reason(kind):
    spec, options = MODELS[kind]
    loaded = load_model(spec, **options)
    good = [body for _, body in request_bodies(loaded, 8, 0)]
    report = fuzz.fuzz_codec(codec_for(loaded), good, 1000, seed=0)
    assert report.mutations == 1000 and set(report.by_mutation) == set(fuzz.MUTATIONS)
    assert report.crash_count == 0, report.crashes[:3]
    assert report.refusals_without_code == 0 and report.not_finite_accepted == 0
    assert report.accepted > 0 and sum(report.refused.values()) > 100  # both outcomes were reached
    gate = fuzz.fuzz_gate(report, "security:fuzz", at_least=1000)
    assert gate["passed"] and "1000 mutations" in gate["detail"]
    # the same seed draws the same bodies
    again = fuzz.fuzz_codec(codec_for(loaded), good, 1000, seed=0)
    assert again.summary() == report.summary()


def test_a_codec_that_crashes_fails_the_gate_with_the_body_to_replay():
    loaded = load_model("lab2prod.examples:tabular_mlp", example_inputs="lab2prod.examples:tabular_inputs")
    codec = codec_for(loaded)

    class Fragile:  # a handler that parses JSON itself before the guard, as many do
        guard = codec.guard

        def __call__(self, body):
            json.loads(body)["input"]
            return codec(body)

    good = [body for _, body in request_bodies(loaded, 4, 0)]
    report = fuzz.fuzz_codec(Fragile(), good, 300, seed=1)
    assert report.crash_count > 0 and report.crashes[0]["body_head"]
    gate = fuzz.fuzz_gate(report, at_least=300)
    assert gate["passed"] is False and "crashed the codec" in gate["detail"]
    assert "only 300 mutations (wanted 10000)" in fuzz.fuzz_gate(report)["detail"]


def test_a_number_json_reads_as_finite_but_the_dtype_cannot_hold_is_refused():
    guard = TensorGuard({"input": {"shape": [2], "dtype": "float32"}, "ids": {"shape": [1], "dtype": "int64"}})
    with pytest.raises(Rejected) as refused:
        guard.check(b'{"input": [1e308, 0.5], "ids": [3]}')
    assert refused.value.code == "range" and "float32" in refused.value.message
    with pytest.raises(Rejected) as refused:
        guard.check(b'{"input": [1.0, 0.5], "ids": [123456789012345678901234567890]}')
    assert refused.value.code == "range" and "int64" in refused.value.message
    assert guard.check(b'{"input": [1.0, 0.5], "ids": [3]}')["ids"].tolist() == [3.0]


def test_a_png_header_can_declare_a_huge_size_and_the_guard_refuses_it_before_decoding():
    loaded = load_model("digits_cnn")
    good = request_bodies(loaded, 1, 0)[0][1]
    huge = fuzz._png_with_size(good, 100_000, 100_000)
    assert len(huge) == len(good) and huge != good
    with pytest.raises(Rejected) as refused:
        codec_for(loaded)(huge)
    assert refused.value.code == "too_many_pixels"


def test_the_fuzz_needs_a_guarded_codec_and_a_body():
    loaded = load_model("digits_cnn")
    with pytest.raises(Lab2ProdError, match="without its guard"):
        fuzz.fuzz_codec(codec_for(loaded, guarded=False), [b"x"], 10)
    with pytest.raises(Lab2ProdError, match="at least one valid request body"):
        fuzz.fuzz_codec(codec_for(loaded), [], 10)
