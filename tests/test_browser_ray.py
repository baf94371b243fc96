"""The Clusters panel and Ray's own dashboard in a real browser, against a real Ray cluster:
Debian's chromium (playwright) on a real ``jupyter lab`` whose server finds the cluster's
token in its environment; the browser never gets that token.

Screenshots go to test-artifacts/browser/ (gitignored).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    LabServer,
    labextension_built,
    start_lab,
    stop_lab,
)
from ray_helpers import RAY_MISSING, RayHead, ray_importable, running_ray_head

pytestmark = [
    pytest.mark.skipif(not ray_importable(), reason=RAY_MISSING),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"no {CHROMIUM}: run tests/install_chromium.sh (apt-get install chromium)",
    ),
    pytest.mark.skipif(
        not labextension_built(),
        reason="the lab extension is not built: pip install -e . (or jlpm build in labextension/)",
    ),
    pytest.mark.timeout(300),
]

ARTIFACTS = REPO / "test-artifacts" / "browser"
WAIT_MS = 90_000  # a loaded 2-core machine: Ray, lab and chromium compete for it


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    with running_ray_head() as head:
        yield head


@pytest.fixture
def lab(tmp_path: Path, ray_head: RayHead) -> Iterator[LabServer]:
    # the server reads Ray's token where Ray's clients look; nothing else of it leaves
    server = start_lab(tmp_path, extra_env={"RAY_AUTH_TOKEN_PATH": str(ray_head.token_path)})
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
            yield page
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-end.png"))
        finally:
            browser.close()


def test_panel_lists_a_ray_cluster_and_opens_its_dashboard_in_a_tab(
    lab: LabServer, ray_head: RayHead, page: Any
) -> None:
    from playwright.sync_api import expect

    session = json.loads(ray_head.get("/api/version"))["session_name"]
    seen: list[str] = []  # every URL and header the browser sent or got
    page.on("request", lambda r: seen.append(r.url + json.dumps(r.headers)))
    page.on("response", lambda r: seen.append(r.url + json.dumps(r.headers)))

    page.goto(lab.page("lab?reset"))
    page.wait_for_selector("#jp-main-dock-panel")
    page.click('.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="rayjupyter-panel"]')
    panel = page.locator("#rayjupyter-panel")
    panel.wait_for(state="visible")
    panel.locator(".rj-Panel-address").fill(ray_head.dashboard_url)
    panel.locator('button[data-action="add"]').click()

    item = panel.locator(f'.rj-Cluster[data-engine="ray"][data-cluster-id="{session}"]')
    expect(item.locator(".rj-Cluster-nodes")).to_have_attribute("data-alive", "1")
    expect(item).to_have_attribute("data-state", "up")
    expect(item.locator(".rj-Cluster-origin")).to_have_text("Ray · remote")
    expect(item.locator('.rj-Bar[data-bar="CPU"] .rj-Bar-text')).to_contain_text("/ 2 CPUs")
    expect(item.locator('.rj-Bar[data-bar="Object store"] .rj-Bar-text')).to_contain_text("191 MiB")
    expect(item.locator('.rj-TaskCount[data-state="RUNNING"]')).to_have_attribute("data-count", "0")
    page.screenshot(path=str(ARTIFACTS / "ray-panel.png"))

    item.locator('button[data-action="dashboard-#/overview"]').click()
    tab = page.locator(f'.rj-Dashboard[data-cluster-id="{session}"][data-page="#/overview"]')
    tab.wait_for(state="visible")
    frame = tab.locator("iframe")
    expect(frame).to_have_attribute(
        "src", f"{lab.base_url}rayjupyter/dashboard/{session}/#/overview"
    )
    ray = page.frame_locator(f'.rj-Dashboard[data-cluster-id="{session}"] iframe')
    # Ray's React app rendered its overview from its API, through the proxy
    expect(ray.locator("text=Cluster status").first).to_be_visible()
    expect(ray.get_by_text("Recent jobs").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "ray-dashboard-tab.png"))

    assert not any(ray_head.token in entry for entry in seen), "Ray's token reached the browser"
    assert any(f"/rayjupyter/dashboard/{session}/api/" in entry for entry in seen)
