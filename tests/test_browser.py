"""The lab extension in a real browser: Debian's chromium driven by playwright, against a
real ``jupyter lab`` on loopback with this checkout's server and lab extensions.

Screenshots go to test-artifacts/browser/ (gitignored). The browser tests skip, saying
why, without /usr/bin/chromium (tests/install_chromium.sh installs it) or without the
built lab extension (pip install -e . builds it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for_condition
from lab_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    LabServer,
    labextension_built,
    start_lab,
    stop_lab,
)

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"no {CHROMIUM}: run tests/install_chromium.sh (apt-get install chromium)",
    ),
    pytest.mark.skipif(
        not labextension_built(),
        reason="the lab extension is not built: pip install -e . (or jlpm build in labextension/)",
    ),
    pytest.mark.timeout(240),
]

ARTIFACTS = REPO / "test-artifacts" / "browser"
WAIT_MS = 60_000  # a loaded 2-core machine: kernels, clusters and lab compete for it
ACTIVE_NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabServer]:
    server = start_lab(tmp_path)
    try:
        yield server
    finally:
        stop_lab(server)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"{tmp_path.name}-jupyter-lab.log").write_text(server.log_tail(400))


@pytest.fixture
def page(lab: LabServer, request: pytest.FixtureRequest) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.errors = errors
            yield page
            shot(page, request.node.name, "end")
        finally:
            browser.close()


def shot(page: Any, test: str, step: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{test}-{step}.png"))


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def open_lab(page: Any, lab: LabServer, path: str = "lab") -> None:
    """Open a lab URL in a fresh workspace (?reset: nothing restored, no panel toggled)."""
    page.goto(lab.page(f"{path}?reset"))
    page.wait_for_selector("#jp-main-dock-panel")


def open_panel(page: Any) -> Any:
    page.click('.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="rayjupyter-panel"]')
    panel = page.locator("#rayjupyter-panel")
    panel.wait_for(state="visible")
    return panel


def open_notebook(page: Any, lab: LabServer, name: str) -> None:
    """Open a notebook and wait until its kernel is up, idle and known to the page."""
    open_lab(page, lab, f"lab/tree/{name}")
    page.wait_for_selector(f'.lm-DockPanel-tabBar li.lm-mod-current:has-text("{name}")')
    wait_for_condition(
        lambda: any(
            s["path"].endswith(name) and s["kernel"]["execution_state"] == "idle"
            for s in lab.api("api/sessions")  # type: ignore[union-attr]
        ),
        timeout=WAIT_MS / 1000,
        interval=0.2,
        message=f"an idle kernel for {name}",
    )
    page.wait_for_selector(f"{ACTIVE_NOTEBOOK} .jp-Notebook-ExecutionIndicator[data-status='idle']")
    # should the page still ask for a kernel (it may, right after start), take the default
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    page.add_locator_handler(dialog, lambda d: d.locator(".jp-mod-accept").click())


def menu(page: Any, top: str, item: str | re.Pattern[str]) -> None:
    page.click(f'.lm-MenuBar-itemLabel:text-is("{top}")')
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def write_notebook(folder: Path, name: str, cells: list[str]) -> None:
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"cell{i}",
                "metadata": {},
                "outputs": [],
                "source": source,
            }
            for i, source in enumerate(cells)
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (folder / name).write_text(json.dumps(notebook))


def test_panel_starts_a_cluster_and_connects_a_notebook(lab: LabServer, page: Any) -> None:
    """Panel: start a local cluster, see its node; connect a notebook to it from the panel
    and see its tasks in the status bar; stop it."""
    write_notebook(lab.root, "connect.ipynb", [""])
    open_notebook(page, lab, "connect.ipynb")
    panel = open_panel(page)
    shot(page, "panel", "opened")

    panel.locator(".rj-Panel-cpus").fill("1")
    panel.locator('button[data-action="start"]').click()
    item = panel.locator('li.rj-Cluster[data-origin="panel"]')
    item.locator('.rj-Cluster-nodes[data-alive="1"]').wait_for()
    session = item.get_attribute("data-cluster-id")
    info = lab.api(f"rayjupyter/api/clusters/{session}")
    assert isinstance(info, dict) and info["origin"] == "panel"
    assert item.locator('.rj-Bar[data-bar="CPU"] .rj-Bar-text').inner_text().startswith("0 / 1")
    assert item.locator('.rj-TaskCount[data-state="RUNNING"]').get_attribute("data-count") == "0"
    shot(page, "panel", "cluster-started")

    # "Connect notebook" puts %ray_connect with the cluster's address into the notebook, and
    # not its secret (the notebook is saved and shared): the kernel finds the secret itself
    item.locator('button[data-action="connect"]').click()
    cell = page.locator(f"{ACTIVE_NOTEBOOK} .jp-Cell.jp-mod-active .cm-content")
    assert f"%ray_connect {info['address']}" in cell.inner_text()
    secret = info["connect_address"].removeprefix("rayjupyter://").rpartition("@")[0]
    assert secret and secret not in cell.inner_text()
    menu(page, "Run", re.compile(r"^Run Selected Cell"))
    page.wait_for_selector(f"{ACTIVE_NOTEBOOK} .jp-OutputArea-output:has-text('{info['address']}')")

    # tasks of the notebook show in the status bar (the kernel is connected to the cluster)
    # the item polls: it names the cluster once it has heard that the kernel attached
    page.locator(f'#rayjupyter-status[data-cluster="{info["address"]}"]').wait_for()
    code = (
        "import time, rayjupyter as rj\n"
        "@rj.remote\n"
        "def nap(): time.sleep(20)\n"
        "naps = [nap.remote() for _ in range(3)]"
    )
    add_and_run_cell(page, code)
    page.wait_for_function(
        "() => Number(document.querySelector('#rayjupyter-status')?.dataset.running) >= 1"
        " && Number(document.querySelector('#rayjupyter-status')?.dataset.pending) >= 1"
    )
    item.locator('.rj-TaskCount[data-state="RUNNING"]:not([data-count="0"])').wait_for()
    shot(page, "panel", "tasks-running")

    # stop it from the panel: its entry goes away
    item.locator('button[data-action="stop"]').click()
    page.locator(f'li.rj-Cluster[data-cluster-id="{session}"]').wait_for(state="detached")
    assert not page.errors, page.errors


def add_and_run_cell(page: Any, code: str) -> None:
    """Append a code cell with this code at the end of the notebook and run it."""
    page.locator(f"{ACTIVE_NOTEBOOK} .jp-Notebook .jp-Cell").last.click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")  # a new cell below, in command mode
    editor = page.locator(f"{ACTIVE_NOTEBOOK} .jp-Cell.jp-mod-active .cm-content")
    editor.click()
    editor.fill(code)
    page.keyboard.press("Shift+Enter")


def test_notebook_remote_cell_progress_and_resource_chart(lab: LabServer, page: Any) -> None:
    """A notebook: %load_ext, %ray_connect, a %%remote cell, a progress widget and the
    resource chart, all rendered; the status bar counts the notebook's tasks."""
    write_notebook(
        lab.root,
        "demo.ipynb",
        [
            "%load_ext rayjupyter\n%ray_connect --num-cpus 2",
            "%%remote\nanswer = 6 * 7\nprint('remote answer', answer)",
            "answer",
            "import time\nimport rayjupyter as rj\n\n@rj.remote\ndef work(seconds):\n"
            "    time.sleep(seconds)\n    return seconds\n\n"
            "refs = [work.remote(3) for _ in range(8)]\nrj.progress(refs)",
            "%ray_dashboard",
        ],
    )
    open_notebook(page, lab, "demo.ipynb")
    menu(page, "Run", "Run All Cells")
    first_prompt = page.locator(f"{ACTIVE_NOTEBOOK} .jp-Cell").first.locator(".jp-InputArea-prompt")
    expect(first_prompt).not_to_have_text("[ ]:", timeout=WAIT_MS)  # running or done
    outputs = f"{ACTIVE_NOTEBOOK} .jp-OutputArea"
    page.wait_for_selector(f"{outputs} .jp-OutputArea-output:has-text('remote answer 42')")
    page.wait_for_selector(f"{outputs} .jp-OutputArea-executeResult pre:text-is('42')")
    page.wait_for_selector(f"{outputs} .widget-hprogress .progress-bar")
    page.wait_for_function(
        "() => Number(document.querySelector('#rayjupyter-status')?.dataset.running) >= 1"
    )
    page.wait_for_selector(f"{outputs} .bk-Figure canvas")
    shot(page, "notebook", "running")
    # the bars fill as the tasks finish
    page.wait_for_function(
        "() => [...document.querySelectorAll('.widget-hprogress .progress-bar')]"
        ".some(bar => bar.style.width === '100%')"
    )
    page.wait_for_function(
        "() => document.querySelector('#rayjupyter-status')?.dataset.running === '0'"
    )
    page.locator(f"{outputs} .bk-Figure canvas").first.scroll_into_view_if_needed()
    shot(page, "notebook", "done")
    assert not page.errors, page.errors


