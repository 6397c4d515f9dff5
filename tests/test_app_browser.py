"""End-to-end: start the app with tiny random models (image and 3D scene pipelines) on a free
local port and drive it in headless Chromium (Debian's ``chromium`` through Playwright, no
browser download): generate an image, a 3D scene and an augmented detection dataset, and check
that the outputs appear in the page and that the scene's files download.

Typed values are waited on, not raced: each number is checked to be in its box before Run is
clicked, and the scene test types as fast as possible (the instant the tab's box appears, before
the page's deferred set-up of that tab) and checks that the typed size is the one that runs."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

CHROMIUM = os.environ.get("EARTHGEN_CHROMIUM", "/usr/bin/chromium")
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

gr = pytest.importorskip("gradio", reason='the app needs gradio: pip install "earthgen[app]"')
sync_api = pytest.importorskip(
    "playwright.sync_api", reason='needs playwright: pip install "earthgen[browser]"'
)
expect = sync_api.expect
# gradio's queue uses pandas options that pandas 3 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword)")

if not Path(CHROMIUM).exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set EARTHGEN_CHROMIUM)",
        allow_module_level=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    import torch

    from apps.earthgen_app import AppLimits, create_demo, launch
    from tests.tiny_models import tiny_box_pipeline, tiny_scene_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared 2-core machine
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    pipe = tiny_box_pipeline()  # with box conditioning: the augmentation tab is on too
    limits = AppLimits(max_side=128, max_steps=10, scene_render_size=64, max_upload_mb=1)
    demo = create_demo(
        pipe, tiny_scene_pipeline(), None, limits=limits, workdir=tmp_path_factory.mktemp("app")
    )
    port = free_port()
    launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", root=demo.earthgen_root)
    finally:
        demo.close()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def page(app):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1280, "height": 1000})
        pg.set_default_timeout(30_000)
        pg.goto(app.url)
        yield pg
        browser.close()


def loaded_image(page, selector: str) -> dict:
    """Wait until ``selector`` holds an <img> whose picture has loaded; its natural size."""
    img = page.locator(f"{selector} img").first
    img.wait_for(state="visible")
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=img.element_handle())
    return img.evaluate("el => ({w: el.naturalWidth, h: el.naturalHeight, src: el.src})")


def fill_number(page, selector: str, value: str) -> None:
    """Type ``value`` into the number box ``selector``, leave it (as a user does before clicking
    elsewhere) and wait until the box holds it."""
    box = page.locator(selector)
    box.fill(value)
    box.press("Tab")
    expect(box).to_have_value(value)


def upload(page, selector: str, path) -> None:
    """Put ``path`` into the file upload ``selector``, clearing a file uploaded before."""
    clear = page.locator(f"{selector} button[aria-label='Clear']")
    if clear.count():
        clear.first.click()
    page.locator(f"{selector} input[type=file]").set_input_files(str(path))


def next_frames(page, n: int = 2) -> None:
    """Let the page draw ``n`` frames (its deferred work of the previous ones has run)."""
    page.evaluate(
        "n => new Promise(done => { const f = k => k ? requestAnimationFrame(() => f(k - 1)) : "
        "setTimeout(done, 0); f(n); })",
        n,
    )


TYPE_WHEN_SHOWN = """([selector, value]) => {
    window.__typed_when_shown = null;
    const typeIt = () => {
        const box = document.querySelector(selector);
        if (!box) return false;
        box.focus();
        box.value = value;
        box.dispatchEvent(new Event("input", {bubbles: true}));
        window.__typed_when_shown = box.value;
        return true;
    };
    if (typeIt()) return;
    const obs = new MutationObserver(() => { if (typeIt()) obs.disconnect(); });
    obs.observe(document.body, {subtree: true, childList: true});
}"""


def test_text_to_image_in_browser(page):
    page.get_by_role("tab", name="Text → Image").click()
    page.locator("#t2i-prompt textarea").fill("dense residential area")
    fill_number(page, "#t2i-steps input[type=number]", "2")
    page.locator("#t2i-randomize input[type=checkbox]").uncheck()
    fill_number(page, "#t2i-seed input", "42")
    page.locator("#t2i-run").click()
    info = loaded_image(page, "#t2i-output")
    assert (info["w"], info["h"]) == (64, 64)  # the tiny model's default size
    assert page.locator("#t2i-seed input").input_value() == "42"


def test_layout_preview_in_browser(page, tmp_path):
    from tests.test_app import layout_png

    path, _ = layout_png(tmp_path)  # 64 x 48 class ids
    page.get_by_role("tab", name="Layout → Image").click()
    upload(page, "#l2i-file", path)
    page.locator("#l2i-preview").click()
    info = loaded_image(page, "#l2i-layout")
    assert (info["w"], info["h"]) == (64, 64)  # resized (nearest) to the width x height asked


def test_layout_osm_bz2_in_browser(page):
    from tests.conftest import fixture_path

    bz2 = fixture_path("osm/West-Oakland.osm.bz2")  # the CLI's compressed OSM, uploaded as is
    page.get_by_role("tab", name="Layout → Image").click()
    upload(page, "#l2i-file", bz2)
    # gradio shows the name and the last suffix in two spans: "West-Oakland.osm" ".bz2"
    expect(page.locator("#l2i-file")).to_contain_text(re.compile(r"West-Oakland\.osm\s*\.bz2"))
    page.locator("#l2i-preview").click()
    expect(page.get_by_text("West-Oakland.osm.bz2 rasterized")).to_be_visible()
    assert loaded_image(page, "#l2i-layout")["w"] == 64


def test_upload_over_the_limit_is_refused_in_browser(page, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (2**20 + 1000))  # over the 1 MB limit of this app
    page.get_by_role("tab", name="Layout → Image").click()
    upload(page, "#l2i-file", big)
    expect(page.get_by_text('exceed the maximum allowed size of 1.0 Mb: "big.png"')).to_be_visible()
    assert "big.png" not in page.locator("#l2i-file").inner_text()  # not accepted


def test_scene_in_browser(page):
    # the condition: a 32 m procedural world tile, typed the instant the tab's size box appears
    # (before the page's deferred set-up of the new tab, which once put back the old 64 m)
    page.evaluate(TYPE_WHEN_SHOWN, ["#scene-size input[type=number]", "32"])
    page.get_by_role("tab", name="3D Scene").click()
    page.wait_for_function("() => window.__typed_when_shown === '32'")
    next_frames(page)  # the tab's set-up has run
    expect(page.locator("#scene-size input[type=number]")).to_have_value("32")
    page.locator("#scene-run").click()
    expect(page.locator("#scene-info")).to_contain_text("procedural world 3, 32 m", timeout=120_000)
    info = loaded_image(page, "#scene-render")  # 2x2 rendered views
    assert info["w"] == 128
    page.locator("#scene-model canvas").first.wait_for(state="visible")
    links = page.locator("#scene-files a[download]")
    links.first.wait_for(state="visible")
    files = {
        links.nth(i).get_attribute("download"): links.nth(i).get_attribute("href")
        for i in range(links.count())
    }
    assert {"scene.glb", "gaussians.ply", "voxels.ply"} <= set(files), files
    glb = page.request.get(files["scene.glb"])
    assert glb.ok and glb.body()[:4] == b"glTF"  # the download serves the binary glTF


def test_augment_in_browser(page, tmp_path):
    from tests.test_app import make_dataset_zip

    page.get_by_role("tab", name="Detection augmentation").click()
    upload(page, "#aug-data", make_dataset_zip(tmp_path))
    fill_number(page, "#aug-count input[type=number]", "2")
    fill_number(page, "#aug-steps input[type=number]", "2")
    page.locator("#aug-run").click()
    loaded_image(page, "#aug-gallery")  # a synthetic image with its boxes drawn
    link = page.locator("#aug-zip a[download]").first
    link.wait_for(state="visible")
    assert link.get_attribute("download").endswith(".zip")
    assert "3 real images (dota), 2 generated" in page.locator("#aug-info").inner_text()


def test_session_folder_removed_when_tab_closes(page, app):
    assert any(app.root.iterdir())  # the scene and dataset files of this browser session
    page.close()
    deadline = time.monotonic() + 30
    while any(app.root.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(app.root.iterdir())
