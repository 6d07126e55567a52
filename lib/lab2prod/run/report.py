"""report.html: one self-contained page with the readiness scorecard, the gates, tables and plots of a run."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from lab2prod.core.files import atomic_write
from lab2prod.core.registry import checklist, checklist_item
from lab2prod.core.results import build_summary, gate_verdict, readiness
from lab2prod.run.schemas import field_help
from lab2prod.studies import chain

__all__ = ["checklist_item", "scorecard", "collect_summary", "readiness", "write_report",
           "sorted_gates", "notebook_images", "chain_rows", "figure_png", "notebook_status", "scorecard_frame",
           "plot_scorecard"]


def scorecard(gates: list[dict]) -> list[dict]:
    """One row per checklist item, in checklist order: FAIL if any of its gates failed, PASS if
    the others passed, SKIP if all were skipped, NOT RUN without gates; counts and the failures."""
    rows = []
    items = checklist()
    for item in items + sorted({checklist_item(g) for g in gates} - set(items)):
        mine = [g for g in gates if checklist_item(g) == item]
        verdicts = [gate_verdict(g) for g in mine]
        verdict = ("NOT RUN" if not mine else "FAIL" if "FAIL" in verdicts else
                   "PASS" if "PASS" in verdicts else "SKIP")
        failing = [g for g in mine if g["passed"] is False]
        rows.append({"item": item, "verdict": verdict, "passed": verdicts.count("PASS"),
                     "failed": verdicts.count("FAIL"), "skipped": verdicts.count("SKIP"),
                     "gates": ", ".join(g["name"] for g in mine),
                     "why": "; ".join(f"{g['name']}: {g['detail']}" for g in failing)[:300]})
    return rows


def notebook_status(path: Path) -> dict:
    """Status of an executed notebook from papermill's metadata: ok, error (with the error line)
    or running (no end time yet)."""
    import nbformat

    notebook = nbformat.read(str(path), as_version=4)
    meta = notebook.metadata.get("papermill", {})
    error = None
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                first = (str(output.get("evalue") or "").splitlines() or [""])[0]
                error = f"{output.get('ename')}: {first}"
    status = "error" if meta.get("exception") or error else ("ok" if meta.get("end_time") else "running")
    return {"name": path.stem, "status": status, "seconds": round(float(meta.get("duration") or 0.0), 2),
            "error": error}


def collect_summary(run_dir: str | Path) -> dict:
    """The summary of a run folder as it stands: summary.json when the run finished, else one
    assembled from results/*.json and the executed notebooks (what the report notebook reads
    while the run is still going)."""
    run_dir = Path(run_dir)
    summary_file = run_dir / "summary.json"
    if summary_file.exists():
        return json.loads(summary_file.read_text())
    notebooks = [notebook_status(p) for p in sorted(run_dir.glob("[0-9][0-9]_*.ipynb"))]
    return build_summary(run_dir, {}, [n for n in notebooks if n["status"] != "running"])


STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}.pass{color:#0a7d32;font-weight:600}.fail{color:#b00020;font-weight:600}.skip{color:#777}
.verdict{font-size:1.4rem;padding:.6rem 1rem;border-radius:6px;display:inline-block}
.ok{background:#e3f5e8}.bad{background:#fbe3e6}img{max-width:100%;border:1px solid #eee;margin:.3rem 0}
code{background:#f6f6f6;padding:0 .2rem}
"""


def sorted_gates(gates: list[dict]) -> list[dict]:
    """Failures first, then skipped, then passed; within each, in checklist order."""
    order = {"FAIL": 0, "SKIP": 1, "PASS": 2}
    position = {item: i for i, item in enumerate(checklist())}
    return sorted(gates, key=lambda g: (order[gate_verdict(g)], position.get(checklist_item(g), len(position)),
                                        g.get("notebook", ""), g["name"]))


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


def _verdict_cells(table: str) -> str:
    for verdict, css in (("PASS", "pass"), ("FAIL", "fail"), ("SKIP", "skip"), ("NOT RUN", "skip")):
        table = table.replace(f"<td>{verdict}</td>", f"<td class='{css}'>{verdict}</td>")
    return table


def _notebook_link(name: str, run_dir: Path) -> str:
    path = f"{name}.ipynb"
    if (run_dir / path).exists():
        return f"<a href='{html.escape(path)}'>{html.escape(path)}</a>"
    return html.escape(path)


def figure_png(fig) -> str:
    """A matplotlib figure as a base64 PNG, closed afterwards."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def chain_rows(stages: list[dict]) -> list[dict]:
    """The chain's stages as table rows, with PASS, FAIL or SKIP for the stage's verdict."""
    return [{**{k: v for k, v in s.items() if k not in ("passed", "step")},
             "verdict": {True: "PASS", False: "FAIL", None: "SKIP"}[s["passed"]]} for s in stages]


def _chain_section(results: dict) -> list[str]:
    """The report's opening: the golden set from the lab to the wire, stage by stage, and where it first breaks."""
    stages = chain.chain_of(results)
    parts = ["<h2>From the lab to the wire</h2>",
             "<p>The same held-out requests through every stage this run produced, each against eager PyTorch in "
             f"the lab. <b>{html.escape(chain.chain_text(stages))}</b></p>"]
    if stages:
        parts += [f"<img alt='the chain of stages' src='data:image/png;base64,{figure_png(chain.plot_chain(stages))}'>",
                  _verdict_cells(_table(chain_rows(stages)))]
    return parts


def write_report(summary: dict, run_dir: Path) -> Path:
    """Write run_dir/report.html from a summary (the summary.json contract): the verdict, the chain of
    stages from the lab to the wire (lab2prod.studies.chain) and where it first breaks, the
    scorecard in checklist order, every gate (failures first) with value and threshold, links to
    the executed notebooks, their plots, and the recorded results. Images are inlined, so the
    page opens from disk on its own."""
    run_dir = Path(run_dir)
    gates = sorted_gates(summary["gates"])
    ok, verdict = readiness(summary)
    gate_rows = [{"verdict": gate_verdict(g), "item": checklist_item(g), "name": g["name"],
                  "value": g.get("value"), "threshold": g.get("threshold"), "detail": g.get("detail", ""),
                  "notebook": g.get("notebook", "")} for g in gates]
    notebook_rows = "".join(
        f"<tr><td>{_notebook_link(n['name'], run_dir)}</td><td>{html.escape(n['status'])}</td>"
        f"<td>{n['seconds']:.1f}</td><td>{html.escape(n['error'] or '')}</td></tr>" for n in summary["notebooks"])
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>lab2prod {html.escape(summary['run_id'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>lab2prod readiness report</h1><p>run <code>{html.escape(summary['run_id'])}</code>, "
        f"{html.escape(summary.get('created', ''))}</p>",
        f"<div class='verdict {'ok' if ok else 'bad'}'>{html.escape(verdict)}</div>",
        *_chain_section(summary["results"]),
        "<h2>Scorecard</h2><p>The deployment checklist in order; an item fails when any of its gates fails.</p>",
        _verdict_cells(_table(scorecard(summary["gates"]))),
        "<h2>Gates</h2><p>Failures first, then skipped, then passed.</p>", _verdict_cells(_table(gate_rows)),
        "<h2>Notebooks</h2><table><tr><th>executed notebook</th><th>status</th><th>seconds</th><th>error</th></tr>"
        f"{notebook_rows}</table>",
        "<h2>Parameters</h2>", _table([summary["params"]]) if summary["params"] else "<p>none recorded</p>",
        "<h2>Environment</h2>", _table([summary["environment"]]) if summary["environment"] else "<p>see 00</p>",
    ]
    for notebook in summary["notebooks"]:
        images = notebook_images(run_dir / f"{notebook['name']}.ipynb")
        if images:
            parts.append(f"<h2>Plots: {_notebook_link(notebook['name'], run_dir)}</h2>")
            parts += [f"<img alt='plot from {html.escape(notebook['name'])}' src='data:image/png;base64,{img}'>"
                      for img in images]
    for name, values in summary["results"].items():
        parts.append(f"<h2>Results: {html.escape(name)}</h2>")
        scalars = [{"result": k, "value": v, "what it is": field_help(name, k)} for k, v in values.items()
                   if isinstance(v, (int, float, str, bool)) or v is None]
        if scalars:
            parts.append(_table(scalars))
        for key, value in values.items():
            about = field_help(name, key)
            heading = f"<h3>{html.escape(key)}</h3>" + (f"<p>{html.escape(about)}</p>" if about else "")
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                parts += [heading, _table(value)]
            elif isinstance(value, dict):
                parts += [heading, _table([value])]
    parts.append("</body></html>")
    path = run_dir / "report.html"
    text = "\n".join(parts)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


# ---------------------------------------------------------------- tables and plots of the report notebook


def scorecard_frame(rows: list[dict]) -> pd.DataFrame:
    """The checklist scorecard as a table indexed by item."""
    return pd.DataFrame(rows).set_index("item")[["verdict", "passed", "failed", "skipped", "gates", "why"]]


def plot_scorecard(rows: list[dict]):
    """One bar per checklist item (top to bottom in checklist order): its gates, green passed,
    red failed, grey skipped; items that did not run are labelled so."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.0))
    positions = list(range(len(rows)))[::-1]
    left = [0] * len(rows)
    for key, color in (("failed", "#b00020"), ("skipped", "#9e9e9e"), ("passed", "#2e7d32")):
        values = [r[key] for r in rows]
        ax.barh(positions, values, left=left, color=color, label=key, height=0.6)
        left = [a + b for a, b in zip(left, values, strict=True)]
    for y, row, width in zip(positions, rows, left, strict=True):
        ax.text(width + 0.1, y, row["verdict"], va="center", fontsize=8,
                color={"FAIL": "#b00020", "PASS": "#2e7d32"}.get(row["verdict"], "#555"))
    ax.set_yticks(positions, [r["item"] for r in rows])
    ax.set_xlabel("gates")
    ax.set_xlim(0, max(left + [1]) + 1.5)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Readiness scorecard, in checklist order")
    fig.tight_layout()
    return fig
