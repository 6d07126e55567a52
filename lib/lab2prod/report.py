"""report.html: one self-contained page with the scorecard, the notebooks, tables and plots of a run."""

from __future__ import annotations

import html
import json
from pathlib import Path

from .results import gate_verdict

__all__ = ["write_report", "sorted_gates", "notebook_images"]

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}.pass{color:#0a7d32;font-weight:600}.fail{color:#b00020;font-weight:600}.skip{color:#777}
.verdict{font-size:1.4rem;padding:.6rem 1rem;border-radius:6px;display:inline-block}
.ok{background:#e3f5e8}.bad{background:#fbe3e6}img{max-width:100%;border:1px solid #eee}
code{background:#f6f6f6;padding:0 .2rem}
"""


def sorted_gates(gates: list[dict]) -> list[dict]:
    """Failures first, then by notebook and name."""
    order = {"FAIL": 0, "SKIP": 1, "PASS": 2}
    return sorted(gates, key=lambda g: (order[gate_verdict(g)], g.get("notebook", ""), g["name"]))


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return html.escape(json.dumps(value)[:200])
    return html.escape("" if value is None else str(value))


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>none</p>"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def notebook_images(path: Path) -> list[str]:
    """Base64 PNGs from the outputs of an executed notebook, in cell order."""
    import nbformat

    if not path.exists():
        return []
    notebook = nbformat.read(str(path), as_version=4)
    images = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" in data:
                images.append(data["image/png"].replace("\n", ""))
    return images


def write_report(summary: dict, run_dir: Path) -> Path:
    """Write run_dir/report.html from a summary (the summary.json contract)."""
    gates = sorted_gates(summary["gates"])
    errors = [n for n in summary["notebooks"] if n["status"] != "ok"]
    failed = [g for g in gates if g["passed"] is False]
    ok = not errors and not failed
    verdict = ("READY: every gate passed" if ok else
               f"NOT READY: {len(failed)} gate(s) failed, {len(errors)} notebook(s) errored")
    gate_rows = [{"verdict": gate_verdict(g), **{k: v for k, v in g.items()
                  if k != "passed"}} for g in gates]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>lab2prod {html.escape(summary['run_id'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>lab2prod readiness report</h1><p>run <code>{html.escape(summary['run_id'])}</code>, "
        f"{html.escape(summary.get('created', ''))}</p>",
        f"<div class='verdict {'ok' if ok else 'bad'}'>{html.escape(verdict)}</div>",
        "<h2>Gates</h2>", _table(gate_rows).replace("<td>PASS</td>", "<td class='pass'>PASS</td>")
        .replace("<td>FAIL</td>", "<td class='fail'>FAIL</td>")
        .replace("<td>SKIP</td>", "<td class='skip'>SKIP</td>"),
        "<h2>Notebooks</h2>",
        _table([{**n, "notebook": f"{n['name']}.ipynb"} for n in summary["notebooks"]]),
        "<h2>Parameters</h2>", _table([summary["params"]]),
        "<h2>Environment</h2>", _table([summary["environment"]]),
    ]
    for name, values in summary["results"].items():
        parts.append(f"<h2>Results: {html.escape(name)}</h2>")
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float, str, bool)) or v is None}
        if scalars:
            parts.append(_table([scalars]))
        for key, value in values.items():
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                parts += [f"<h3>{html.escape(key)}</h3>", _table(value)]
            elif isinstance(value, dict):
                parts += [f"<h3>{html.escape(key)}</h3>", _table([value])]
    for notebook in summary["notebooks"]:
        images = notebook_images(run_dir / f"{notebook['name']}.ipynb")
        if images:
            parts.append(f"<h2>Plots: {html.escape(notebook['name'])}</h2>")
            parts += [f"<img alt='plot' src='data:image/png;base64,{img}'>" for img in images]
    parts.append("</body></html>")
    path = run_dir / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
