"""Named results and gates of a run: what a notebook records, and what the report reads back."""

from __future__ import annotations

import json
import math
import tempfile
from datetime import datetime
from pathlib import Path

from .errors import Lab2ProdError
from .files import atomic_write
from .paths import OUTPUTS_DIR

__all__ = ["resolve_run_dir", "gate", "gate_verdict", "record", "load_results", "to_jsonable", "write_json"]


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


def record(run_dir: str | Path, name: str, values: dict, gates: list[dict], notebook: str) -> Path:
    """Save a notebook's named values and gates as run_dir/results/<name>.json."""
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
