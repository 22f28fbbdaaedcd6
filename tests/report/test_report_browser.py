"""The report in a real browser: Debian's Chromium, driven by selenium through chromium-driver.

Renders the demo's report (a spec on `target demo`, its evaluation with an image grid), opens it
from disk, and checks: no console errors, no network requests, one block-map element per block of
the target, hostile spec text shown as text, a screenshot taken. Under CI=true a missing browser is
a failure; elsewhere the test skips and says what to install.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from hpspec.cli.app import main
from hpspec.model.targets import resolve_target
from hpspec.report.images import image_grid_payload


CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
)  # fmt: skip
HOSTILE = "<script>alert(1)</script>"


def _browser_or_skip() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") if importlib.util.find_spec("selenium") else None
    if chromium and driver:
        return chromium, driver
    message = "needs Chromium, chromium-driver and selenium: apt-get install chromium chromium-driver; pip install selenium"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: the browser test must run; {message}")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium, driver = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('profile')}", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    session = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        yield session
    finally:
        session.quit()


def _demo_spec(tmp_path: Path) -> Path:
    """A spec in the paper's spirit on the demo (late blocks cut, a few parts). The demo ships
    inside the package: without it this fails, it does not test another spec instead."""
    count = len(resolve_target("demo").stacks[0].blocks)
    text = (
        f"# The demo, compressed as the paper does it. {HOSTILE}\n"
        "target demo\n\n"
        f"drop blocks[{count - 4}:{count - 2}]\n"
        f"drop block[{count // 2}].mlp, block[{count // 2 + 1}].context_mlp\n"
        "preserve auto\n"
        "quantize nf4\n"
    )
    spec = tmp_path / "demo.hps"
    spec.write_text(text, encoding="utf-8")
    return spec


def _digit(k: int, shift: float) -> list[list[list[float]]]:
    return [[[0.5 + 0.5 * math.sin(x * 0.9 + y * (k + 1) * 0.7 + shift) for x in range(8)] for y in range(8)]]


def _evaluation(tmp_path: Path) -> Path:
    prompts = [f"a handwritten digit {d}" for d in (3, 7)] + [f"the digit {HOSTILE}"]
    images = image_grid_payload(prompts, [_digit(k, 0.0) for k in range(6)], [_digit(k, 0.4) for k in range(6)])
    result = {"prompt_accuracy": 0.95, "quality": 0.8, "metrics": ["prompt_accuracy", "quality"], "num_images": 6,
              "latency_s_per_image": 0.004, "degradation": 0.05, "reference": {"prompt_accuracy": 1.0, "quality": 0.84},
              "relative_drop": {"prompt_accuracy": 0.05, "quality": 0.048}, "images": images}  # fmt: skip
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(result), encoding="utf-8")
    return path


def _requests(log: list[dict[str, Any]], page: str) -> list[str]:
    """Every URL the page asked for (and any request to the network at all), except itself and inline data."""
    urls = []
    for entry in log:
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            params = message["params"]
            url = params["request"]["url"]
            if params.get("documentURL") == page or url.split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp"):
                urls.append(url)
    return [u for u in urls if u != page and not u.startswith("data:")]


def test_demo_report_in_a_real_browser(browser: Any, tmp_path: Path) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    spec = _demo_spec(tmp_path)
    report = tmp_path / "report.html"
    assert main(["report", str(spec), "--eval", str(_evaluation(tmp_path)), "-o", str(report)]) == 0
    url = report.as_uri()
    browser.get_log("performance")  # drop what the browser's own start page asked for
    browser.get(url)

    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert _requests(browser.get_log("performance"), url) == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert  # noqa: B018 (no script ran, so nothing alerted)
    assert browser.execute_script("return document.scripts.length") == 0

    expected = sum(len(stack.blocks) for stack in resolve_target("demo").stacks)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".block[data-block]")) == expected
    assert HOSTILE in browser.find_element(By.ID, "evaluation").text
    assert HOSTILE in browser.find_element(By.ID, "spec").text
    loaded = browser.execute_script("return [...document.images].filter(i => i.complete && i.naturalWidth === 8).length")
    assert loaded == 12  # 3 prompts x 2 images, original and pruned, all decoded

    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_page_in_a_real_browser(browser: Any, tmp_path: Path) -> None:
    """The demo's page (report.compare) on its own: no requests, no script, every map and image shown."""
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    from hpspec.plan.front import plan_spec
    from hpspec.report.compare import Comparison, ImageColumn, write_comparison
    from hpspec.report.images import encode_images

    plans = [(name, plan_spec(_demo_spec(tmp_path), None)) for name in ("hierarchical", HOSTILE)]
    prompts = ["a handwritten digit 3", f"the digit {HOSTILE}"]
    columns = [ImageColumn(name, encode_images([_digit(k, shift) for k in range(2)])) for name, shift in (("original", 0.0), (HOSTILE, 0.4))]
    page = tmp_path / "compare.html"
    write_comparison(page, Comparison(HOSTILE, "two plans", ["method", "score"], [[HOSTILE, "1.0"]], plans, None, prompts, columns))
    url = page.resolve().as_uri()
    browser.get_log("performance")
    browser.get(url)

    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert _requests(browser.get_log("performance"), url) == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert  # noqa: B018 (no script ran, so nothing alerted)
    assert browser.execute_script("return document.scripts.length") == 0
    count = len(resolve_target("demo").stacks[0].blocks)
    maps = browser.find_elements(By.CSS_SELECTOR, ".method-map")
    assert [len(m.find_elements(By.CSS_SELECTOR, ".block[data-block]")) for m in maps] == [count, count]
    assert HOSTILE in browser.find_element(By.ID, "comparison").text and HOSTILE in browser.find_element(By.ID, "images").text
    loaded = browser.execute_script("return [...document.images].filter(i => i.complete && i.naturalWidth === 8).length")
    assert loaded == 4  # 2 prompts x 2 models, all decoded
