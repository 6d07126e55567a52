"""The study registry: every study's notebook, checklist item and typed parameters, in run order.

The runner, `lab2prod run --list`, the checks before a run, the report's checklist and the tests
all read this one table. Adding a study means one `Study(...)` entry here, its notebook and its
library module (README, "Add a study").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args, get_origin

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.paths import NOTEBOOKS_DIR

__all__ = ["Param", "Study", "COMMON", "STUDIES", "study", "checklist", "checklist_item", "resolve_parameters",
           "notebook_parameters"]

_SCALARS = (str, int, float, bool)
_NAMED = {t.__name__: t for t in _SCALARS} | {f"list[{t.__name__}]": list[t] for t in _SCALARS}


@dataclass(frozen=True)
class Param:
    """One notebook parameter: its Python type (`str`, `int`, `float`, `bool` or `list[...]` of those; the
    names as strings are accepted too),
    default, allowed range (`ge`/`gt`/`le`/`lt`, applied to each item of a list), allowed list
    lengths, an optional `check` ("module:function", called with the value, raising a
    Lab2ProdError that names the fix) for values only a library function can judge, and the name it
    had before (`formerly`), still accepted from the command line and params files."""

    name: str
    type: type
    default: object
    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_items: int = 0
    max_items: int | None = None
    check: str = ""
    formerly: str = ""

    def __post_init__(self):
        kind = _NAMED.get(self.type, self.type) if isinstance(self.type, str) else self.type
        if kind not in _NAMED.values():
            raise Lab2ProdError(f"parameter {self.name!r} has type {self.type!r}; use str, int, float, bool or a "
                                "list of one of them (list[int])")
        object.__setattr__(self, "type", kind)

    @property
    def is_list(self) -> bool:
        return get_origin(self.type) is list

    @property
    def item_type(self) -> type:
        """The type of the value, or of each item of a list."""
        return get_args(self.type)[0] if self.is_list else self.type

    @property
    def type_name(self) -> str:
        """The type as written in Python: `int`, `list[float]`."""
        return f"list[{self.item_type.__name__}]" if self.is_list else self.type.__name__

    def range_text(self) -> str:
        """The allowed range in words, e.g. '> 0', '>= 1 and <= 100', '' when anything goes."""
        bounds = [f"{op} {bound:g}" for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le),
                                                      ("<", self.lt)) if bound is not None]
        text = " and ".join(bounds)
        if self.is_list:
            count = (f"exactly {self.min_items}" if self.min_items == self.max_items else
                     f"at least {self.min_items}" if self.min_items else "")
            noun = "item" if self.min_items == 1 and self.max_items in (None, 1) else "items"
            text = ", ".join(part for part in (f"{count} {noun}" if count else "",
                                               f"each {text}" if text else "") if part)
        return text

    def validate(self, value, shown: str):
        """The value coerced to the parameter's type (an int where a float is expected becomes a
        float); a Lab2ProdError naming the value, the rule and an example when it does not fit."""
        example = f"e.g. -p {shown}={self.default!r}".replace("'", "")
        if self.is_list:
            if isinstance(value, tuple):
                value = list(value)
            if isinstance(value, str) and self.item_type is str:  # -p names=a,b or -p names=[a,b] (unquoted)
                text = value.strip()
                text = text[1:-1] if text.startswith("[") and text.endswith("]") else text
                value = [item.strip().strip("'\"") for item in text.split(",") if item.strip()]
            if not isinstance(value, list):
                raise Lab2ProdError(f"parameter {shown}={value!r} is not a list of {self.item_type.__name__}; "
                                    f"{example}")
            value = [self._scalar(item, shown, value, example, in_list=True) for item in value]
            if len(value) < self.min_items or (self.max_items is not None and len(value) > self.max_items):
                raise Lab2ProdError(f"parameter {shown}={value!r} is out of range: it needs "
                                    f"{self.range_text()}; {example}")
        else:
            value = self._scalar(value, shown, value, example, in_list=False)
        if self.check and value not in (None, ""):
            module, _, function = self.check.partition(":")
            getattr(importlib.import_module(module), function)(value)
        return value

    def _scalar(self, item, shown: str, whole, example: str, in_list: bool):
        expected = self.item_type
        if expected is str and not isinstance(item, str) and item is not None:
            item = str(item)  # `-p model=123` means the string "123"
        if expected is float and isinstance(item, int) and not isinstance(item, bool):
            item = float(item)
        if not isinstance(item, expected) or (expected is not bool and isinstance(item, bool)):
            raise Lab2ProdError(f"parameter {shown}={whole!r} has the wrong type: expected {self.type_name}; {example}")
        if expected in (int, float):
            for op, bound, bad in ((">=", self.ge, lambda v, b: v < b), (">", self.gt, lambda v, b: v <= b),
                                   ("<=", self.le, lambda v, b: v > b), ("<", self.lt, lambda v, b: v >= b)):
                if bound is not None and bad(item, bound):
                    raise Lab2ProdError(f"parameter {shown}={whole!r} is out of range: "
                                        f"{'each item ' if in_list else ''}must be {op} {bound:g}; "
                                        f"{example}")
        return item


@dataclass(frozen=True)
class Study:
    """One pitfall: short name (for --only/--skip), notebook stem, deployment checklist item,
    library module, parameters, gates that belong to another checklist item, and whether it
    starts TorchServe (True, or the name of a bool parameter that switches that on)."""

    short: str
    notebook: str
    item: str | None
    module: str
    params: tuple[Param, ...]
    gate_items: dict[str, str] = field(default_factory=dict)
    torchserve: bool | str = False
    folder: Path | None = None  # where the notebook lives; None means notebooks/
    # pyproject extras it needs: names, or "module:function" called with its parameters; a study that starts
    # TorchServe needs the serving extra too. Where one is missing, the runner skips it with the install line.
    needs: tuple[str, ...] | str = ()
    # (parameter, study): where this study is not given the parameter itself, it takes that study's value
    # (the resilience study puts the servers `serving.backends` names through its phases)
    follows: tuple[tuple[str, str], ...] = ()

    @property
    def path(self) -> Path:
        return (self.folder or NOTEBOOKS_DIR) / f"{self.notebook}.ipynb"

    def param(self, name: str) -> Param | None:
        """The parameter of this name, or of the name it had before."""
        return (next((p for p in self.params if p.name == name), None)
                or next((p for p in self.params if p.formerly and p.formerly == name), None))

    def uses_torchserve(self, values: dict) -> bool:
        if isinstance(self.torchserve, str):
            param = self.param(self.torchserve)
            return bool(values.get(self.torchserve, param.default if param else False))
        return self.torchserve

    def extras_needed(self, values: dict) -> list[str]:
        """The extras this study needs with these parameter values."""
        if isinstance(self.needs, str):
            module, _, function = self.needs.partition(":")
            needed = list(getattr(importlib.import_module(module), function)(values))
        else:
            needed = list(self.needs)
        return list(dict.fromkeys((["serving"] if self.uses_torchserve(values) else []) + needed))


_MODEL_HELP = "reference or torchvision name, a .pt/.pt2 file, or package.module:factory"

# Shared by every study that declares them, with one meaning: `-p seed=1` sets them all.
COMMON = {
    "model": Param("model", str, "digits_cnn", _MODEL_HELP),
    "weights": Param("weights", str, "", "optional state_dict file (loaded weights-only, never unpickled)"),
    "example_inputs": Param("example_inputs", str, "",
                            "package.module:fn(batch_size, seed) -> Tensor, for non-image models"),
    "device": Param("device", str, "auto", "auto, cpu or cuda", check="lab2prod.studies.notebook:resolve_devices"),
    "data": Param("data", str, "", "your data: a folder of class folders of images, a .csv/.jsonl of "
                  "text,label, or a .pt", check="lab2prod.models.data:check_data"),
    "lab_transform": Param("lab_transform", str, "", "package.module:callable(PIL image) -> tensor; empty means "
                           "the recipe of the model family", check="lab2prod.kinds.preprocess:check_lab_transform"),
    "task": Param("task", str, "auto", "classifier, embedder or auto (a Hugging Face model: its architecture; "
                  "else inferred from the outputs)",
                  check="lab2prod.models.load:check_task"),
    "run_dir": Param("run_dir", str, "", "run folder; empty means outputs/interactive"),
    # the serving and resilience studies put the same servers through their measurements
    "backends": Param("backends", list[str], ["torchserve"],
                      "servers to measure: torchserve, rayserve, both, all, or any registered server", min_items=1,
                      check="lab2prod.studies.serving:check_backend", formerly="backend"),
    "seed": Param("seed", int, 0, "seed for input draws, untrained weights and resampling"),
}


def _common(*names: str) -> tuple[Param, ...]:
    return tuple(COMMON[name] for name in names)


_INPUTS = _common("weights", "example_inputs", "data", "lab_transform", "task")
_MODEL = (COMMON["model"], *_INPUTS)

STUDIES: list[Study] = [
    Study("environment", "00_environment", "environment", "lab2prod.studies.environment", (
        Param("lock_path", str, "", "lab lock from `lab2prod env lock`; empty means this machine writes its own",
              check="lab2prod.studies.environment:read_lock"),
        Param("tolerance", float, 1e-4, "largest max-abs-diff of a smoke operator vs the lock that passes", ge=0),
        *_MODEL, *_common("run_dir", "seed"))),
    Study("export", "01_export", "model integrity", "lab2prod.studies.export", (
        *_MODEL, COMMON["device"],
        Param("batch_sizes", list[int], [1, 4, 16], "batch sizes compared after reload", ge=1, min_items=1),
        Param("formats", list[str], ["auto"],
              '["auto"]: every format, skipping those that do not apply; or a list of names', min_items=1,
              check="lab2prod.studies.export:check_formats"),
        Param("atol", float, 1e-4, "largest max-abs-diff between eager and the reloaded file that passes", ge=0),
        *_common("run_dir", "seed"))),
    Study("parity", "02_preprocessing_parity", "preprocessing parity", "lab2prod.studies.parity", (
        *_MODEL,
        Param("serving_transform", str, "", "package.module:callable under test: request bytes -> tensor for an "
              "image model, text -> encoding (dict of tensors) for a text model; empty means lab2prod's serving path",
              check="lab2prod.kinds.preprocess:check_serving_transform"),
        Param("bugs", list[str], ["all"], 'catalogued bugs to measure: ["all"], a list of names, or []',
              check="lab2prod.studies.parity:select_bugs"),
        Param("atol", float, 1e-6, "largest per-element abs diff between serving and lab tensors that passes",
              ge=0),
        Param("max_images", int, 0,
              "images to send; 0 means all held-out images (360 digits, 300 photo crops; else 24 photographs)", ge=0),
        Param("max_texts", int, 0, "texts to send to a text model; 0 means all its labelled texts (540 for "
              "text_langid, or your --data; else the 32 sample texts)", ge=0),
        *_common("run_dir", "seed"))),
    Study("quantization", "03_quantization", "quantization", "lab2prod.studies.quantization", (
        Param("model", str, "digits_mlp", _MODEL_HELP), *_INPUTS,
        Param("methods", list[str], ["torch_ao_dynamic", "torchao_int8_dynamic", "torchao_int8_weight_only",
                                       "onnxruntime_fp32", "onnxruntime_int8_dynamic",
                                       "onnxruntime_int8_dynamic_per_channel"],
              "recipes to compare", min_items=1, check="lab2prod.studies.quantization:check_methods"),
        Param("module_types", list[str], ["Linear", "LSTM", "GRU"],
              "layer types torch.ao quantizes (torchao: Linear only)", min_items=1,
              check="lab2prod.studies.quantization:resolve_module_types"),
        Param("engine", str, "auto", "quantized engine: auto, x86, fbgemm, onednn or qnnpack",
              check="lab2prod.studies.quantization:check_engine"),
        Param("batch_sizes", list[int], [1, 16], "batch sizes timed", ge=1, min_items=1),
        Param("threads", int, 1, "torch threads while timing (one per worker is the serving default)", ge=1),
        Param("min_run_time", float, 0.5, "seconds of timing per recipe and batch size", gt=0),
        Param("accuracy_budget_pts", float, 1.0,
              "largest accuracy drop (points; top-1 disagreement when unlabelled) that passes", ge=0),
        Param("eval_count", int, 360, "unlabelled inputs for fidelity (labelled models use all 360 held-out "
              "digits)", ge=1),
        Param("sensitivity_max_s", float, 60.0, "per-layer sensitivity and the frontiers always run when a "
              "whole-model int8 is over the budget, each sized to about this many seconds (fewer inputs to rank, "
              "fewer steps); within it, only when estimated under this many seconds", ge=0),
        *_common("run_dir", "seed"))),
    Study("benchmark", "04_latency_benchmark", "latency SLA", "lab2prod.studies.benchmark", (
        *_MODEL, COMMON["device"],
        Param("batch_sizes", list[int], [1, 4, 16, 64], "batch sizes swept", ge=1, min_items=1),
        Param("variants", list[str], ["auto"],
              "auto picks the defaults of the device; or a list of names such as eager, torch_export", min_items=1,
              check="lab2prod.studies.benchmark:check_variants"),
        Param("sla_ms", float, 100.0, "latency objective: P99 per call must stay at or under this", gt=0),
        Param("min_run_time", float, 1.0, "seconds of sampling per variant and batch size", gt=0),
        Param("threads", int, 1, "torch CPU threads while timing (one per worker is the serving default)", ge=1),
        *_common("run_dir", "seed"))),
    Study("serving", "05_serving", "serving", "lab2prod.studies.serving", (
        *_MODEL,
        COMMON["backends"],
        Param("users", list[int], [1, 8, 32, 64], "concurrent Locust users per load level", ge=1, le=512,
              min_items=1),
        Param("duration_s", float, 4.0, "seconds of load per level and per tuned configuration", gt=0, le=3600),
        Param("workers", int, 1, "workers for the load sweep", ge=1),
        Param("threads", int, 1, "torch threads per worker for the load sweep (0 means the torch default)",
              ge=0),
        Param("batch_size", int, 1, "server-side batch size for the load sweep", ge=1),
        Param("max_batch_delay_ms", int, 5, "how long the server waits to fill a batch", ge=0),
        Param("sla_ms", float, 100.0, "p99 objective for the client-side latency", gt=0),
        Param("tune_users", int, 8, "load at which configurations are compared", ge=1, le=512),
        Param("tune_workers", list[int], [1, 2], "workers per model to try", ge=1, min_items=1),
        Param("tune_threads", list[int], [1, 2], "torch threads per worker to try", ge=1, min_items=1),
        Param("tune_batch_sizes", list[int], [1, 4], "server batch sizes to try", ge=1, min_items=1),
        Param("max_request_size", int, 1000000, "bytes; larger requests are refused", ge=1),
        Param("parity_requests", int, 64, "held-out images sent one by one for live parity", ge=1),
        *_common("run_dir", "seed")), torchserve=True, needs="lab2prod.studies.serving:extras_needed"),
    Study("drift", "06_drift_monitoring", "monitoring", "lab2prod.studies.drift", (
        COMMON["model"], *_INPUTS,
        Param("batch_size", int, 64, "inputs per monitored batch", ge=2),
        Param("layer", str, "", "module whose output is the embedding (a name from model.named_modules()); "
              "empty: the default"),
        Param("batches", int, 50, "batches drawn per scenario", ge=1),
        Param("alpha", float, 0.05, "p-value below which a batch is flagged", gt=0, lt=1),
        Param("sla_ms", float, 100.0, "latency objective: a histogram bucket boundary is put on it", gt=0),
        *_common("run_dir", "seed"))),
    Study("security", "07_security", "security", "lab2prod.studies.security", (
        Param("model", str, "digits_cnn", "the model attacked and served"), *_INPUTS,
        Param("eps", float, 0.03, "L-inf budget of the attacks in [0, 1] pixel units (8/255 is about 0.031)",
              ge=0, le=1),
        Param("pgd_steps", int, 10, "PGD iterations", ge=1),
        Param("attack_images", int, 200, "held-out images attacked", ge=1),
        Param("z_limit", float, 5.0, "z-score screen threshold on the input statistics", gt=0),
        Param("max_bytes", int, 1000000, "request size limit of the guard", ge=1),
        Param("fuzz_mutations", int, 10000, "seeded mutations of valid request bodies sent through the guard in "
              "process (hypothesis)", ge=1),
        Param("live_server", bool, True,
              "also send the hostile inputs to a real TorchServe with the guard in its handler"),
        *_common("run_dir", "seed")), gate_items={"security:integrity": "model integrity"},
        torchserve="live_server"),
    Study("canary", "08_canary", "rollback", "lab2prod.studies.canary", (
        Param("model", str, "digits_cnn", "v1: " + _MODEL_HELP), *_INPUTS,
        Param("candidate", str, "recommended", "v2: recommended means the recipe this run's quantization study "
              "recommended (else v1 quantized with candidate_method); int8 means v1 quantized with candidate_method; "
              "else any model spec"),
        Param("candidate_weights", str, "", "optional state_dict file for a v2 given by model spec"),
        Param("candidate_method", str, "torch_ao_dynamic", "quantization of v2 when candidate is int8, or when the "
              "recommended recipe cannot be served in the canary",
              check="lab2prod.studies.quantization:check_method"),
        Param("traffic_split", list[int], [80, 20], "percent of live requests to v1 and to v2", ge=0,
              min_items=2, max_items=2, check="lab2prod.studies.canary:check_split"),
        Param("canary_users", int, 2, "concurrent Locust users during the rollout", ge=1, le=512),
        Param("duration_s", float, 10.0, "seconds of live traffic", gt=0, le=3600),
        Param("max_accuracy_drop_pts", float, 1.0, "accuracy loss v2 may cost, in points", ge=0),
        Param("latency_percentile", float, 95.0, "percentile of live latency the rollback rule compares",
              check="lab2prod.studies.canary:check_percentile"),
        Param("max_latency_increase_ms", float, 10.0, "increase of that percentile v2 may cost, in ms", ge=0),
        Param("min_agreement", float, 0.97, "share of held-out inputs whose top-1 must not change", ge=0, le=1),
        Param("min_requests", int, 100, "live requests v2 must answer before a decision", ge=1),
        Param("threads", int, 1, "torch threads for the offline latency and per served worker", ge=1),
        *_common("run_dir", "seed")), torchserve=True),
    Study("resilience", "09_resilience", "resilience", "lab2prod.studies.resilience", (
        *_MODEL,
        COMMON["backends"],
        Param("users", int, 8, "concurrent Locust users of the steady phases", ge=1, le=512),
        Param("overload_factor", int, 4, "the burst is this many times users", ge=1, le=64),
        Param("soak_s", float, 10.0, "seconds of steady load while memory is sampled", gt=0, le=3600),
        Param("phase_s", float, 20.0, "seconds of load around the kill and around the update", ge=5, le=3600),
        Param("burst_s", float, 5.0, "seconds of each overload burst", gt=0, le=3600),
        Param("fuzz_requests", int, 1000, "mutated bodies sent to each live server", ge=0, le=100000),
        Param("fuzz_mutations", int, 10000, "mutations through the guard in process (the security study's when it "
              "sent as many)", ge=0, le=1000000),
        Param("sla_ms", float, 100.0, "p99 objective of the admitted requests", gt=0),
        Param("overload_p99_factor", float, 5.0, "how far over the SLA an admitted request may be in a burst", ge=1),
        Param("cold_start_max_s", float, 120.0, "seconds from start to the first answer that pass", gt=0),
        Param("soak_max_kb_per_request", float, 2.0, "memory growth per answered request that fails (lower end of "
              "its 95% interval)", ge=0),
        Param("recovery_max_s", float, 20.0, "seconds after the kill within which the rate must be back", gt=0),
        Param("rate_limit_per_s", int, 0, "requests per second each client may send through the front door; 0: "
              "a third of the rate the soak answered", ge=0, le=100000),
        Param("workers", int, 1, "workers (TorchServe) or replicas (Ray Serve)", ge=1, le=64),
        Param("threads", int, 1, "torch threads per worker", ge=1),
        Param("max_request_size", int, 1000000, "bytes; larger requests are refused", ge=1),
        *_common("run_dir", "seed")), torchserve=True, needs="lab2prod.studies.serving:extras_needed",
        follows=(("backends", "serving"),)),
    Study("report", "99_report", None, "lab2prod.run.report", (
        Param("run_dir", str, "", "run folder to report on; empty means outputs/interactive"),)),
]


def study(short: str, studies: list[Study] | None = None) -> Study:
    """The study with this short name; an error that lists the known ones."""
    studies = STUDIES if studies is None else studies
    for candidate in studies:
        if candidate.short == short:
            return candidate
    raise Lab2ProdError(f"notebook {short!r} is not known; use one of {', '.join(s.short for s in studies)}")


def checklist(studies: list[Study] | None = None) -> list[str]:
    """The deployment checklist in the order a release review walks it: the studies' items in run order."""
    studies = STUDIES if studies is None else studies
    return list(dict.fromkeys(s.item for s in studies if s.item))


