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

    from featx.options import ServeOptions
    from featx.serve.app import create_app

    artifacts = build_artifacts(tmp_path / "artifacts")
    app = create_app(ServeOptions(models={"m": str(artifacts.model)}, indexes={"i": str(artifacts.index)},
                                  device="cpu"))
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
        rows = [int(n.get_attribute("data-row")) for n in first]
        # the upload is a stored image: its own row comes first, with a thumbnail drawn from the server
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#neighbours img')].every(i => i.complete && i.naturalWidth > 0)"))
        clicked = rows[1]
        first[1].click()
        wait.until(lambda d: d.find_element(By.ID, "query-label").text == f"store row {clicked}"
                   and d.find_element(By.ID, "status").get_attribute("data-state") == "done")
        second = [int(n.get_attribute("data-row")) for n in browser.find_elements(By.CSS_SELECTOR, "#neighbours .neighbour")]
        assert len(second) == 8 and clicked not in second and second != rows
        screenshot = tmp_path / "serve-page.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 1000
