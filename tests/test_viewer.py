"""The atlas viewer in a real headless browser (Debian's chromium driven by selenium): a small toy
study is run through sample, embed and atlas, the viewer is written and opened from file://; the page
loads without JS errors, switching layer changes the picture, zoom/pan work, clicking a cell shows
its counts (equal to the store's), KL terms, top labels and example images with their patches. With
icon arrays written into (a copy of) the store, the icons view and the cell's icon appear.

Screenshots go to $GANSCALE_VIEWER_SCREENSHOTS when set (else the test's temporary folder)."""

from __future__ import annotations

import io
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import toy_study

webdriver = pytest.importorskip("selenium.webdriver", reason="the selenium package is not installed (pip install selenium)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver; make test does it as root)")

GRIDS = [8, 16]
LAYERS = ["block2", "block3"]


@pytest.fixture(scope="module")
def study_run(ray_local, tmp_path_factory):
    """A small toy study (three datasets, two layers, two grids) through sample, embed and atlas."""
    from ganscale.pipeline import run_study
    from ganscale.study import load_study

    tmp = tmp_path_factory.mktemp("viewer")
    path = toy_study(tmp, datasets={
        "real": {"kind": "toyworld", "samples": 400},
        "full": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_full.pt", "samples": 300},
        "no_tree": {"kind": "generator", "name": "dcgan", "weights": "builtin:dcgan_no_tree.pt", "samples": 300}},
        layers=LAYERS, sample={"chunk_size": 200, "batch_size": 100},
        embed={"layers": {layer: {"n_neighbors": 15} for layer in LAYERS}}, atlas={"grids": GRIDS})
    study = load_study(path)
    for stage in ("sample", "embed", "atlas"):
        t0 = time.time()
        run_study(study, stages=[stage])
        print(f"{stage}: {time.time() - t0:.1f} s")
    return study, tmp


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1100", "--force-device-scale-factor=1", "--disable-extensions",
                 "--no-first-run", "--disable-background-networking"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # Record uncaught errors and console.error calls from the very first script of every page.
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": """
        window.__errors = [];
        window.addEventListener('error', (e) => window.__errors.push(String(e.message || e.target && e.target.src)), true);
        window.addEventListener('unhandledrejection', (e) => window.__errors.push(String(e.reason)));
        const original = console.error;
        console.error = function (...args) { window.__errors.push(args.map(String).join(' ')); original.apply(console, args); };
    """})
    yield driver
    driver.quit()


def screenshot_dir(tmp: Path) -> Path:
    folder = Path(os.environ.get("GANSCALE_VIEWER_SCREENSHOTS") or tmp)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_for(driver, script, timeout=15.0):
    end = time.time() + timeout
    while time.time() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def canvas_png(driver) -> bytes:
    """The canvas as the screen shows it (a screenshot: toDataURL would refuse a canvas with file:// icons)."""
    return driver.find_element("id", "atlas").screenshot_as_png


def canvas_array(driver) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(canvas_png(driver))).convert("RGB"), dtype=np.int16)


def wait_canvas_change(driver, reference: np.ndarray, timeout=10.0) -> np.ndarray:
    end = time.time() + timeout
    while time.time() < end:
        now = canvas_array(driver)
        if now.shape != reference.shape or np.abs(now - reference).sum() > 0:
            return now
        time.sleep(0.1)
    raise AssertionError("the canvas did not change")


def choose(driver, select_id: str, value) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(str(value))


def cell_offset(grid: int, iy: int, ix: int, side: int = 640) -> tuple[int, int]:
    """Offset of a cell's centre from the canvas's centre (CSS px; iy = 0 is the bottom row)."""
    cell = side / grid
    return int((ix + 0.5) * cell - side / 2), int((grid - 1 - iy + 0.5) * cell - side / 2)


def click_cell(driver, grid: int, iy: int, ix: int) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "atlas")
    ActionChains(driver).move_to_element_with_offset(canvas, *cell_offset(grid, iy, ix)).click().perform()


def open_viewer(driver, page: Path) -> None:
    driver.get(page.as_uri())
    wait_for(driver, "return document.getElementById('status').textContent.includes('KL(')")


