"""The search service over HTTP on a real local Ray (one Serve app shared by the module).

References are written here: distances by XOR and bit counting on Python integers, sorted by
(distance, id); image codes by running the model on pixels normalised by hand and packing the
sign bits one by one. The codes directories are built with codes_io, the model directory with
save_model_dir (model.pt and a complete model card), as train and encode write them.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import yaml
from PIL import Image
from shared_helpers import save_model_dir, start_serve_on_loopback

from hashing.models import build
from pipelines.cli import main
from pipelines.codes_io import codes_table, write_codes
from pipelines.search_client import search

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

BITS, SIDE, SHARDS, TOKEN = 16, 28, 3, "s3cret-token"
MODEL_VERSION = "model-v1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INFRA = Path(__file__).resolve().parents[2] / "infra" / "serve" / "hashray-search.yaml"


def brute_force(items: dict[str, bytes], query: bytes, k: int, radius: int | None = None) -> list:
    """First k items within ``radius`` of ``query`` by (distance, id), in the service's words."""
    q = int.from_bytes(query, "little")
    ranked = sorted(
        ((int.from_bytes(code, "little") ^ q).bit_count(), item) for item, code in items.items()
    )
    if radius is not None:
        ranked = [(d, item) for d, item in ranked if d <= radius]
    return [{"id": item, "distance": d} for d, item in ranked[:k]]


