"""The search page and the item endpoints on a real Serve app, over HTTP and in headless Chromium.

The corpus is real: 80 MNIST digits prepared by ``prepare`` (folder source), encoded by
``encode`` with a seeded untrained model, served with ``--model`` and ``--data`` and a token.
Expected bytes and labels are read from the prepared Parquet parts; expected rankings from the
service's own JSON API (tests/pipelines/test_serve.py checks that against brute force).

The browser tests drive Debian's ``chromium`` through ``chromium-driver`` with Selenium; they skip,
naming the packages, where those are not installed. ``HASHRAY_SCREENSHOT_DIR`` set: the
screenshots of the page after a query are written there (docs/img/ holds the README's).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import quote

import pyarrow.parquet as pq
import pytest
import requests
import torch
from shared_helpers import save_model_dir, start_serve_on_loopback, write_digit_folder

from hashing.models import build
from pipelines.codes_io import read_codes

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

BITS, TOKEN = 32, "web-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def corpus(ray_cluster, tmp_path_factory):
    """Prepared digits, a model, its codes; every stored row by id; an id with a unique code."""
    from pipelines.encode import encode
    from pipelines.prepare import prepare

    root = tmp_path_factory.mktemp("web")
    folder = root / "digits"
    folder.mkdir()
    write_digit_folder(folder, per_class=8)
    data = str(root / "prepared")
    prepare("folder", data, path=str(folder), image_size=28, mode="L", progress=False)
    torch.manual_seed(0)
    model = build("smallcnn", bits=BITS, in_channels=1).eval()
    save_model_dir(model, root / "model", side=28, model_version="web-v1")
    codes = str(root / "codes")
    encode(data, str(root / "model"), codes, progress=False)
    rows = {}
    for part in sorted(Path(data).glob("*/part-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            rows[row["id"]] = row | {"split": part.parent.name}
    database = read_codes(f"{codes}/database")
    counts: dict[bytes, int] = {}
    for code in database.codes:
        counts[code.tobytes()] = counts.get(code.tobytes(), 0) + 1
    unique = [i for i, c in zip(database.ids, database.codes) if counts[c.tobytes()] == 1]
    assert unique, "every database code is shared: pick another seed"
    return {
        "data": data,
        "model": str(root / "model"),
        "codes": f"{codes}/database",
        "rows": rows,
        "database_ids": [str(i) for i in database.ids],
        "unique_id": str(unique[len(unique) // 2]),
        "root": root,
    }


@pytest.fixture(scope="module")
def service(corpus):
    """The app with model, data and token at /, and one with codes only (no token) at /plain."""
    from ray import serve

    from pipelines.serve import ServeArgs, build_app

    url = start_serve_on_loopback()
    full = ServeArgs(
        codes=corpus["codes"], model=corpus["model"], data=corpus["data"], api_token=TOKEN
    )
    serve.run(build_app(full), name="hashray-web", route_prefix="/")
    serve.run(
        build_app(ServeArgs(codes=corpus["codes"], api_token="")),
        name="plain",
        route_prefix="/plain",
    )
    yield url
    serve.shutdown()


def get(url: str, headers: dict | None = AUTH) -> requests.Response:
    return requests.get(url, headers=headers, timeout=30)


# ---- HTTP


def test_items_answer_the_stored_bytes_and_labels(service, corpus):
    classes = [str(c) for c in range(10)]  # the folder source names classes by sub-folder
    ids = [corpus["unique_id"], *list(corpus["rows"])[:3], *list(corpus["rows"])[-3:]]
    for item in ids:
        row = corpus["rows"][item]
        image = get(f"{service}/items/{quote(item, safe='')}/image")
        assert image.status_code == 200, image.text
        assert image.headers["content-type"] == "image/png" and image.content == row["image"]
        answer = get(f"{service}/items/{quote(item, safe='')}")
        assert answer.status_code == 200, answer.text
        split = "database" if row["split"] == "train" else row["split"]  # database = train
        assert answer.json() == {
            "id": item,
            "split": split,
            "labels": row["labels"],
            "label_names": [classes[i] for i in row["labels"]],
        }
    assert "/" in ids[0]  # ids are paths relative to the corpus root: slashes in the URL work
    assert get(f"{service}/items/{ids[0]}/image").content == corpus["rows"][ids[0]]["image"]
    dataset = get(f"{service}/dataset").json()
    assert dataset["items"] == len(corpus["rows"]) == 80 and dataset["classes"] == classes
    assert dataset["splits"] == {"database": 70, "query": 10, "train": 70}
    for split in ["query", "database"]:
        sample = get(f"{service}/sample?split={split}").json()
        assert corpus["rows"][sample["id"]]["split"] == ("query" if split == "query" else "train")


@pytest.mark.parametrize(
    "path, status",
    [
        ("/items/no-such-id", 404),
        ("/items/no-such-id/image", 404),
        ("/items/0/000.png/extra", 404),
        ("/items/..%2Fdataset.json/image", 400),
        ("/items/..%2F..%2F..%2Fetc%2Fpasswd", 400),
        ("/items/0%2F..%2F..%2Fdataset.json/image", 400),
        ("/items/%2Fetc%2Fpasswd/image", 400),
        ("/items/..%5Cdataset.json", 400),
        ("/items/a%00b/image", 400),
        ("/sample?split=validation", 422),
    ],
)
def test_bad_item_requests_get_4xx_with_a_detail(service, path, status):
    response = get(f"{service}{path}")
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    assert b"root:" not in response.content and b"classes" not in response.content


def test_token_is_enforced_and_the_page_is_public(service, corpus):
    item = quote(corpus["unique_id"], safe="")
    for path in [f"/items/{item}", f"/items/{item}/image", "/dataset", "/sample"]:
        for headers in [None, {"Authorization": "Bearer wrong"}]:
            response = get(f"{service}{path}", headers=headers)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["detail"] and response.headers["WWW-Authenticate"] == "Bearer"
    page = get(f"{service}/", headers=None)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # one document: stylesheet and script inline, so the page loads under any route prefix
    assert "<script>" in page.text and 'src="app.js"' not in page.text and "<style>" in page.text
    schema = get(f"{service}/openapi.json", headers=None).json()["paths"]
    for path in ["/items/{item_id}", "/items/{item_id}/image", "/dataset", "/sample"]:
        responses = schema[path]["get"]["responses"]
        assert {"401", "404"} <= set(responses), path
        problem = responses["404"]["content"]["application/json"]["schema"]["$ref"]
        assert problem.endswith("/Problem")
    assert "/" not in schema  # the page is not an API operation


def test_without_data_items_say_why(service):
    for path in ["/plain/dataset", "/plain/items/0%2F000.png", "/plain/items/x/image"]:
        response = get(f"{service}{path}", headers=None)
        assert response.status_code == 404 and "--data" in response.json()["detail"], path
    assert get(f"{service}/plain/", headers=None).status_code == 200


# ---- the page in headless Chromium


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (dev extra)")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} missing: apt-get install -y chromium chromium-driver "
            "(make test installs them where apt-get is available: scripts/install-test-deps.sh)"
        )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]:
        options.add_argument(flag)
    options.add_argument("--window-size=1100,900")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def idle_with_results(driver) -> bool:
    """The page has finished a request and rendered results or an error."""
    return driver.execute_script(
        "return document.body.dataset.busy === '0' && "
        "(document.querySelectorAll('#results li').length > 0 || "
        "!document.getElementById('error').hidden)"
    )


def cards(driver) -> list[dict]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#results li')].map(li => ({"
        "id: li.dataset.id, distance: Number(li.dataset.distance), "
        "width: li.querySelector('img') ? li.querySelector('img').naturalWidth : null, "
        "cls: li.className}))"
    )


def token_form_shown(driver) -> bool:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "token-form").is_displayed()


def open_with_token(driver, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/")
    wait(driver, lambda d: d.find_element(By.ID, "error").is_displayed())
    assert token_form_shown(driver) and "bearer token" in driver.find_element(By.ID, "error").text
    driver.find_element(By.ID, "token-input").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait(driver, lambda d: d.find_element(By.ID, "app").is_displayed())
    assert not driver.find_element(By.ID, "token-form").is_displayed()
    assert driver.execute_script("return localStorage.length + sessionStorage.length") == 0


def screenshot(driver, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("HASHRAY_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    driver.save_screenshot(str(path))
    return path


def test_upload_finds_the_image_first_and_every_thumbnail_loads(browser, service, corpus, tmp_path):
    from selenium.webdriver.common.by import By

    open_with_token(browser, service)
    info = {el.get_attribute("id"): el.text for el in browser.find_elements(By.CSS_SELECTOR, "dd")}
    assert info["info-bits"] == str(BITS) and info["info-model"] == "web-v1"
    assert info["info-items"] == "70" and info["info-dataset"].startswith("prepared")
    item = corpus["unique_id"]
    upload = tmp_path / "query.png"
    upload.write_bytes(corpus["rows"][item]["image"])
    browser.find_element(By.ID, "file-input").send_keys(str(upload))
    wait(browser, idle_with_results)
    assert browser.find_element(By.ID, "error").is_displayed() is False
    found = cards(browser)
    assert found[0]["id"] == item and found[0]["distance"] == 0
    assert len(found) == 24 and [c["distance"] for c in found] == sorted(
        c["distance"] for c in found
    )
    assert all(card["width"] == 28 for card in found), found  # every thumbnail loaded
    assert "ms" in browser.find_element(By.ID, "info-latency").text
    screenshot(browser, "search-page-upload.png", tmp_path)


def test_random_image_shows_labels_shared_with_the_query(browser, service, corpus, tmp_path):
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "random-button").click()
    wait(browser, lambda d: "share a label" in d.find_element(By.ID, "summary").text)
    caption = browser.find_element(By.ID, "query-caption").text
    query_id = caption.split(" ")[0]
    assert corpus["rows"][query_id]["split"] == "query"  # a held-out image, through the encoder
    query_labels = set(corpus["rows"][query_id]["labels"])
    for card in cards(browser):
        shares = bool(set(corpus["rows"][card["id"]]["labels"]) & query_labels)
        assert ("match" if shares else "miss") in card["cls"].split()
    screenshot(browser, "search-page-random.png", tmp_path)


def test_radius_mode_pages_through_every_item_within_the_radius(browser, service, corpus):
    from selenium.webdriver.common.by import By

    item = corpus["unique_id"]
    expected = {}
    for radius in range(BITS + 1):
        body = {"id": item, "k": 1000, "radius": radius}
        expected = requests.post(f"{service}/search", json=body, headers=AUTH, timeout=30).json()
        if len(expected["results"]) > 30:  # more than one page of 24
            break
    browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=radius]").click()
    browser.execute_script(
        "const r = document.getElementById('radius-input'); r.value = arguments[0];"
        "r.dispatchEvent(new Event('input')); r.dispatchEvent(new Event('change'));",
        radius,
    )
    text = browser.find_element(By.ID, "text-input")
    text.clear()
    text.send_keys(item)
    browser.find_element(By.CSS_SELECTOR, "#text-query button").click()
    wait(browser, lambda d: idle_with_results(d) and len(cards(d)) == 24)
    pages = [len(cards(browser))]
    more = browser.find_element(By.ID, "more-button")
    assert more.is_displayed() and f"radius {radius}" in more.text
    while more.is_displayed():
        more.click()
        wait(browser, lambda d: d.execute_script("return document.body.dataset.busy") == "0")
        pages.append(len(cards(browser)))
    shown = [{"id": c["id"], "distance": c["distance"]} for c in cards(browser)]
    assert shown == expected["results"] and pages[:2] == [24, 48]
    assert all(c["width"] == 28 for c in cards(browser))


def test_a_bad_upload_shows_an_error_on_the_page(browser, service, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"this is not an image at all")
    browser.find_element(By.ID, "file-input").send_keys(str(bad))
    wait(browser, lambda d: d.find_element(By.ID, "error").is_displayed())
    message = browser.find_element(By.ID, "error").text
    assert "HTTP 400" in message and "image" in message
    assert browser.find_element(By.ID, "app").is_displayed()  # the page stays, not a blank one


def test_without_data_the_page_shows_ids_and_says_why(browser, service, corpus):
    from selenium.webdriver.common.by import By

    browser.get(f"{service}/plain")  # no token on this app; a prefix without the trailing slash
    wait(browser, lambda d: d.find_element(By.ID, "app").is_displayed())
    assert "--data" in browser.find_element(By.ID, "notice").text
    assert not browser.find_element(By.ID, "random-button").is_enabled()
    text = browser.find_element(By.ID, "text-input")
    text.send_keys(corpus["unique_id"])
    browser.find_element(By.CSS_SELECTOR, "#text-query button").click()
    wait(browser, idle_with_results)
    found = cards(browser)
    assert found[0] == {"id": corpus["unique_id"], "distance": 0, "width": None, "cls": "card"}
    assert "ids only" in browser.find_element(By.ID, "summary").text


@pytest.mark.slow
def test_installed_package_serves_the_page(tmp_path):
    """A wheel built from the tree carries the page; page_html() reads it from the install."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    tree = tmp_path / "src"
    tree.mkdir()
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(repo / name, tree / name)
    for name in ["hashing", "pipelines"]:
        shutil.copytree(repo / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, tree], check=True
    )
    (wheel,) = wheels.glob("hashray-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True)
    script = (
        "import pipelines.serve.web as w; page = w.page_html(); print(w.__file__); "
        "assert 'function' in page and '.card' in page and 'src=\"app.js\"' not in page"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(site)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(site))  # read from the install, not the tree
