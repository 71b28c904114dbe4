"""report.html and compare.html in a real browser: headless Chromium driven by Selenium.

One browser per session (Debian's ``chromium`` and ``chromium-driver``; .ci/run installs them).
Without them the tests skip on a workstation but fail in CI (``CI`` set), so that CI never passes by
skipping.  Checked: no console errors, no network request of any kind (Chrome's performance log, i.e.
the DevTools Network domain), one table row per site, sorting by clicking a header, the role filter,
every figure drawn (non-blank pixels in a screenshot), the page's numbers equal report.json's, the
page without scripts and in print.  The first screen of each page is saved as a PNG in the test's
temporary folder (look at it).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
pytest.importorskip("transformers")

from tiny_models import tiny

from geonorm_core import analyze
from geonorm_core.analysis.compare import compare
from geonorm_core.analysis.paper import PAPER_ROWS

pytestmark = pytest.mark.slow   # starts a headless Chromium: the full tier only

CHROMIUM = os.environ.get("GEONORM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GEONORM_CHROMEDRIVER", "/usr/bin/chromedriver")


def _missing(why: str):
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{why}: CI must run the browser tests (.ci/run installs chromium and chromium-driver)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium, with its console and performance (network) logs, for the whole session."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -r requirements-test.txt)")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(path)):
            _missing(f"{path} is missing (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,800", "--hide-scrollbars", "--force-device-scale-factor=1",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def batches(n=2, b=3, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 97, (b, t), generator=g)} for _ in range(n)]


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """A tiny Llama's report (4 layers: 9 sites) and a comparison with a tiny GPT-2 measured without
    each sequence's first token (so the comparison page carries a note)."""
    root = tmp_path_factory.mktemp("pages")
    llama = analyze(tiny("llama", num_hidden_layers=4), batches(), meta={"model_name": "tiny-llama"})
    gpt2 = analyze(tiny("gpt2", n_layer=3), batches(), exclude_first_token=True, meta={"model_name": "tiny-gpt2"})
    llama.save(root / "llama")
    compare([root / "llama", gpt2]).save(root / "cmp")
    return {"report": root / "llama" / "report.html", "json": root / "llama" / "report.json",
            "compare": root / "cmp" / "compare.html", "llama": llama}


def open_page(driver, path):
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get_log("performance")
    driver.get(path.as_uri())
    for _ in range(100):  # images are data: URIs; wait until every one has decoded
        if driver.execute_script("return document.readyState === 'complete' && "
                                 "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{path.name}: the images never finished loading")


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]


