"""A real browser (Playwright + Debian's chromium) opens the app, loads an example, clicks a pixel
and checks that the affinity view changed; it saves a screenshot of every tab for the README."""

import os
import time
from pathlib import Path

import pytest

from tests.app.helpers import ROOT

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("AFA_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = ROOT / "assets" / "screenshots"
TIMEOUT_MS = 240_000


@pytest.fixture(scope="module")
def page(app_server):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (install Debian's chromium package or set AFA_TEST_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def image_src(page, elem_id: str) -> str:
    return page.eval_on_selector(f"#{elem_id} img", "img => img.currentSrc || img.src")


def wait_loaded(page, *elem_ids: str) -> None:
    """Until every image has a source and has finished loading."""
    for elem_id in elem_ids:
        page.wait_for_function(
            "id => { const img = document.querySelector(`#${id} img`);"
            " return img && img.src && img.complete && img.naturalWidth > 0; }",
            arg=elem_id,
        )


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    time.sleep(0.5)


def test_example_click_and_screenshots(page, app_server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    page.goto(app_server[0])
    # the app opens on the first example with the default checkpoints: wait for the whole analysis
    page.wait_for_function(
        "() => (document.querySelector('#status')?.innerText || '').includes('analysed in')"
    )
    wait_loaded(page, "cam-afa", "label-cam", "label-par", "label-mhsa", "label-afa", "seg")
    page.wait_for_selector("#scores .js-plotly-plot, #scores .plotly")
    print(f"\nfirst page with the example analysed: {time.perf_counter() - start:.1f} s")
    status = page.inner_text("#status")
    assert "⚠️" not in status

    # pick another example: the whole Inspect view is recomputed for it
    second = sorted((ROOT / "assets" / "examples").glob("*.jpg"))[1].name
    before = image_src(page, "cam-afa")
    start = time.perf_counter()
    page.locator(f"button img[src$='{second}']").first.click()
    page.wait_for_function(
        "old => { const img = document.querySelector('#cam-afa img');"
        " return img && img.src !== old && img.complete && img.naturalWidth > 0; }",
        arg=before,
    )
    wait_loaded(page, "label-cam", "label-par", "label-mhsa", "label-afa", "seg")
    print(f"example {second} analysed and shown: {time.perf_counter() - start:.1f} s")
    assert "⚠️" not in page.inner_text("#status")
    time.sleep(0.5)
    page.screenshot(path=str(SHOTS / "inspect.png"), full_page=True)

    open_tab(page, "Affinity")
    wait_loaded(page, "affinity-click", "affinity-learned", "affinity-mhsa")
    before = image_src(page, "affinity-learned"), image_src(page, "affinity-mhsa")
    box = page.locator("#affinity-click img").bounding_box()
    start = time.perf_counter()
    page.mouse.click(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.3)
    page.wait_for_function(
        "old => { const img = document.querySelector('#affinity-learned img');"
        " return img && img.src !== old && img.complete && img.naturalWidth > 0; }",
        arg=before[0],
    )
    print(f"click -> new affinity image shown in the browser: {(time.perf_counter() - start) * 1000:.0f} ms")
    after = image_src(page, "affinity-learned"), image_src(page, "affinity-mhsa")
    assert after[0] != before[0] and after[1] != before[1]
    assert "Pixel (" in page.inner_text("#affinity-note")
    time.sleep(0.5)
    page.screenshot(path=str(SHOTS / "affinity.png"), full_page=True)

    open_tab(page, "Attention heads")
    wait_loaded(page, "heads-click", "heads-grid")
    before = image_src(page, "heads-grid")
    box = page.locator("#heads-click img").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6)
    page.wait_for_function("old => document.querySelector('#heads-grid img')?.src !== old", arg=before)
    wait_loaded(page, "heads-grid")
    time.sleep(0.5)
    page.screenshot(path=str(SHOTS / "heads.png"), full_page=True)

    open_tab(page, "PAR steps")
    wait_loaded(page, "par-image")
    before = image_src(page, "par-image")
    number = page.locator("#par-step input[type=number]")
    number.fill("10")
    number.press("Enter")
    page.wait_for_function("old => document.querySelector('#par-image img')?.src !== old", arg=before)
    wait_loaded(page, "par-image")
    time.sleep(0.5)
    page.screenshot(path=str(SHOTS / "par.png"), full_page=True)

    open_tab(page, "Train")
    page.wait_for_selector("#train-progress")
    time.sleep(1.0)
    page.screenshot(path=str(SHOTS / "train.png"), full_page=True)
    for name in ("inspect", "affinity", "heads", "par", "train"):
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000, name
