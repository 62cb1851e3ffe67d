"""The web page of `featx serve` in a real headless Chromium (Debian's chromium + chromium-driver,
driven by selenium): upload an image, see its class and neighbours, click one, see new results."""

from __future__ import annotations

import shutil

import pytest
from serve_fixtures import build_artifacts, running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (`make test` installs them with apt-get; "
           "apt-get install -y chromium chromium-driver)")


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_upload_see_neighbours_click_one_see_new_results(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from featx.api import write_projection
    from featx.maps.project import fit_projection
    from featx.options import ServeOptions
    from featx.serve.app import create_app

    artifacts = build_artifacts(tmp_path / "artifacts")
    coords, placer = fit_projection(artifacts.store, method="pca")  # PCA: a stored image lands on its own point
    write_projection(coords, tmp_path / "map", placer=placer)
    app = create_app(ServeOptions(models={"m": str(artifacts.model)}, indexes={"i": str(artifacts.index)},
                                  projections={"p": str(tmp_path / "map")}, device="cpu"))
    wait = WebDriverWait(browser, 60)
    query = artifacts.images / "owls" / "owls_03.png"
    with running_server(app) as base:
        browser.get(base + "/")
        wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "ready")
        browser.find_element(By.ID, "file-input").send_keys(str(query))
        wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error"))
        assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None, \
            browser.find_element(By.ID, "error").text
        assert browser.find_element(By.ID, "predicted-label").text in ("cats", "dogs", "owls")
        first = browser.find_elements(By.CSS_SELECTOR, "#neighbours .neighbour")
        assert len(first) == 8  # the k slider's default
        # the map shows the store's points and marks where the upload landed: on its own point
        wait.until(lambda d: d.find_element(By.ID, "map").get_attribute("data-state") in ("placed", "error"))
        own = coords.loc[coords["path"] == str(query), ["x", "y"]].to_numpy()[0]
        assert_marked(browser, own, len(coords))
        rows = [int(n.get_attribute("data-row")) for n in first]
        # the upload is a stored image: its own row comes first, with a thumbnail drawn from the server
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#neighbours img')].every(i => i.complete && i.naturalWidth > 0)"))
        clicked = rows[1]
        first[1].click()
        wait.until(lambda d: d.find_element(By.ID, "query-label").text == f"store row {clicked}"
                   and d.find_element(By.ID, "status").get_attribute("data-state") == "done")
        second = [int(n.get_attribute("data-row")) for n in browser.find_elements(By.CSS_SELECTOR,
                                                                                  "#neighbours .neighbour")]
        assert len(second) == 8 and clicked not in second and second != rows
        # the marker moved to the clicked row's own point
        row_point = coords.loc[coords["row_id"] == clicked, ["x", "y"]].to_numpy()[0]
        wait.until(lambda d: d.find_element(By.ID, "map").get_attribute("data-state") == "placed"
                   and abs(float(d.find_element(By.ID, "map").get_attribute("data-query-x")) - row_point[0]) < 1e-3)
        assert_marked(browser, row_point, len(coords))
        screenshot = tmp_path / "serve-page.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 1000
        browser.execute_script("arguments[0].scrollIntoView()", browser.find_element(By.ID, "map-section"))
        assert browser.save_screenshot(str(tmp_path / "serve-map.png"))


def assert_marked(browser, point, n_points):
    """The canvas drew every map point and a black marker at the query's place (black is no label's colour)."""
    from selenium.webdriver.common.by import By

    canvas = browser.find_element(By.ID, "map")
    assert canvas.get_attribute("data-state") == "placed", browser.find_element(By.ID, "map-note").text
    assert abs(float(canvas.get_attribute("data-query-x")) - point[0]) < 1e-3
    assert abs(float(canvas.get_attribute("data-query-y")) - point[1]) < 1e-3
    px, py = int(canvas.get_attribute("data-query-px")), int(canvas.get_attribute("data-query-py"))
    pixel = browser.execute_script(
        "return Array.from(arguments[0].getContext('2d').getImageData(arguments[1], arguments[2], 1, 1).data)",
        canvas, px, py)
    assert pixel == [0, 0, 0, 255]
    coloured = browser.execute_script("""
        const c = arguments[0], d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] !== d[i + 1] || d[i] !== d[i + 2]) n++;
        return n;""", canvas)
    assert coloured > 5 * n_points  # the labelled points are drawn (coloured pixels, not only the marker)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#map-key span")) == 3


def test_an_uploaded_image_shows_its_anomaly_score_and_heatmap(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    import featx
    from featx.options import ServeOptions
    from featx.serve.app import create_app
    from tests.test_anomaly import PATCH_TINY, textured_images

    textured_images(tmp_path / "images" / "train" / "good", 12, seed=0)
    textured_images(tmp_path / "images" / "val" / "good", 6, seed=1)
    textured_images(tmp_path / "images" / "val" / "bad", 4, seed=2, defect=True)
    store = featx.extract(tmp_path / "images", tmp_path / "store", **PATCH_TINY)
    model = featx.fit_anomaly(store, tmp_path / "model", normal=["good"], patch=True, coreset=0.1, fpr=0.2)
    app = create_app(ServeOptions(anomalies={"parts": str(tmp_path / "model")}, device="cpu"))
    wait = WebDriverWait(browser, 60)
    query = tmp_path / "images" / "val" / "bad" / "img_00.png"
    with running_server(app) as base:
        browser.get(base + "/")
        wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "ready")
        assert browser.find_element(By.ID, "anomaly-box").get_attribute("hidden") is None
        browser.find_element(By.ID, "file-input").send_keys(str(query))
        wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error"))
        assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None, \
            browser.find_element(By.ID, "error").text
        offline = model.held_out.set_index("path")["score"][str(query)]
        expected = "above the threshold" if offline > model.threshold else "normal"
        assert browser.find_element(By.ID, "anomaly-verdict").text == expected
        wait.until(lambda d: d.execute_script(
            "const i = document.getElementById('anomaly-heatmap');"
            "return !i.hidden && i.complete && i.naturalWidth > 0"))
        assert browser.execute_script("return document.getElementById('anomaly-heatmap').naturalWidth") == 96
