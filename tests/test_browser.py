"""`stitchlib.explore` in a real browser: JupyterLab (headless, offline) runs a one-cell notebook
that explores a committed summary; Chromium (through Playwright) waits for the figure, changes
the metric in the widget, waits for the redraw, and the two rendered figures must differ.

Needs the `notebooks` extra (jupyterlab, ipykernel, ipywidgets), the `playwright` package and a
Chromium (Debian's `chromium`, or `$STITCHLIB_CHROMIUM`; Playwright's own download is not used).
Without them the test is skipped, unless STITCHLIB_REQUIRE_BROWSER=1 (CI), where it fails.
Screenshots (and JupyterLab's log) go to $STITCHLIB_TEST_ARTIFACTS, else test-artifacts/browser/.
Select or leave it out with `-m browser` / `-m "not browser"`.
"""
import importlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = ROOT / "results" / "smoke" / "03_label_noise_summary.csv"
INSTALL = ("pip install 'stitchlib[notebooks]' playwright and Debian's chromium (apt-get install chromium), or "
           "set STITCHLIB_CHROMIUM to a Chromium/Chrome binary")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
# Explicit waits (seconds); the whole test must stay under 3 minutes on a 2-core machine.
SERVER_START, PAGE_LOAD, FIRST_RUN, REDRAW = 60, 60, 90, 30


