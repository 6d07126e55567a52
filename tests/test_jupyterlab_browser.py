"""JupyterLab as people use it: a real JupyterLab on loopback, a real (headless) Chromium, Run All.

Needs Debian's chromium (`apt-get install -y chromium`; .ci/run installs it when absent). The
screenshot is saved in the test's output folder, and also in $LAB2PROD_TEST_ARTIFACTS when set.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lab2prod.core.paths import NOTEBOOKS_DIR
from lab2prod.servers.torchserve.server import free_port

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH; install it with `apt-get install -y chromium`")


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 with a random token, serving a copy of the notebooks (so
    autosave never touches the committed ones), its settings and runtime files in tmp_path."""
    root = tmp_path / "lab"
    root.mkdir()
    import nbformat

    notebook = nbformat.read(str(NOTEBOOKS_DIR / "01_export.ipynb"), as_version=4)
    for cell in notebook.cells:  # no committed output: every table seen must come from this run
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(notebook, str(root / "01_export.ipynb"))
    # No "get notified about Jupyter news?" prompt over the page: the machine is offline anyway.
    notification = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text('{"fetchNews": "false", "checkForUpdates": false}')
    # Start the notebook's kernel without asking, as "Always start the preferred kernel" does.
    tracker = tmp_path / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"autoStartDefaultKernel": true}')
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "run"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # CI containers run as root
    log = open(tmp_path / "jupyterlab.log", "wb")
    server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("JupyterLab did not start: " + (tmp_path / "jupyterlab.log").read_text()[-2000:])
            time.sleep(0.5)
        yield url, token
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the server and the kernels it started
            try:
                os.killpg(server.pid, sig)
            except ProcessLookupError:
                break
            try:
                server.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def test_export_notebook_runs_all_cells_in_jupyterlab_in_chromium(jupyterlab, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    url, token = jupyterlab
    screenshot = tmp_path / "jupyterlab_01_export.png"
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{url}/lab/tree/01_export.ipynb?token={token}&reset")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
            try:  # a person picks the notebook's own kernel when JupyterLab asks
                dialog.wait_for(timeout=5_000)
                dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
            except playwright.TimeoutError:
                pass
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
            assert page.locator(".jp-OutputArea-output table").count() == 0
            # Run > Run All Cells, as a person would click it.
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()
            # The parity table: one row per format, case and batch size, with the largest difference.
            parity = page.locator(".jp-OutputArea-output table", has_text="max_abs_diff").first
            parity.wait_for(timeout=300_000)
            assert "top1_agreement" in parity.inner_text()
            gates = page.locator(".jp-OutputArea-output table", has_text="parity:torch_export").first
            gates.wait_for(timeout=300_000)
            parity.scroll_into_view_if_needed()
            page.screenshot(path=str(screenshot))
            gates_text = gates.inner_text()
            code_cells = page.locator(".jp-CodeCell").count()
            page.wait_for_function(  # every code cell has run: its prompt shows an execution count
                "n => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                ".filter(p => /\\[\\d+\\]/.test(p.textContent)).length === n", arg=code_cells, timeout=120_000)
            assert "PASS" in gates_text and "FAIL" not in gates_text
            assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                has_text="Traceback").count() == 0
        except Exception:
            # What the page showed when it went wrong: the screenshot says more than a timeout.
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            _keep(tmp_path / "failure.png")
            raise
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    _keep(screenshot)
    print(f"screenshot: {screenshot}")


def _keep(path: Path) -> None:
    artifacts = os.environ.get("LAB2PROD_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, artifacts)
