"""The run path: the registry's checks before a run folder exists, a run that never merges two runs,
timeouts, Ctrl-C, JUnit and JSON output, and a study added the way README's "Add a study" says."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.registry import STUDIES, Param, Study, checklist, resolve_parameters, study
from lab2prod.run.runner import select_studies

TINY = Path(__file__).parent / "tiny_study"

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("given, message", [
    ({"sla_ms": -5}, "parameter sla_ms=-5 is out of range: must be > 0; e.g. -p sla_ms=100.0"),
    ({"batch_sizes": [-1]}, "parameter batch_sizes=[-1] is out of range: each item must be >= 1"),
    ({"min_run_time": 0}, "min_run_time=0 is out of range: must be > 0"),
    ({"variants": []}, "variants=[] is out of range: it needs at least 1 item"),
])
def test_out_of_range_values_name_the_value_the_range_and_an_example(given, message):
    with pytest.raises(Lab2ProdError) as caught:
        resolve_parameters(given, [study("benchmark")])
    assert message in str(caught.value)


def test_a_shared_name_with_different_meanings_must_say_which_study():
    selected = select_studies(["export", "parity"], None)
    with pytest.raises(Lab2ProdError, match=r"'atol' means different things in 2 notebooks .*"
                                            r"say which: -p export.atol=... or -p parity.atol=..."):
        resolve_parameters({"atol": 1e-3}, selected)
    assert resolve_parameters({"parity.atol": 1e-3}, selected) == {"01_export": {}, "02_preprocessing_parity": {
        "atol": 1e-3}}
    # one study selected: the bare name is clear; common names go to every study that has them
    assert resolve_parameters({"atol": 1e-3, "seed": 2}, selected[:1]) == {"01_export": {"atol": 1e-3, "seed": 2}}
    assert resolve_parameters({"seed": 2}, selected) == {"01_export": {"seed": 2}, "02_preprocessing_parity": {
        "seed": 2}}
    with pytest.raises(Lab2ProdError, match="names study 'serving', which is not selected"):
        resolve_parameters({"serving.users": [1]}, selected)
    with pytest.raises(Lab2ProdError, match="'users' is not a parameter of export"):
        resolve_parameters({"export.users": [1]}, selected)


def test_a_renamed_parameter_keeps_its_old_name_and_a_list_of_names_reads_commas():
    selected = [study("serving")]
    for given in ({"backend": "both"}, {"backends": "both"}, {"backends": ["both"]}, {"serving.backend": "both"}):
        assert resolve_parameters(given, selected)["05_serving"]["backends"] == ["both"]
    for given in ("torchserve, rayserve", "[torchserve,rayserve]"):
        assert resolve_parameters({"backends": given}, selected)["05_serving"]["backends"] == ["torchserve", "rayserve"]
    with pytest.raises(Lab2ProdError, match="server 'triton' in backends is not registered"):
        resolve_parameters({"backends": "torchserve,triton"}, selected)


def test_the_resilience_study_puts_the_servers_the_serving_study_was_given_through_its_phases():
    selected = [study("serving"), study("resilience")]
    both = ["torchserve", "rayserve"]
    values = resolve_parameters({"serving.backends": "[torchserve,rayserve]"}, selected)
    assert values["05_serving"]["backends"] == values["09_resilience"]["backends"] == both
    values = resolve_parameters({"serving.backends": both, "resilience.backends": "torchserve"}, selected)
    assert values["09_resilience"]["backends"] == ["torchserve"]  # its own value wins
    assert "backends" not in resolve_parameters({}, selected)["09_resilience"]  # the notebook's default


def test_every_registered_default_passes_its_own_checks():
    for registered in STUDIES:
        values = resolve_parameters({p.name: p.default for p in registered.params if p.name != "device"},
                                    [registered])
        assert set(values[registered.notebook]) == {p.name for p in registered.params} - {"device"}


@pytest.mark.parametrize("args, message", [
    (["--only", "benchmark", "-p", "sla_ms=-5"], "sla_ms=-5 is out of range: must be > 0"),
    (["--only", "export", "-p", "batch_sizes=[-1]"], "batch_sizes=[-1] is out of range"),
    (["--only", "serving", "-p", "users=[0]"], "users=[0] is out of range: each item must be >= 1"),
    (["--only", "serving", "-p", "duration_s=0"], "duration_s=0 is out of range: must be > 0"),
    # load beyond what one machine's load generator can drive is refused before anything starts
    (["--only", "serving", "-p", "serving.users=[1000000]"], "is out of range: each item must be <= 512"),
    (["--only", "resilience", "-p", "soak_s=7200"], "soak_s=7200 is out of range: must be <= 3600"),
    (["-p", "sla_ms=50"], "'sla_ms' means different things in 4 notebooks"),
    (["--only", "export", "--timeout", "0"], "--timeout 0 is not positive"),
    (["--only", "export", "-f", "missing.yaml"], "parameters file 'missing.yaml' cannot be read"),
])
def test_bad_run_input_exits_2_with_one_line_and_no_run_folder(run_cli, tmp_path, args, message):
    out = tmp_path / "out"
    proc = run_cli("run", *args, "--out", str(out), "--no-progress")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lab2prod: error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not out.exists()


def test_an_existing_run_id_exits_2_unless_forced_and_runs_are_never_merged(run_cli, tmp_path):
    out = tmp_path / "out"
    run = out / "r"
    (run / "results").mkdir(parents=True)
    (run / "results" / "export.json").write_text(json.dumps({
        "name": "export", "notebook": "01_export", "values": {}, "gates": [
            {"notebook": "01_export", "name": "parity:old", "passed": True, "value": 0, "threshold": 0,
             "detail": ""}]}))
    proc = run_cli("run", "--only", "report", "--out", str(out), "--run-id", "r", "--no-progress")
    assert proc.returncode == 2 and "already exists; choose another --run-id, or pass --force" in proc.stderr
    assert (run / "results" / "export.json").exists()
    junit = tmp_path / "gates.xml"
    proc = run_cli("run", "--only", "report", "--out", str(out), "--run-id", "r", "--force", "--json",
                   "--junit", str(junit))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["ready"] and verdict["run_dir"] == str(run) and verdict["gates"] == []
    assert not (run / "results" / "export.json").exists()  # the earlier run's gate is gone, not merged
    assert json.loads((run / "summary.json").read_text())["gates"] == []
    assert ElementTree.parse(junit).getroot().tag == "testsuites"


def test_serving_without_java_exits_2_before_the_run(run_cli, tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with Python's folder and the basics, but no java
    bin_dir.mkdir()
    for tool in ("sh", "ps"):
        if shutil.which(tool):
            os.symlink(shutil.which(tool), bin_dir / tool)
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = f"{Path(sys.executable).parent}:{bin_dir}"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "lab2prod.run.cli", "run", "--only", "serving", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("lab2prod: error:")]
    assert "serving starts TorchServe" in line and "apt-get install openjdk-17-jre-headless" in line
    assert not out.exists()
    proc = subprocess.run([sys.executable, "-m", "lab2prod.run.cli", "run", "--only", "security", "-p",
                           "live_server=True", "--out", str(out)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "-p security.live_server=False" in proc.stderr


def test_a_parameters_file_and_a_timeout(run_cli, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("batch_sizes: [1, 2]\nmin_run_time: 30.0\nvariants: [eager]\n")
    out = tmp_path / "out"
    proc = run_cli("run", "--only", "benchmark", "--device", "cpu", "-f", str(params), "--timeout", "5",
                   "--out", str(out), "--run-id", "r", "--no-progress")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary = json.loads((out / "r" / "summary.json").read_text())
    assert summary["params"]["batch_sizes"] == [1, 2] and summary["params"]["min_run_time"] == 30.0
    (notebook,) = summary["notebooks"]
    assert notebook["status"] == "timeout" and "--timeout 5" in notebook["error"]
    assert "lab2prod stopped this notebook (timeout" in (out / "r" / "04_latency_benchmark.ipynb").read_text()


def test_ctrl_c_stops_the_kernel_torchserve_and_locust_and_marks_the_run_interrupted(tmp_path, torchserve):
    out = tmp_path / "out"
    serve = out / "r" / "serving"
    proc = subprocess.Popen([sys.executable, "-m", "lab2prod.run.cli", "run", "--only", "serving", "--no-progress",
                             "-p", "users=[1,2]", "-p", "duration_s=30.0", "--out", str(out), "--run-id", "r"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        running = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
        if any("locust" in line and str(serve) in line for line in running.splitlines()):
            break
        time.sleep(1)
    assert proc.poll() is None, "the run ended before its load test began"
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    summary = json.loads((out / "r" / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert summary["notebooks"] == [{**summary["notebooks"][0], "status": "interrupted"}]
    assert (out / "r" / "05_serving.ipynb").exists()
    running = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(serve) not in running and str(out / "r") not in running  # no TorchServe, Locust or kernel
    assert not (serve / "key_file.json").exists()


def test_a_study_added_the_documented_way_runs_lists_and_reports(tmp_path, monkeypatch, capsys):
    """README "Add a study": a notebook pair, a library module, one Study in registry.STUDIES."""
    from lab2prod.run import cli

    folder = tmp_path / "notebooks"
    folder.mkdir()
    shutil.copy(TINY / "50_sanity.py", folder / "50_sanity.py")
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    subprocess.run([sys.executable, "-m", "jupytext", "--sync", "--quiet", str(folder / "50_sanity.py")], check=True)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TINY), os.environ.get("PYTHONPATH", "")]))
    sanity = Study("sanity", "50_sanity", "output sanity", "tiny_sanity", (
        Param("model", "str", "digits_cnn", "reference or torchvision name, or package.module:factory"),
        Param("batch_size", "int", 4, "inputs in the batch", ge=1),
        Param("run_dir", "str", "", "run folder; empty means outputs/interactive"),
        Param("seed", "int", 0, "seed for input draws")), folder=folder)
    STUDIES.insert(len(STUDIES) - 1, sanity)  # before the report, which runs last
    try:
        assert checklist()[-1] == "output sanity" and select_studies(["sanity", "report"], None)[-1].short == "report"
        assert cli.main(["run", "--list"]) == 0
        assert "sanity        notebooks/50_sanity.ipynb  (output sanity; tiny_sanity)" in capsys.readouterr().out
        assert cli.main(["run", "--only", "sanity", "-p", "batch_size=0", "--out", str(tmp_path / "o")]) == 2
        assert "batch_size=0 is out of range" in capsys.readouterr().err
        code = cli.main(["run", "--only", "sanity,report", "--model", "digits_mlp", "-p", "batch_size=3",
                         "--out", str(tmp_path / "o"), "--run-id", "r", "--no-progress", "--json"])
        verdict = json.loads(capsys.readouterr().out)
    finally:
        STUDIES.remove(sanity)
    assert code == 0 and verdict["ready"], verdict["notebooks"]
    assert [g["name"] for g in verdict["gates"]] == ["sanity:finite"]
    summary = json.loads((tmp_path / "o" / "r" / "summary.json").read_text())
    assert summary["results"]["sanity"] == {"finite": True, "shape": [3, 10]}
    assert "output sanity" in (tmp_path / "o" / "r" / "report.html").read_text()


def test_relative_paths_are_made_absolute_for_notebooks_that_run_in_the_run_folder(tmp_path, monkeypatch):
    from lab2prod.run.runner import absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"")
    (tmp_path / "images").mkdir()
    given = absolute_paths({"model": "model.pt", "data": "images", "canary.candidate": "hf:ckpt",
                            "weights": "missing.pt", "seed": 3, "candidate": "int8"})
    assert given == {"model": str(tmp_path / "model.pt"), "data": str(tmp_path / "images"),
                     "canary.candidate": f"hf:{tmp_path / 'ckpt'}", "weights": "missing.pt", "seed": 3,
                     "candidate": "int8"}


def test_parameter_types_are_python_types_and_names_still_read():
    types = {p.type for s in STUDIES for p in s.params}
    assert int in types and list[int] in types and "int" not in types and "list[int]" not in types
    assert Param("n", "list[float]", [1.0], "h").type == list[float]  # a name as a string still reads
    assert Param("n", list[float], [1.0], "h").validate([1, 2], "n") == [1.0, 2.0]
    with pytest.raises(Lab2ProdError, match=r"has the wrong type: expected list\[int\]"):
        Param("n", list[int], [1], "h").validate(["a"], "n")
    with pytest.raises(Lab2ProdError, match="use str, int, float, bool or a list of one of them"):
        Param("n", dict, {}, "h")
