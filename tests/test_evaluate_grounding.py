"""keras_siglip.evaluate.grounding and its RefCOCO reader on generated data in both
flavours (MDETR's final_refcoco_*.json, and COCO JSON with a `refs` list): the
reader's boxes against hand-computed ones, tiny random LocCa and PaliGemma models
against numpy recomputations from `ground` / `detect`, injected predictions at the
IoU threshold, and the errors for bad files and models."""

import json

import numpy as np
import pytest
from PIL import Image

# Pictures `(file, height, width, [(text, colour, x, y, w, h) per object in pixels])`; a.png and c.png have
# one size (one batch), sides differ everywhere so a swapped x / y shows.
PICTURES = [
    ("a.png", 48, 64, [("the red circle", (255, 0, 0), 8, 4, 20, 30), ("two blue squares", (0, 0, 255), 40, 20, 22,
                                                                        26)]),
    ("b.png", 64, 40, [("a small green triangle", (0, 255, 0), 2, 10, 30, 12)]),
    ("c.png", 48, 64, [("a red circle", (255, 0, 0), 0, 0, 64, 16), ("blue squares", (0, 0, 255), 30, 30, 10, 10),
                       ("green triangle", (0, 255, 0), 50, 5, 12, 40)]),
    ("d.png", 30, 36, [("the blue squares", (0, 0, 255), 6, 3, 24, 20)]),
]
# The same boxes normalised by hand: [y / H, x / W, (y + h) / H, (x + w) / W].
EXPECTED = [
    [4 / 48, 8 / 64, 34 / 48, 28 / 64], [20 / 48, 40 / 64, 46 / 48, 62 / 64],
    [10 / 64, 2 / 40, 22 / 64, 32 / 40],
    [0, 0, 16 / 48, 1], [30 / 48, 30 / 64, 40 / 48, 40 / 64], [5 / 48, 50 / 64, 45 / 48, 62 / 64],
    [3 / 30, 6 / 36, 23 / 30, 30 / 36],
]


def objects():
    """`(picture index, text, [x, y, w, h])` per object, in file order."""
    return [(j, text, [x, y, w, h]) for j, (_, _, _, items) in enumerate(PICTURES) for text, _, x, y, w, h in items]


def write_pictures(root):
    for name, height, width, items in PICTURES:
        pixels = np.full((height, width, 3), 128, np.uint8)
        for _, colour, x, y, w, h in items:
            pixels[y:y + h, x:x + w] = colour
        Image.fromarray(pixels).save(root / name)


def mdetr_json(root, bboxes=None, name="refcoco.json"):
    """MDETR's flavour: one image entry (and one annotation) per expression."""
    images, annotations = [], []
    for k, (j, text, bbox) in enumerate(objects()):
        file, height, width, _ = PICTURES[j]
        images.append({"id": 1000 + k, "file_name": file, "height": height, "width": width, "caption": text,
                       "original_img_id": j, "dataset_name": "refcoco"})
        annotations.append({"id": 2000 + k, "image_id": 1000 + k, "bbox": bbox if bboxes is None else bboxes[k],
                            "category_id": 1, "iscrowd": 0})
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    (root / name).write_text(json.dumps(data))
    return data


def refs_json(root, name="refs.json"):
    """The refs flavour: pictures once, refs with two sentences each; the first three refs are 'val'."""
    images = [{"id": 10 + j, "file_name": file, "height": height, "width": width}
              for j, (file, height, width, _) in enumerate(PICTURES)]
    annotations, refs = [], []
    for k, (j, text, bbox) in enumerate(objects()):
        annotations.append({"id": 500 + k, "image_id": 10 + j, "bbox": bbox, "category_id": 1})
        refs.append({"ref_id": k, "ann_id": 500 + k, "image_id": 10 + j, "split": "val" if k < 3 else "testA",
                     "sentences": [{"sent": text, "sent_id": 2 * k}, {"sent": f"{text} here", "sent_id": 2 * k + 1}]})
    data = {"images": images, "annotations": annotations, "refs": refs}
    (root / name).write_text(json.dumps(data))
    return data


def numpy_iou(a, b):
    """IoU of two [y1, x1, y2, x2] boxes, written out."""
    height = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    width = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = height * width
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def pixels_of(root, file):
    return np.asarray(Image.open(root / file).convert("RGB"))