def js_errors(driver) -> list:
    logged = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return logged + list(driver.execute_script("return window.__errors || []"))


def wait_images(driver, selector: str) -> int:
    """Wait until every <img> matching selector has loaded; their number (failed loads fail the test)."""
    script = f"""const imgs = [...document.querySelectorAll({selector!r})];
                 return imgs.length > 0 && imgs.every((i) => i.complete) ? imgs.length : 0;"""
    n = wait_for(driver, script)
    broken = driver.execute_script(f"return [...document.querySelectorAll({selector!r})].filter((i) => !i.naturalWidth).length")
    assert broken == 0, f"{broken} of {n} images under {selector} did not load"
    return n


def test_viewer_without_icons(study_run, browser):
    from ganscale.viewer import write_viewer

    study, tmp = study_run
    names = list(study.datasets)
    root = zarr.open_group(study.store, mode="r")
    t0 = time.time()
    page = write_viewer(study, root, tmp / "report")
    written = time.time() - t0
    viewer = page.parent
    assert page == tmp / "report" / "viewer" / "index.html"
    assert sorted(p.name for p in (viewer / "data").iterdir()) == ["L0_g16.js", "L0_g8.js", "L1_g16.js", "L1_g8.js"]
    sheets = sorted(p.name for p in (viewer / "sprites").iterdir())
    assert sheets and all(name.startswith(("D0_", "D1_", "D2_")) for name in sheets)  # a few sheets, not one file per image
    assert not any((viewer / "icons").iterdir())
    for text in ((viewer / "viewer.js").read_text(), page.read_text()):  # nothing from the network, no fetch()
        assert "http://" not in text and "https://" not in text and "fetch(" not in text
    print(f"write_viewer: {written:.1f} s, {len(sheets)} sprite sheets")

    open_viewer(browser, page)
    assert [o.text for o in browser.find_elements("css selector", "#layer option")] == LAYERS
    assert [o.text for o in browser.find_elements("css selector", "#grid option")] == [str(g) for g in GRIDS]
    assert [o.text for o in browser.find_elements("css selector", "#a option")] == names
    assert browser.execute_script("return document.querySelector('#mode option[value=icons]').disabled")  # no icons here

    # Switching layer changes the picture.
    first = canvas_array(browser)
    choose(browser, "layer", "block3")
    wait_for(browser, "return document.getElementById('status').textContent.startsWith('block3')")
    assert np.abs(canvas_array(browser) - first).sum() > 0

    # Compare real with no_tree on the 16 x 16 grid, and click the fullest cell.
    grid, a, b = 16, 0, 2
    choose(browser, "grid", grid)
    wait_for(browser, f"return document.getElementById('status').textContent.startsWith('block3, {grid}x{grid}')")
    choose(browser, "b", b)
    group = root[f"atlas/block3/g{grid}"]
    counts, kl_cells = group["counts"][:], group["kl_cells"][:]
    top, label_counts, examples = group["top_labels"][:], group["label_counts"][:], group["examples"][:]
    iy, ix = np.unravel_index(np.argmax(counts.sum(0)), counts.shape[1:])
    assert counts[:, iy, ix].sum() > 0

    # The cell's colour is render.comparison_atlas's: RdBu_r of a's share of the cell's density.
    import matplotlib

    pa, pb = counts[a, iy, ix] / counts[a].sum(), counts[b, iy, ix] / counts[b].sum()
    expected = np.round(255 * np.asarray(matplotlib.colormaps["RdBu_r"](round(pa / (pa + pb) * 255) / 255)[:3]))
    cell = 640 / grid
    x, y = int(ix * cell + 6), int((grid - 1 - iy) * cell + 6)  # inside the cell, away from border and counts
    shown_colour = canvas_array(browser)[y + 1, x + 1]  # + 1: the canvas's border in its screenshot
    assert np.abs(shown_colour - expected).max() <= 2, (shown_colour, expected)

    # Hovering previews a cell's details; clicking pins them.
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = browser.find_element("id", "atlas")
    ActionChains(browser).move_to_element_with_offset(canvas, *cell_offset(grid, iy, ix)).perform()
    wait_for(browser, f"return document.getElementById('hover').textContent.startsWith('cell iy {iy}, ix {ix}:')")
    heading = browser.find_element("css selector", "#details h3").text
    assert f"cell iy {iy}, ix {ix}" in heading and "pinned" not in heading
    click_cell(browser, grid, iy, ix)
    wait_for(browser, "return document.querySelector('#details h3') && "
                      "document.querySelector('#details h3').textContent.includes('pinned')")
    heading = browser.find_element("css selector", "#details h3").text
    assert f"cell iy {iy}, ix {ix}" in heading and heading.startswith(f"block3, {grid}x{grid}")
    rows = {r.get_attribute("data-dataset"): r for r in browser.find_elements("css selector", "#details tr[data-dataset]")}
    assert list(rows) == names
    class_names = ["sun", "box", "tree", "ball"]  # the toy probe's
    for d, name in enumerate(names):
        assert int(rows[name].find_element("css selector", ".count").text) == counts[d, iy, ix]
        labels = rows[name].find_element("css selector", ".labels").text
        wanted = [f"{class_names[t]} ({c})" for t, c in zip(top[d, iy, ix], label_counts[d, iy, ix]) if t >= 0]
        assert labels == (", ".join(wanted) or "-")
    shown_ab = float(browser.find_element("css selector", "#details .kl-ab").text)
    shown_ba = float(browser.find_element("css selector", "#details .kl-ba").text)
    assert shown_ab == pytest.approx(kl_cells[a, b, iy, ix], rel=1e-3, abs=1e-12)
    assert shown_ba == pytest.approx(kl_cells[b, a, iy, ix], rel=1e-3, abs=1e-12)

    # Example images of every dataset present in the cell, each with its receptive-field box and patch.
    for d, name in enumerate(names):
        ids = [int(s) for s in examples[d, iy, ix] if s >= 0]
        shown = [int(e.get_attribute("data-sample")) for e in
                 browser.find_elements("css selector", f"#details .examples[data-dataset='{name}'] .example")]
        assert shown == ids  # small study: every stored example has its thumbnail
    n_images = wait_images(browser, "#details .example img")
    assert n_images == 2 * int((examples[:, iy, ix] >= 0).sum())  # a thumbnail and a patch each
    assert len(browser.find_elements("css selector", "#details .thumb .box")) == n_images // 2
    # The patch cut-out shows a sub-window of the thumbnail (block3's receptive field is not the whole image).
    patch_size = browser.execute_script("const p = document.querySelector('#details .patch'); return [p.clientWidth, p.clientHeight]")
    assert 63 <= max(patch_size) <= 64 and min(patch_size) > 0

    # Zoom (button and wheel) and pan change the picture; reset restores it.
    before = canvas_array(browser)
    browser.find_element("id", "zoom-in").click()
    zoomed = canvas_array(browser)
    assert np.abs(zoomed - before).sum() > 0
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    ActionChains(browser).move_to_element_with_offset(canvas, 0, 0).click_and_hold().move_by_offset(60, 40) \
        .release().perform()
    assert browser.execute_script("return document.querySelector('#details h3').textContent.includes('pinned')")  # a drag is not a click
    assert np.abs(canvas_array(browser) - zoomed).sum() > 0
    panned = canvas_array(browser)
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, -200).perform()
    assert np.abs(canvas_array(browser) - panned).sum() > 0
    browser.find_element("id", "reset").click()
    ActionChains(browser).move_to_element_with_offset(canvas, *cell_offset(grid, iy, ix)).perform()  # hover as before
    assert np.abs(canvas_array(browser) - before).sum() == 0

    folder = screenshot_dir(tmp)
    browser.save_screenshot(str(folder / "viewer_density.png"))
    # Esc unpins (the details follow the hover again).
    from selenium.webdriver.common.keys import Keys

    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    wait_for(browser, "return !document.querySelector('#details h3').textContent.includes('pinned')")
    assert not js_errors(browser), js_errors(browser)


