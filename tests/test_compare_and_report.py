"""Run comparison (`lab2prod compare`) and the readiness scorecard."""

import json

import pytest

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.registry import checklist
from lab2prod.core.results import gate
from lab2prod.run import compare, report


def _summary(p99=5.0, p50=2.0, throughput=3000.0, accuracy=0.96, size=2_000_000, sla_passes=True,
             torch="2.14.1", n=500):
    return {
        "run_id": "r", "params": {"model": "digits_cnn"}, "environment": {"torch": torch},
        "notebooks": [{"name": "04_latency_benchmark", "status": "ok", "seconds": 1.0, "error": None}],
        "results": {
            "benchmark": {"sla": {"p99_ms": p99, "throughput_per_s": throughput, "batch_size": 16},
                          "rows": [{"variant": "eager", "device": "cpu", "batch_size": 1, "p99_ms": p99,
                                    "p50_ms": p50, "n": n, "throughput_per_s": throughput}],
                          "model": {"heldout_accuracy": accuracy}},
            "serving": {"load": [{"users": 1, "p99_ms": p99 * 9}], "default": {"p99_ms": p99 * 50},
                        "tuned": {"p99_ms": p99 * 4, "throughput_per_s": throughput / 5}},
            "export": {"manifest": [{"format": "torchscript_script", "bytes": size}]},
        },
        "gates": [{"notebook": "04_latency_benchmark", **gate("sla", sla_passes, p99, 100.0)}],
    }


def _verdicts(changes):
    return {(c.kind, c.name): c.verdict for c in changes}


def test_identical_runs_have_no_change():
    changes = compare.compare_runs(_summary(), _summary())
    assert compare.regressions(changes) == []
    assert {c.verdict for c in changes} == {"same"}


ROW = "benchmark.rows[eager/cpu/1].p99_ms"


def test_slower_run_is_a_regression_and_faster_an_improvement():
    slower = _verdicts(compare.compare_runs(_summary(), _summary(p99=5.6, p50=2.4, throughput=2600.0)))
    assert slower[("latency", ROW)] == "REGRESSION"
    assert slower[("latency", "serving.tuned.p99_ms")] == "REGRESSION"  # p99 up and throughput down
    # load-test rows, the untuned server and the chosen-configuration copy are context, not verdicts
    assert {name for _, name in slower if "p99" in name} == {ROW, "serving.tuned.p99_ms"}
    within = _verdicts(compare.compare_runs(_summary(), _summary(p99=5.4, p50=2.1)))
    assert within[("latency", ROW)] == "same"  # +8% is inside the 10% tolerance
    faster = _verdicts(compare.compare_runs(_summary(), _summary(p99=3.0, p50=1.5)))
    assert faster[("latency", ROW)] == "improved"


def test_a_p99_that_moves_alone_or_rests_on_few_calls_is_not_a_regression():
    tail = compare.compare_runs(_summary(), _summary(p99=9.0, p50=2.05))
    assert _verdicts(tail)[("latency", ROW)] == "tail only"
    assert compare.regressions([c for c in tail if c.name == ROW]) == []
    few = _verdicts(compare.compare_runs(_summary(n=40), _summary(p99=9.0, p50=4.0, n=40)))
    assert few[("latency", ROW)] == "same"


def test_a_shifted_body_is_a_regression_even_when_run_a_had_a_tail_spike():
    # Seen in CI: run A's P99 was a spike, the 4x slower variant matched it while its P50 rose 4x.
    spiked = _verdicts(compare.compare_runs(_summary(p99=8.0, p50=0.7), _summary(p99=8.1, p50=2.8)))
    assert spiked[("latency", ROW)] == "REGRESSION"
    # ... and in a later CI run A's spike (P99 3.41 ms on a P50 of 0.65) stood above B's whole 4x slower body
    above = _verdicts(compare.compare_runs(_summary(p99=3.41, p50=0.65), _summary(p99=2.66, p50=2.65)))
    assert above[("latency", ROW)] == "REGRESSION"
    # a P99 that fell while the P50 rose less than twofold stays a tail-only change
    milder = _verdicts(compare.compare_runs(_summary(p99=3.41, p50=0.65), _summary(p99=2.66, p50=1.0)))
    assert milder[("latency", ROW)] == "tail only"


def test_accuracy_size_gates_and_versions():
    changes = compare.compare_runs(_summary(), _summary(accuracy=0.95, size=2_400_000, sla_passes=False,
                                                        torch="2.15.0"))
    verdicts = _verdicts(changes)
    assert verdicts[("accuracy", "benchmark.model.heldout_accuracy")] == "REGRESSION"
    assert verdicts[("size", "export.manifest[torchscript_script].bytes")] == "REGRESSION"
    assert verdicts[("gate", "sla")] == "REGRESSION"
    assert verdicts[("version", "torch")] == "changed"
    assert verdicts[("gate", "sla")] == "REGRESSION"
    table = compare.format_table(changes)
    assert table.splitlines()[0].split()[:3] == ["verdict", "kind", "name"]
    assert table.splitlines()[2].startswith("REGRESSION")  # regressions first
    fixed = _verdicts(compare.compare_runs(_summary(sla_passes=False), _summary()))
    assert fixed[("gate", "sla")] == "improved"


