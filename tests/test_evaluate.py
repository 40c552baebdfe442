"""keras_siglip.evaluate and `keras-siglip eval`: zero-shot accuracy on an ImageFolder
layout and retrieval recall on a COCO captions layout, against numpy recomputations
from the backbone's public API."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import assert_one_line_error, run_cli

PRESET = "siglip2_shapes_tiny"
CLASSES = {"c_red": "red circle", "c_blue": "blue square", "c_green": "green triangle", "c_yellow": "yellow star"}


@pytest.fixture(scope="module")
def model():
    from keras_siglip.search import Embedder

    return Embedder(PRESET, batch_size=8)


def embed_images_numpy(model, paths):
    from keras import ops

    from keras_siglip.utils.images import read_image

    out = []
    for path in paths:
        x = model.preprocessor.model_images(read_image(path)[None])["images"]
        out.append(ops.convert_to_numpy(model.backbone.encode_images(x))[0])
    return np.stack(out)


def embed_texts_numpy(model, texts):
    from keras import ops

    return ops.convert_to_numpy(model.backbone.encode_texts(model.preprocessor.pack_texts(texts)))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Four classes of shapes images, 5 each (one class with a nested folder); names in JSON."""
    from keras_siglip.data import shapes

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for k, (folder, name) in enumerate(CLASSES.items()):
        for i in range(5):
            attrs = shapes.sample_attributes(rng)
            while shapes.class_label(attrs) != name:  # the generator's own attributes, of this class
                attrs = shapes.sample_attributes(rng)
            image, _, _ = shapes.render(attrs, rng, 64, 64)
            path = root / folder / ("nested" if i == 4 and k == 0 else "") / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    (root / "names.json").write_text(json.dumps(CLASSES))
    return root


def test_zero_shot_equals_a_numpy_recomputation(image_folder, model):
    from keras_siglip import evaluate

    templates = ["a photo of {}", "a drawing of a {}."]
    result = evaluate.zero_shot(image_folder, class_names=image_folder / "names.json", templates=templates,
                                embedder=model, progress=False)
    folders = sorted(CLASSES)
    paths = [str(p) for f in folders for p in sorted((image_folder / f).rglob("*.png"))]
    labels = np.repeat(np.arange(4), 5)
    # The protocol by hand: canonicalised texts, mean of normalised embeddings, renormalised, argmax.
    texts = [t.format(CLASSES[f]).lower().replace(".", "") for f in folders for t in templates]
    classes = embed_texts_numpy(model, texts).reshape(4, 2, -1).mean(1)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    scores = embed_images_numpy(model, paths) @ classes.T
    order = np.argsort(-scores, axis=1)
    np.testing.assert_array_equal(result["predictions"], order[:, 0])
    assert result["top1"] == pytest.approx(np.mean(order[:, 0] == labels), abs=1e-12)
    assert result["top5"] == 1.0  # 4 classes: top-4 always holds the label
    assert (result["num_images"], result["num_classes"], result["num_templates"]) == (20, 4, 2)
    assert result["class_names"] == [CLASSES[f] for f in folders]
    assert result["top1"] >= 0.5, "the shipped model tells these four apart (chance 0.25)"


def test_class_names_from_lines_folders_or_a_list(image_folder):
    from keras_siglip.evaluate import image_folder as read_folder

    folders = sorted(CLASSES)
    (image_folder.parent / "names.txt").write_text("\n".join(CLASSES[f] for f in folders) + "\n\n")
    for names in (image_folder.parent / "names.txt", [CLASSES[f] for f in folders]):
        paths, labels, got = read_folder(image_folder, names)
        assert got == [CLASSES[f] for f in folders] and len(paths) == 20
    assert read_folder(image_folder)[2] == folders
    assert sum(p.endswith("nested/4.png") for p in read_folder(image_folder)[0]) == 1


@pytest.mark.parametrize("names, error", [
    (["one", "two"], "2 class names for 4 class folders"),
    ({"c_red": "x"}, "has no name for the class folders"),
])
def test_class_name_errors(image_folder, tmp_path, names, error):
    from keras_siglip.evaluate import image_folder as read_folder

    path = tmp_path / ("names.json" if isinstance(names, dict) else "names.txt")
    path.write_text(json.dumps(names) if isinstance(names, dict) else "\n".join(names))
    with pytest.raises(ValueError, match=error):
        read_folder(image_folder, path)


