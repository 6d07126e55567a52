"""The results schema: what record() accepts, what compare judges, what the report explains."""

import pytest

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.registry import STUDIES
from lab2prod.core.results import record
from lab2prod.core.schema import SCHEMAS, check_values, field_help, measure_kind


def _drift(**changes):
    values = {"false_positive_rate": 0.02, "scenarios": [], "batch_size": 64, "alpha": 0.05,
              "primary_test": "mmd_embedding"}
    return {**values, **changes}


def test_every_study_that_gates_has_a_schema():
    assert {s.short for s in STUDIES if s.item} == set(SCHEMAS)


def test_record_refuses_values_that_do_not_follow_the_schema(tmp_path):
    assert record(tmp_path, "drift", _drift(), [], "06_drift_monitoring").exists()
    with pytest.raises(Lab2ProdError, match=r"missing \['alpha'\]"):
        record(tmp_path, "drift", {k: v for k, v in _drift().items() if k != "alpha"}, [], "06")
    with pytest.raises(Lab2ProdError, match=r"undeclared \['colour'\]"):
        check_values("drift", _drift(colour="red"))
    with pytest.raises(Lab2ProdError, match="drift.batch_size is str, the schema says integer"):
        check_values("drift", _drift(batch_size="64"))
    with pytest.raises(Lab2ProdError, match="drift.alpha is bool"):
        check_values("drift", _drift(alpha=True))
    check_values("drift", _drift(false_positive_rate=None))  # number|null
    check_values("a study without a schema", {"anything": 1})


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
