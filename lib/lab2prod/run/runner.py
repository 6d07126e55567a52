"""Run the selected studies' notebooks with papermill into one run folder, then write summary.json and
report.html. Everything a run could refuse is checked before the run folder exists (`preflight`)."""

from __future__ import annotations

import ast
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from lab2prod.core import extras, progress
from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.files import SCRATCH_ENV
from lab2prod.core.registry import STUDIES, Study, resolve_parameters
from lab2prod.core.results import build_summary, gate, record, write_json
from lab2prod.run.report import write_report
from lab2prod.servers.registry import stop_recorded
from lab2prod.servers.torchserve.server import check_requirements
from lab2prod.studies.environment import machine_snapshot

__all__ = [
    "INTERRUPTED_EXIT",
    "available_studies",
    "select_studies",
    "parse_parameter",
    "read_parameters_file",
    "preflight",
    "skipped_studies",
    "absolute_paths",
    "execute_run",
    "new_run_id",
    "private_kernel",
]

INTERRUPTED_EXIT = 130  # what a shell reports for a command stopped by Ctrl-C


def available_studies(studies: list[Study] | None = None) -> list[Study]:
    """The registered studies whose notebook is in this checkout, in run order."""
    return [s for s in (STUDIES if studies is None else studies) if s.path.exists()]


def select_studies(only: list[str] | None, skip: list[str] | None,
                   studies: list[Study] | None = None) -> list[Study]:
    """Apply --only/--skip; unknown or absent short names are errors that list the valid ones."""
    known = STUDIES if studies is None else studies
    present = available_studies(known)
    for name in (only or []) + (skip or []):
        if name not in [s.short for s in known]:
            raise Lab2ProdError(f"notebook {name!r} is not known; use one of {', '.join(s.short for s in known)}")
        if name not in [s.short for s in present]:
            raise Lab2ProdError(f"notebook {name!r} is not in this version; "
                                f"available: {', '.join(s.short for s in present)}")
    chosen = [s for s in present if (not only or s.short in only) and s.short not in (skip or [])]
    if not chosen:
        raise Lab2ProdError("--only/--skip left no notebook to run; see `lab2prod run --list`")
    return chosen


def parse_parameter(text: str) -> tuple[str, object]:
    """Parse `name=value` (or `study.name=value`) typed like papermill -p (True/False/None, int,
    float), plus lists."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not all(part.isidentifier() for part in name.split(".")) or name.count(".") > 1:
        raise Lab2ProdError(f"parameter {text!r} is not name=value; e.g. -p atol=1e-5 or -p export.atol=1e-5")
    if raw in ("True", "False", "None"):
        return name, {"True": True, "False": False, "None": None}[raw]
    try:
        value = ast.literal_eval(raw)
        if isinstance(value, (int, float, list, tuple, dict)) and not isinstance(value, bool):
            return name, list(value) if isinstance(value, tuple) else value
    except (ValueError, SyntaxError):
        pass
    return name, raw


def read_parameters_file(path: str | Path) -> dict:
    """Parameters from a YAML file (papermill's `-f`): a mapping of name (or study.name) to value."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise Lab2ProdError(f"parameters file {str(path)!r} cannot be read ({exc.strerror}); "
                            "pass a YAML file of name: value lines") from None
    except yaml.YAMLError as exc:
        raise Lab2ProdError(f"parameters file {str(path)!r} is not valid YAML ({str(exc).splitlines()[0]}); "
                            "write name: value lines, e.g. sla_ms: 50") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise Lab2ProdError(f"parameters file {str(path)!r} is not a mapping of names to values; "
                            "write name: value lines, e.g. sla_ms: 50")
    return data


_PATH_PARAMETERS = ("weights", "data", "lock_path", "candidate_weights")
_MODEL_PARAMETERS = ("model", "candidate")


def absolute_paths(values: dict) -> dict:
    """The values with files and folders made absolute (model files, hf:PATH, weights, data, lock,
    candidate): each notebook runs with its run folder as the working directory, where a path
    relative to the user's shell would not resolve."""
    result = {}
    for key, value in values.items():
        name = key.rpartition(".")[2]
        if isinstance(value, str) and value:
            if name in _MODEL_PARAMETERS and value.startswith("hf:"):
                value = "hf:" + str(Path(value[3:]).expanduser().absolute())
            elif name in _MODEL_PARAMETERS + _PATH_PARAMETERS and Path(value).expanduser().exists():
                value = str(Path(value).expanduser().absolute())
        result[key] = value
    return result


