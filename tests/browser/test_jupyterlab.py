"""What the user sees: the quick-start notebook in a real JupyterLab, driven by Chromium.

Starts JupyterLab headless on loopback with a temporary token and a copy of
``notebooks/01-quickstart.ipynb``, runs the cells with Playwright (the system
Chromium; no browser is ever downloaded) and checks that:

- the ``%%pipeline`` cell returned while the pipeline was still running,
- the panel's progress bars reached 100% while the kernel was idle,
- a chart image appeared in the panel,
- the rest of the notebook runs without an error.

Screenshots (mid-run and final) go to ``ci-artifacts/`` at the repo root.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "ci-artifacts"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(180),
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); "
                                                "the JupyterLab browser test needs it"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on loopback serving a copy of the quick-start notebook."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "01-quickstart.ipynb", work / "quickstart.ipynb")
    token = secrets.token_hex(16)
    port = _free_port()
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Render every cell (no windowing), so cells are found by index in the DOM.
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    apputils = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    apputils.mkdir(parents=True)
    (apputils / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"), "MPLBACKEND": "Agg"}
    log = open(tmp_path / "jupyterlab.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={work}", "--LabApp.news_url=", "--LabServerApp.workspaces_dir="
         + str(tmp_path / "workspaces"), *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text()[-3000:])
            time.sleep(0.25)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _progress(page) -> list[float]:
    return page.eval_on_selector_all(
        ".asyncpipe-monitor .asyncpipe-progress .progress-bar",
        "els => els.map(e => parseFloat(e.style.width || '0'))",
    )


def _kernel_idle(page) -> bool:
    status = page.eval_on_selector_all(".jp-Notebook-ExecutionIndicator",
                                       "els => els.map(e => e.dataset.status)")
    return bool(status) and all(s == "idle" for s in status)


def _wait_for(predicate, timeout: float, what: str, page) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(0.05)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-timeout.png"), full_page=True)
    pytest.fail(f"timed out waiting for {what}")


def _run_cell(page, index: int) -> None:
    """Select cell ``index`` and run it (Shift+Enter), retrying if the page was not ready yet."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    prompt = cell.locator(".jp-InputPrompt")
    for _ in range(5):
        prompt.click()
        page.wait_for_function("e => e.classList.contains('jp-mod-active')", arg=cell.element_handle(),
                               timeout=5_000)
        page.keyboard.press("Escape")
        page.keyboard.press("Shift+Enter")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if prompt.inner_text().strip() not in ("[ ]:", ""):
                return
            time.sleep(0.05)
    pytest.fail(f"cell {index} did not start running")


def test_quickstart_runs_in_jupyterlab(jupyterlab):
    from playwright.sync_api import sync_playwright

    url, token = jupyterlab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/quickstart.ipynb?token={token}", wait_until="domcontentloaded")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            _wait_for(lambda: _kernel_idle(page), 60, "the kernel to start", page)
            cells = page.locator(".jp-Notebook .jp-Cell")
            nb = json.loads((ROOT / "notebooks" / "01-quickstart.ipynb").read_text())
            sources = ["".join(c["source"]) for c in nb["cells"]]
            pipeline_cell = next(i for i, src in enumerate(sources) if "%%pipeline quick" in src)
            _wait_for(lambda: cells.count() == len(sources), 30, "every cell to render", page)

            _run_cell(page, 1)  # setup: %load_ext asyncpipe
            _wait_for(lambda: _kernel_idle(page) and "[1]" in cells.nth(1).inner_text(), 60,
                      "the setup cell", page)
            _run_cell(page, pipeline_cell)
            # The cell returns (prompt numbered, kernel idle) while the panel still shows progress < 100%.
            _wait_for(lambda: _progress(page) and "[2]" in cells.nth(pipeline_cell).inner_text(), 30,
                      "the monitor panel", page)
            _wait_for(lambda: _kernel_idle(page), 10, "the %%pipeline cell to return", page)
            status = page.inner_text(".asyncpipe-monitor .asyncpipe-status")
            mid = _progress(page)
            assert status in ("pending", "running") and min(mid) < 100.0, (status, mid)
            _wait_for(lambda: max(_progress(page)) > 0.0, 20, "visible progress", page)
            assert page.inner_text(".asyncpipe-monitor .asyncpipe-status") == "running" and _kernel_idle(page)
            page.locator(".asyncpipe-monitor").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-monitor-midrun.png"))

            # Nothing else runs: the kernel is idle while the background run completes.
            _wait_for(lambda: page.inner_text(".asyncpipe-monitor .asyncpipe-status") == "succeeded", 60,
                      "the run to succeed", page)
            assert _kernel_idle(page)
            assert _progress(page) == [100.0, 100.0]
            _wait_for(lambda: page.eval_on_selector(
                ".asyncpipe-monitor img", "e => e.naturalWidth > 0 && e.src.startsWith('blob:') || "
                                          "e.src.startsWith('data:image/png')"), 10, "the chart image", page)
            page.locator(".asyncpipe-monitor").first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-monitor-final.png"))

            # The rest of the notebook runs cleanly in the browser as well.
            cells.nth(pipeline_cell + 1).locator(".jp-InputPrompt, .jp-MarkdownOutput").first.click()
            page.keyboard.press("Escape")
            _run_rest(page)
            _wait_for(lambda: _kernel_idle(page) and _all_ran(page), 60, "the rest of the notebook", page)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t]
            assert tracebacks == []
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-quickstart-done.png"), full_page=True)
        finally:
            browser.close()


def _run_rest(page) -> None:
    """Run the selected cell and all below, through the Run menu."""
    page.click("text=Run", timeout=10_000)
    page.click("text=Run Selected Cell and All Below", timeout=10_000)


def _all_ran(page) -> bool:
    prompts = page.eval_on_selector_all(".jp-Notebook .jp-CodeCell .jp-InputPrompt",
                                        "els => els.map(e => e.textContent.trim())")
    return all(p not in ("[ ]:", "[*]:", "") for p in prompts)
