"""The results schema: derived from each study's Results class, it is what record() accepts, what
compare judges and what the report explains."""

from dataclasses import dataclass
from typing import ClassVar

import pytest

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.registry import STUDIES
from lab2prod.core.results import record
from lab2prod.core.schema import Results, check_values, described, json_types
from lab2prod.run.schemas import field_help, measure_kind, schemas
from lab2prod.studies.drift import DriftResults


def _drift(**changes):
    values = {"false_positive_rate": 0.02, "scenarios": [], "batch_size": 64, "alpha": 0.05,
              "primary_test": "mmd_embedding"}
    return {**values, **changes}


def test_every_study_that_gates_declares_its_results():
    assert {s.short for s in STUDIES if s.item} == set(schemas())


def test_the_schema_is_derived_from_the_dataclass_fields():
    schema = DriftResults.schema()
    assert list(schema.fields) == list(_drift())
    assert schema.fields["false_positive_rate"][0] == "number|null"
    assert schema.fields["batch_size"] == ("integer", "images per monitored batch")
    assert [json_types(t) for t in (str, int, float, bool, dict, list, list[dict], dict | None)] == [
        "string", "integer", "number", "boolean", "object", "array", "array", "object|null"]
    with pytest.raises(TypeError, match="cannot be"):
        json_types(set)


def test_a_results_class_must_name_its_study():
    with pytest.raises(TypeError, match="must name its study"):
        @dataclass(kw_only=True)
        class Nameless(Results):
            x: int = described("a number")

    @dataclass(kw_only=True)
    class Small(Results):
        study: ClassVar[str] = "small"
        count: int = described("how many")

    assert Small.schema().fields == {"count": ("integer", "how many")}
    with pytest.raises(TypeError, match="count"):
        Small()  # a field the study declares cannot be left out


def test_record_refuses_values_that_do_not_follow_the_schema(tmp_path):
    assert record(tmp_path, "drift", DriftResults(**_drift()), [], "06_drift_monitoring").exists()
    with pytest.raises(Lab2ProdError, match="drift.batch_size is str, the schema says integer"):
        record(tmp_path, "drift", DriftResults(**_drift(batch_size="64")), [], "06")
    with pytest.raises(Lab2ProdError, match="record them under 'drift'"):
        record(tmp_path, "serving", DriftResults(**_drift()), [], "05")
    with pytest.raises(TypeError, match="colour"):
        DriftResults(**_drift(colour="red"))
    schema = DriftResults.schema()
    with pytest.raises(Lab2ProdError, match=r"missing \['alpha'\]"):
        check_values(schema, {k: v for k, v in _drift().items() if k != "alpha"})
    with pytest.raises(Lab2ProdError, match=r"undeclared \['colour'\]"):
        check_values(schema, _drift(colour="red"))
    with pytest.raises(Lab2ProdError, match="drift.alpha is bool"):
        check_values(schema, _drift(alpha=True))
    check_values(schema, _drift(false_positive_rate=None))  # number|null
    check_values(None, {"anything": 1})  # a study without a Results class
    assert record(tmp_path, "sanity", {"anything": 1}, [], "50_sanity").exists()


@pytest.mark.parametrize("path, kind", [
    ("benchmark.rows[eager/cpu/16].p99_ms", "latency"),
    ("benchmark.rows[eager/cpu/16].p50_ms", None),  # the body of a latency row, not judged on its own
    ("serving.tuned.p99_ms", "latency"),
    ("serving.load[8].p99_ms", None),  # load-test rows are context
    ("quantization.methods[torch_ao_dynamic/16].accuracy", "accuracy"),
    ("quantization.methods[torch_ao_dynamic/16].accuracy_drop_pts", None),
    ("export.manifest[torch_export].bytes", "size"),
    ("benchmark.rows[eager/cpu/16].peak_mem_bytes", None),
    ("drift.false_positive_rate", None),
])
def test_compare_judges_only_the_measures_the_schema_declares(path, kind):
    assert measure_kind(path) == kind


def test_field_help_explains_a_result():
    assert "flagged under no shift" in field_help("drift", "false_positive_rate")
    assert field_help("drift", "nothing") == "" and field_help("nobody", "x") == ""
