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
    assert client.get("/api/info").json() == {
        "preset": PRESET, "model": "SigLIPBackbone", "tasks": ["classify", "search"],
        "index": str(folder / ".keras_siglip_index.sqlite"), "images": 10}
    for section, shown in (("labels", True), ("search", True), ("caption", False), ("detect", False)):
        assert (f'id="{section}-section" hidden' not in page.text) == shown, section


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


@pytest.fixture(scope="module")
def locca(tmp_path_factory):
    from tests.helpers import tiny_captioner_preset

    path = tmp_path_factory.mktemp("locca") / "preset"
    return str(path), tiny_captioner_preset(path, seed=3)


def test_a_locca_preset_captions_and_draws_the_boxes_it_grounds(locca):
    from fastapi.testclient import TestClient

    from keras_siglip.serve import BOX_COLORS, create_app

    preset, model = locca
    client = TestClient(create_app(preset))
    page = client.get("/").text
    for section, shown in (("labels", False), ("search", False), ("caption", True), ("detect", True)):
        assert (f'id="{section}-section" hidden' not in page) == shown, section
    assert client.get("/api/info").json() == {"preset": preset, "model": "LocCaCaptioner",
                                             "tasks": ["caption", "detect"], "index": None, "images": 0}
    image = shapes_image("red circle", seed=1)
    upload = {"image": ("x.png", png(image), "image/png")}
    response = client.post("/api/caption", files=upload)
    assert response.status_code == 200, response.text
    assert response.json() == {"caption": model.caption([image])[0]}

    names = ["a red circle", "two blue squares"]
    response = client.post("/api/detect", files=upload, data={"objects": " ; ".join(names) + " ;"})
    assert response.status_code == 200, response.text
    found = response.json()["objects"]
    boxes, valid = model.ground([image] * 2, names)
    assert valid.all() and [f["label"] for f in found] == names
    np.testing.assert_allclose([f["box"] for f in found], boxes, atol=1e-6)
    # The picture is the upload with each box outlined in its colour; elsewhere untouched.
    head, data = response.json()["image"].split(",")
    assert head == "data:image/png;base64"
    import base64

    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    assert drawn.shape == image.shape
    changed = np.any(drawn != image, axis=-1)
    for (y1, x1, y2, x2), color in zip(boxes, BOX_COLORS):
        top, left = int(y1 * 64), int(x1 * 64)
        assert tuple(drawn[top, left]) == color, (top, left)
    drawn_on = np.zeros_like(changed)  # each box, and its label from its top left corner on
    for y1, x1, y2, x2 in boxes:
        top, left, bottom, right = (int(v * 64) for v in (y1, x1, y2, x2))
        drawn_on[max(top - 3, 0):bottom + 4, max(left - 3, 0):right + 4] = True
        drawn_on[top:top + 16, left:] = True
    assert changed.any() and not changed[~drawn_on].any()


def test_each_model_refuses_the_tasks_it_cannot_do(locca, client):
    from fastapi.testclient import TestClient

    from keras_siglip.serve import create_app

    captioner = TestClient(create_app(locca[0]))
    upload = {"image": ("x.png", png(shapes_image("red circle")), "image/png")}
    cases = [
        (captioner.post("/api/classify", files=upload, data={"labels": "a\nb"}), "does not label"),
        (captioner.post("/api/detect", files=upload, data={"objects": " ; "}), "at least one object"),
        (captioner.post("/api/caption", files={"image": ("x.png", b"not a png", "image/png")}), "'x.png'"),
        (captioner.get("/api/search", params={"q": "a cat"}), "no index"),
        (client.post("/api/caption", files=upload), "does not caption"),
        (client.post("/api/detect", files=upload, data={"objects": "a cat"}), "cannot detect"),
    ]
    for response, words in cases:
        assert response.status_code == 400 and words in response.json()["error"], response.text


def test_a_pali_gemma_preset_captions_and_detects_through_its_prompts(tmp_path):
    from fastapi.testclient import TestClient

    from keras_siglip.serve import create_app
    from tests.helpers import tiny_pali_gemma_preset

    model = tiny_pali_gemma_preset(tmp_path / "pali_gemma", seed=0)
    client = TestClient(create_app(str(tmp_path / "pali_gemma")))
    assert client.get("/api/info").json()["tasks"] == ["caption", "detect"]
    image = shapes_image("blue square", seed=2)
    upload = {"image": ("x.png", png(image), "image/png")}
    response = client.post("/api/caption", files=upload)
    assert response.status_code == 200, response.text
    assert response.json() == {"caption": model.caption([image])[0]}
    response = client.post("/api/detect", files=upload, data={"objects": "a red circle ; two blue squares"})
    assert response.status_code == 200, response.text
    expected = model.detect([image], ["a red circle", "two blue squares"])[0]
    assert [f["label"] for f in response.json()["objects"]] == list(expected.labels)
    np.testing.assert_allclose(np.reshape([f["box"] for f in response.json()["objects"]], (-1, 4)), expected.boxes)


def test_a_preset_the_app_cannot_serve_is_refused(tmp_path):
    from keras_siglip.models import SigLIPVisionEncoder
    from keras_siglip.serve import create_app

    SigLIPVisionEncoder(patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32, image_size=16).save_to_preset(
        str(tmp_path / "tower"))
    with pytest.raises(ValueError, match="holds a SigLIPVisionEncoder; the web app serves SigLIP, CapPa"):
        create_app(str(tmp_path / "tower"))


def test_a_cappa_preset_captions_and_does_not_offer_detection(tmp_path):
    from fastapi.testclient import TestClient

    from keras_siglip.serve import create_app
    from tests.helpers import tiny_captioner_preset

    model = tiny_captioner_preset(tmp_path / "cappa", locca=False, seed=1)
    client = TestClient(create_app(str(tmp_path / "cappa")))
    assert client.get("/api/info").json()["tasks"] == ["caption"]
    page = client.get("/").text
    assert 'id="caption-section" >' in page and 'id="detect-section" hidden' in page
    image = shapes_image("yellow star", seed=5)
    upload = {"image": ("x.png", png(image), "image/png")}
    response = client.post("/api/caption", files=upload)
    assert response.status_code == 200 and response.json() == {"caption": model.generate([image])[0]}
    response = client.post("/api/detect", files=upload, data={"objects": "a yellow star"})
    assert response.status_code == 400 and "cannot detect" in response.json()["error"]
