"""A new server and a new kind each come in as one file and one registry line: the tiny ones under tests/ run
through the studies (serving, security, the side-by-side table; export, serving and security)."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import pytest

from lab2prod.kinds.codec import KINDS, codec_for, from_spec
from lab2prod.models.load import load_model
from lab2prod.models.requests import request_bodies
from lab2prod.servers.base import ServerConfig
from lab2prod.servers.registry import SERVERS, servers_named
from lab2prod.studies import export, security, serving

HERE = Path(__file__).parent
# Locust runs as a command (importing it here would let gevent patch the test process's threads).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="needs locust (requirements.txt)")


@pytest.fixture
def tiny_server(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE / "tiny_server"))
    server = importlib.import_module("tiny_http").SERVER
    monkeypatch.setitem(SERVERS, server.name, server)  # the one registry line
    return server


@pytest.fixture
def csv_model(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE / "tiny_kind"))
    kind = importlib.import_module("csv_kind").KIND
    monkeypatch.setitem(KINDS, kind.name, kind)  # the one registry line
    loaded = load_model("csv_kind:mlp", example_inputs="csv_kind:make_inputs")
    loaded.kind_name = kind.name
    return loaded


def _serve(server, loaded, run_dir: Path) -> serving.ServingReport:
    config = ServerConfig(workers=1, threads=1, max_request_size=100_000)
    grid = serving.tuning_grid([1], [1, 2], [1], 0, 100_000)
    return serving.evaluate(server, loaded, run_dir, config, [1, 2], 1.0, grid, 2, 1000.0, parity_count=16)


def _hostile_all_refused(rows: list[dict]) -> bool:
    sent = [r for r in rows if r.get("server_status") is not None]
    return bool(sent) and all(r["server_status"] != 200 and r["server_alive"] for r in sent)


def test_a_server_added_in_one_file_runs_through_serving_security_and_the_side_by_side_table(tiny_server, tmp_path):
    assert servers_named("tiny") == [tiny_server] and serving.check_backend("tiny") == "tiny"
    loaded = load_model("digits_cnn")
    report = _serve(tiny_server, loaded, tmp_path)
    gates = {g["name"]: g for g in serving.gates_of({"tiny": report}, 1000.0)}
    assert set(gates) == {"tiny:parity", "tiny:errors", "tiny:sla"}
    assert gates["tiny:parity"]["passed"] and gates["tiny:errors"]["passed"]  # the lab's answers, no failure
    assert gates["tiny:sla"]["value"] is not None  # measured (a timing: reported, not asserted)
    assert report.parity["top1_agreement"] == 1.0 and report.parity["requests"] == 16
    statuses = {row["request"]: row["status"] for row in report.limits}
    assert statuses["predict, no token"] == 401 and statuses["predict, right token"] == 200
    assert [s for r, s in statuses.items() if "body of" in r] == [413]
    assert any(row["metric"] == "tiny_requests_total" and row["value"] > 0 for row in report.metrics)
    assert [row["config"] for row in report.tuning][0].startswith("1 thread(s) of HTTP") and len(report.tuning) == 3
    assert json.loads((tmp_path / report.files["tiny_config"]).read_text())["threads"] in (1, 2)

    side = serving.side_by_side({"tiny": report})
    assert {(r["server"], r["config"]) for r in side} == {("Tiny HTTP", "default"), ("Tiny HTTP", "tuned")}
    assert serving.pick_server(side, 1000.0) == "one server measured: nothing to compare"
    audit, audited = security.audit_servers(tmp_path)  # every registered server audits what it wrote
    assert tmp_path / report.files["tiny_config"] in audited and {"tiny: max_request_size", "bind addresses"} <= {
        row["item"] for row in audit}
    results = serving.serving_results(serving.ServingReport(False, "not served"), "tiny", None, side, "",
                                      {"tiny": report})
    assert results.servers["tiny"]["tiny_config"] == report.files["tiny_config"] and not results.applies

    codec = codec_for(loaded)
    good = request_bodies(loaded, 1)[0][1]
    inputs = [(name, payload) for name, payload in codec.hostile(50_000, good) if isinstance(payload, bytes)]
    tried = security.try_live(loaded, tmp_path, inputs, security.try_inputs(codec, inputs), server=tiny_server,
                              max_bytes=50_000)
    assert _hostile_all_refused(tried) and {"no token", "wrong token"} <= {r["input"] for r in tried}


def test_a_kind_added_in_one_file_runs_through_export_serving_and_security(csv_model, tiny_server, tmp_path):
    assert csv_model.kind == "csv"
    body = request_bodies(csv_model, 3, seed=1)[0][1]
    assert body.count(b",") == 5  # one CSV line of six numbers

    artifacts = [export.export_model(csv_model, fmt, tmp_path / "models") for fmt in ("torchscript_trace",
                                                                                       "torch_export")]
    rows = export.check_exports(csv_model, artifacts, [1, 4], ["cpu"])
    gates = export.format_gates(artifacts, rows, 1e-5, [])
    assert gates and all(g["passed"] for g in gates)

    codec = codec_for(csv_model, max_bytes=10_000)
    spec, files = codec.archive(tmp_path)
    rebuilt = from_spec(spec, tmp_path)  # what a server does with the archive's lab2prod.json
    assert files == [] and (rebuilt(body) == codec(body)).all()

    report = _serve(tiny_server, csv_model, tmp_path / "run")
    assert report.requests == "one CSV line of numbers"
    assert report.parity["failed"] == 0 and report.parity["top1_agreement"] == 1.0
    assert all(row["error_rate"] == 0 for row in report.load)

    inputs = codec.hostile(10_000, body)
    tried = security.try_inputs(codec, inputs)
    assert all(r["rejected"] and not r["crashed"] for r in tried)
    live = security.try_live(csv_model, tmp_path / "run", inputs, tried, server=tiny_server, max_bytes=10_000)
    assert _hostile_all_refused(live)
