"""The web app's routes in-process (FastAPI's test client), on every backend: labels
for an upload equal the zero-shot classifier's, search equals the index's, and
bad requests get a 400 with a message. `integration_tests/test_browser.py` drives
the same app through a real browser."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers import png, shapes_image

PRESET = "siglip2_shapes_tiny"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from keras_siglip.search import ImageIndex

    root = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(["red circle", "red circle", "blue square", "green triangle", "yellow star"] * 2):
        Image.fromarray(shapes_image(name, seed=i)).save(root / f"{i:02d}_{name.replace(' ', '_')}.png")
    ImageIndex.update(root, preset=PRESET, progress=False)
    return root


@pytest.fixture(scope="module")
def client(folder):
    from fastapi.testclient import TestClient

    from keras_siglip.serve import create_app

    return TestClient(create_app(None, index=folder))


def test_page_and_info(client, folder):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="image"', 'id="labels"', 'id="classify"', 'id="query"', 'id="search"', PRESET):
        assert element in page.text
    assert "<script src" not in page.text and "http" not in page.text.split("<script>")[1], "nothing external"
    assert client.get("/api/info").json() == {"preset": PRESET, "index": str(folder / ".keras_siglip_index.sqlite"),
                                             "images": 10}


def test_labels_equal_the_zero_shot_classifier(client):
    from keras_siglip.models import SigLIPBackbone, SigLIPPreprocessor, SigLIPZeroShotClassifier

    image = shapes_image("green triangle", seed=3)
    labels = ["red circle", "blue square", "green triangle", "yellow star"]
    response = client.post("/api/classify", files={"image": ("x.png", png(image), "image/png")},
                           data={"labels": "\n".join(labels) + "\n\n", "template": "a photo of a {}"})
    assert response.status_code == 200, response.text
    got = response.json()["labels"]
    classifier = SigLIPZeroShotClassifier(SigLIPBackbone.from_preset(PRESET), SigLIPPreprocessor.from_preset(PRESET),
                                          class_names=labels, templates=("a photo of a {}",))
    expected = classifier.classify(image, top_k=4)[0]
    assert [row["label"] for row in got] == [label for label, _ in expected]
    np.testing.assert_allclose([row["probability"] for row in got], [p for _, p in expected], atol=1e-5)
    assert got[0]["label"] == "green triangle"


def test_search_equals_the_index_and_serves_its_thumbnails(client, folder):
    from keras_siglip.search import ImageIndex

    response = client.get("/api/search", params={"q": "a photo of a red circle", "k": 4})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    with ImageIndex(folder) as index:
        expected = index.search("a photo of a red circle", k=4)
    assert [r["path"] for r in results] == [p.split("/")[-1] for p, _ in expected]
    np.testing.assert_allclose([r["score"] for r in results], [s for _, s in expected], atol=1e-6)
    assert "red_circle" in results[0]["path"]
    thumbnail = client.get(results[0]["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    picture = Image.open(io.BytesIO(thumbnail.content))
    assert picture.format == "JPEG" and max(picture.size) <= 160
    for number in ("10", "-1", "99999"):
        assert client.get(f"/api/thumbnail/{number}").status_code == 404
    assert client.get("/api/thumbnail/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)


@pytest.mark.parametrize("files, data, message", [
    ({"image": ("x.png", b"not an image", "image/png")}, {"labels": "a\nb"}, "'x.png'"),
    ({"image": ("x.png", b"", "image/png")}, {"labels": "a"}, "empty"),
    ("red", {"labels": " \n "}, "at least one label"),
    ("red", {"labels": "a\na"}, "different"),
    ("red", {"labels": "a", "template": "no slot"}, "exactly one {}"),
])
def test_bad_uploads_get_a_400_with_a_message(client, files, data, message):
    if files == "red":
        files = {"image": ("x.png", png(shapes_image("red circle")), "image/png")}
    response = client.post("/api/classify", files=files, data=data)
    assert response.status_code == 400 and message in response.json()["error"], response.text


def test_bad_searches_get_a_400(client):
    from fastapi.testclient import TestClient

    from keras_siglip.serve import create_app

    assert client.get("/api/search", params={"q": " "}).status_code == 400
    assert client.get("/api/search", params={"q": "x", "k": 0}).status_code == 400
    without_index = TestClient(create_app(PRESET))
    response = without_index.get("/api/search", params={"q": "x"})
    assert response.status_code == 400 and "--index" in response.json()["error"]
    assert 'id="search-section" hidden' in without_index.get("/").text
    with pytest.raises(ValueError, match="built with 'siglip2_shapes_tiny'"):
        create_app("another_preset", index=client.get("/api/info").json()["index"])


def test_serve_command_errors(folder, tmp_path, capsys):
    """Failures before the server starts are one line, exit 1 (usage: 2)."""
    import socket

    from tests.helpers import assert_one_line_error, run_cli

    status, out, err = run_cli(capsys, "serve", "--index", str(tmp_path / "nowhere"))
    assert_one_line_error(status, err, "no such index or folder")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, out, err = run_cli(capsys, "serve", "--index", str(folder), "--port", str(port))
        assert_one_line_error(status, err, f"cannot listen on 127.0.0.1:{port}")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    status, out, err = run_cli(capsys, "serve", "--index", str(folder), "--preset", "another", "--port", str(port))
    assert_one_line_error(status, err, "built with 'siglip2_shapes_tiny', not 'another'")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(capsys, "serve", "--port", "70000")
    assert exit_info.value.code == 2
