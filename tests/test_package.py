"""lab2prod as a package users install into their own project: the ranges pyproject declares hold the lock's
pins, the extras resolve to them, and a wheel installed without -e runs from an empty folder outside the
checkout, with its notebooks inside it, and skips what a missing extra needs with the install line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lab2prod.core import extras
from lab2prod.core.registry import STUDIES

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# The serving extra's modules and distributions, left out of the wheel's environment below
HIDDEN = ("ts", "model_archiver", "captum", "locust", "pytest_locust", "torchserve-", "torch_model_archiver-",
          "captum-", "locust-")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = str(requirement.specifier).removeprefix("==")
    return pins


def _declared() -> list[tuple[str, Requirement]]:
    out = [("dependencies", Requirement(text)) for text in PYPROJECT["dependencies"]]
    for extra, texts in PYPROJECT["optional-dependencies"].items():
        out += [(extra, Requirement(text)) for text in texts]
    return out


def test_every_pin_of_the_lock_satisfies_the_ranges_pyproject_declares():
    pins = _pins()
    declared = _declared()
    for where, requirement in declared:
        name = canonicalize_name(requirement.name)
        if where == "gpu":  # onnxruntime-gpu replaces onnxruntime on a GPU machine; the CPU lock has the other
            continue
        assert name in pins, f"{requirement} ({where}) has no pin in requirements.txt"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement} ({where})"
        assert not requirement.specifier.contains("999"), f"{requirement} ({where}) has no upper bound"
    names = {canonicalize_name(r.name) for _, r in declared}
    assert set(pins) - names == set(), "requirements.txt pins what pyproject does not declare"
    # the extras the code checks are the extras pyproject declares
    assert set(extras.EXTRAS) <= set(PYPROJECT["optional-dependencies"])


def test_the_extras_resolve_to_the_locked_versions_without_an_index():
    """In the environment the lock installed, pip resolves lab2prod with its extras and installs nothing else."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
                           "--disable-pip-version-check", f"{ROOT}[serving,ray,onnx,hf]"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    would = [line for line in done.stdout.splitlines() if line.startswith("Would install")]
    assert len(would) == 1 and re.fullmatch(r"Would install lab2prod-[\d.]+", would[0]), would


def _site_view(folder: Path) -> Path:
    """This environment's site-packages as links, less lab2prod and the serving extra: the torch already
    installed is reused, and the serving extra is missing as it is after `pip install lab2prod`."""
    base = Path(sysconfig.get_paths()["purelib"])
    folder.mkdir()
    for entry in base.iterdir():
        if "lab2prod" in entry.name or entry.name.startswith(HIDDEN) or entry.name == "__pycache__":
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