@pytest.fixture(scope="module")
def locca(tmp_path_factory):
    from tests.helpers import tiny_captioner_preset

    path = tmp_path_factory.mktemp("locca") / "preset"
    return str(path), tiny_captioner_preset(path, seed=3)


@pytest.fixture(scope="module")
def pali_gemma(tmp_path_factory):
    from tests.helpers import tiny_pali_gemma_preset

    return tiny_pali_gemma_preset(tmp_path_factory.mktemp("pali_gemma") / "preset", seed=0)


# === The reader ===


def test_reader_boxes_equal_hand_computed_ones_in_both_flavours(tmp_path):
    from keras_siglip.evaluate import refcoco

    write_pictures(tmp_path)
    mdetr_json(tmp_path)
    paths, sizes, texts, boxes, owners = refcoco(tmp_path, tmp_path / "refcoco.json")
    assert [p.rsplit("/", 1)[1] for p in paths] == ["a.png", "b.png", "c.png", "d.png"]  # each file once
    np.testing.assert_array_equal(sizes, [[48, 64], [64, 40], [48, 64], [30, 36]])
    assert texts == [text for _, text, _ in objects()]
    np.testing.assert_array_equal(owners, [0, 0, 1, 2, 2, 2, 3])
    np.testing.assert_allclose(boxes, EXPECTED, rtol=0, atol=1e-15)

    refs_json(tmp_path)
    paths, sizes, texts, boxes, owners = refcoco(tmp_path, tmp_path / "refs.json", split="testA")
    assert texts == [s for _, text, _ in objects()[3:] for s in (text, f"{text} here")]  # every sentence
    np.testing.assert_allclose(boxes, np.repeat(EXPECTED[3:], 2, axis=0), rtol=0, atol=1e-15)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["c.png", "d.png"]
    np.testing.assert_array_equal(owners, [0] * 6 + [1] * 2)
    assert len(refcoco(tmp_path, tmp_path / "refs.json", split="val")[2]) == 6


def test_sizes_come_from_the_files_when_missing_and_follow_exif_orientation(tmp_path):
    from keras_siglip.evaluate import refcoco
    from keras_siglip.utils.images import read_image

    write_pictures(tmp_path)
    # b.jpg: stored 64 wide and 40 high, EXIF orientation 6 (a quarter turn): shown 40 wide, 64 high as b.png.
    stored = np.ascontiguousarray(np.rot90(pixels_of(tmp_path, "b.png"), k=1))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "b.jpg", exif=exif.tobytes(), quality=95)
    assert read_image(tmp_path / "b.jpg").shape == (64, 40, 3)
    data = mdetr_json(tmp_path)
    for image in data["images"]:
        if image["file_name"] == "b.png":
            image["file_name"] = "b.jpg"  # sizes as shown: height 64, width 40, as in the JSON
        if image["file_name"] in ("a.png", "d.png"):
            del image["height"], image["width"]
    (tmp_path / "sizes.json").write_text(json.dumps(data))
    paths, sizes, _, boxes, _ = refcoco(tmp_path, tmp_path / "sizes.json")
    np.testing.assert_array_equal(sizes, [[48, 64], [64, 40], [48, 64], [30, 36]])
    np.testing.assert_allclose(boxes, EXPECTED, rtol=0, atol=1e-15)


def test_iou_of_normalised_boxes_equals_pixel_iou():
    """IoU is invariant to scaling y and x separately: normalised IoU is pixel IoU."""
    from keras_siglip.layers.boxes import box_iou

    rng = np.random.default_rng(0)
    corners = np.sort(rng.uniform(0, 1, (2, 200, 2, 2)), axis=2)  # (box set, N, y/x, low/high)
    a, b = (np.stack([c[:, 0, 0], c[:, 1, 0], c[:, 0, 1], c[:, 1, 1]], -1) for c in corners)
    scale = np.array([480.0, 640.0, 480.0, 640.0])
    normalised = box_iou(a[:, None], b[:, None])[:, 0, 0]
    pixels = box_iou((a * scale)[:, None], (b * scale)[:, None])[:, 0, 0]
    np.testing.assert_allclose(normalised, pixels, rtol=1e-12, atol=1e-15)
    assert normalised.max() > 0.3


