"""The HTML report (bench/report.py) in a real headless browser (Debian's chromium through selenium and
chromium-driver; `make test` installs them with tests/setup_browser.sh): the page loads from disk without
console errors, the tables have the expected rows and sort, clicking an image row shows that image's cells
(ground truth, measurement, every method with its numbers, failures with their message), and a screenshot
is produced. Also the report's content without a browser (rows, files referenced, no missing image)."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import report, tables

METHODS = [("alpha", "Alpha"), ("beta", "Beta <b>"), ("oracle_mean", "oracle: exact posterior mean")]
TASKS = [("sr4", "SR x4"), ("inpaint_random", "Inpaint")]
IMAGES = ["im0", "im1", "im2"]
GRID_IMAGES = 2  # images with stored PNGs; im2 shows numbers only


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(path)


def _psnr(method: str, task: str, image: str) -> float:
    return 20.0 + 3 * [m for m, _ in METHODS].index(method) + [t for t, _ in TASKS].index(task) + 0.1 * IMAGES.index(image)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A hand-made results folder: records (beta diverges on sr4/im1), grid images, a figure, a grid."""
    root = tmp_path_factory.mktemp("report") / "results"
    recs = []
    for task, _ in TASKS:
        for i, image in enumerate(IMAGES):
            if i < GRID_IMAGES:
                _png(root / "images" / "ds" / task / "_gt" / f"{image}.png", 200)
                _png(root / "images" / "ds" / task / "_y" / f"{image}.png", 90)
            for method, _ in METHODS:
                failed = method == "beta" and task == "sr4" and image == "im1"
                if i < GRID_IMAGES and not failed:
                    _png(root / "images" / "ds" / task / method / f"{image}.png", 40 + 50 * i)
                recs.append({"dataset": "ds", "image_id": image, "task": task, "solver": method, "seed": 0,
                             "config_hash": f"h-{method}", "fingerprint": "fp", "image_sha256": image,
                             "status": "diverged" if failed else "ok",
                             "message": "SolverDiverged: NaN at step 12 </script>" if failed else "",
                             "psnr": None if failed else _psnr(method, task, image),
                             "ssim": None if failed else 0.5, "lpips": None if failed else 0.25,
                             "nfe_forward": 100, "nfe_backward": 100 if method == "beta" else 0, "seconds": 0.5,
                             "peak_mem_mb": 12.0, "batch_size": 1, "device": "cpu", "code_version": "git:test"})
    _png(root / "figures" / "psnr_vs_nfe_ds_sr4.png", 128)
    _png(root / "grid_ds_sr4.png", 60)
    records_dir = root / "records"
    records_dir.mkdir(parents=True)
    (records_dir / "rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    layout = tables.Layout([("ds", "My data")], TASKS, METHODS)
    report.build(root, recs, {}, layout, "test report", description="hand-made records")
    return root


def test_report_content_without_a_browser(results):
    html = (results / "report" / "index.html").read_text()
    assert re.findall(r'data-method="([^"]+)"', html) == ["alpha", "beta", "oracle_mean"]
    assert "Beta &lt;b&gt;" in html and "Beta <b>" not in html  # labels are escaped
    assert "(2/3)" in html  # beta on sr4: 2 of 3 images succeeded
    assert len(re.findall(r'class="img-row"', html)) == len(TASKS) * len(IMAGES)
    assert "http://" not in html and "https://" not in html  # nothing from the network
    srcs = set(re.findall(r'src="([^"]+)"', html))
    assert srcs == {"../figures/psnr_vs_nfe_ds_sr4.png", "../grid_ds_sr4.png"}
    detail = json.loads(re.search(r'<script type="application/json" id="detail-data">(.*?)</script>', html,
                                  re.S).group(1))
    images = detail["images"]
    assert len(images) == len(TASKS) * len(IMAGES)
    for entry in images.values():  # every image file referenced exists
        for src in [entry["gt"], entry["y"]] + [c[report.CELL_FIELDS.index("image")] for c in entry["cells"]]:
            assert src is None or (results / "report" / src).is_file()
    assert images["ds/sr4/im2"]["gt"] is None and images["ds/sr4/im0"]["gt"] == "../images/ds/sr4/_gt/im0.png"
    beta = images["ds/sr4/im1"]["cells"][1]
    assert detail["labels"][beta[0]] == "Beta <b>" and beta[1:4] == ["diverged", "SolverDiverged: NaN at step 12 </script>",
                                                                   None]


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    found = _chromium()
    if webdriver is None or found is None:
        message = ("selenium not installed (it is in the test extra: make test installs it)" if webdriver is None else
                   "chromium / chromedriver not installed: run tests/setup_browser.sh (make test does)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    yield driver
    driver.quit()


def test_report_in_headless_chromium(results, browser, tmp_path):
    from selenium.webdriver.common.by import By
    browser.get((results / "report" / "index.html").as_uri())
    assert browser.title == "test report"
    # the quality table: one row per method, in layout order
    rows = browser.find_elements(By.CSS_SELECTOR, "table.quality tbody tr")
    assert [r.get_attribute("data-method") for r in rows] == ["alpha", "beta", "oracle_mean"]
    # sorting by the first PSNR column: ascending then descending
    psnr_head = browser.find_elements(By.CSS_SELECTOR, "table.quality thead tr:nth-child(2) th")[0]
    psnr_head.click()
    order = [r.get_attribute("data-method") for r in browser.find_elements(By.CSS_SELECTOR, "table.quality tbody tr")]
    assert order == ["alpha", "beta", "oracle_mean"]
    psnr_head.click()
    order = [r.get_attribute("data-method") for r in browser.find_elements(By.CSS_SELECTOR, "table.quality tbody tr")]
    assert order == ["oracle_mean", "beta", "alpha"]
    # clicking an image row shows that image's cells, with images and numbers
    browser.find_element(By.CSS_SELECTOR, 'tr.img-row[data-key="ds/sr4/im0"]').click()
    detail = browser.find_element(By.ID, "detail")
    assert detail.get_attribute("data-key") == "ds/sr4/im0"
    cells = detail.find_elements(By.CSS_SELECTOR, ".tile.cell")
    assert [c.find_element(By.CSS_SELECTOR, ".name").text for c in cells] == [lab for _, lab in METHODS]
    assert "PSNR 20.00" in cells[0].text and "SSIM 0.500" in cells[0].text and "LPIPS 0.250" in cells[0].text
    loaded = browser.execute_script(
        "return Array.from(document.querySelectorAll('#detail img')).map(i => i.complete && i.naturalWidth > 0)")
    assert loaded == [True] * 5  # ground truth, measurement, 3 outputs
    # a failure shows its message
    browser.find_element(By.CSS_SELECTOR, 'tr.img-row[data-key="ds/sr4/im1"]').click()
    failed = browser.find_element(By.CSS_SELECTOR, '#detail .tile.cell[data-status="diverged"]')
    assert "NaN at step 12 </script>" in failed.text
    # an image without stored files shows its numbers
    browser.find_element(By.CSS_SELECTOR, 'tr.img-row[data-key="ds/inpaint_random/im2"]').click()
    assert browser.find_element(By.ID, "detail").text.count("not stored") == 5  # truth, measurement, 3 methods
    assert "PSNR 27.20" in browser.find_element(By.ID, "detail").text  # oracle_mean, inpaint, im2
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as im:
        assert im.size[0] >= 1000 and im.format == "PNG"
    browser.execute_script("console.error('probe-7f3a')")  # the log channel works: a real error would show
    logs = browser.get_log("browser")
    assert any("probe-7f3a" in e["message"] for e in logs)
    errors = [e for e in logs if e["level"] == "SEVERE" and "probe-7f3a" not in e["message"]]
    assert errors == []
    if os.environ.get("RESTOREBENCH_SCREENSHOT"):  # keep the screenshot (e.g. for the docs)
        shutil.copy(shot, os.environ["RESTOREBENCH_SCREENSHOT"])
