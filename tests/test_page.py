"""The page at / in a real headless Chromium: it loads with nothing external, extraction runs against the real
server (tiny model), and the highlighted spans are the API's offsets. Saves a screenshot.

Needs Chromium and its driver (Debian: `apt-get install chromium chromium-driver`, or `make install-browser`)
and Selenium (the `test` extra); skipped with the reason otherwise."""

import json
import shutil
import subprocess
import sys
import time

import httpx
import pytest
from conftest import ROOT, free_port

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
TEXT = "Aspirin-induced asthma in a patient with hypertension and hereditary breast cancer."


@pytest.fixture()
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("no Chromium / chromedriver on this machine (make install-browser)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield drv
    finally:
        drv.quit()


def test_page_highlights_the_api_offsets(vllm_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "medner.cli", "api", "--url", vllm_server, "--model", "ner", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(60):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        browser.get(f"http://127.0.0.1:{port}/")
        assert "medner" in browser.title
        # grounded decoding is the page's default, as everywhere: spans of the input (the tiny random adapter writes some)
        assert browser.find_element(By.ID, "grounded").is_selected()
        from medner.data.records import convert
        from medner.data.registry import get_corpus

        # the tiny adapter answers some texts with no entity: take texts until one is highlighted
        for text in [TEXT] + [r["text"] for r in convert(get_corpus("ncbi-disease"), "test")[:12]]:
            box = browser.find_element(By.ID, "text")
            box.clear()
            box.send_keys(text)
            browser.execute_script("document.body.dataset.done = ''")
            browser.find_element(By.ID, "go").click()
            WebDriverWait(browser, 300).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done"))
            assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-done") == "1", browser.find_element(By.ID, "status").text
            marks = browser.find_elements(By.CSS_SELECTOR, "#out mark.ent")
            if marks:
                break
        api_result = json.loads(browser.find_element(By.ID, "json").text)
        shown = [(int(m.get_attribute("data-start")), int(m.get_attribute("data-end")), m.get_attribute("data-type")) for m in marks]
        assert shown, "no entity highlighted: nothing to compare"
        assert shown == [(e["start"], e["end"], e["type"]) for e in api_result["entities"]]
        for m, (a, b, t) in zip(marks, shown):
            assert m.text.startswith(text[a:b]) and m.get_attribute("title") == f"{t} [{a}, {b})"
        shot = tmp_path / "page.png"
        browser.save_screenshot(str(shot))
        keep = ROOT / "runs" / "test-artifacts"
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / "page.png")
        assert shot.stat().st_size > 10_000
        errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"] if hasattr(browser, "get_log") else []
        assert not errors, errors
    finally:
        api.terminate()
        api.wait(30)