# === Models against numpy recomputations ===


def test_locca_grounding_equals_a_numpy_recomputation(tmp_path, locca):
    from keras_siglip import evaluate

    path, model = locca
    write_pictures(tmp_path)
    items = objects()
    # What the model predicts, one expression at a time, on the pictures read by PIL.
    predicted, valid = [], []
    for j, text, _ in items:
        box, ok = model.ground(pixels_of(tmp_path, PICTURES[j][0])[None], [text])
        predicted.append(box[0].astype(np.float64))
        valid.append(bool(ok[0]))
    # Ground truth: the model's own box (in pixels) for every other expression with an area, else the object.
    bboxes, targets = [], []
    for k, ((j, _, bbox), box, ok) in enumerate(zip(items, predicted, valid)):
        height, width = PICTURES[j][1:3]
        if k % 2 == 0 and ok and box[2] > box[0] and box[3] > box[1]:
            bbox = [box[1] * width, box[0] * height, (box[3] - box[1]) * width, (box[2] - box[0]) * height]
        bboxes.append(bbox)
        x, y, w, h = bbox
        targets.append([y / height, x / width, (y + h) / height, (x + w) / width])
    mdetr_json(tmp_path, bboxes)
    result = evaluate.grounding(tmp_path, tmp_path / "refcoco.json", preset=path, batch_size=2, progress=False)
    iou = np.array([numpy_iou(p, t) if ok else 0.0 for p, t, ok in zip(predicted, targets, valid)])
    expected_boxes = np.array([p if ok else np.full(4, np.nan) for p, ok in zip(predicted, valid)])
    np.testing.assert_allclose(result["predictions"], expected_boxes, rtol=0, atol=1e-7)
    np.testing.assert_allclose(result["iou"], iou, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result["targets"], targets, rtol=0, atol=1e-12)
    assert result["accuracy"] == pytest.approx(np.mean(iou >= 0.5), abs=1e-12)
    assert result["mean_iou"] == pytest.approx(iou.mean(), abs=1e-6)
    assert result["no_box"] == len(valid) - sum(valid)
    assert (result["num_expressions"], result["num_images"]) == (7, 4)
    assert result["texts"] == [text for _, text, _ in items]
    assert result["accuracy"] >= 2 / 7, "the expressions whose truth is the model's own box are hits"


def test_pali_gemma_grounding_equals_a_numpy_recomputation(tmp_path, pali_gemma):
    from keras_siglip import evaluate

    write_pictures(tmp_path)
    refs_json(tmp_path)
    result = evaluate.grounding(tmp_path, tmp_path / "refs.json", split="testA", batch_size=3, model=pali_gemma,
                                progress=False)
    texts = [s for _, text, _ in objects()[3:] for s in (text, f"{text} here")]
    files = ["c.png"] * 6 + ["d.png"] * 2
    firsts = []
    for file, text in zip(files, texts):
        found = pali_gemma.detect(pixels_of(tmp_path, file), text)[0]  # its prompt: "detect {text}"
        firsts.append(found.boxes[0].astype(np.float64) if len(found) else None)
    targets = np.repeat(EXPECTED[3:], 2, axis=0)
    iou = np.array([0.0 if p is None else numpy_iou(p, t) for p, t in zip(firsts, targets)])
    expected_boxes = np.array([np.full(4, np.nan) if p is None else p for p in firsts])
    np.testing.assert_allclose(result["predictions"], expected_boxes, rtol=0, atol=1e-7)
    np.testing.assert_allclose(result["iou"], iou, rtol=0, atol=1e-6)
    assert result["accuracy"] == pytest.approx(np.mean(iou >= 0.5), abs=1e-12)
    assert result["mean_iou"] == pytest.approx(iou.mean(), abs=1e-6)
    assert result["no_box"] == sum(p is None for p in firsts)
    assert (result["num_expressions"], result["num_images"], result["texts"]) == (8, 2, texts)


# === The threshold, a missing box, the first box ===


