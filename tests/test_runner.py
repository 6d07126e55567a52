import json
import math

import pytest

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.registry import notebook_parameters, resolve_parameters
from lab2prod.core.results import gate, load_results, readiness, record, resolve_run_dir, to_jsonable
from lab2prod.run.report import sorted_gates, write_report
from lab2prod.run.runner import available_studies, parse_parameter, select_studies


def run_passed(summary):
    return readiness(summary)[0]


@pytest.mark.parametrize("text, expected", [
    ("seed=3", ("seed", 3)), ("atol=1e-5", ("atol", 1e-5)), ("batch_sizes=[1,8]", ("batch_sizes", [1, 8])),
    ("flag=True", ("flag", True)), ("weights=None", ("weights", None)), ("model=resnet18", ("model", "resnet18")),
])
def test_parse_parameter_types_values_like_papermill(text, expected):
    assert parse_parameter(text) == expected


def test_parse_parameter_rejects_text_without_name():
    with pytest.raises(Lab2ProdError, match="not name=value"):
        parse_parameter("=3")


def test_parameters_are_typed_against_the_registry():
    studies = select_studies(["export"], None)
    assert resolve_parameters({"atol": 1, "batch_sizes": [2, 3]}, studies) == {
        "01_export": {"atol": 1.0, "batch_sizes": [2, 3]}}
    with pytest.raises(Lab2ProdError, match=r"batch_sizes='abc' is not a list of int; e.g. -p batch_sizes=\[1, 4"):
        resolve_parameters({"batch_sizes": "abc"}, studies)
    with pytest.raises(Lab2ProdError, match="wrong type"):
        resolve_parameters({"batch_sizes": [1.5]}, studies)
    with pytest.raises(Lab2ProdError, match="'colour' is not used by the selected notebooks"):
        resolve_parameters({"colour": "red"}, studies)


def test_select_studies_names_valid_choices():
    assert [s.short for s in select_studies(["export"], None)] == ["export"]
    with pytest.raises(Lab2ProdError, match="'exprt' is not known; use one of environment, export"):
        select_studies(["exprt"], None)
    with pytest.raises(Lab2ProdError, match="left no notebook"):
        select_studies(None, [s.short for s in available_studies()])


def test_results_round_trip_and_json_cleaning(tmp_path):
    import numpy as np

    record(tmp_path, "custom", {"x": np.float32(0.5), "bad": math.nan},
           [gate("parity:a", True, 0.0, 1e-4), gate("parity:b", False, 2.0, 1e-4, "too far")], "01_export")
    results, gates = load_results(tmp_path)
    assert results == {"custom": {"x": 0.5, "bad": None}}
    assert [g["notebook"] for g in gates] == ["01_export", "01_export"]
    assert to_jsonable({"p": tmp_path}) == {"p": str(tmp_path)}


def test_unwritable_run_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(Lab2ProdError, match="is not writable"):
        resolve_run_dir(blocker / "run")


def test_report_puts_failures_first(tmp_path):
    gates = [{"notebook": "01_export", **gate("parity:ok", True, 0.0, 1e-4)},
             {"notebook": "01_export", **gate("parity:bad", False, 0.3, 1e-4, "diff 0.3")}]
    assert [g["name"] for g in sorted_gates(gates)] == ["parity:bad", "parity:ok"]
    summary = {"run_id": "r1", "created": "now", "params": {"model": "m"}, "environment": {"python": "3"},
               "notebooks": [{"name": "01_export", "status": "ok", "seconds": 1.0, "error": None}],
               "results": {"export": {"formats": [{"format": "x", "max_abs_diff": 0.3}]}}, "gates": gates}
    assert not run_passed(summary)
    html = write_report(summary, tmp_path).read_text()
    gates_table = html[html.index("<h2>Gates"):]
    assert "NOT READY" in html and gates_table.index("parity:bad") < gates_table.index("parity:ok")
    assert "<td class='fail'>FAIL</td>" in html
    json.dumps(summary)  # the summary contract is plain JSON


def test_skipped_gates_sort_between_failures_and_passes_and_do_not_fail_a_run(tmp_path):
    gates = [{"notebook": "02", **gate("a:ok", True, 0.0, 1e-6)},
             {"notebook": "02", **gate("b:skip", False, None, 1e-6, "takes tensors", skipped=True)}]
    assert gates[1]["passed"] is None
    assert [g["name"] for g in sorted_gates(gates)] == ["b:skip", "a:ok"]
    summary = {"run_id": "r1", "created": "now", "params": {}, "environment": {},
               "notebooks": [{"name": "02", "status": "ok", "seconds": 1.0, "error": None}],
               "results": {}, "gates": gates}
    assert run_passed(summary)
    html = write_report(summary, tmp_path).read_text()
    assert "READY: every gate passed" in html and "<td class='skip'>SKIP</td>" in html
    summary["gates"].append({"notebook": "02", **gate("c:bad", False, 1.0, 1e-6)})
    assert not run_passed(summary)


def test_every_parameter_of_every_notebook_is_visible_to_papermill_and_matches_the_registry():
    """A parameters cell line papermill cannot parse (a quote in a comment) silently hides the
    parameter from `lab2prod run -p`; every assignment must come back from inspection, with the
    name and default the registry declares."""
    import ast

    import nbformat

    for study in available_studies():
        notebook = nbformat.read(str(study.path), as_version=4)
        (cell,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
        assigned = {node.targets[0].id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)}
        declared = notebook_parameters(study.path)
        assert set(declared) == assigned, study.notebook
        assert declared == {p.name: p.default for p in study.params}, study.notebook


def test_report_shows_scalar_results_beside_tables(tmp_path):
    summary = {"run_id": "r1", "created": "now", "params": {}, "environment": {},
               "notebooks": [{"name": "06", "status": "ok", "seconds": 1.0, "error": None}],
               "results": {"drift": {"false_positive_rate": 0.04, "scenarios": [{"scenario": "darker", "rate": 1.0}]}},
               "gates": []}
    html = write_report(summary, tmp_path).read_text()
    assert "false_positive_rate" in html and "0.04" in html and "darker" in html


def test_junit_has_a_case_per_gate_and_one_for_a_notebook_that_did_not_finish(tmp_path):
    from xml.etree import ElementTree

    from lab2prod.core.results import write_junit

    summary = {"run_id": "r", "notebooks": [
        {"name": "01_export", "status": "ok", "seconds": 2.0, "error": None},
        {"name": "05_serving", "status": "timeout", "seconds": 9.0, "error": "a cell ran longer than --timeout 5 s"},
        {"name": "99_report", "status": "ok", "seconds": 1.0, "error": None}],
        "gates": [{"notebook": "01_export", **gate("parity:a", True, 0.0, 1e-4)},
                  {"notebook": "01_export", **gate("parity:b", False, 2.0, 1e-4, "too far")},
                  {"notebook": "01_export", **gate("parity:c", False, None, None, "does not apply", skipped=True)}]}
    root = ElementTree.parse(write_junit(tmp_path / "ci" / "gates.xml", summary)).getroot()
    suites = {s.get("name"): s for s in root}
    export = suites["01_export"]
    counts = [export.get(key) for key in ("tests", "failures", "skipped", "errors")]
    assert counts == ["3", "1", "1", "0"]
    assert export.find("testcase[@name='parity:b']/failure").get("message").endswith("too far")
    assert suites["05_serving"].get("errors") == "1" and suites["05_serving"].get("tests") == "1"
    assert "timeout" in suites["05_serving"].find("testcase/error").get("message")
    assert suites["99_report"].get("tests") == "0" and len(list(suites["99_report"])) == 0