def test_flatten_keys_rows_by_their_identity():
    flat = compare.flatten({"rows": [{"variant": "a", "batch_size": 1, "p99_ms": 2.0},
                                     {"variant": "a", "batch_size": 4, "p99_ms": 3.0}], "unkeyed": [{"x": 1}]})
    assert flat == {"rows[a/1].p99_ms": 2.0, "rows[a/4].p99_ms": 3.0}


def test_load_summary_errors_name_the_folder(tmp_path):
    with pytest.raises(Lab2ProdError, match="has no summary.json"):
        compare.load_summary(tmp_path)
    (tmp_path / "summary.json").write_text("{half")
    with pytest.raises(Lab2ProdError, match="is not valid JSON"):
        compare.load_summary(tmp_path)


def test_compare_cli_exit_codes(run_cli, tmp_path):
    for name, summary in (("a", _summary()), ("b", _summary(p99=9.0, p50=3.0)), ("c", _summary())):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    regressed = run_cli("compare", str(tmp_path / "a"), str(tmp_path / "b"))
    assert regressed.returncode == 1 and "REGRESSION  latency" in regressed.stdout
    assert run_cli("compare", str(tmp_path / "a"), str(tmp_path / "c")).returncode == 0
    loose = run_cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--p99-tolerance", "1.0", "--json")
    assert loose.returncode == 0 and json.loads(loose.stdout)["regressions"] == 0
    bad = run_cli("compare", str(tmp_path / "a"), str(tmp_path / "missing"))
    assert bad.returncode == 2 and "has no summary.json" in bad.stderr


def test_scorecard_follows_the_checklist_and_fails_an_item_on_any_failed_gate():
    gates = [{"notebook": "08_canary", **gate("canary:decision", False, "hold", "promote", "p99 noisy")},
             {"notebook": "07_security", **gate("security:integrity", True, 5, 5)},
             {"notebook": "07_security", **gate("security:inputs", True, 12, 12)},
             {"notebook": "02_preprocessing_parity", **gate("parity:serving", False, None, None, "n/a",
                                                            skipped=True)},
             {"notebook": "00_environment", **gate("environment", True, 0, 0)}]
    rows = report.scorecard(gates)
    assert [r["item"] for r in rows] == checklist()
    by_item = {r["item"]: r for r in rows}
    assert by_item["rollback"]["verdict"] == "FAIL" and "p99 noisy" in by_item["rollback"]["why"]
    assert by_item["model integrity"]["verdict"] == "PASS"  # the security notebook's integrity checks
    assert by_item["preprocessing parity"]["verdict"] == "SKIP"
    assert by_item["serving"]["verdict"] == "NOT RUN"
    ordered = [g["name"] for g in report.sorted_gates(gates)]
    assert ordered == ["canary:decision", "parity:serving", "environment", "security:integrity", "security:inputs"]


def test_report_page_is_self_contained_with_links_and_checklist(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    cell = new_code_cell("fig")
    cell.outputs = [new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})]
    notebook = new_notebook(cells=[cell])
    notebook.metadata["papermill"] = {"duration": 2.5, "exception": None, "end_time": "2026-01-01T00:00:00"}
    nbformat.write(notebook, str(tmp_path / "04_latency_benchmark.ipynb"))
    from lab2prod.core.results import record

    values = {"model": {}, "rows": [], "sla": {"p99_ms": 120.0}, "sla_by_device": {}, "machine": {}, "threads": 1,
              "flops_per_item": None, "efficiency": []}
    record(tmp_path, "benchmark", values, [gate("sla", False, 120.0, 100.0, "too slow")], "04_latency_benchmark")
    summary = report.collect_summary(tmp_path)
    assert summary["notebooks"] == [{"name": "04_latency_benchmark", "status": "ok", "seconds": 2.5, "error": None}]
    page = report.write_report(summary, tmp_path).read_text()
    assert "NOT READY" in page and "<a href='04_latency_benchmark.ipynb'>" in page
    assert "data:image/png;base64,iVBORw0KGgo=" in page
    assert page.index("Scorecard") < page.index("environment") < page.index("latency SLA") < page.index("rollback")
    assert "http://" not in page and "https://" not in page  # nothing to fetch: opens from disk
    assert "the highest-throughput correct configuration" in page  # the schema explains each result