def test_viewer_with_icons(study_run, browser):
    """Icon arrays as the icons stage writes them (uint8 [G, G, S, S, 3], zeros where none; float32
    objective [G, G], NaN where none), put into a copy of the store by hand."""
    from ganscale.viewer import write_viewer

    study, tmp = study_run
    names = list(study.datasets)
    store = tmp / "with_icons.zarr"
    if store.exists():
        shutil.rmtree(store)
    shutil.copytree(study.store, store)
    root = zarr.open_group(str(store), mode="a")
    grid, size = 8, 24
    group = root[f"atlas/block2/g{grid}"]
    counts = group["counts"][:].sum(0)
    icons = np.zeros((grid, grid, size, size, 3), dtype=np.uint8)
    objective = np.full((grid, grid), np.nan, dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    occupied = np.argwhere(counts > 0)
    least = tuple(occupied[np.argmin(counts[tuple(occupied.T)])])
    for iy, ix in occupied:  # icons for the occupied cells but the emptiest (icons.min_count leaves some out)
        if (iy, ix) == least:
            continue
        icons[iy, ix, ..., 0] = 40 + 200 * iy // grid
        icons[iy, ix, ..., 1] = 40 + 200 * ix // grid
        icons[iy, ix, ..., 2] = np.where((yy // 6 + xx // 6) % 2 == 0, 230, 30)  # a checker pattern
        objective[iy, ix] = 0.5 + 0.01 * (iy * grid + ix)
    group.create_array("icons", shape=icons.shape, dtype=icons.dtype, overwrite=True)[...] = icons
    group.create_array("icon_objective", shape=objective.shape, dtype=objective.dtype, overwrite=True)[...] = objective
    with_icon = np.argwhere(objective == objective)  # finite
    without = np.argwhere((objective != objective) & (counts > 0))
    assert len(with_icon) and len(without)

    page = write_viewer(study, root, tmp / "report_icons")
    assert (page.parent / "icons" / f"L0_g{grid}.png").exists()
    assert not (page.parent / "icons" / "L0_g16.png").exists()
    open_viewer(browser, page)
    assert not browser.execute_script("return document.querySelector('#mode option[value=icons]').disabled")
    density = canvas_array(browser)
    choose(browser, "mode", "icons")
    icon_view = wait_canvas_change(browser, density)  # once the icon atlas picture has loaded
    # The icon of a cell is drawn in it: blue channel alternates with the checker pattern.
    iy, ix = with_icon[0]
    cell = 640 / grid
    region = icon_view[int((grid - 1 - iy) * cell) + 12:int((grid - 1 - iy + 1) * cell) - 10,
                       int(ix * cell) + 12:int((ix + 1) * cell) - 10, 2]
    assert region.max() > 200 and region.min() < 60

    click_cell(browser, grid, iy, ix)
    wait_for(browser, "return !!document.querySelector('#details .cell-icon')")
    wait_images(browser, "#details .cell-icon img")
    text = browser.find_element("css selector", "#details .cell-icon").text
    assert float(re.search(r"objective ([-0-9.e]+)", text).group(1)) == pytest.approx(objective[iy, ix], rel=1e-3)
    counts_all = group["counts"][:]
    rows = {r.get_attribute("data-dataset"): int(r.find_element("css selector", ".count").text)
            for r in browser.find_elements("css selector", "#details tr[data-dataset]")}
    assert rows == {name: int(counts_all[d, iy, ix]) for d, name in enumerate(names)}
    folder = screenshot_dir(tmp)
    browser.save_screenshot(str(folder / "viewer_icons.png"))

    iy, ix = without[0]  # a non-empty cell without an icon says so
    click_cell(browser, grid, iy, ix)
    wait_for(browser, f"return document.querySelector('#details h3').textContent.includes('cell iy {iy}, ix {ix}')")
    assert browser.find_elements("css selector", "#details p.none") and not browser.find_elements("css selector", "#details .cell-icon")

    # A grid without icons: the icons view is not offered and the density comparison is drawn.
    choose(browser, "grid", 16)
    wait_for(browser, "return document.getElementById('status').textContent.startsWith('block2, 16x16')")
    assert browser.execute_script("return document.querySelector('#mode option[value=icons]').disabled")
    assert browser.execute_script("return document.getElementById('mode').value") == "density"
    assert not js_errors(browser), js_errors(browser)
