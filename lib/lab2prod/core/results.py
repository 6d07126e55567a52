"""Named results and gates of a run: what a notebook records, and what the report reads back."""

from __future__ import annotations

import json
import math
import tempfile
from datetime import datetime
from pathlib import Path

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.files import atomic_write
from lab2prod.core.paths import OUTPUTS_DIR
from lab2prod.core.provenance import provenance
from lab2prod.core.schema import Results, check_values

__all__ = ["resolve_run_dir", "gate", "gate_verdict", "record", "load_results", "build_summary", "readiness",
           "write_junit",
           "to_jsonable", "write_json"]


def resolve_run_dir(run_dir: str | Path | None) -> Path:
    """The run folder: the one given, or outputs/interactive when a notebook runs on its defaults."""
    path = Path(run_dir) if run_dir else OUTPUTS_DIR / "interactive"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise Lab2ProdError(
            f"run folder {str(path)!r} is not writable ({exc.strerror}); choose another with --out"
        ) from None
    return path


def to_jsonable(value):
    """Convert numpy/torch scalars, paths and NaN into plain JSON values (NaN becomes null)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        return to_jsonable(value.item())
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return to_jsonable(asdict(value))
    return str(value)


def write_json(path: Path, payload) -> None:
    """Write JSON atomically: readers never see half a file."""
    text = json.dumps(to_jsonable(payload), indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def gate(name: str, passed: bool, value=None, threshold=None, detail: str = "",
         skipped: bool = False) -> dict:
    """A pass/fail verdict with the number behind it; a skipped gate (the check does not apply
    to this model) has passed=None and says why in `detail`."""
    return {"name": name, "passed": None if skipped else bool(passed), "value": value,
            "threshold": threshold, "detail": detail}


def gate_verdict(g: dict) -> str:
    """PASS, FAIL or SKIP for one gate."""
    return "SKIP" if g["passed"] is None else ("PASS" if g["passed"] else "FAIL")


def record(run_dir: str | Path, name: str, values: Results | dict, gates: list[dict], notebook: str) -> Path:
    """Save a notebook's named values and gates as run_dir/results/<name>.json. `values` is the
    study's Results (checked against the schema its fields declare), or a plain dict for a study
    that declares none."""

    schema = None
    if isinstance(values, Results):
        if values.study != name:
            raise Lab2ProdError(f"record({name!r}, ...) was given {type(values).__name__}, the results of "
                                f"{values.study!r}; record them under {values.study!r}")
        schema, values = values.schema(), values.values()
    values = to_jsonable(values)
    check_values(schema, values)  # the schema compare, the report and the tests read
    path = Path(run_dir) / "results" / f"{name}.json"
    gates = [{"notebook": notebook, **g} for g in gates]
    write_json(path, {"name": name, "notebook": notebook,
                      "recorded": datetime.now().astimezone().isoformat(timespec="seconds"),
                      "values": values, "gates": gates})
    return path


def load_results(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """Read every results/<name>.json of a run: ({name: values}, [gates])."""
    results, gates = {}, []
    for path in sorted((Path(run_dir) / "results").glob("*.json")):
        payload = json.loads(path.read_text())
        results[payload["name"]] = payload["values"]
        gates.extend(payload["gates"])
    return results, gates


def build_summary(run_dir: str | Path, params: dict, notebooks: list[dict], environment: dict | None = None) -> dict:
    """The summary.json contract of a run folder: run_id, params, environment, notebooks (name,
    status, seconds, error), every recorded result and gate. The runner writes it at the end;
    the report notebook builds it from the folder while the run is still going."""
    results, gates = load_results(run_dir)
    return {"run_id": Path(run_dir).name, "created": datetime.now().astimezone().isoformat(timespec="seconds"),
            "lab2prod": provenance(), "params": params, "environment": environment or {}, "notebooks": notebooks,
            "results": results, "gates": gates}


def readiness(summary: dict) -> tuple[bool, str]:
    """(ready, one line): ready when every notebook ran to the end and no gate failed (a skipped
    gate, a check that does not apply to this model, and a study skipped for a missing extra do not fail a
    run)."""
    errors = [n for n in summary["notebooks"] if n["status"] not in ("ok", "skipped")]
    failed = [g for g in summary["gates"] if g["passed"] is False]
    ready = not errors and not failed
    skipped = [n["name"] for n in summary["notebooks"] if n["status"] == "skipped"]
    also = f" ({len(skipped)} skipped for a missing extra: {', '.join(skipped)})" if skipped else ""
    return ready, ("READY: every gate passed" + also if ready else
                   f"NOT READY: {len(failed)} gate(s) failed, {len(errors)} notebook(s) did not finish" + also)


def write_junit(path: Path, summary: dict) -> Path:
    """The gates of a run as JUnit XML, the format CI systems display: one test suite per notebook,
    one test case per gate (a failed gate is a failure, a skipped one is skipped), and a notebook
    that did not finish as an error."""
    from xml.etree import ElementTree as ET

    root = ET.Element("testsuites", name=f"lab2prod {summary['run_id']}")
    for notebook in summary["notebooks"]:
        gates = [g for g in summary["gates"] if g.get("notebook") == notebook["name"]]
        suite = ET.SubElement(root, "testsuite", name=notebook["name"],
                              tests=str(len(gates) + int(notebook["status"] not in ("ok", "skipped"))),
                              failures=str(sum(g["passed"] is False for g in gates)),
                              skipped=str(sum(g["passed"] is None for g in gates)),
                              errors=str(int(notebook["status"] not in ("ok", "skipped"))),
                              time=str(notebook["seconds"]))
        if notebook["status"] not in ("ok", "skipped"):
            case = ET.SubElement(suite, "testcase", classname=notebook["name"], name="notebook")
            ET.SubElement(case, "error", message=f"{notebook['status']}: {notebook['error'] or ''}")
        for g in gates:
            case = ET.SubElement(suite, "testcase", classname=notebook["name"], name=g["name"])
            text = f"value {g['value']!r}, threshold {g['threshold']!r}: {g['detail']}"
            if g["passed"] is False:
                ET.SubElement(case, "failure", message=text)
            elif g["passed"] is None:
                ET.SubElement(case, "skipped", message=g["detail"] or "does not apply")
            else:
                ET.SubElement(case, "system-out").text = text
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ET.tostring(root, encoding="unicode")
    atomic_write(path, lambda tmp: tmp.write_text('<?xml version="1.0" encoding="utf-8"?>\n' + text))
    return path
