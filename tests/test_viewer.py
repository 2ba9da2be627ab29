"""The atlas viewer in a real headless browser (Debian's chromium through selenium): the report's
viewer page loads from file:// without errors, switching layer changes the picture, clicking a
cell shows its counts (equal to the store's), KL term, top labels and examples."""

import shutil
import time

import numpy as np
import pytest
import zarr

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="chromium and chromedriver are not installed (make test installs them)")


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", "--allow-file-access-from-files"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def canvas_pixels(driver) -> str:
    return driver.execute_script("return document.getElementById('atlas').toDataURL()")


def wait_for(driver, script, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


def click_cell(driver, grid, iy, ix):
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "atlas")
    cell = canvas.size["width"] / grid
    x = (ix + 0.5) * cell - canvas.size["width"] / 2
    y = (grid - 1 - iy + 0.5) * cell - canvas.size["height"] / 2
    ActionChains(driver).move_to_element_with_offset(canvas, int(x), int(y)).click().perform()


def test_viewer_loads_switches_layers_and_shows_cell_details(toy_run, browser, tmp_path):
    study, tmp, _ = toy_run
    page = tmp / "report" / "viewer" / "index.html"
    assert page.exists()
    assert "viewer/index.html" in (tmp / "report" / "index.html").read_text()
    browser.get(page.as_uri())
    wait_for(browser, "return document.getElementById('status').textContent.includes('KL(')")
    options = [o.text for o in browser.find_elements("css selector", "#layer option")]
    assert options == study.layers
    first = canvas_pixels(browser)
    browser.execute_script("const s = document.getElementById('layer'); s.value = 'block3';"
                           "s.dispatchEvent(new Event('change'))")
    wait_for(browser, "return document.getElementById('status').textContent.startsWith('block3')")
    assert canvas_pixels(browser) != first  # another layer, another picture

    root = zarr.open_group(study.store, mode="r")
    grid = int(browser.execute_script("return document.getElementById('grid').value"))
    counts = root[f"atlas/block3/g{grid}/counts"][:]
    iy, ix = np.unravel_index(np.argmax(counts.sum(0)), counts.shape[1:])  # the fullest cell
    click_cell(browser, grid, iy, ix)
    wait_for(browser, "return document.querySelectorAll('#details .counts').length > 0")
    shown = {td.get_attribute("data-dataset"): int(td.text)
             for td in browser.find_elements("css selector", "#details td[data-dataset]")}
    assert shown == {name: int(counts[d, iy, ix]) for d, name in enumerate(study.datasets)}
    kl_text = browser.find_element("css selector", "#details .kl").text
    expected = root[f"atlas/block3/g{grid}/kl_cells"][0, 1, iy, ix]
    assert f"{expected:.3e}".split("e")[0][:4] in kl_text
    assert browser.find_elements("css selector", "#details .thumb .patch")  # examples with their patch boxes
    labels = browser.find_element("id", "details").text
    assert any(name in labels for name in ("sun", "box", "tree", "ball"))
    # zoom changes the picture, reset restores it
    before = canvas_pixels(browser)
    browser.find_element("id", "zoom-in").click()
    assert canvas_pixels(browser) != before
    browser.find_element("id", "reset").click()
    assert canvas_pixels(browser) == before
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    browser.save_screenshot(str(tmp / "viewer.png"))
