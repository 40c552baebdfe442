"""The web app in a real browser: `keras-siglip serve` (the installed command, a real
uvicorn server on 127.0.0.1) driven by Selenium through Debian's headless Chromium.

Upload an image of a green triangle, ask for labels, see "green triangle" on top; search
the index for red circles, see red circles' thumbnails loaded; keep a screenshot. With a
LocCa preset: caption an upload and detect two objects, see the model's own caption and
boxes and the picture with the boxes drawn.

One backend's pass runs it (JAX): the page, the routes and the server are the same on
every backend, and `tests/test_serve.py` checks the routes' answers on all three.
Needs `chromium` and `chromium-driver` (installed by `.ci/run`); without them it fails in
CI (`KERAS_SIGLIP_REQUIRE_BROWSER=1`) and is skipped elsewhere.
"""

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image

from tests.helpers import shapes_image, tiny_captioner_preset

PRESET = "siglip2_shapes_tiny"

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "jax") != "jax",
                       reason="one pass: the server and page do not depend on the backend"),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def needs_browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("KERAS_SIGLIP_REQUIRE_BROWSER"):
            pytest.fail("the browser test needs Debian's chromium and chromium-driver (.ci/run installs them)")
        pytest.skip("chromium / chromedriver not installed")


@contextlib.contextmanager
def running_server(*arguments):
    """`keras-siglip serve ARGUMENTS --port P` until the block ends; yields its URL."""
    port = free_port()
    command = shutil.which("keras-siglip") or os.path.join(os.path.dirname(sys.executable), "keras-siglip")
    process = subprocess.Popen([command, "serve", *arguments, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            assert process.poll() is None, process.communicate()[1][-3000:]
            try:
                with urllib.request.urlopen(url + "/api/info", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the server did not answer within 240 s"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def headless_chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1400"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def keep_screenshot(browser, path):
    """Saves the page to `path` and checks it is a rendered page, not a blank one."""
    assert browser.save_screenshot(str(path))
    picture = Image.open(path)
    colours = picture.convert("RGB").getcolors(1 << 20)  # None: more than that many
    assert picture.size[0] >= 1000 and (colours is None or len(colours) > 20), "a rendered page, not blank"


@pytest.fixture
def server(tmp_path):
    from keras_siglip.search import ImageIndex

    needs_browser()
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(["red circle", "blue square", "red circle", "yellow star", "green triangle"] * 2):
        Image.fromarray(shapes_image(name, seed=i)).save(photos / f"{i:02d}_{name.replace(' ', '_')}.png")
    ImageIndex.update(photos, preset=PRESET, progress=False)
    with running_server("--index", str(photos)) as url:
        yield url, tmp_path


def test_label_an_upload_and_search_in_a_real_browser(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    url, tmp_path = server
    upload = tmp_path / "triangle.png"
    Image.fromarray(shapes_image("green triangle", seed=42)).save(upload)
    with headless_chromium() as browser:
        wait = WebDriverWait(browser, 60)
        browser.get(url)
        assert browser.title == "keras-siglip" and PRESET in browser.find_element(By.ID, "preset").text

        browser.find_element(By.ID, "image").send_keys(str(upload))
        labels = browser.find_element(By.ID, "labels")
        labels.clear()
        labels.send_keys("red circle\nblue square\ngreen triangle\nyellow star")
        template = browser.find_element(By.ID, "template")
        template.clear()
        template.send_keys("a photo of a {}")
        browser.find_element(By.ID, "classify").click()
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#labels-out .label-row")))
        rows = browser.find_elements(By.CSS_SELECTOR, "#labels-out .label-row")
        assert len(rows) == 4
        assert rows[0].find_element(By.CLASS_NAME, "label").text == "green triangle"
        probabilities = [float(r.find_element(By.CLASS_NAME, "probability").text) for r in rows]
        assert probabilities == sorted(probabilities, reverse=True) and probabilities[0] > 0.2, probabilities

        query = browser.find_element(By.ID, "query")
        query.send_keys("a photo of a red circle")
        browser.find_element(By.ID, "search").click()
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#grid figure.hit")))
        hits = browser.find_elements(By.CSS_SELECTOR, "#grid figure.hit")
        assert len(hits) == 10
        captions = [h.find_element(By.TAG_NAME, "figcaption").text for h in hits]
        assert all("red_circle" in c for c in captions[:4]), captions  # the four red circles first
        # Every thumbnail loaded (decoded by the browser, not a broken image).
        wait.until(lambda b: b.execute_script(
            "return [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"))
        keep_screenshot(browser, pathlib.Path(os.environ.get("WEB_APP_SCREENSHOT") or tmp_path / "web_app.png"))


def test_caption_and_detect_with_a_locca_preset_in_a_real_browser(tmp_path):
    """A captioner preset's page: its caption and boxes are the Python API's, and
    the picture with the boxes drawn loads (random weights: what matters is that
    the page shows the model's own answer)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    needs_browser()
    model = tiny_captioner_preset(tmp_path / "locca", seed=3)
    image = shapes_image("red circle", seed=7)
    upload = tmp_path / "circle.png"
    Image.fromarray(image).save(upload)
    names = ["a red circle", "two blue squares"]
    caption = model.caption([image])[0]
    assert caption.strip(), "the fixture's model should say something to look for"
    boxes, _ = model.ground([image] * 2, names)
    with running_server("--preset", str(tmp_path / "locca")) as url, headless_chromium() as browser:
        wait = WebDriverWait(browser, 60)
        browser.get(url)
        for section, shown in (("labels", False), ("search", False), ("caption", True), ("detect", True)):
            assert browser.find_element(By.ID, f"{section}-section").is_displayed() == shown, section
        browser.find_element(By.ID, "image").send_keys(str(upload))
        browser.find_element(By.ID, "caption").click()
        wait.until(lambda b: b.find_element(By.ID, "caption-out").text or b.find_element(By.ID, "caption-error").text)
        assert browser.find_element(By.ID, "caption-out").text == caption.strip()

        objects = browser.find_element(By.ID, "objects")
        objects.clear()
        objects.send_keys(" ; ".join(names))
        browser.find_element(By.ID, "detect").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#detect-list .detection"))
        shown = [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#detect-list .detection")]
        assert shown == [f"{name}: [{', '.join(f'{v:.3f}' for v in box)}]" for name, box in zip(names, boxes)]
        # The boxed picture (a PNG data URL) decodes at the upload's size.
        wait.until(lambda b: b.execute_script(
            "const i = document.getElementById('detect-out'); return i.complete && i.naturalWidth == 64"))
        keep_screenshot(browser, tmp_path / "web_app_captioner.png")