def preflight(selected: list[Study], given: dict, out: Path, run_id: str, force: bool,
              common: dict) -> tuple[dict[str, dict], Path]:
    """Everything that can be refused before a run folder exists: each parameter's type and range,
    the values only a library function can judge, Java when a study starts TorchServe, an output
    folder that can be written, and a run folder that is new (or `force` to clear it). Returns
    ({notebook: parameters}, run folder)."""
    per_study = resolve_parameters(absolute_paths(given), selected, absolute_paths(common))
    skipped = skipped_studies(selected, per_study)
    for candidate in selected:
        if candidate.notebook not in skipped and candidate.uses_torchserve(per_study[candidate.notebook]):
            try:
                check_requirements()
            except Lab2ProdError as exc:
                flag = (f", or -p {candidate.short}.{candidate.torchserve}=False"
                        if isinstance(candidate.torchserve, str) else "")
                raise Lab2ProdError(f"{candidate.short} starts TorchServe: {exc}; or --skip {candidate.short}"
                                    f"{flag}") from None
    run_dir = (out / run_id).absolute()  # notebooks and the servers they start run in other folders
    if run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise Lab2ProdError(f"run folder {str(run_dir)!r} already exists; choose another --run-id, or pass --force "
                            "to clear it first (results of two runs are never merged)")
    probe = out
    while not probe.exists():
        probe = probe.parent
    try:  # what the run will do there (os.access says yes to root on /proc, where nothing can be made)
        tempfile.TemporaryDirectory(dir=probe, prefix=".lab2prod-probe-").cleanup()
    except OSError:
        raise Lab2ProdError(f"output folder {str(out)!r} is not writable; choose another with --out") from None
    return per_study, run_dir


def skipped_studies(selected: list[Study], per_study: dict[str, dict]) -> dict[str, str]:
    """{notebook: why} for the selected studies that need an extra this environment lacks (`pip install
    lab2prod` without `[serving]` has no TorchServe or Locust): each is skipped with its install line."""
    skipped = {}
    for study in selected:
        gone = [e for e in study.extras_needed(per_study.get(study.notebook, {})) if not extras.available(e)]
        if gone:
            modules = sorted({m for e in gone for m in extras.missing(e)})
            skipped[study.notebook] = (f"{study.short} needs {', '.join(modules)} (not installed): "
                                       f"{extras.install_line(*gone)}")
    return skipped


def new_run_id(model: str) -> str:
    base = model.rpartition(":")[2] if ":" in model else Path(model).stem
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in base)
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{safe[:40]}"


def _error_line(exc: BaseException) -> str:
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    first = (str(evalue).strip().splitlines() or [""])[0]
    return f"{ename}: {first}"[:500]