def test_dashboard_pages_open_as_tabs_through_the_proxy(lab: LabServer, page: Any) -> None:
    """The panel opens a cluster's dashboard pages as JupyterLab tabs, through Jupyter's
    port (the proxy under the server's base URL); their bokeh charts render."""
    info = lab.api("rayjupyter/api/clusters", "POST", {"num_cpus": 1})
    assert isinstance(info, dict)
    # a few finished tasks, so the task stream has something to draw
    code = (
        "import time, rayjupyter as rj\n"
        f"rj.init(address={info['connect_address']!r})\n"
        "nap = rj.remote(lambda s: time.sleep(s))\n"
        "rj.get([nap.remote(0.2) for _ in range(6)])\n"
        "rj.shutdown()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    open_lab(page, lab)
    panel = open_panel(page)
    item = panel.locator(f'li.rj-Cluster[data-cluster-id="{info["id"]}"]')
    item.locator('.rj-Cluster-nodes[data-alive="1"]').wait_for()

    for path in ("overview", "task-stream"):
        item.locator(f'button[data-action="dashboard-{path}"]').click()
        tab = page.locator(f'.rj-Dashboard[data-cluster-id="{info["id"]}"][data-page="{path}"]')
        tab.wait_for(state="visible")
        frame = tab.locator("iframe")
        assert frame.get_attribute("src") == f"{info['dashboard_url']}{path}"
        assert frame.get_attribute("src").startswith(lab.base_url)
        # a bokeh figure draws on a canvas inside the page's shadow roots
        page.frame_locator(f'.rj-Dashboard[data-page="{path}"] iframe').locator(
            ".bk-Figure canvas, .bk-Canvas canvas"
        ).first.wait_for()
        shot(page, "dashboard", path)
    assert not page.errors, page.errors
