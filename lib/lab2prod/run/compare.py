"""What changed between two runs: versions, gates, P99 latency, accuracy and size, with a verdict per row for CI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.results import gate_verdict
from lab2prod.run.schemas import measure_kind

__all__ = ["Change", "load_summary", "flatten", "compare_runs", "regressions", "format_table"]

# Lists of result rows are keyed by these columns, so row i of one run meets the same row of the other.
_ROW_KEYS = ("format", "variant", "device", "method", "batch_size", "users", "config", "percentile")


@dataclass
class Change:
    """One compared quantity: kind (version, parameter, notebook, gate, latency, accuracy, size), name,
    the values in run A and B, the change, and the verdict (REGRESSION, improved, changed, tail
    only, same, added, removed)."""

    kind: str
    name: str
    a: object
    b: object
    change: str
    verdict: str


def load_summary(run: str | Path) -> dict:
    """summary.json of a run folder (or the file itself); a clear error when it is not a finished run."""
    path = Path(run)
    path = path / "summary.json" if path.is_dir() else path
    if not path.exists():
        raise Lab2ProdError(f"{str(run)!r} has no summary.json; pass the folder of a finished `lab2prod run` "
                            "(outputs/<run-id>)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise Lab2ProdError(f"{str(path)!r} is not valid JSON ({exc.msg}); was the run interrupted?") from None


def _row_key(row: dict) -> str | None:
    parts = [str(row[k]) for k in _ROW_KEYS if k in row and row[k] is not None]
    return "/".join(parts) or None


def flatten(values, prefix: str = "") -> dict[str, object]:
    """Scalars of a results tree as {"a.b[key].c": value}; lists of rows are keyed by the values
    of their identifying columns (format, variant, device, batch_size, ...: "eager/cpu/16"),
    other lists are left out."""
    flat = {}
    if isinstance(values, dict):
        for key, value in values.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(values, list):
        if values and all(isinstance(v, dict) for v in values):
            keys = [_row_key(v) for v in values]
            if all(keys) and len(set(keys)) == len(keys):
                for key, row in zip(keys, values, strict=True):
                    measured = {k: v for k, v in row.items() if k not in _ROW_KEYS}
                    flat.update(flatten(measured, f"{prefix}[{key}]"))
    elif isinstance(values, (int, float)) and not isinstance(values, bool):
        flat[prefix] = values
    return flat


# Below this many timed calls a P99 is one or two calls: too few to compare.
MIN_SAMPLES = 100
# A P50 (or throughput) this many times worse is a regression even where run A's P99 was a spike above B's.
BODY_SHIFT = 2.0


def _worse_by(body: tuple, factor: float) -> bool:
    name, a, b = body
    return b >= a * factor if name == "p50" else b * factor <= a


def _latency(path: str, flat_a: dict, flat_b: dict, tolerance: float) -> tuple[str, str]:
    """(change, verdict) of a P99 and the body of its distribution (the P50 where the row has one,
    else the throughput). A regression is the body worse by more than `tolerance` with the P99
    not better: a slower model moves the whole distribution, while on a shared machine a P99
    alone moves by more than 10% between identical runs ("tail only", not a verdict). A P99
    that did not move while the P50 quadrupled means run A's tail was a spike, not that B is fine; so does
    a P99 that fell while the P50 doubled or more: a body that moved that far is a regression whatever the
    tail (`BODY_SHIFT`)."""
    base = path[: -len("p99_ms")]
    a, b = float(flat_a[path]), float(flat_b[path])
    counts = flat_a.get(base + "n"), flat_b.get(base + "n")
    if None not in counts and min(counts) < MIN_SAMPLES:
        return f"{_pct(a, b)} ({int(min(counts))} calls: too few for a P99)", "same"
    if base + "p50_ms" in flat_a and base + "p50_ms" in flat_b:
        body = "p50", float(flat_a[base + "p50_ms"]), float(flat_b[base + "p50_ms"])
        body_worse, body_better = body[2] > body[1] * (1 + tolerance), body[2] < body[1] * (1 - tolerance)
    elif base + "throughput_per_s" in flat_a and base + "throughput_per_s" in flat_b:
        body = "throughput", float(flat_a[base + "throughput_per_s"]), float(flat_b[base + "throughput_per_s"])
        body_worse, body_better = body[2] < body[1] * (1 - tolerance), body[2] > body[1] * (1 + tolerance)
    else:
        body, body_worse, body_better = None, True, True
    change = _pct(a, b) + (f" ({body[0]} {_pct(body[1], body[2])})" if body else "")
    tail_worse, tail_better = b > a * (1 + tolerance), b < a * (1 - tolerance)
    shifted = body is not None and body_worse and _worse_by(body, BODY_SHIFT)
    if body_worse and (not tail_better or shifted):  # the whole distribution moved (A's tail may have been a spike)
        return change, "REGRESSION"
    if body_better and not tail_worse:
        return change, "improved"
    if tail_worse or tail_better:
        return change, "tail only"
    return change, "same"


def _pct(a: float, b: float) -> str:
    return f"{100 * (b - a) / a:+.1f}%" if a else "n/a"


def compare_runs(a: dict, b: dict, p99_tolerance: float = 0.10, accuracy_tolerance_pts: float = 0.1,
                 size_tolerance: float = 0.10) -> list[Change]:
    """Every difference between summaries a (before) and b (after). Regressions: a gate that
    passed in A and fails in B (or a notebook that now errors); a benchmarked latency whose P50
    (or throughput) is worse by more than p99_tolerance with its P99 not better; an accuracy down
    more than accuracy_tolerance_pts points; a size up more than size_tolerance. A P99 that moved
    alone is listed as "tail only"."""
    changes = []
    env_a, env_b = a.get("environment", {}), b.get("environment", {})
    for key in sorted(set(env_a) | set(env_b)):
        if env_a.get(key) != env_b.get(key):
            changes.append(Change("version", key, env_a.get(key), env_b.get(key), "differs", "changed"))
    params_a, params_b = a.get("params", {}), b.get("params", {})
    for key in sorted(set(params_a) | set(params_b)):
        if params_a.get(key) != params_b.get(key):
            changes.append(Change("parameter", key, params_a.get(key), params_b.get(key), "differs", "changed"))
    status_a = {n["name"]: n["status"] for n in a.get("notebooks", [])}
    for notebook in b.get("notebooks", []):
        before = status_a.get(notebook["name"])
        if notebook["status"] != "ok" and before == "ok":
            changes.append(Change("notebook", notebook["name"], before, notebook["status"], notebook["error"] or "",
                                  "REGRESSION"))
    gates_a = {g["name"]: gate_verdict(g) for g in a.get("gates", [])}
    gates_b = {g["name"]: gate_verdict(g) for g in b.get("gates", [])}
    for name in sorted(set(gates_a) | set(gates_b)):
        va, vb = gates_a.get(name), gates_b.get(name)
        if va == vb:
            continue
        verdict = ("REGRESSION" if vb == "FAIL" else "improved" if va == "FAIL" and vb == "PASS"
                   else "added" if va is None else "removed" if vb is None else "changed")
        changes.append(Change("gate", name, va, vb, f"{va} -> {vb}", verdict))
    flat_a, flat_b = flatten(a.get("results", {})), flatten(b.get("results", {}))
    for path in sorted(set(flat_a) & set(flat_b)):
        kind = measure_kind(path)
        if kind is None:
            continue
        va, vb = float(flat_a[path]), float(flat_b[path])
        if kind == "latency":
            change, verdict = _latency(path, flat_a, flat_b, p99_tolerance)
            changes.append(Change(kind, path, flat_a[path], flat_b[path], change, verdict))
            continue
        if kind == "accuracy":
            scale = 100 if max(abs(va), abs(vb)) <= 1 else 1
            delta_pts = (vb - va) * scale
            worse, better = delta_pts < -accuracy_tolerance_pts, delta_pts > accuracy_tolerance_pts
            change = f"{delta_pts:+.2f} pts"
        else:
            worse, better = vb > va * (1 + size_tolerance), vb < va * (1 - size_tolerance)
            change = _pct(va, vb)
        verdict = "REGRESSION" if worse else "improved" if better else "same"
        changes.append(Change(kind, path, flat_a[path], flat_b[path], change, verdict))
    return changes


def regressions(changes: list[Change]) -> list[Change]:
    return [c for c in changes if c.verdict == "REGRESSION"]


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def format_table(changes: list[Change], show_same: bool = False) -> str:
    """A plain-text table, regressions first; rows without a change only with show_same."""
    order = {"REGRESSION": 0, "changed": 1, "added": 2, "removed": 2, "tail only": 3, "improved": 4, "same": 5}
    rows = sorted((c for c in changes if show_same or c.verdict != "same"), key=lambda c: order[c.verdict])
    header = ("verdict", "kind", "name", "run A", "run B", "change")
    cells = [header] + [(c.verdict, c.kind, c.name, _show(c.a), _show(c.b), c.change) for c in rows]
    cells = [tuple(text if len(text) <= 72 else text[:69] + "..." for text in row) for row in cells]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