def one_picture_layout(root, texts):
    """One 80 x 100 (H x W) picture, every expression's box its left half: [0, 0, 1, 0.5]."""
    Image.fromarray(np.full((80, 100, 3), 90, np.uint8)).save(root / "p.png")
    images = [{"id": k, "file_name": "p.png", "height": 80, "width": 100, "caption": t} for k, t in enumerate(texts)]
    annotations = [{"id": k, "image_id": k, "bbox": [0, 0, 50, 80]} for k in range(len(texts))]
    (root / "one.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root / "one.json"


def test_threshold_boundary_and_missing_boxes_with_injected_locca_boxes(tmp_path, locca, monkeypatch):
    from keras_siglip import evaluate
    from keras_siglip.models import LocCaCaptioner

    boxes = {"iou 0.49": [0, 0, 1, 0.245], "iou 0.5": [0, 0, 1, 0.25], "iou 0.51": [0, 0, 1, 0.255],
             "no box": None, "iou 1": [0, 0, 1, 0.5]}
    calls = []

    def ground(self, images, texts, constrained=True, **kwargs):
        calls.append(len(texts))
        assert images.shape == (len(texts), 80, 100, 3) and images.dtype == np.uint8 and (images == 90).all()
        out = np.array([boxes[t] or [0, 0, 0, 0] for t in texts], np.float32)
        return out, np.array([boxes[t] is not None for t in texts])

    monkeypatch.setattr(LocCaCaptioner, "ground", ground)
    result = evaluate.grounding(tmp_path, one_picture_layout(tmp_path, list(boxes)), model=locca[1], batch_size=2,
                                progress=False)
    np.testing.assert_allclose(result["iou"], [0.49, 0.5, 0.51, 0, 1], atol=1e-6)
    assert result["iou"][1] == 0.5
    assert result["accuracy"] == pytest.approx(3 / 5, abs=1e-12), "IoU >= 0.5 is a hit, a missing box a miss"
    assert result["mean_iou"] == pytest.approx(0.5, abs=1e-6) and result["no_box"] == 1
    assert np.isnan(result["predictions"][3]).all()
    assert calls == [2, 2, 2], "5 expressions in batches of 2, the last padded"
    strict = evaluate.grounding(tmp_path, tmp_path / "one.json", model=locca[1], threshold=0.505, progress=False)
    assert strict["accuracy"] == pytest.approx(2 / 5, abs=1e-12)


def test_pali_gemma_takes_the_first_well_formed_box(tmp_path, pali_gemma, monkeypatch):
    from keras_siglip import evaluate
    from keras_siglip.models import PaliGemmaCausalLM

    outputs = {
        "half": "<loc0000><loc0000><loc1023><loc1023> half",  # the whole picture: IoU 0.5 exactly
        "nothing": "",
        "first is wrong": "<loc0000><loc0600><loc1023><loc1023> a ; <loc0000><loc0000><loc1023><loc0511> b",
        "first is malformed": "<loc1023><loc0000><loc0000><loc0511> a ; <loc0000><loc0000><loc1023><loc0511> b",
    }

    def generate(self, images, prompts=None, max_new_tokens=None, output_grammar=None, **kwargs):
        assert output_grammar == "detect" and max_new_tokens == 64 and len(images) == len(prompts)
        assert all(p.startswith("detect ") for p in prompts)
        return [outputs[p[len("detect "):]] for p in prompts]

    monkeypatch.setattr(PaliGemmaCausalLM, "generate", generate)
    result = evaluate.grounding(tmp_path, one_picture_layout(tmp_path, list(outputs)), model=pali_gemma,
                                progress=False)
    np.testing.assert_allclose(result["iou"], [0.5, 0, 0, 511 / 1023 / 0.5], atol=1e-6)
    assert result["iou"][0] == 0.5
    assert result["accuracy"] == pytest.approx(2 / 4, abs=1e-12) and result["no_box"] == 1


# === Errors ===


def _set(path, value):
    def change(data):
        *keys, last = path
        target = data
        for key in keys:
            target = target[key]
        target[last] = value
    return change


def _drop(path):
    def change(data):
        *keys, last = path
        target = data
        for key in keys:
            target = target[key]
        del target[last]
    return change


@pytest.mark.parametrize("change, split, error", [
    (_drop(("annotations", 0, "bbox")), None, "lacks 'bbox'"),
    (_drop(("images", 2, "caption")), None, "lacks 'caption'"),
    (_set(("annotations", 1, "image_id"), 999), None, "image ids not in 'images': \\[999\\]"),
    (_set(("images", 6, "file_name"), "missing.png"), None, "1 images of .* are not under .*missing.png"),
    (_set(("images", 2, "height"), 40), None, "is 40x40 \\(width x height\\) in the JSON but 40x64 in the file"),
    (_set(("images", 0, "width"), 48), None, "is 48x48 \\(width x height\\) in the JSON but 64x48 in the file"),
    (_set(("annotations", 3, "bbox"), [1, 2, 3]), None, "not COCO's \\[x, y, width, height\\]"),
    (lambda d: d["annotations"].append({"id": 7, "image_id": 1001, "bbox": [0, 0, 1, 1]}), None,
     "exactly one annotation; image ids \\[1001\\] have \\[2\\]"),
    (lambda d: [image.pop("caption") for image in d["images"]], None, "neither RefCOCO flavour"),
    (lambda d: d.pop("annotations"), None, "not a RefCOCO file"),
    (None, "val", "MDETR-style file"),
])
def test_mdetr_flavour_errors(tmp_path, change, split, error):
    assert_refused(tmp_path, mdetr_json, change, split, error)


def assert_refused(tmp_path, layout, change, split, error):
    """`refcoco` refuses the `layout` JSON after `change`, with `error`."""
    from keras_siglip.evaluate import refcoco

    write_pictures(tmp_path)
    data = layout(tmp_path)
    if change is not None:
        change(data)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=error):
        refcoco(tmp_path, tmp_path / "bad.json", split=split)