def requests(driver, page) -> list[str]:
    """URLs the page asked for, from the DevTools Network events, besides the page itself and data: URIs."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated", "Network.requestIntercepted"):
            url = msg["params"].get("request", {}).get("url") or msg["params"].get("url", "")
            if url != page.as_uri() and not url.startswith("data:"):
                urls.append(url)
    return urls


def ink(png: bytes) -> float:
    """The fraction of pixels that are not (near) white in a PNG screenshot."""
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)
    return float((img < 235).mean())


def test_report_page_loads_nothing_and_logs_no_error(browser, pages):
    open_page(browser, pages["report"])
    assert console_errors(browser) == []
    assert requests(browser, pages["report"]) == []
    assert browser.title == "geonorm report: tiny-llama"


def test_the_request_check_sees_a_fetch(browser, pages, tmp_path):
    """The checks above can fail: a page that fetches shows in the network log and the console."""
    page = tmp_path / "fetch.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
                    "<script>undefined_function()</script></body></html>")
    browser.get_log("browser"), browser.get_log("performance")
    browser.get(page.as_uri())
    time.sleep(0.3)
    assert any("127.0.0.1:9" in u for u in requests(browser, page))
    assert console_errors(browser)


def test_site_table_one_row_per_site_numbers_equal_report_json(browser, pages):
    open_page(browser, pages["report"])
    data = json.loads(pages["json"].read_text())
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#sites tbody tr')).map(r => "
        "[r.dataset.site].concat(Array.from(r.cells).slice(6).map(c => [c.dataset.v, c.textContent])))")
    assert sorted(r[0] for r in rows) == sorted(data["sites"]) and len(rows) == 9
    from geonorm_core import Report
    from geonorm_core.analysis.report_html import SITE_COLUMNS

    saved = Report.from_json(pages["json"])  # report.json's numbers, as geonorm reads them back
    for row in rows:
        site = data["sites"][row[0]]["quantities"]
        for i, (q, _, digits) in enumerate(SITE_COLUMNS):
            (v_mean, t_mean), (v_sd, _) = row[1 + 2 * i], row[2 + 2 * i]
            want = saved.sites[row[0]][q]
            assert float(v_mean) == want.mean and float(v_sd) == want.std, (row[0], q)
            assert float(v_mean) == pytest.approx(site[q]["moments"]["mean"], rel=1e-12, abs=1e-12)
            assert t_mean == f"{want.mean:.{digits}f}"
    # the headline card shows the averaged angle the Markdown table shows
    avg = pages["llama"].averages()["hidden_angle"]
    card = browser.find_element("css selector", ".cards .card .v").text
    assert card.startswith(f"{avg['mean']:.2f}°") and f"± {avg['sd']:.2f}" in card


def column(browser, index):
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#sites tbody tr')).filter(r => !r.hidden)"
        f".map(r => parseFloat(r.cells[{index}].dataset.v))")


def test_clicking_a_header_sorts_and_the_role_filter_filters(browser, pages):
    open_page(browser, pages["report"])
    headers = browser.find_elements("css selector", "#sites thead th button")
    assert len(headers) == browser.execute_script("return document.querySelectorAll('#sites thead th').length")
    angle = 6  # "angle hidden (°)"
    before = column(browser, angle)
    assert before != sorted(before)  # document order is the model's, not the angle's
    headers[angle].click()
    assert column(browser, angle) == sorted(before)
    th = browser.find_elements("css selector", "#sites thead th")[angle]
    assert th.get_attribute("aria-sort") == "ascending"
    headers[angle].click()
    assert column(browser, angle) == sorted(before, reverse=True)
    assert th.get_attribute("aria-sort") == "descending"
    # filter by role
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "sites-filter")).select_by_value("LN1")
    visible_roles = browser.execute_script(
        "return Array.from(document.querySelectorAll('#sites tbody tr')).filter(r => !r.hidden)"
        ".map(r => r.dataset.role)")
    assert visible_roles == ["LN1"] * 4
    assert "showing 4 of 9 sites" in browser.find_element("css selector", ".controls").text


def test_every_figure_is_drawn(browser, pages, tmp_path):
    for key, count in (("report", 5), ("compare", 4)):
        open_page(browser, pages[key])
        figures = browser.find_elements("css selector", "figure img")
        assert len(figures) == count
        for img in figures:
            browser.execute_script("arguments[0].scrollIntoView()", img)
            assert img.size["width"] > 300 and img.size["height"] > 150
            assert ink(img.screenshot_as_png) > 0.03, img.get_attribute("alt")


def test_ink_sees_a_blank_image():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (50, 50), "white").save(buf, format="PNG")
    assert ink(buf.getvalue()) == 0.0


def test_first_screens_are_saved(browser, pages, tmp_path):
    """The first screen of each page, as a PNG in this test's folder: a page to put in a talk."""
    for key in ("report", "compare"):
        open_page(browser, pages[key])
        shot = tmp_path / f"{key}.png"
        browser.save_screenshot(str(shot))
        assert ink(shot.read_bytes()) > 0.05
        print(f"first screen of {key}: {shot}")


def test_compare_page(browser, pages):
    open_page(browser, pages["compare"])
    assert console_errors(browser) == [] and requests(browser, pages["compare"]) == []
    models = browser.execute_script(
        "return Array.from(document.querySelectorAll('#summary tbody tr')).map(r => r.cells[0].textContent)")
    assert models[:2] == ["tiny-llama (geonorm)", "tiny-gpt2 (geonorm)"] and len(models) == 2 + len(PAPER_ROWS)
    note = browser.find_element("css selector", ".note")
    assert note.is_displayed() and "first token" in note.text
    # sorting works here too: by the model column, as text
    browser.find_elements("css selector", "#summary thead th button")[0].click()
    first = browser.execute_script("return document.querySelector('#summary tbody tr').cells[0].textContent")
    assert first == min(models, key=str.lower)
    # ... and numbers as numbers: "101.48" (GPT-2 XL) after "89.xx", although its text sorts first
    browser.find_elements("css selector", "#summary thead th button")[5].click()
    angles = browser.execute_script("return Array.from(document.querySelectorAll('#summary tbody tr'))"
                                    ".map(r => parseFloat(r.cells[5].textContent))")
    assert angles == sorted(angles) and angles[-1] == 101.48


def test_without_scripts_and_in_print(browser, pages):
    """Scripts disabled: every row is there and nothing is hidden; print: the controls disappear."""
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        open_page(browser, pages["report"])
        assert len(browser.find_elements("css selector", "#sites tbody tr")) == 9
        assert browser.find_elements("css selector", "#sites thead th button") == []
        assert browser.find_elements("css selector", ".controls") == []
        assert all(r.is_displayed() for r in browser.find_elements("css selector", "#summary tbody tr"))
    finally:
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
    open_page(browser, pages["report"])
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        assert not browser.find_element("css selector", ".controls").is_displayed()
        assert browser.find_element("id", "sites").is_displayed()
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