def test_the_wheel_runs_from_an_empty_folder_and_skips_serving_without_its_extra(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--disable-pip-version-check", "-w", str(wheels), str(ROOT)], check=True, timeout=300, cwd=ROOT)
    (wheel,) = wheels.glob("lab2prod-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for study in STUDIES:  # the notebook pairs travel inside the package
        assert {f"lab2prod/notebooks/{study.notebook}.ipynb", f"lab2prod/notebooks/{study.notebook}.py"} <= names
    assert {"lab2prod/servers/locustfile.py", "lab2prod/servers/torchserve/handler.py", "lab2prod/_build.json"} <= names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    view = _site_view(tmp_path / "base-site")
    (Path(purelib) / "_base_site.pth").write_text(f"import site; site.addsitedir({str(view)!r})\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", "--disable-pip-version-check", str(wheel)], check=True, timeout=300)

    project = tmp_path / "project"  # outside the checkout, empty
    project.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LAB2PROD_OUTPUTS")}
    env |= {"LAB2PROD_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout

    def lab2prod(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "lab2prod"), *args], capture_output=True, text=True, cwd=project,
                              env=env, timeout=timeout)

    version = subprocess.run([str(python), "-m", "lab2prod", "--version"], capture_output=True, text=True,
                             cwd=project, env=env, timeout=120)
    assert version.returncode == 0 and "from a wheel" in version.stdout, version.stdout + version.stderr
    if commit.strip():
        assert commit.strip()[:12] in version.stdout
    assert lab2prod("init").returncode == 0
    assert {p.name for p in project.iterdir()} == {"lab2prod.yaml", "models.py"}

    # three formats, not AOTInductor's compile (tested in test_export): the wheel's part is the run itself
    done = lab2prod("run", "-f", "lab2prod.yaml", "--only", "environment,export", "--no-progress",
                    "-p", "export.formats=[torchscript_trace,torch_export,onnx]")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (summary_path,) = (project / "outputs").glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert [n["name"] for n in summary["notebooks"]] == ["00_environment", "01_export"]
    assert summary["lab2prod"]["source"] == "wheel" and summary["lab2prod"]["commit"] == (commit.strip() or None)
    assert summary["params"]["model"] == "models:build_model"
    assert any(g["name"] == "parity:torch_export" and g["passed"] for g in summary["gates"])

    skipped = lab2prod("run", "--only", "serving", "--no-progress")  # lab2prod.yaml is picked up by itself
    assert skipped.returncode == 0, skipped.stdout[-3000:] + skipped.stderr[-3000:]
    assert "pip install 'lab2prod[serving]'" in skipped.stdout
    assert "05_serving: skipped" in skipped.stdout and "Traceback" not in skipped.stderr


def test_init_writes_a_starter_whose_every_parameter_line_the_run_accepts_and_never_overwrites(tmp_path, run_cli):
    import yaml

    from lab2prod.core.registry import COMMON, resolve_parameters

    assert run_cli("init", str(tmp_path / "mine")).returncode == 0
    text = (tmp_path / "mine" / "lab2prod.yaml").read_text()
    # uncommented, every line is a parameter the run takes at its default, and every parameter has a line
    lines = [line.removeprefix("# ") for line in text.splitlines()
             if re.match(r"(# )?[a-z_0-9]+(\.[a-z_0-9]+)?: ", line)]
    values = yaml.safe_load("\n".join(lines))
    expected = {name for name in COMMON if name != "run_dir"} | {
        f"{s.short}.{p.name}" for s in STUDIES for p in s.params if p.name not in COMMON and p.name != "run_dir"}
    assert set(values) == expected
    per_study = resolve_parameters({k: v for k, v in values.items() if k not in ("model", "example_inputs")}, STUDIES)
    assert per_study["05_serving"]["backends"] == ["torchserve"]
    again = run_cli("init", str(tmp_path / "mine"))
    assert again.returncode == 2 and "already exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_outputs_go_to_the_nearest_project_folder_and_the_cache_to_the_user_cache(tmp_path, monkeypatch):
    from lab2prod.core import paths

    (tmp_path / "proj" / "sub").mkdir(parents=True)
    (tmp_path / "proj" / "lab2prod.yaml").write_text("")
    assert paths.outputs_dir(tmp_path / "proj" / "sub") == tmp_path / "proj" / "outputs"
    assert paths.outputs_dir(tmp_path) == tmp_path / "outputs"  # no project above: the folder itself
    monkeypatch.setenv("LAB2PROD_CACHE", str(tmp_path / "c"))
    assert paths.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LAB2PROD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "lab2prod"


def test_the_project_parameters_file_is_picked_up_and_a_command_line_flag_wins_over_it(tmp_path, run_cli):
    (tmp_path / "lab2prod.yaml").write_text("model: no_such_model\nenvironment.tolerance: 0.001\n")
    done = run_cli("run", "--only", "environment", "--model", "digits_mlp", "--no-progress", "--run-id", "r")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"parameters from {tmp_path / 'lab2prod.yaml'}" in done.stderr
    summary = json.loads((tmp_path / "outputs" / "r" / "summary.json").read_text())  # ./outputs of the project
    assert summary["params"]["model"] == "digits_mlp" and summary["params"]["environment.tolerance"] == 0.001
