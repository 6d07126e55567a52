# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 99 · Readiness report: is this model ready for production?
#
# Every notebook of a run records its gates: a verdict, the number behind it and the threshold.
# This notebook reads them back from the run folder and lays them out along the deployment
# checklist (environment, model integrity, preprocessing parity, quantization, latency SLA,
# serving, monitoring, security, rollback), failures first, then writes `report.html`: one
# self-contained page with the scorecard, every gate, links to the executed notebooks and their
# plots. `lab2prod run` runs it last and rewrites the page once the whole run has finished.

# %% tags=["parameters"]
run_dir = ""  # run folder to report on; empty means outputs/interactive

# %%
from lab2prod.run import report
from lab2prod.studies import notebook as nb

run_dir, _, _ = nb.setup(run_dir)
summary = report.collect_summary(run_dir)
rows = report.scorecard(summary["gates"])
ready, verdict = report.readiness(summary)
print(verdict)

# %% [markdown]
# ## From the lab to the wire
#
# The same held-out requests (the golden set) went through every stage this run produced: each
# exported file reloaded in a fresh process, the recommended quantized file, each live server with
# its real request encoding; the serving transform under test is compared on the parity study's own
# requests. Each stage is compared with eager PyTorch in the lab, and the first stage that breaks
# its tolerance is named: where to look first when a gate below fails.

# %%
from lab2prod.studies import chain

stages = chain.chain_of(summary["results"])
print(chain.chain_text(stages))
fig = chain.plot_chain(stages) if stages else None

# %%
chain.chain_frame(stages) if stages else "no stage of the chain ran in this run"

# %% [markdown]
# ## Scorecard
#
# One row per checklist item, in checklist order. An item fails when any of its gates fails;
# `NOT RUN` means no notebook of this run recorded a gate for it.

# %%
# NBVAL_CHECK_OUTPUT
print(", ".join(row["item"] for row in rows))

# %%
fig = report.plot_scorecard(rows)

# %%
report.scorecard_frame(rows)

# %% [markdown]
# ## Every gate, failures first
#
# The value is what the run measured and the threshold what it had to meet.

# %%
import pandas as pd

from lab2prod.core.results import gate_verdict

gates = report.sorted_gates(summary["gates"])
pd.DataFrame([{"verdict": gate_verdict(g), "item": report.checklist_item(g), "name": g["name"],
               "value": g["value"], "threshold": g["threshold"], "detail": g["detail"]} for g in gates])

# %% [markdown]
# ## Notebooks of this run

# %%
notebooks = pd.DataFrame(summary["notebooks"], columns=["name", "status", "seconds", "error"])
notebooks if len(notebooks) else "no executed notebooks in this folder; lab2prod run saves them beside the results"

# %%
path = report.write_report(summary, run_dir)
print(f"wrote {path.name} ({path.stat().st_size // 1024} KiB, self-contained) in the run folder")
