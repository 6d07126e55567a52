"""One golden set traced from the lab to the wire: each stage's answers against eager, and the first stage that breaks.

The golden set is the held-out requests the servers' live parity sends (`request_bodies(loaded, 64, seed)`),
decoded by the lab's codec. The export study runs it through every file reloaded in a fresh process, the
quantization study through the recommended recipe's file, the serving study sends it to every live server;
each records its stages under `stages`, and the report lays them out in chain order. Answers are compared
where a client reads them: class probabilities for a classifier, the vector for an embedder.
"""

from __future__ import annotations

import textwrap

import torch

from lab2prod.core.inputs import Inputs, batch_size_of, call, cat, first_tensor
from lab2prod.kinds.codec import codec_for
from lab2prod.models.requests import request_bodies

__all__ = ["GOLDEN_COUNT", "STEPS", "golden_cases", "golden_label", "answer_space", "golden_outputs", "stage",
           "measured_stage", "failed_stage", "lab_stage", "chain_of", "first_break",
           "chain_text", "chain_frame", "plot_chain"]

GOLDEN_COUNT = 64  # the serving study's live parity sends the same 64 held-out requests
# Chain order: what happens to a model between the lab and the wire
STEPS = ("lab", "preprocess", "export", "quantize", "serve")


def golden_cases(loaded, count: int = GOLDEN_COUNT, seed: int = 0, batch_size: int = 16) -> dict[str, Inputs]:
    """The golden set as model inputs, `batch_size` rows a case ("golden:0", "golden:1", ...): the held-out
    requests clients send, each decoded by the lab's codec (no guard), joined into batches."""
    lab = codec_for(loaded, guarded=False)
    rows = [lab(body) for _, body in request_bodies(loaded, count, seed)]
    return {f"golden:{i // batch_size}": cat(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)}


def golden_label(cases: dict[str, Inputs]) -> str:
    """The golden set in words, for the chain's `inputs` column."""
    return f"{sum(batch_size_of(batch) for batch in cases.values())} held-out requests through the lab codec"


def answer_space(outputs: torch.Tensor, task: str) -> torch.Tensor:
    """What a client reads from the model's first output, one row per input, as the servers answer
    (lab2prod.kinds.codec.answers): softmax probabilities for a classifier, the flattened vector for an embedder."""
    outputs = outputs.float()
    return outputs.reshape(outputs.shape[0], -1) if task == "embedder" else torch.softmax(outputs, dim=1)


def _measure(task: str) -> str:
    return "min cosine" if task == "embedder" else "top-1 agreement"


def _agreement(reference: torch.Tensor, candidate: torch.Tensor, measure: str) -> float:
    if measure == "top-1 agreement":
        return float((candidate.argmax(1) == reference.argmax(1)).float().mean())
    cosine = torch.nn.functional.cosine_similarity(candidate, reference, dim=1)
    return float(cosine.min() if measure == "min cosine" else cosine.mean())


def stage(name: str, step: str, reference: torch.Tensor, candidate: torch.Tensor, task: str, atol: float | None,
          min_agreement: float, inputs: str, compared: str = "answers", measure: str = "") -> dict:
    """One stage of the chain: its answers `candidate` against the lab's `reference` (both already in answer
    space, one row per input). Passes when the agreement (`measure`: by default the top-1 share, or the
    smallest cosine for an embedder; "mean cosine" for a quantized embedder, as its budget is set) reaches
    `min_agreement` and, with `atol` set, the largest absolute difference stays within it."""
    measure = measure or _measure(task)
    if candidate.shape != reference.shape:
        return failed_stage(name, step, task, inputs,
                            f"answers of shape {tuple(candidate.shape)}, the lab's are {tuple(reference.shape)}")
    diff = float((candidate - reference).abs().max()) if reference.numel() else 0.0
    agreement = _agreement(reference, candidate, measure)
    passed = agreement >= min_agreement and (atol is None or diff <= atol)
    tolerance = f"{measure} >= {min_agreement:g}" + (f", max abs diff <= {atol:g}" if atol is not None else "")
    return measured_stage(name, step, inputs, compared, measure, agreement, diff, tolerance, passed)


def measured_stage(name: str, step: str, inputs: str, compared: str, measure: str, agreement: float | None,
                   max_abs_diff: float | None, tolerance: str, passed: bool | None, detail: str = "") -> dict:
    """One stage of the chain from numbers a study measured itself (a live server's parity, the parity
    study's tensors): the row every stage of the chain has."""
    return {"stage": name, "step": step, "inputs": inputs, "compared": compared, "measure": measure,
            "agreement": agreement, "max_abs_diff": max_abs_diff, "tolerance": tolerance, "passed": passed,
            "detail": detail}


def failed_stage(name: str, step: str, task: str, inputs: str, why: str, passed: bool | None = False) -> dict:
    """A stage that produced no answers: failed with the reason, or (passed=None) not applicable."""
    return measured_stage(name, step, inputs, "answers", _measure(task), None, None, "", passed, why)