class _Stopper:
    """Ctrl-C (SIGINT) and SIGTERM during a run: the kernel and everything it started (Locust runs
    in its process group, TorchServe records its own) are stopped at once, so the notebook ends
    and is saved with the error, and the run is marked interrupted."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.kernel = None
        self.signal: int | None = None

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signal is not None:
            return  # already stopping
        self.signal = signum
        print(f"\nlab2prod: {signal.Signals(signum).name}: stopping the kernel and every server of this run ...",
              file=sys.stderr)
        self.stop_servers()
        if self.kernel is not None:
            _kill_kernel(self.kernel)

    def stop_servers(self) -> None:
        stop_recorded(self.run_dir)  # a server a notebook started never outlives it, pass or fail


@contextmanager
def private_kernel(kernel_name: str = "python3"):
    """A Jupyter kernel manager whose kernel talks over IPC sockets in a private folder (reachable
    by this machine's user only, so ipykernel does not warn about plain TCP), stopped on exit:
    nbclient and papermill leave a kernel they did not create running."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    # The async manager: nbclient polls a blocking client's iopub channel without a timeout, so a
    # cell timeout or a killed kernel would never be noticed.
    folder = Path(tempfile.mkdtemp(prefix="lab2prod-kernel-"))
    kernel = AsyncKernelManager(kernel_name=kernel_name, transport="ipc",
                                connection_file=str(folder / "kernel.json"))
    # the kernel is stopped with SIGKILL, which leaves it no time to remove its temporary files: they go
    # in this folder (lab2prod.core.files.scratch_root), removed here once the kernel has stopped
    previous = _set_env(SCRATCH_ENV, str(folder / "scratch"))
    try:
        yield kernel
    finally:
        if kernel.has_kernel:
            try:
                run_sync(kernel.shutdown_kernel)(now=True)
            except Exception:  # already dead (Ctrl-C): make sure of it
                _kill_kernel(kernel)
        shutil.rmtree(folder, ignore_errors=True)
        _set_env(SCRATCH_ENV, previous)


def _kill_kernel(kernel) -> None:
    """SIGKILL the kernel's process group: the kernel and what it started in it (Locust)."""
    pid = getattr(getattr(getattr(kernel, "provisioner", None), "process", None), "pid", None)
    if pid:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _set_env(name: str, value: str | None) -> str | None:
    """Set (or, given None, remove) an environment variable; returns its previous value."""
    previous = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    return previous


@contextmanager
def relayed_progress(run_dir: Path, show: bool):
    """Progress inside a cell: the kernel writes its current step (lab2prod.core.progress) to a file in the
    run folder, and a thread here shows it beside papermill's per-cell bar, twice a second. Nothing when the
    bar is not shown."""
    if not show:
        yield
        return
    from tqdm import tqdm

    path = Path(run_dir) / ".progress"
    previous = _set_env(progress.ENV, str(path))
    done = threading.Event()

    def relay():
        shown = ""
        while not done.wait(0.5):
            text = progress.read(path)
            if text != shown:
                for bar in list(getattr(tqdm, "_instances", [])):
                    if str(getattr(bar, "desc", "")).startswith("["):  # the runner's bars: "[i/n] notebook"
                        bar.set_postfix_str(text)
                shown = text

    thread = threading.Thread(target=relay, name="lab2prod-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=2)
        path.unlink(missing_ok=True)
        _set_env(progress.ENV, previous)


def _execute(study: Study, params: dict, run_dir: Path, stopper: _Stopper, bar, timeout: float | None) -> None:
    import papermill

    with private_kernel() as kernel:
        stopper.kernel = kernel
        try:
            papermill.execute_notebook(
                str(study.path), str(run_dir / study.path.name), parameters=params, kernel_name="python3",
                km=kernel, progress_bar=bar, cwd=str(run_dir), log_output=False, execution_timeout=timeout,
            )
        finally:
            stopper.kernel = None


def _mark_notebook(path: Path, text: str) -> None:
    """Put why a notebook stopped at its top, in red, as papermill does for a cell error."""
    import nbformat

    if not path.exists():
        return
    notebook = nbformat.read(str(path), as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_markdown_cell(
        f'<span style="color:red;font-size:1.5em">lab2prod stopped this notebook ({text})</span>'))
    nbformat.write(notebook, str(path))


def execute_run(selected: list[Study], per_study: dict[str, dict], params: dict, run_dir: Path,
                progress: bool = True, timeout: float | None = None) -> dict:
    """Execute each study's notebook into run_dir (a notebook error does not stop the run; Ctrl-C
    does), then write report.html and summary.json. `timeout` is the seconds one cell may take."""
    import papermill


    if run_dir.exists():
        shutil.rmtree(run_dir)  # preflight allowed it (--force): never merge two runs' results
    run_dir.mkdir(parents=True)
    records = []
    skipped = skipped_studies(selected, per_study)
    with _Stopper(run_dir) as stopper, relayed_progress(run_dir, progress):
        for index, study in enumerate(selected, 1):
            if study.notebook in skipped:  # a skipped gate says so in the report's checklist
                record(run_dir, study.short, {}, [gate(study.short, False, detail=skipped[study.notebook],
                                                       skipped=True)], study.notebook)
                records.append({"name": study.notebook, "status": "skipped", "seconds": 0.0,
                                "error": skipped[study.notebook]})
                print(f"lab2prod: skipped {study.notebook}: {skipped[study.notebook]}", file=sys.stderr)
                continue
            mine = dict(per_study[study.notebook])
            if study.param("run_dir"):
                mine["run_dir"] = str(run_dir)
            bar = {"desc": f"[{index}/{len(selected)}] {study.notebook}", "file": sys.stderr} if progress else False
            start = time.perf_counter()
            status, error = "ok", None
            try:
                _execute(study, mine, run_dir, stopper, bar, timeout)
            except papermill.PapermillExecutionError as exc:
                status, error = "error", _error_line(exc)
            except Exception as exc:  # kernel died or timed out, notebook unreadable: still recorded
                status, error = "error", _error_line(exc)
                if "timeout" in type(exc).__name__.lower() or "timed out" in str(exc):
                    status, error = "timeout", f"a cell ran longer than --timeout {timeout:g} s"
            finally:
                stopper.stop_servers()
            if stopper.signal is not None:
                status, error = "interrupted", f"stopped by {signal.Signals(stopper.signal).name}"
            if status in ("timeout", "interrupted"):
                _mark_notebook(run_dir / study.path.name, f"{status}: {error}")
            records.append({"name": study.notebook, "status": status,
                            "seconds": round(time.perf_counter() - start, 2), "error": error})
            if stopper.signal is not None:
                break
    summary = build_summary(run_dir, params, records, machine_snapshot())
    summary["interrupted"] = stopper.signal is not None
    write_report(summary, run_dir)
    write_json(run_dir / "summary.json", summary)  # last: its presence means the run finished
    return summary
