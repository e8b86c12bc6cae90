"""The notebooks as a student meets them: JupyterLab served from the checkout, driven by a real browser (Debian's
Chromium through Playwright; nothing is downloaded).  Notebook 01's sliders must redraw their figures (nbval never
moves a widget), and notebook 02 must show its progress bar and figures.

Needs /usr/bin/chromium (``apt-get install chromium``; `.ci/run` installs it) and the playwright package (the test
extra); without them the test is skipped, saying so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CHROMIUM = os.environ.get("MISTUDY_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# The probe's flags: without the networking ones Chromium tries Google's hosts at every start on a closed network.
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a copy of the notebooks (autosave never touches the checkout), its kernels on the tiny
    profile with runs and figures in a scratch folder; yields its base URL with the token."""
    if CHROMIUM is None:
        pytest.skip("no Chromium: `apt-get install chromium` (Debian's package; Playwright downloads nothing), or set "
                    "MISTUDY_CHROMIUM to a Chromium binary")
    pytest.importorskip("playwright.sync_api", reason="the playwright package: pip install -e '.[test]'")
    work = tmp_path_factory.mktemp("lab")
    served = work / "notebooks"
    shutil.copytree(NOTEBOOKS, served, ignore=shutil.ignore_patterns("conftest.py", "__pycache__", ".ipynb_checkpoints"))
    port, token = _free_port(), "mistudy-browser-test"
    env = {**os.environ, "MISTUDY_PROFILE": "tiny", "MISTUDY_RESULTS": str(work / "results"),
           "MISTUDY_FIGURES": str(work / "figures"), "MISTUDY_PROGRESS": "bar", "JUPYTER_CONFIG_DIR": str(work / "cfg"),
           "OMP_WAIT_POLICY": "PASSIVE"}
    server = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
                               f"--ServerApp.token={token}", f"--ServerApp.root_dir={served}", "--allow-root"],
                              env=env, stdout=open(work / "lab.log", "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail(f"JupyterLab did not start: {(work / 'lab.log').read_text()[-2000:]}")
    yield base, token, work
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open_and_run_all(browser, lab, name: str, timeout_s: float):
    base, token, _ = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # a workspace of its own: JupyterLab would otherwise reopen the previous test's notebook beside this one
    page.goto(f"{base}/lab/workspaces/{name.split('.')[0]}/tree/{name}?reset&token={token}")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
    # the kernel must be connected before "Run All Cells" (clicked earlier, it does nothing): its status says Idle
    page.wait_for_selector(".jp-StatusBar-Component:has-text('Idle'), .jp-StatusBar-TextItem:has-text('Idle')",
                           timeout=120_000)
    started = "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].some(p => /[*\\d]/.test(p.textContent))"
    for _ in range(3):
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        try:
            page.wait_for_function(started, timeout=20_000)
            break
        except Exception:
            continue
    try:
        page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-InputPrompt')].every(p => !p.textContent.includes('*'))"
            " && document.querySelectorAll('.jp-CodeCell .jp-InputPrompt').length > 0"
            " && [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].every(p => /\\[\\d+\\]/.test(p.textContent))",
            timeout=timeout_s * 1000)
    except Exception:
        shot = lab[2] / f"{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        prompts = page.eval_on_selector_all(".jp-CodeCell .jp-InputPrompt", "els => els.map(e => e.textContent)")
        pytest.fail(f"{name} did not finish within {timeout_s} s: prompts {prompts}; screenshot {shot}; server log "
                    f"{lab[2] / 'lab.log'}")
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] >> text=Traceback")
    assert errors.count() == 0, errors.first.inner_text()
    return page


def _widget_images(page) -> list[str]:
    """The src of the image in each widget's output area, in page order ('' where there is none)."""
    return page.eval_on_selector_all(
        ".widget-interact", "els => els.map(e => { const i = e.querySelector('.widget-output img');"
                            " return i ? i.src : ''; })")


def test_every_slider_of_notebook_01_redraws_its_figure(browser, lab):
    page = _open_and_run_all(browser, lab, "01_information_theory.ipynb", timeout_s=240)
    widgets = page.locator(".widget-interact")
    assert widgets.count() == 3, "coin, joint Gaussian and KL widgets"
    before = _widget_images(page)
    assert all(before), "every widget shows its figure when first drawn"
    # (widget, slider within it, a new value): every slider of the three widgets
    moves = [(0, 0, "0.77"), (1, 0, "-0.4"), (2, 0, "7"), (2, 1, "2.5"), (2, 2, "1"), (2, 3, "0.7")]
    for widget, slider, value in moves:
        readout = widgets.nth(widget).locator(".widget-readout").nth(slider)
        old = _widget_images(page)[widget]
        readout.click()
        page.keyboard.press("Control+A")
        page.keyboard.type(value)
        page.keyboard.press("Enter")
        page.wait_for_function(
            "([i, old]) => { const e = document.querySelectorAll('.widget-interact')[i]"
            ".querySelector('.widget-output img'); return e && e.src !== old; }", arg=[widget, old], timeout=30_000)
        assert float(readout.inner_text().strip().replace("\u2212", "-")) == pytest.approx(float(value))
        images = widgets.nth(widget).locator(".widget-output img")
        assert images.count() == 1, "one figure per widget: the new one replaces the old"
    page.close()


def test_notebook_02_shows_its_progress_bar_and_figures(browser, lab):
    page = _open_and_run_all(browser, lab, "02_baseline.ipynb", timeout_s=420)
    assert page.locator(".widget-hprogress, .jp-OutputArea-output:has-text('epochs')").count() >= 1, "a progress bar"
    figures = page.locator(".jp-OutputArea-output img")
    assert figures.count() >= 4, "curves, reliability, per-class IoU and predictions"
    assert page.locator(".jp-RenderedMarkdown table, .jp-RenderedHTMLCommon table").count() >= 2, \
        "the metrics and per-class tables display as tables"
    page.close()