def model_code(model: torch.nn.Module, pixels: np.ndarray) -> bytes:
    """Code of one grey image (H x W uint8): scale to [-1, 1], embed, sign bits packed LSB first."""
    x = (torch.from_numpy(pixels.astype(np.float32)) / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        outputs = model.embed(x[None, None])[0]
    signs = [bool(v >= 0) for v in outputs.tolist()]
    return bytes(sum(signs[8 * j + b] << b for b in range(8)) for j in range(len(signs) // 8))


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_version(
    path: Path,
    items: dict[str, bytes],
    *,
    bits: int = BITS,
    model_version: str = MODEL_VERSION,
    parts: int = 2,
) -> str:
    """A codes directory of ``items`` (id -> packed code), rows shuffled, over ``parts`` files."""
    order = np.random.default_rng(len(items)).permutation(sorted(items))
    codes = np.frombuffer(b"".join(items[i] for i in order), dtype=np.uint8).reshape(len(order), -1)
    tables = [
        codes_table(list(order[rows]), codes[rows])
        for rows in np.array_split(np.arange(len(order)), parts)
    ]
    write_codes(
        str(path), tables, bits=bits, metadata={"model_version": model_version, "method": "adsh"}
    )
    return str(path)


def tied_codes(rng: np.random.Generator, prefix: str, n: int, distinct: int, nbytes: int) -> dict:
    """n items drawn from a few distinct codes, so many items share each distance."""
    pool = rng.integers(0, 256, (distinct, nbytes), dtype=np.uint8)
    return {f"{prefix}{i:04d}": pool[rng.integers(distinct)].tobytes() for i in rng.permutation(n)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Version A: 30 model-encoded images + 420 tied random codes; B, and two refusable versions."""
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    model = build("smallcnn", bits=BITS, in_channels=1).eval()
    save_model_dir(model, root / "model", side=SIDE, model_version=MODEL_VERSION)
    rng = np.random.default_rng(7)
    images = {
        f"img/{i:02d}.png": rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8) for i in range(30)
    }
    a = {item: model_code(model, pixels) for item, pixels in images.items()}
    a |= tied_codes(rng, "r-", 420, distinct=24, nbytes=BITS // 8)
    b = tied_codes(rng, "b-", 300, distinct=40, nbytes=BITS // 8)
    return {
        "model_dir": str(root / "model"),
        "model": model,
        "images": images,
        "a": a,
        "b": b,
        "dir_a": write_version(root / "a", a),
        "dir_b": write_version(root / "b", b),
        "dir_24": write_version(root / "bits24", tied_codes(rng, "w-", 20, 5, 3), bits=24),
        "dir_other": write_version(root / "other", b, model_version="another-model"),
        "root": root,
    }


@pytest.fixture(scope="module")
def service(ray_cluster, corpus):
    """The app (3 shards, encoder, token) behind a free loopback port; its base URL."""
    from ray import serve

    from pipelines.serve import ServeArgs, build_app

    url = start_serve_on_loopback()
    args = ServeArgs(
        codes=corpus["dir_a"], model=corpus["model_dir"], shards=SHARDS, api_token=TOKEN
    )
    serve.run(build_app(args), name="hashray-test", route_prefix="/")
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def plain_service(service, corpus):
    """A second app beside the first: no model, no token, 2 shards x 2 replicas, under /plain."""
    from ray import serve

    from pipelines.serve import ServeArgs, build_app

    args = ServeArgs(codes=corpus["dir_b"], shards=2, replicas=2, api_token="")
    serve.run(build_app(args), name="hashray-plain", route_prefix="/plain")
    yield f"{service}/plain"
    serve.delete("hashray-plain")


def post(url: str, path: str, body: dict, headers: dict | None = AUTH) -> requests.Response:
    return requests.post(f"{url}{path}", json=body, headers=headers, timeout=30)


def answer(url: str, body: dict) -> dict:
    response = post(url, "/search", body)
    assert response.status_code == 200, response.text
    return response.json()


def version_of(url: str) -> str:
    return requests.get(f"{url}/info", headers=AUTH, timeout=30).json()["index_version"]


def test_info_and_health(service, corpus):
    health = requests.get(f"{service}/healthz", timeout=30)  # no token needed
    assert health.status_code == 200 and health.json()["status"] == "ok"
    info = requests.get(f"{service}/info", headers=AUTH, timeout=30).json()
    n = len(corpus["a"])
    assert info["bits"] == BITS and info["model_version"] == MODEL_VERSION and info["encoder"]
    assert info["codes_per_shard"] == [
        n * (i + 1) // SHARDS - n * i // SHARDS for i in range(SHARDS)
    ]
    assert info["codes"] == n and info["index_version"] == health.json()["index_version"]
    assert requests.get(f"{service}/docs", timeout=30).status_code == 200
    paths = requests.get(f"{service}/openapi.json", timeout=30).json()["paths"]
    assert {"/search", "/search/image", "/encode", "/info", "/healthz"} <= set(paths)


def test_top_k_and_radius_equal_brute_force(service, corpus):
    items = corpus["a"]
    rng = np.random.default_rng(1)
    queries = [rng.integers(0, 256, BITS // 8, dtype=np.uint8).tobytes() for _ in range(4)]
    queries += [items["img/03.png"], items["r-0007"]]
    per_shard = len(items) // SHARDS  # 150: ks around it need items from several shards
    ks = [1, 7, per_shard - 1, per_shard, per_shard + 1, 2 * per_shard + 3, len(items), 1000]
    for query in queries:
        for k in ks:
            got = answer(service, {"code": query.hex(), "k": k})
            assert got["results"] == brute_force(items, query, k), (query.hex(), k)
            assert got["model_version"] == MODEL_VERSION
        for radius, k in [(0, 1000), (2, 10), (3, 1000), (5, per_shard + 1), (BITS, 1000)]:
            got = answer(service, {"code": query.hex(), "k": k, "radius": radius})
            assert got["results"] == brute_force(items, query, k, radius), (query.hex(), k, radius)
    # ties are real: the answers above cut through groups of equal distance
    distances = [hit["distance"] for hit in brute_force(items, queries[0], len(items))]
    assert max(np.bincount(distances)) > per_shard


def test_query_by_id(service, corpus):
    items = corpus["a"]
    for item in ["r-0011", "img/17.png"]:
        got = answer(service, {"id": item, "k": 200})
        assert got["results"] == brute_force(items, items[item], 200)
        assert {"id": item, "distance": 0} in got["results"]


def test_encode_then_search_finds_the_image(service, corpus, tmp_path):
    for item in ["img/00.png", "img/21.png"]:
        pixels = corpus["images"][item]
        upload = {"file": ("query.png", png(pixels), "image/png")}
        encoded = requests.post(f"{service}/encode", files=upload, headers=AUTH, timeout=30).json()
        assert encoded == {
            "code": model_code(corpus["model"], pixels).hex(),
            "bits": BITS,
            "model_version": MODEL_VERSION,
        }
        response = requests.post(
            f"{service}/search/image", files=upload, data={"k": "1000"}, headers=AUTH, timeout=30
        )
        assert response.status_code == 200, response.text
        got = response.json()
        assert got["code"] == encoded["code"]
        assert got["results"][0]["distance"] == 0
        assert {"id": item, "distance": 0} in got["results"]
        assert got["results"] == brute_force(corpus["a"], corpus["a"][item], 1000)
    path = tmp_path / "query.png"  # the client's image path: k and radius as form fields
    path.write_bytes(png(corpus["images"]["img/09.png"]))
    got = search(service, image=path, k=50, radius=3, token=TOKEN)
    assert got["results"] == brute_force(corpus["a"], corpus["a"]["img/09.png"], 50, radius=3)


def oversize_png() -> bytes:
    """A 5000 x 5000 black PNG: small file, too many pixels."""
    return png(np.zeros((5000, 5000), dtype=np.uint8))


BAD_JSON = [
    ("malformed JSON", b'{"code": "00ff", "k":', 422),
    ("bad hex", {"code": "zz11", "k": 3}, 400),
    ("wrong length", {"code": "00ff00", "k": 3}, 400),
    ("k zero", {"code": "00ff", "k": 0}, 422),
    ("k negative", {"code": "00ff", "k": -4}, 422),
    ("k too large", {"code": "00ff", "k": 1001}, 422),
    ("k not an integer", {"code": "00ff", "k": "10"}, 422),
    ("negative radius", {"code": "00ff", "radius": -1}, 422),
    ("unknown id", {"id": "no-such-item", "k": 3}, 404),
    ("code and id", {"code": "00ff", "id": "r-0001"}, 422),
    ("neither code nor id", {"k": 3}, 422),
    ("unknown field", {"code": "00ff", "top": 3}, 422),
    ("other model version", {"code": "00ff", "model_version": "model-v0"}, 409),
    ("not an object", [1, 2], 422),
]


@pytest.mark.parametrize("case, body, status", BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_bad_search_requests_get_4xx(service, case, body, status):
    if isinstance(body, bytes):
        response = requests.post(
            f"{service}/search",
            data=body,
            timeout=30,
            headers={**AUTH, "Content-Type": "application/json"},
        )
    else:
        response = post(service, "/search", body)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


BAD_UPLOADS = [
    ("not an image", lambda: b"GIF89a but not really", 400),
    ("empty file", lambda: b"", 400),
    ("oversize upload", lambda: b"\0" * (10 * 1024 * 1024 + 1), 413),
    ("far oversize upload", lambda: b"\0" * (12 * 1024 * 1024), 413),
    ("too many pixels", oversize_png, 413),
]


@pytest.mark.parametrize("path", ["/encode", "/search/image"])
@pytest.mark.parametrize("case, make, status", BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_bad_uploads_get_4xx(service, path, case, make, status):
    response = requests.post(
        f"{service}{path}", files={"file": ("x.png", make())}, headers=AUTH, timeout=60
    )
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_streamed_oversize_body_gets_413(service):
    def chunks():  # no Content-Length: the limit has to count the bytes as they arrive
        for _ in range(10):
            yield b" " * 16384

    response = requests.post(
        f"{service}/search",
        data=chunks(),
        timeout=30,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 413 and response.json()["detail"]


def test_bad_upload_forms_get_4xx(service, corpus):
    image = png(corpus["images"]["img/00.png"])
    for data, files in [
        ({"k": "0"}, {"file": image}),
        ({"k": "ten"}, {"file": image}),
        ({"k": "3"}, {"other": image}),
        ({"radius": "-2"}, {"file": image}),
    ]:
        response = requests.post(
            f"{service}/search/image", data=data, files=files, headers=AUTH, timeout=30
        )
        assert response.status_code == 422, (data, response.text)


def test_token_is_enforced(service, corpus):
    body = {"code": "00ff", "k": 3}
    for headers in [
        None,
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ]:
        for method, path, kwargs in [
            ("post", "/search", {"json": body}),
            ("get", "/info", {}),
            ("post", "/encode", {"files": {"file": b"x"}}),
            ("post", "/admin/swap", {"json": {"codes": corpus["dir_b"]}}),
        ]:
            response = requests.request(
                method, f"{service}{path}", headers=headers, timeout=30, **kwargs
            )
            assert response.status_code == 401, (headers, path, response.text)
            assert response.json()["detail"] and response.headers["WWW-Authenticate"] == "Bearer"
    assert requests.get(f"{service}/healthz", timeout=30).status_code == 200


def test_swap_refuses_other_codes(service, corpus):
    live = version_of(service)
    for codes, status in [
        (corpus["dir_24"], 409),
        (corpus["dir_other"], 409),
        (str(corpus["root"] / "missing"), 404),
        ("relative/codes", 400),
    ]:
        response = post(service, "/admin/swap", {"codes": codes})
        assert response.status_code == status, (codes, response.text)
        assert response.json()["detail"]
    assert version_of(service) == live


def test_cli_search(service, corpus, capsys, monkeypatch):
    monkeypatch.setenv("HASHRAY_API_TOKEN", TOKEN)
    query = corpus["a"]["r-0100"]
    assert main(["search", "--code", query.hex(), "--k", "12", "--url", service, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"] == brute_force(corpus["a"], query, 12)
    assert main(["search", "--id", "missing", "--url", service]) == 2
    assert "404" in capsys.readouterr().err


def test_without_model_or_token(plain_service, corpus):
    """Code and id queries only; replicated shards (each replica loads on demand) answer exactly."""
    items = corpus["b"]
    info = requests.get(f"{plain_service}/info", timeout=30).json()
    assert info["encoder"] is False and info["codes_per_shard"] == [150, 150]
    assert info["model_version"] == MODEL_VERSION  # taken from the codes
    for query in [items["b-0003"], bytes([1, 2])]:
        for k in [1, 149, 151, 300]:
            got = post(plain_service, "/search", {"code": query.hex(), "k": k}, headers=None)
            assert got.json()["results"] == brute_force(items, query, k)
    assert post(plain_service, "/search", {"id": "b-0009", "k": 5}, headers=None).json()[
        "results"
    ] == (brute_force(items, items["b-0009"], 5))
    for path in ["/encode", "/search/image"]:
        response = requests.post(f"{plain_service}{path}", files={"file": b"x"}, timeout=30)
        assert response.status_code == 404 and "no model" in response.json()["detail"]
    response = post(plain_service, "/admin/swap", {"codes": corpus["dir_a"]}, headers=None)
    assert response.status_code == 403 and response.json()["detail"]


def test_hot_swap_under_load(service, corpus):
    """Requests stream while the codes swap A -> B (HTTP) -> A (handle): none fails or mixes."""
    from pipelines.serve import swap_codes

    query, k = corpus["a"]["img/05.png"], 160  # k > a shard's rows: every answer spans shards
    expected = {"a": brute_force(corpus["a"], query, k), "b": brute_force(corpus["b"], query, k)}
    assert expected["a"] != expected["b"]
    answers, stop = [], threading.Event()

    def stream():
        with requests.Session() as session:
            while not stop.is_set():
                response = session.post(
                    f"{service}/search",
                    json={"code": query.hex(), "k": k},
                    headers=AUTH,
                    timeout=30,
                )
                answers.append((response.status_code, response.json()))

    def wait_for(count):
        deadline = time.monotonic() + 60
        while len(answers) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    versions = {"a": version_of(service)}
    thread = threading.Thread(target=stream)
    thread.start()
    try:
        wait_for(20)
        swapped = post(service, "/admin/swap", {"codes": corpus["dir_b"]})  # over HTTP
        assert swapped.status_code == 200, swapped.text
        versions["b"] = swapped.json()["index_version"]
        assert swapped.json()["codes"] == len(corpus["b"])
        wait_for(len(answers) + 20)
        assert swap_codes(corpus["dir_a"], "hashray-test")["index_version"] == versions["a"]
        wait_for(len(answers) + 20)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    seen = []
    for _, body in answers:
        name = next(n for n, v in versions.items() if v == body["index_version"])
        assert body["results"] == expected[name]  # wholly one version: ids and distances
        seen.append(name)
    phases = [name for i, name in enumerate(seen) if i == 0 or seen[i - 1] != name]
    assert phases == ["a", "b", "a"], phases


def test_check_deployable_fails_fast(corpus):
    from pipelines.codes_io import IncompleteCodesError
    from pipelines.serve import Refused, ServeArgs, check_deployable

    check_deployable(ServeArgs(codes=corpus["dir_a"], model=corpus["model_dir"]))
    check_deployable(ServeArgs(codes=corpus["dir_24"]))  # without a model any codes will do
    for codes, words in [("dir_24", "24-bit"), ("dir_other", "'another-model'")]:
        with pytest.raises(Refused, match=words):
            check_deployable(ServeArgs(codes=corpus[codes], model=corpus["model_dir"]))
    with pytest.raises(IncompleteCodesError):
        check_deployable(ServeArgs(codes=str(corpus["root"] / "missing")))


def test_serve_config_file_builds_this_app():
    """infra's serve-build YAML is a valid Serve config; its import path and args build this app."""
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    from pipelines import serve as serve_module

    config = ServeDeploySchema.model_validate(yaml.safe_load(INFRA.read_text()))
    (app,) = config.applications
    module, _, name = app.import_path.partition(":")
    assert module == "pipelines.serve"
    # what `serve deploy` does with import_path + args (the ServeArgs annotation validates them)
    built = call_user_app_builder_with_args_if_necessary(getattr(serve_module, name), app.args)
    assert isinstance(built, Application)
    assert app.args["codes"].startswith("s3://") and app.args["shards"] >= 1
