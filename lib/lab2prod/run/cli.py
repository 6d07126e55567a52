"""The `lab2prod` command: run the notebooks into a run folder and say whether the model is ready."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lab2prod.core import registry
from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.paths import OUTPUTS_DIR, project_dir
from lab2prod.core.provenance import version_line
from lab2prod.core.registry import COMMON
from lab2prod.core.results import gate_verdict, readiness, write_junit
from lab2prod.models.load import available_models, load_model
from lab2prod.run.compare import compare_runs, format_table, load_summary, regressions
from lab2prod.run.report import scorecard, sorted_gates
from lab2prod.run.runner import (
    INTERRUPTED_EXIT,
    available_studies,
    execute_run,
    new_run_id,
    parse_parameter,
    preflight,
    read_parameters_file,
    select_studies,
)
from lab2prod.run.starter import PARAMS_FILE, write_starter
from lab2prod.studies import chain, environment
from lab2prod.studies.drift import embedding_layer

__all__ = ["main", "build_parser"]


# What --model, --weights, ... mean when neither the command line nor the parameters file sets them
FLAG_DEFAULTS = {"model": "digits_cnn", "weights": "", "example_inputs": "", "device": "auto", "data": "",
                 "lab_transform": "", "task": "auto"}


def _names(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lab2prod", description="Measure what breaks between a model in the lab and in production.",
        formatter_class=argparse.RawDescriptionHelpFormatter)  # the version line unwrapped
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="execute the notebooks into outputs/<run-id>/ and write the report",
        description="Execute the notebooks with papermill into one run folder; exit 1 when a "
                    "gate fails or a notebook errors, 2 on bad input (before anything runs), 130 when "
                    "interrupted.")
    run.add_argument("--model", default=None,
                     help="reference or torchvision name, a .pt/.pt2 file, or package.module:factory "
                          "(default: digits_cnn)")
    run.add_argument("--weights", default=None, help="state_dict file, loaded with weights_only=True")
    run.add_argument("--example-inputs", default=None,
                     help="package.module:fn, fn(batch_size, seed) -> Tensor, for non-image models")
    run.add_argument("--data", default=None,
                     help="your data: a folder of class folders of images, a .csv/.jsonl of text,label, or a .pt")
    run.add_argument("--task", default=None, choices=["auto", "classifier", "embedder"],
                     help="what the model answers: class scores or vectors (auto: a Hugging Face model's "
                          "architecture, else inferred from its outputs and stated)")
    run.add_argument("--lab-transform", default=None,
                     help="package.module:callable(PIL image) -> tensor: your lab transform, for --data images")
    run.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                     help="where the model runs (default: auto)")
    run.add_argument("--only", action="append", metavar="NAMES",
                     help="comma-separated short names: environment, export, parity, ...")
    run.add_argument("--skip", action="append", metavar="NAMES", help="short names to leave out")
    run.add_argument("--out", default=str(OUTPUTS_DIR), help="folder that receives the run folder")
    run.add_argument("--run-id", default="", help="name of the run folder (default: time-model)")
    run.add_argument("--force", action="store_true", help="clear the run folder first when --run-id exists")
    run.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                     help="a notebook parameter, typed like papermill: -p seed=1 -p batch_sizes=[1,8]; "
                          "study.name for one study: -p export.atol=1e-5")
    run.add_argument("-f", "--parameters-file", metavar="PATH",
                     help="YAML file of parameters (name: value, or study.name: value); -p wins over it "
                          f"(default: the project's {PARAMS_FILE}, where there is one)")
    run.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="longest a notebook cell may run; a notebook over it is saved and the run exits 1")
    run.add_argument("--junit", metavar="PATH", help="also write the gates as JUnit XML (one test per gate)")
    run.add_argument("--json", action="store_true", help="print the verdict and paths as JSON on stdout")
    run.add_argument("--list", action="store_true", help="list the notebooks and their parameters")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    compare = commands.add_parser(
        "compare", help="what changed between two runs; exit 1 on a regression",
        description="Compare two run folders (A before, B after): versions, parameters, gates, headline P99, "
                    "accuracy and sizes. Exit 1 when B regresses, 0 otherwise, 2 on bad input.")
    compare.add_argument("run_a", help="run folder (or its summary.json) before the change")
    compare.add_argument("run_b", help="run folder (or its summary.json) after the change")
    compare.add_argument("--p99-tolerance", type=float, default=0.10,
                         help="relative P99 increase, or throughput decrease, counted as a regression (default 0.10)")
    compare.add_argument("--accuracy-tolerance", type=float, default=0.1,
                         help="accuracy decrease in points counted as a regression (default 0.1)")
    compare.add_argument("--size-tolerance", type=float, default=0.10,
                         help="relative size increase counted as a regression (default 0.10)")
    compare.add_argument("--all", action="store_true", help="also list what did not change")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")
    commands.add_parser("models", help="list the model names that --model accepts")
    init = commands.add_parser(
        "init", help=f"write a starter project: {PARAMS_FILE} (every parameter, with its help) and models.py",
        description=f"Write {PARAMS_FILE} and models.py into FOLDER; then edit models.py and run "
                    f"`lab2prod run -f {PARAMS_FILE}` there.")
    init.add_argument("folder", nargs="?", default=".", help="where to write them (default: the current folder)")
    init.add_argument("--force", action="store_true", help="overwrite files that exist")
    env = commands.add_parser("env", help="the environment lock: write it in the lab, diff it in production")
    env_commands = env.add_subparsers(dest="env_command", required=True)
    lock = env_commands.add_parser("lock", help="write this machine's fingerprint and smoke-test outputs")
    lock.add_argument("path", nargs="?", default=str(OUTPUTS_DIR / "env.lock.json"))
    diff = env_commands.add_parser("diff", help="compare this machine with a lock; exit 1 on a fail")
    diff.add_argument("path")
    diff.add_argument("--tolerance", type=float, default=1e-4)
    return parser


def _list_notebooks() -> None:
    for study in available_studies():
        print(f"{study.short:<13} notebooks/{study.path.name}  ({study.item or 'report'}; {study.module})")
        for param in study.params:
            rule = param.range_text()
            shared = " [shared]" if param.name in COMMON else ""
            print(f"    {param.name} = {param.default!r}  # {param.help}" + (f" ({rule})" if rule else "") + shared)


def _check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise Lab2ProdError("device 'cuda' was asked for but torch sees no CUDA GPU; "
                            "use --device cpu or --device auto")


def _given_parameters(args: argparse.Namespace) -> dict:
    found = project_dir() / PARAMS_FILE
    if not args.parameters_file and found.is_file():
        args.parameters_file = str(found)
        print(f"lab2prod: parameters from {args.parameters_file}", file=sys.stderr)
    given = read_parameters_file(args.parameters_file) if args.parameters_file else {}
    given.update(dict(parse_parameter(p) for p in args.parameter))
    return given


def _run(args: argparse.Namespace) -> int:
    import json


    if args.list:
        _list_notebooks()
        return 0
    if args.timeout is not None and args.timeout <= 0:
        raise Lab2ProdError(f"--timeout {args.timeout:g} is not positive; pass the seconds a cell may take, "
                            "e.g. --timeout 900")
    selected = select_studies(_names(args.only), _names(args.skip))
    flags = {"model": args.model, "weights": args.weights, "example_inputs": args.example_inputs,
             "device": args.device, "data": args.data, "lab_transform": args.lab_transform, "task": args.task}
    explicit = {k: v for k, v in flags.items() if v is not None}
    # a flag on the command line wins over the parameters file, as -p does
    given = {k: v for k, v in _given_parameters(args).items() if k not in explicit}
    common = {**FLAG_DEFAULTS, **explicit}
    _check_device(str(given.get("device", common["device"])))
    out = Path(args.out)
    model = str(given.get("model", common["model"]))
    per_study, run_dir = preflight(selected, given, out, args.run_id or new_run_id(model), args.force,
                                   {k: v for k, v in common.items() if k not in given})
    keys = ("model", "weights", "example_inputs", "data", "lab_transform", "task")
    models = {tuple(p.get(k, "") for k in keys) for p in per_study.values() if "model" in p}
    loaded = {}
    for model, weights, example_inputs, data, lab_transform, task in sorted(models):
        print(f"lab2prod: checking model {model!r} ...", file=sys.stderr)
        loaded[(model, weights, example_inputs, data, lab_transform, task)] = load_model(
            model, weights or None, example_inputs or None, data=data or None, lab_transform=lab_transform or None,
            task=task or "auto")
    drift_params = per_study.get(registry.study("drift").notebook, {})
    if drift_params.get("layer"):  # a layer name is only known once the model is

        embedding_layer(loaded[tuple(drift_params.get(k, "") for k in keys)].module, drift_params["layer"])
    params = {**common, **given}
    summary = execute_run(selected, per_study, params, run_dir, progress=not (args.no_progress or args.json),
                          timeout=args.timeout)
    ready, verdict = readiness(summary)
    if args.junit:
        write_junit(Path(args.junit), summary)
    report = run_dir / "report.html"
    if args.json:
        print(json.dumps({"ready": ready, "verdict": verdict, "interrupted": summary["interrupted"],
                          "run_dir": str(run_dir), "report": str(report), "summary": str(run_dir / "summary.json"),
                          "junit": args.junit, "notebooks": summary["notebooks"],
                          "gates": [{**g, "verdict": gate_verdict(g)} for g in sorted_gates(summary["gates"])]},
                         indent=2, default=str))
    else:
        for notebook in summary["notebooks"]:
            line = f"{notebook['name']}: {notebook['status']} in {notebook['seconds']:.1f}s"
            print(line + (f" ({notebook['error']})" if notebook["error"] else ""))
        for gate in sorted_gates(summary["gates"]):
            print(f"  {gate_verdict(gate)} {gate['name']}: {gate['detail']}")
        ran = [row for row in scorecard(summary["gates"]) if row["verdict"] != "NOT RUN"]
        if ran:
            print("checklist: " + ", ".join(f"{row['item']} {row['verdict']}" for row in ran))
        stages = chain.chain_of(summary["results"])
        if stages:
            print(f"chain: {chain.chain_text(stages)}")
        print(f"{'READY' if ready else 'NOT READY'}: report {report}")
    if summary["interrupted"]:
        return INTERRUPTED_EXIT
    return 0 if ready else 1


def _env(args: argparse.Namespace) -> int:
    if args.env_command == "lock":
        print(f"wrote {environment.write_lock(args.path)}")
        return 0
    lock = environment.read_lock(args.path)
    diffs = environment.diff_fingerprints(lock["fingerprint"], environment.fingerprint())
    smoke = environment.compare_smoke(lock["smoke"], args.tolerance)
    for d in diffs:
        print(f"{d['severity']:<5} {d['key']}: lab {d['lab']!r} here {d['here']!r}")
    for s in smoke:
        if not s["passed"]:
            print(f"fail  smoke {s['op']} on {s['device']}: max abs diff {s['max_abs_diff']}")
    failed = any(d["severity"] == "fail" for d in diffs) or not all(s["passed"] for s in smoke)
    print("environment: FAIL" if failed else "environment: PASS")
    return 1 if failed else 0


def _compare(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict


    for name in ("p99_tolerance", "accuracy_tolerance", "size_tolerance"):
        if getattr(args, name) < 0:
            raise Lab2ProdError(f"--{name.replace('_', '-')} {getattr(args, name)} is negative; "
                                "pass a tolerance of 0 or more")
    a, b = load_summary(args.run_a), load_summary(args.run_b)
    changes = compare_runs(a, b, args.p99_tolerance, args.accuracy_tolerance, args.size_tolerance)
    bad = regressions(changes)
    if args.json:
        print(json.dumps({"run_a": a["run_id"], "run_b": b["run_id"], "regressions": len(bad),
                          "changes": [asdict(c) for c in changes]}, indent=2, default=str))
    else:
        print(f"A: {a['run_id']}\nB: {b['run_id']}\n")
        print(format_table(changes, args.all))
        print(f"\n{len(bad)} regression(s)" if bad else "\nno regression")
    return 1 if bad else 0


def _import_from_here() -> None:
    """The user's package.module:factory imports from the current folder, as in `python -c`: here and in every
    notebook kernel and server the run starts (they run in other folders)."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *paths])


def _init(args: argparse.Namespace) -> int:
    written = write_starter(args.folder, args.force)
    for path in written:
        print(f"wrote {path}")
    where = "" if Path(args.folder).absolute() == Path.cwd() else f"cd {args.folder} && "
    print(f"next: edit {written[1].name}, then {where}lab2prod run -f {PARAMS_FILE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _import_from_here()
        if args.command == "init":
            return _init(args)
        if args.command == "models":
            print("\n".join(available_models()))
            return 0
        if args.command == "env":
            return _env(args)
        if args.command == "compare":
            return _compare(args)
        return _run(args)
    except Lab2ProdError as exc:
        print(f"lab2prod: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