def lab_stage(task: str, inputs: str) -> dict:
    """The reference every other stage is compared with: eager PyTorch in the lab."""
    return measured_stage("lab: eager PyTorch", "lab", inputs, "answers", _measure(task), 1.0, 0.0, "the reference",
                          True)


def golden_outputs(module, cases: dict[str, Inputs], task: str) -> torch.Tensor:
    """The answers of an in-process module on every golden case, in case order."""
    with torch.inference_mode():
        return answer_space(torch.cat([first_tensor(call(module, batch)).float() for batch in cases.values()]), task)


def chain_of(results: dict) -> list[dict]:
    """Every recorded stage of a run, in chain order (lab, preprocess, export, quantize, serve), after the lab's
    reference row; empty when no study of the run recorded one."""
    stages = [s for values in results.values() if isinstance(values, dict)
              for s in values.get("stages") or [] if isinstance(s, dict) and s.get("step") in STEPS]
    if not stages:
        return []
    stages.sort(key=lambda s: STEPS.index(s["step"]))
    golden = next((s for s in stages if s["step"] != "preprocess"), stages[0])
    return [lab_stage("embedder" if golden["measure"] == "min cosine" else "classifier", golden["inputs"]), *stages]


def first_break(stages: list[dict]) -> dict | None:
    """The first stage, in chain order, that breaks its tolerance; None when every stage holds."""
    return next((s for s in stages if s["passed"] is False), None)


def chain_text(stages: list[dict]) -> str:
    """One line: how many stages held, and where the chain first breaks."""
    if not stages:
        return "no stage of the chain ran in this run (export, quantization and serving record them)"
    broken = first_break(stages)
    ran = [s for s in stages if s["passed"] is not None]
    if broken is None:
        return f"the golden set agrees with the lab at every one of the {len(ran)} stages that ran"
    why = broken["detail"] or (f"{broken['measure']} {_number(broken['agreement'], '.4g')}, max abs diff "
                               f"{_number(broken['max_abs_diff'], '.3g')} (needs {broken['tolerance']})")
    return f"the chain first breaks at {broken['stage']}: {why}"


def _number(value, spec: str) -> str:
    """A recorded number for a sentence; JSON keeps no infinity, so a missing one was not finite (another shape)."""
    return "not finite" if value is None else format(value, spec)


def _wrapped(name: str, width: int = 18) -> str:
    """A stage's name for a box: the step on one line, then the rest in lines of about `width` characters,
    broken after underscores (recipe names are long single words)."""
    step, _, rest = name.partition(": ")
    lines, line = [], ""
    for part in rest.replace("_", "_\0").split("\0"):
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    return "\n".join([f"{step}:", *lines, line] if line else [f"{step}:", *lines])


def chain_frame(stages: list[dict]):
    """The chain as a table, one row per stage in order."""
    import pandas as pd

    columns = ["stage", "inputs", "compared", "measure", "agreement", "max_abs_diff", "tolerance", "passed", "detail"]
    return pd.DataFrame(stages, columns=columns).set_index("stage")


def plot_chain(stages: list[dict]):
    """The chain as a picture: one box per stage, left to right, green where it holds, red where it breaks,
    grey where it did not apply, each with its agreement and largest difference; an arrow marks the first break."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    width = max(len(stages), 1)
    fig, ax = plt.subplots(figsize=(min(2.2 * width, 16), 2.6))
    broken = first_break(stages)
    for i, s in enumerate(stages):
        color = {True: "#e3f5e8", False: "#fbe3e6", None: "#eeeeee"}[s["passed"]]
        edge = {True: "#2e7d32", False: "#b00020", None: "#9e9e9e"}[s["passed"]]
        ax.add_patch(FancyBboxPatch((i + 0.05, 0.1), 0.8, 0.8, boxstyle="round,pad=0.02", fc=color, ec=edge,
                                    lw=2.5 if s is broken else 1.2))
        title = _wrapped(s["stage"])
        ax.text(i + 0.45, 0.85, title, ha="center", va="top", fontsize=7, weight="bold")
        if s["agreement"] is not None:
            numbers = f"{s['measure']}\n{_number(s['agreement'], '.4g')}\nmax diff {_number(s['max_abs_diff'], '.2g')}"
        else:
            numbers = textwrap.fill((s["detail"] or "no answers")[:84], 22)
        ax.text(i + 0.45, 0.15, numbers, ha="center", va="bottom", fontsize=6.5)
        if i:
            ax.annotate("", xy=(i + 0.05, 0.5), xytext=(i - 0.15, 0.5), arrowprops={"arrowstyle": "->", "lw": 1})
    if broken is not None:
        ax.text(stages.index(broken) + 0.45, 0.98, "first break", ha="center", va="bottom", color="#b00020",
                fontsize=8, weight="bold")
    ax.set_xlim(-0.1, width)
    ax.set_ylim(0, 1.12)
    ax.axis("off")
    ax.set_title("The golden set from the lab to the wire: each stage against eager", fontsize=9)
    fig.tight_layout()
    return fig