def checklist_item(gate: dict, studies: list[Study] | None = None) -> str:
    """The checklist item a gate belongs to: its study's, unless the study files that gate under
    another item (the security notebook's file integrity checks belong to model integrity)."""
    studies = STUDIES if studies is None else studies
    for candidate in studies:
        for prefix, item in candidate.gate_items.items():
            if gate["name"].startswith(prefix):
                return item
    notebook = str(gate.get("notebook", ""))
    return next((s.item for s in studies if s.notebook == notebook and s.item), "other")


def resolve_parameters(given: dict, selected: list[Study], common: dict | None = None) -> dict[str, dict]:
    """{notebook stem: {name: value}} for the selected studies from `-p` values. A bare name goes to
    every selected study that declares it when it is a common parameter or only one of them
    declares it; `study.name` targets one study. Unknown, ambiguous, mistyped and out-of-range
    values raise a Lab2ProdError that names the value and the fix. `common` values (the command
    line's --model, --device, ...) go to the studies that declare them, where `given` does not
    set them. A study that `follows` another for a parameter takes that study's value where it is not given
    one of its own."""
    per_study: dict[str, dict] = {s.notebook: {} for s in selected}
    own: set[tuple[str, str]] = set()  # (notebook, parameter) given to that study itself
    for name, value in (common or {}).items():
        for owner in selected:
            if owner.param(name) is not None:
                per_study[owner.notebook][owner.param(name).name] = owner.param(name).validate(value, name)
    for key, value in given.items():
        target, _, name = key.rpartition(".")
        if target:
            chosen = [s for s in selected if s.short == target]
            if not chosen:
                raise Lab2ProdError(f"parameter {key!r} names study {target!r}, which is not selected; "
                                    f"selected: {', '.join(s.short for s in selected)}")
            if chosen[0].param(name) is None:
                known = ", ".join(p.name for p in chosen[0].params)
                raise Lab2ProdError(f"parameter {name!r} is not a parameter of {target}; known: {known}")
        else:
            chosen = [s for s in selected if s.param(name) is not None]
            if not chosen:
                known = sorted({p.name for s in selected for p in s.params})
                raise Lab2ProdError(f"parameter {name!r} is not used by the selected notebooks; "
                                    f"known: {', '.join(known)}")
            if len(chosen) > 1 and name not in COMMON:
                choices = " or ".join(f"-p {s.short}.{name}=..." for s in chosen)
                meanings = "; ".join(f"{s.short}: {s.param(name).help}" for s in chosen)
                raise Lab2ProdError(f"parameter {name!r} means different things in {len(chosen)} notebooks "
                                    f"({meanings}); say which: {choices}")
        for owner in chosen:
            param = owner.param(name)
            per_study[owner.notebook][param.name] = param.validate(value, key)
            own.add((owner.notebook, param.name))
    for owner in selected:
        for name, leader in owner.follows:
            lead = next((s for s in selected if s.short == leader), None)
            if lead is not None and name in per_study[lead.notebook] and (owner.notebook, name) not in own:
                per_study[owner.notebook][name] = per_study[lead.notebook][name]
    return per_study


def notebook_parameters(path: Path) -> dict[str, object]:
    """{name: default} of a notebook's cell tagged `parameters`, read by papermill."""
    import ast

    import papermill

    declared = papermill.inspect_notebook(str(path))
    parameters = {}
    for name, info in declared.items():
        try:
            parameters[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            parameters[name] = info["default"]
    return parameters