@pytest.mark.parametrize("change, split, error", [
    (None, None, "holds the splits \\['testA', 'val'\\]; pass split="),
    (None, "testB", "no refs of split 'testB'; its splits: \\['testA', 'val'\\]"),
    (_set(("refs", 1, "image_id"), 77), "val", "refs refer to image ids not in 'images': \\[77\\]"),
    (_set(("refs", 0, "ann_id"), 88), "val", "annotation ids not in 'annotations': \\[88\\]"),
    (_set(("refs", 0, "image_id"), 12), "val", "the annotations \\[500\\] belong to other images"),
    (_drop(("refs", 0, "sentences")), "val", "lacks 'sentences'"),
    (_drop(("refs", 0, "sentences", 0, "sent")), "val", "lacks 'sent'"),
    (_set(("refs", 0, "sentences", 0, "sent"), ""), "val", "are not text or are empty"),
    (_drop(("annotations", 0, "id")), "val", "lacks 'id'"),
    (_set(("refs",), {}), None, "'refs' must be a list of refs; got dict"),
])
def test_refs_flavour_errors(tmp_path, change, split, error):
    assert_refused(tmp_path, refs_json, change, split, error)


def test_other_models_are_refused(tmp_path, locca, monkeypatch):
    from keras_siglip import evaluate
    from tests.helpers import tiny_captioner_preset

    write_pictures(tmp_path)
    mdetr_json(tmp_path)
    args = (tmp_path, tmp_path / "refcoco.json")
    cappa = tiny_captioner_preset(tmp_path / "cappa", locca=False)  # LocCa's parent class: no `ground`
    with pytest.raises(ValueError, match="LocCaCaptioner or a PaliGemmaCausalLM; got a CapPaCaptioner"):
        evaluate.grounding(*args, model=cappa, progress=False)
    with pytest.raises(ValueError, match="holds a CapPaCaptioner; grounding evaluates LocCaCaptioner"):
        evaluate.grounding(*args, preset=str(tmp_path / "cappa"), progress=False)
    with pytest.raises(ValueError, match="holds a SigLIPBackbone"):
        evaluate.grounding(*args, preset="siglip2_shapes_tiny", progress=False)
    with pytest.raises(ValueError, match="exactly one of `preset`"):
        evaluate.grounding(*args, progress=False)
    with pytest.raises(ValueError, match="exactly one of `preset`"):
        evaluate.grounding(*args, preset=locca[0], model=locca[1], progress=False)
    monkeypatch.setattr(locca[1].preprocessor.image_converter, "crop_to_aspect_ratio", True)
    with pytest.raises(ValueError, match="crops pictures to its aspect ratio"):
        evaluate.grounding(*args, model=locca[1], progress=False)