def coco_layout(root, count=8):
    """`count` shapes images with 0-3 captions each (image 0 has none), COCO JSON."""
    from keras_siglip.data import shapes

    data = shapes.ShapesDataset(count, seed=11, image_size=64).arrays()
    images, annotations = [], []
    for i, (image, caption) in enumerate(zip(data["images"], data["captions"])):
        Image.fromarray(np.asarray(image, np.uint8)).save(root / f"{i:03d}.jpg", quality=95)
        images.append({"id": 100 + i, "file_name": f"{i:03d}.jpg"})
        caption = caption.decode() if isinstance(caption, bytes) else str(caption)
        for j in range(i % 4):
            annotations.append({"id": len(annotations), "image_id": 100 + i, "caption": caption if j == 0 else
                                f"{caption} in a picture"})
    (root / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return images, annotations


def test_retrieval_equals_a_numpy_recomputation(tmp_path, model):
    from keras_siglip import evaluate

    images, annotations = coco_layout(tmp_path)
    result = evaluate.retrieval(tmp_path, tmp_path / "captions.json", embedder=model, progress=False)
    image_emb = embed_images_numpy(model, [str(tmp_path / im["file_name"]) for im in images])
    text_emb = embed_texts_numpy(model, [a["caption"] for a in annotations])
    owner = np.array([a["image_id"] - 100 for a in annotations])
    similarity = image_emb @ text_emb.T
    for k in (1, 5, 10):
        found = []
        for i in range(len(images)):
            mine = np.flatnonzero(owner == i)
            if len(mine):
                ranked = list(np.argsort(-similarity[i]))
                found.append(min(ranked.index(t) for t in mine) < k)
        assert result["image_to_text"][k] == pytest.approx(np.mean(found), abs=1e-12)
        hits = [list(np.argsort(-similarity[:, t])).index(owner[t]) < k for t in range(len(owner))]
        assert result["text_to_image"][k] == pytest.approx(np.mean(hits), abs=1e-12)
    assert (result["num_images"], result["num_captions"]) == (8, len(annotations))
    assert result["text_to_image"][10] == 1.0 and result["text_to_image"][1] > 1 / 8, "above chance (1/8)"


@pytest.mark.parametrize("change, error", [
    (lambda d: d["annotations"].append({"image_id": 999, "caption": "x"}), "image ids not in 'images': \\[999\\]"),
    (lambda d: d["images"].append({"id": 5, "file_name": "missing.jpg"}), "are not under"),
    (lambda d: d.pop("annotations"), "not a COCO captions file"),
    (lambda d: d["images"][0].pop("file_name"), "lacks 'file_name'"),
])
def test_coco_layout_errors(tmp_path, change, error):
    from keras_siglip.evaluate import coco_captions

    coco_layout(tmp_path, count=4)
    data = json.loads((tmp_path / "captions.json").read_text())
    change(data)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=error):
        coco_captions(tmp_path, tmp_path / "bad.json")


def test_canonicalize_and_templates():
    from keras_siglip.evaluate import TEMPLATE_SETS, canonicalize, templates_from

    assert canonicalize("Great_White  Shark, (adult)!") == "great white shark adult"
    assert canonicalize("A photo of {}.", keep="{}") == "a photo of {}"
    assert len(TEMPLATE_SETS["clip_paper"]) == 81 and len(set(TEMPLATE_SETS["clip_paper"])) == 81
    assert templates_from("clip_best")[0] == "itap of a {}"
    with pytest.raises(ValueError, match="unknown template set"):
        templates_from("clip")
    with pytest.raises(ValueError, match="exactly one"):
        templates_from(["no slot"])


def test_command_line(image_folder, tmp_path, capsys):
    status, out, err = run_cli(capsys, "eval", "zero-shot", "--data", str(image_folder), "--class-names",
                               str(image_folder / "names.json"), "--templates", "a photo of {}")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "20 images, 4 classes, 1 templates" and lines[1].startswith("top-1 ")
    assert lines[2] == "top-4 100.00%"
    coco_layout(tmp_path)
    status, out, err = run_cli(capsys, "eval", "retrieval", "--images", str(tmp_path), "--captions",
                               str(tmp_path / "captions.json"))
    assert status == 0 and out.splitlines()[0].startswith("8 images, ") and "R@10 100.00%" in out, err
    for args, words in [
        (("eval", "zero-shot", "--data", str(tmp_path / "nowhere")), ("is not a folder",)),
        (("eval", "zero-shot", "--data", str(image_folder), "--templates", "clip"), ("unknown template set",)),
        (("eval", "retrieval", "--images", str(tmp_path), "--captions", str(tmp_path / "000.jpg")),
         ("not valid JSON",)),
        (("eval", "retrieval", "--images", str(tmp_path), "--captions", str(tmp_path / "none.json")),
         ("No such file", "none.json")),
    ]:
        status, out, err = run_cli(capsys, *args)
        assert_one_line_error(status, err, *words)