def unavailable(reason: str):
    if os.environ.get("STITCHLIB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"STITCHLIB_REQUIRE_BROWSER=1 but {reason}: {INSTALL}", pytrace=False)
    pytest.skip(reason)


def installed(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def chromium() -> str:
    for candidate in (os.environ.get("STITCHLIB_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    unavailable("no Chromium found (/usr/bin/chromium, chromium, chromium-browser, google-chrome on PATH)")


def artifacts() -> Path:
    folder = Path(os.environ.get("STITCHLIB_TEST_ARTIFACTS") or ROOT / "test-artifacts" / "browser")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on a free port with a random token, in a folder holding the notebook, offline and
    with its configuration kept inside tmp_path. Stopped (kernels with it) whatever happens."""
    for module in ("jupyterlab", "ipykernel", "ipywidgets", "jupyterlab_widgets"):
        if not installed(module):
            unavailable(f"the Python package {module} is not installed")
    root = tmp_path / "lab"
    root.mkdir()
    cell = {"cell_type": "code", "execution_count": None, "id": "explore", "metadata": {}, "outputs": [],
            "source": f"import stitchlib\nstitchlib.explore({str(SUMMARY)!r})"}
    nb = {"cells": [cell], "nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                       "language_info": {"name": "python"}}}
    (root / "explore.ipynb").write_text(json.dumps(nb))
    # No news, no update check, no toasts: nothing that reaches out or covers the page.
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True}))
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), IPYTHONDIR=str(tmp_path / "ipython"),
               PYDEVD_DISABLE_FILE_VALIDATION="1", MPLBACKEND="Agg")
    log_path = tmp_path / "jupyterlab.log"
    log = open(log_path, "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
         "--ServerApp.terminals_enabled=False", "--allow-root"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"JupyterLab did not answer within {SERVER_START} s:\n"
                                   f"{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield dict(url=f"{base}/lab/tree/explore.ipynb?token={token}", api=f"{base}/api", token=token, log=log_path)
    finally:
        server.terminate()  # it shuts its kernels down
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # its own session: the server and its kernels
            server.wait(timeout=5)
        log.close()
        shutil.copy(log_path, artifacts() / "jupyterlab.log")


@pytest.fixture
def page(tmp_path):
    """A Chromium page (Debian's binary, a fresh profile), closed whatever happens."""
    executable = chromium()
    if not installed("playwright.sync_api"):
        unavailable("the Python package playwright is not installed")
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1600}, timeout=30_000)
        try:
            page = context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            context.close()
    finally:
        pw.stop()


def kernel_ready(lab, timeout: float) -> None:
    """Wait until the server has a kernel, idle, with the page connected to it."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"{lab['api']}/kernels?token={lab['token']}", timeout=5) as r:
            kernels = json.loads(r.read())
        if any(k["execution_state"] == "idle" and k.get("connections", 0) > 0 for k in kernels):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no idle, connected kernel within {timeout} s: {kernels}")
        time.sleep(0.25)


FIGURE = "img.stitchlib-explore-figure"


def figure_src(page) -> str:
    return page.eval_on_selector(FIGURE, "img => img.src")


def loaded(page, old_src: str | None, timeout: float) -> None:
    """Wait until the figure shows a loaded image other than `old_src`."""
    page.wait_for_function(
        """([selector, old]) => { const img = document.querySelector(selector);
             return img && img.src && img.src !== old && img.complete && img.naturalWidth > 0; }""",
        arg=[FIGURE, old_src or ""], timeout=timeout * 1000)


def pixels(path: Path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def no_errors(page) -> None:
    stderr = page.locator('.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
    errors = [text for text in stderr if "Traceback" in text or "Error" in text]
    errors += page.locator('[data-mime-type="application/vnd.jupyter.error"]').all_inner_texts()
    errors += [t for t in page.locator(".jp-OutputArea-output").all_inner_texts() if "Error displaying widget" in t]
    errors += [t for t in page.locator(".stitchlib-explore-status").all_inner_texts() if t.strip()]
    assert not errors, "the notebook shows errors:\n" + "\n".join(errors)


def test_the_explorer_redraws_in_jupyterlab(page, lab):  # the browser first: skipped before a server starts
    out = artifacts()
    started = time.monotonic()
    try:
        page.goto(lab["url"], timeout=PAGE_LOAD * 1000)
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=PAGE_LOAD * 1000)
        # The notebook's kernel up and connected before the cells run (the page says "idle" before it
        # has one, and JupyterLab runs nothing then).
        kernel_ready(lab, PAGE_LOAD)
        page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', state="attached",
                               timeout=PAGE_LOAD * 1000)
        # Run > Run All Cells, from JupyterLab's menu.
        page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first.click()
        page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        loaded(page, None, FIRST_RUN)
        # The kernel is idle once the cell has its execution count.
        page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-Cell .jp-InputPrompt')].every(p => /\\[\\d+\\]/.test(p.textContent))",
            timeout=REDRAW * 1000)
        output = page.locator(".jp-OutputArea-output", has=page.locator(".stitchlib-explore")).first
        figure = page.locator(FIGURE)
        assert "CKA" not in page.locator(".stitchlib-explore-metric select").input_value()
        output.screenshot(path=out / "1_penalty.png")
        figure.screenshot(path=out / "1_penalty_figure.png")
        no_errors(page)

        before = figure_src(page)
        page.locator(".stitchlib-explore-metric select").select_option(label="CKA")
        loaded(page, before, REDRAW)
        page.wait_for_function("() => document.querySelector('.stitchlib-explore-rows').textContent.includes('cka')",
                               timeout=REDRAW * 1000)
        output.screenshot(path=out / "2_cka.png")
        figure.screenshot(path=out / "2_cka_figure.png")
        no_errors(page)
    except Exception:
        page.screenshot(path=out / "failure_page.png", full_page=True)
        raise

    a, b = pixels(out / "1_penalty_figure.png"), pixels(out / "2_cka_figure.png")
    assert a.shape[0] > 200 and a.shape[1] > 400, a.shape  # a figure, not an empty box
    assert a.std() > 10  # not one flat colour
    changed = 1.0 if a.shape != b.shape else float((abs(a - b).sum(axis=2) > 30).mean())
    assert changed > 0.01, f"the figure did not change after choosing CKA ({changed:.2%} of its pixels)"
    assert time.monotonic() - started < 150
