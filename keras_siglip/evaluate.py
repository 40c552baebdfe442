"""Zero-shot classification, image-text retrieval and grounding on data in standard layouts.

    from keras_siglip import evaluate

    evaluate.zero_shot("val/", preset="siglip2_base_patch16_224")   # class folders
    # {"top1": 0.78, "top5": 0.95, "num_images": 50000, "num_classes": 1000, ...}
    evaluate.retrieval("val2017/", "captions_val2017.json", preset=...)
    # {"image_to_text": {1: ..., 5: ..., 10: ...}, "text_to_image": {...}, ...}
    evaluate.grounding("train2014/", "final_refcoco_val.json", preset="my_locca")
    # {"accuracy": 0.81, "mean_iou": 0.72, "no_box": 0, "num_expressions": 10834, ...}

Layouts:
- ImageFolder (torchvision's): one folder per class under the root, images
  anywhere below it; classes in sorted folder order. Class names are the
  folder names, or come from a file: JSON `{"folder": "class name"}`, or text
  with one name per line in sorted folder order (as CLIP's ImageNet names).
- COCO captions: a JSON file `{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}` with `file_name` relative to the images folder.
- RefCOCO / RefCOCO+ / RefCOCOg in COCO-style JSON, in one of two flavours
  (told apart by a top-level `refs` list):
  - MDETR's (also GLIP's) `final_refcoco_{split}.json`: one file per split;
    every entry of `images` is one referring expression `{"id", "file_name",
    "caption", "height", "width"}` (entries of the same picture share
    `file_name`) and has exactly one entry of `annotations` `{"image_id",
    "bbox"}`, the object it refers to.
  - refs: `{"images": [{"id", "file_name", "height", "width"}], "annotations":
    [{"id", "image_id", "bbox"}], "refs": [{"ref_id", "ann_id", "image_id",
    "split", "sentences": [{"sent"}]}]}`, i.e. the `refer` toolkit's
    `instances.json` with its `refs(unc).p` list in the same file; every
    sentence of a ref is one expression, for the box of its `ann_id`. `split`
    ("val", "testA", ...) selects refs; a file holding several splits needs it.
  `bbox` is COCO's `[x, y, width, height]` in pixels (float), converted to
  normalised `[y1, x1, y2, x2] = [y / H, x / W, (y + height) / H, (x + width) / W]`
  with the picture's size `H x W`: `height` / `width` where given (they must
  equal the file's), else read from the file. Sizes are those of the picture
  as displayed (EXIF orientation applied, as `read_image` does). Boxes are
  not clipped to the picture.

Protocol (big_vision's image-text evaluators): class names and templates are
canonicalised (`_` to space, punctuation removed except the `{}` slot, lower
case, single spaces); a class embedding is the mean over templates of the
L2-normalised text embeddings, renormalised; the prediction is the argmax of
the cosine similarity (temperature and bias do not change it). Retrieval
ranks by cosine similarity: Recall@K image->text counts an image as found
when any of its captions ranks in the top K, text->image when a caption's
image does.

Grounding (referring expression comprehension, MDETR's RefCOCO protocol):
one predicted box per expression, correct when its IoU with the referred
object's box is >= 0.5 (Acc@0.5). LocCa predicts with `LocCaCaptioner.ground`
(constrained: always a well-formed box); PaliGemma with the prompt `detect
{expression}` (whitespace runs as one space), its first well-formed detected
box (what `PaliGemmaCausalLM.detect` parses first) or, with none, a miss
(IoU 0). The converters squash pictures to the model's size (no crop), so
normalised coordinates mean the same before and after resizing. IoU is
computed on normalised boxes, and equals the pixel IoU that MDETR computes:
scaling the y axis by H and the x axis by W multiplies every area
(intersection, both boxes, so the union) by H * W, which cancels in the
ratio (up to float rounding).
"""

import json
import os
import re
import string
import sys

import numpy as np

# The 80 prompts of the CLIP paper (Radford et al. 2021) and the bare class name, and
# the paper's best-performing subset: big_vision's `clip_paper` and `clip_best`.
CLIP_PAPER_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.", "{}",
)
TEMPLATE_SETS = {
    "clip_paper": CLIP_PAPER_TEMPLATES,
    "clip_best": ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                  "a {} in a video game.", "art of the {}.", "a photo of the small {}.", "{}"),
    "class_name_only": ("{}",),
}


def canonicalize(text, keep=None):
    """big_vision's text canonicalisation: `_` to space, punctuation removed
    (except occurrences of the string `keep`), lower case, single spaces."""
    text = text.replace("_", " ")
    strip = str.maketrans("", "", string.punctuation)
    parts = text.split(keep) if keep else [text]
    text = (keep or "").join(part.translate(strip) for part in parts)
    return re.sub(r"\s+", " ", text.lower()).strip()


def templates_from(templates):
    """A template set's name or a list of templates -> the canonicalised templates."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(f"unknown template set {templates!r}; choose one of {sorted(TEMPLATE_SETS)} or "
                             "give a list of templates.")
        templates = TEMPLATE_SETS[templates]
    templates = list(templates)
    if not templates or any(not isinstance(t, str) or t.count("{}") != 1 for t in templates):
        raise ValueError("every template needs exactly one '{}' for the class name; got "
                         f"{[t for t in templates if not isinstance(t, str) or t.count('{}') != 1] or 'none'}.")
    return [canonicalize(t, keep="{}") for t in templates]


def image_folder(root, class_names=None):
    """An ImageFolder layout -> `(paths, labels, class_names)`.

    Args:
        root: a folder with one subfolder per class.
        class_names: None (the folder names), a list in sorted folder order, or
            a file: `.json` `{"folder": "name"}`, else one name per line in
            sorted folder order.
    """
    from keras_siglip.search import image_extensions

    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise ValueError(f"{root} is not a folder of class folders.")
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} has no class folders (ImageFolder layout: root/CLASS/IMAGE).")
    extensions = image_extensions()
    paths, labels = [], []
    for label, folder in enumerate(folders):
        found = sorted(os.path.join(parent, name) for parent, _, names in os.walk(os.path.join(root, folder))
                       for name in names if os.path.splitext(name)[1].lower() in extensions)
        if not found:
            raise ValueError(f"the class folder {os.path.join(root, folder)} holds no images.")
        paths += found
        labels += [label] * len(found)
    return paths, np.asarray(labels), _class_names(class_names, folders)


def _class_names(class_names, folders):
    if class_names is None:
        return list(folders)
    if isinstance(class_names, (str, os.PathLike)):
        path = os.fspath(class_names)
        if path.endswith(".json"):
            mapping = _read_json(path)
            if not isinstance(mapping, dict):
                raise ValueError(f"{path} must map class folder names to class names.")
            missing = [d for d in folders if d not in mapping]
            if missing:
                raise ValueError(f"{path} has no name for the class folders {missing[:5]}.")
            return [str(mapping[d]) for d in folders]
        with open(path, encoding="utf-8") as f:
            try:
                class_names = [line.strip() for line in f if line.strip()]
            except UnicodeDecodeError:
                raise ValueError(f"{path} is not UTF-8 text (one class name per line).") from None
    class_names = list(class_names)
    if len(class_names) != len(folders):
        raise ValueError(f"{len(class_names)} class names for {len(folders)} class folders; give one name per "
                         "folder, in sorted folder order.")
    return class_names


def _read_json(path):
    with open(path, "rb") as f:
        try:
            return json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None


def coco_captions(images_dir, captions_file):
    """A COCO captions layout -> `(image paths, captions, caption_to_image)`."""
    images_dir = os.path.abspath(os.fspath(images_dir))
    data = _read_json(captions_file)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{captions_file} is not a COCO captions file (needs 'images' and 'annotations').")
    try:
        position = {image["id"]: i for i, image in enumerate(data["images"])}
        paths = [os.path.join(images_dir, image["file_name"]) for image in data["images"]]
        captions = [a["caption"] for a in data["annotations"]]
        owners = [a["image_id"] for a in data["annotations"]]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{captions_file}: an entry lacks {error} (images need 'id' and 'file_name', "
                         "annotations 'image_id' and 'caption').") from None
    unknown = sorted({o for o in owners if o not in position}, key=str)
    if unknown:
        raise ValueError(f"{captions_file}: captions refer to image ids not in 'images': {unknown[:5]}.")
    if not captions:
        raise ValueError(f"{captions_file} has no captions.")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"{len(missing)} images of {captions_file} are not under {images_dir}, e.g. {missing[0]}.")
    return paths, captions, np.asarray([position[o] for o in owners])


def zero_shot(data_dir, preset="siglip2_shapes_tiny", class_names=None, templates="clip_paper", batch_size=32,
              max_num_patches=None, progress=True, embedder=None):
    """Zero-shot top-1 / top-5 accuracy on an ImageFolder layout.

    Returns:
        dict: `top1`, `top5` (top-min(5, classes)), `num_images`,
        `num_classes`, `num_templates`, `per_class_top1` (list), and
        `predictions` (`(N,)` int) with `labels`.
    """
    from keras_siglip.models.siglip.siglip_zero_shot_classifier import class_text_embeddings
    from keras_siglip.search import Embedder, compile_by_default

    paths, labels, names = image_folder(data_dir, class_names)
    templates = templates_from(templates)
    embedder = embedder or Embedder(preset, max_num_patches, batch_size,
                                    compiled=compile_by_default(len(paths), batch_size))
    classes = class_text_embeddings(embedder.backbone, embedder.preprocessor, [canonicalize(n) for n in names],
                                    templates)
    scores = embedder.embed_files(paths, progress) @ classes.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    per_class = [float(np.mean(top[labels == c, 0] == c)) for c in range(len(names))]
    return {"top1": float(np.mean(top[:, 0] == labels)), "top5": float(np.mean((top == labels[:, None]).any(1))),
            "num_images": len(paths), "num_classes": len(names), "num_templates": len(templates),
            "per_class_top1": per_class, "predictions": top[:, 0], "labels": labels, "class_names": names}


def retrieval(images_dir, captions_file, preset="siglip2_shapes_tiny", batch_size=32, max_num_patches=None,
              ks=(1, 5, 10), progress=True, embedder=None):
    """Image->text and text->image Recall@K on a COCO captions layout.

    Returns:
        dict: `image_to_text` and `text_to_image` (`{k: recall}`),
        `num_images`, `num_captions`.
    """
    from keras_siglip.metrics import retrieval_recall
    from keras_siglip.search import Embedder, compile_by_default

    paths, captions, owners = coco_captions(images_dir, captions_file)
    embedder = embedder or Embedder(preset, max_num_patches, batch_size,
                                    compiled=compile_by_default(len(paths), batch_size))
    texts = np.concatenate([embedder.embed_texts(captions[i:i + 256]) for i in range(0, len(captions), 256)])
    recall = retrieval_recall(embedder.embed_files(paths, progress), texts, owners, ks)
    return {**recall, "num_images": len(paths), "num_captions": len(captions)}



def _image_size(path):
    """`(height, width)` of an image file as `read_image` returns it (EXIF
    orientation applied, before any size reduction), from its header only."""
    from PIL import Image

    from keras_siglip.utils.images import ImageReadError, _orientation

    try:
        with Image.open(path) as image:
            width, height = image.size
            if _orientation(image) in (5, 6, 7, 8):  # a quarter turn: the sides swap
                width, height = height, width
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ImageReadError(f"Cannot read image file {path}: {error}") from None
    return int(height), int(width)


_REFCOCO_KEYS = ("MDETR flavour: images need 'id', 'file_name' and 'caption', annotations 'image_id' and 'bbox'; "
                 "refs flavour: images need 'id' and 'file_name', annotations 'id', 'image_id' and 'bbox', refs "
                 "'ann_id', 'image_id' and 'sentences' of {'sent'}")


def refcoco(images_dir, annotations_file, split=None):
    """A RefCOCO layout (either flavour of the module docstring) ->
    `(paths, sizes, texts, boxes, owners)`.

    Returns:
        `paths`: the M distinct image files; `sizes`: int `(M, 2)` their
        `(height, width)`; `texts`: the N expressions; `boxes`: float64
        `(N, 4)` normalised `[y1, x1, y2, x2]` of the referred objects;
        `owners`: int `(N,)`, each expression's image as an index into `paths`.
    """
    images_dir = os.path.abspath(os.fspath(images_dir))
    data = _read_json(annotations_file)
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("annotations"), list)):
        raise ValueError(f"{annotations_file} is not a RefCOCO file (needs 'images' and 'annotations' lists).")
    flavour = "refs" if "refs" in data else "mdetr"
    if flavour == "mdetr" and not any(isinstance(image, dict) and "caption" in image for image in data["images"]):
        raise ValueError(f"{annotations_file} is in neither RefCOCO flavour: it has no 'refs' list (the refer "
                         "toolkit's refs) and its images no 'caption' (MDETR's final_refcoco_*.json).")
    if flavour == "mdetr" and split is not None:
        raise ValueError(f"{annotations_file} is an MDETR-style file, which holds one split (final_refcoco_"
                         f"{split}.json); split={split!r} selects refs of the refs flavour only: leave it out.")
    try:
        images = {}
        for image in data["images"]:
            if image["id"] in images:
                raise ValueError(f"{annotations_file}: the image id {image['id']!r} occurs twice in 'images'.")
            images[image["id"]] = image
        pairs = (_mdetr_expressions(annotations_file, data, images) if flavour == "mdetr"
                 else _refs_expressions(annotations_file, data, images, split))  # [(image entry, text, bbox)]
        files = [image["file_name"] for image, _, _ in pairs]
    except (KeyError, TypeError) as error:
        raise ValueError(f"{annotations_file}: an entry lacks {error} ({_REFCOCO_KEYS}).") from None
    if not pairs:
        raise ValueError(f"{annotations_file} has no referring expressions"
                         + (f" in split {split!r}." if split is not None else "."))
    bad = [text for _, text, _ in pairs if not isinstance(text, str) or not text.strip()]
    if bad:
        raise ValueError(f"{annotations_file}: {len(bad)} referring expressions are not text or are empty, e.g. "
                         f"{bad[0]!r}.")
    position = {}
    for name in files:
        position.setdefault(name, len(position))
    paths = [os.path.join(images_dir, name) for name in position]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"{len(missing)} images of {annotations_file} are not under {images_dir}, e.g. "
                         f"{missing[0]}.")
    sizes = np.array([_image_size(p) for p in paths], np.int64).reshape(-1, 2)
    owners = np.array([position[name] for name in files], np.int64)
    boxes = np.zeros((len(pairs), 4), np.float64)
    for i, ((image, _, bbox), owner) in enumerate(zip(pairs, owners)):
        height, width = sizes[owner]
        for key, actual in (("height", height), ("width", width)):
            if image.get(key) is not None and image[key] != actual:
                raise ValueError(
                    f"{annotations_file}: image {image['id']!r} ({image['file_name']}) is {image.get('width')}x"
                    f"{image.get('height')} (width x height) in the JSON but {width}x{height} in the file.")
        boxes[i] = _normalised_box(bbox, height, width, annotations_file, image)
    return paths, sizes, [text for _, text, _ in pairs], boxes, owners


def _normalised_box(bbox, height, width, annotations_file, image):
    """COCO `[x, y, w, h]` pixels -> normalised `[y1, x1, y2, x2]`."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        x = y = w = h = float("nan")
    if not np.isfinite([x, y, w, h]).all() or w < 0 or h < 0:
        raise ValueError(f"{annotations_file}: a box of image {image['id']!r} is {bbox!r}, not COCO's [x, y, width, "
                         "height] (finite numbers, width and height >= 0).")
    return [y / height, x / width, (y + h) / height, (x + w) / width]


def _mdetr_expressions(annotations_file, data, images):
    """MDETR's flavour: every image entry is one expression with exactly one annotation."""
    owned = {}
    for annotation in data["annotations"]:
        owned.setdefault(annotation["image_id"], []).append(annotation)
    unknown = sorted((i for i in owned if i not in images), key=str)
    if unknown:
        raise ValueError(f"{annotations_file}: annotations refer to image ids not in 'images': {unknown[:5]}.")
    counts = {i: len(owned.get(i, ())) for i in images}
    wrong = sorted((i for i, n in counts.items() if n != 1), key=str)
    if wrong:
        raise ValueError(f"{annotations_file}: in MDETR's flavour every image entry (one expression) has exactly "
                         f"one annotation; image ids {wrong[:5]} have {[counts[i] for i in wrong[:5]]}.")
    return [(image, image["caption"], owned[i][0]["bbox"]) for i, image in images.items()]


def _refs_expressions(annotations_file, data, images, split):
    """The refs flavour: every sentence of a (selected) ref is one expression."""
    refs = data["refs"]
    if not isinstance(refs, list):
        raise ValueError(f"{annotations_file}: 'refs' must be a list of refs; got {type(refs).__name__}.")
    annotations = {annotation["id"]: annotation for annotation in data["annotations"]}
    splits = sorted({ref["split"] for ref in refs if "split" in ref}, key=str)
    if split is None and len(splits) > 1:
        raise ValueError(f"{annotations_file} holds the splits {splits}; pass split= one of them.")
    if split is not None:
        refs = [ref for ref in refs if ref["split"] == split]
        if not refs:
            raise ValueError(f"{annotations_file} has no refs of split {split!r}; its splits: {splits}.")
    unknown = sorted({ref["image_id"] for ref in refs if ref["image_id"] not in images}, key=str)
    if unknown:
        raise ValueError(f"{annotations_file}: refs refer to image ids not in 'images': {unknown[:5]}.")
    unknown = sorted({ref["ann_id"] for ref in refs if ref["ann_id"] not in annotations}, key=str)
    if unknown:
        raise ValueError(f"{annotations_file}: refs refer to annotation ids not in 'annotations': {unknown[:5]}.")
    elsewhere = [ref["ann_id"] for ref in refs if annotations[ref["ann_id"]]["image_id"] != ref["image_id"]]
    if elsewhere:
        raise ValueError(f"{annotations_file}: the annotations {elsewhere[:5]} belong to other images than their "
                         "refs' image_id.")
    return [(images[ref["image_id"]], sentence["sent"], annotations[ref["ann_id"]]["bbox"])
            for ref in refs for sentence in ref["sentences"]]


def _grounding_model(preset):
    """A LocCa or PaliGemma preset -> its `LocCaCaptioner` / `PaliGemmaCausalLM`."""
    from keras_hub.src.utils.preset_utils import TASK_CONFIG_FILE, check_file_exists, load_json

    from keras_siglip.models import CapPaBackbone, LocCaCaptioner, PaliGemmaBackbone, PaliGemmaCausalLM
    from keras_siglip.utils.preset import preset_loader

    resolved, _, backbone_class = preset_loader(preset)
    if issubclass(backbone_class, PaliGemmaBackbone):
        return PaliGemmaCausalLM.from_preset(resolved)
    name = backbone_class.__name__
    if issubclass(backbone_class, CapPaBackbone):
        if check_file_exists(resolved, TASK_CONFIG_FILE):
            name = load_json(resolved, TASK_CONFIG_FILE)["class_name"]
        if name == "LocCaCaptioner":
            return LocCaCaptioner.from_preset(resolved)
    raise ValueError(f"{preset!r} holds a {name}; grounding evaluates LocCaCaptioner and PaliGemmaCausalLM presets.")


def _check_grounding_model(model):
    from keras_siglip.models import LocCaCaptioner, PaliGemmaCausalLM

    if not isinstance(model, (LocCaCaptioner, PaliGemmaCausalLM)):
        raise ValueError(f"grounding evaluates a LocCaCaptioner or a PaliGemmaCausalLM; got a "
                         f"{type(model).__name__}.")
    converter = getattr(model.preprocessor, "image_converter", None)
    if getattr(converter, "crop_to_aspect_ratio", False):
        raise ValueError("the model's image converter crops pictures to its aspect ratio: normalised boxes of the "
                         "picture would not be those of the model's input (set crop_to_aspect_ratio=False).")
    return isinstance(model, PaliGemmaCausalLM)


def grounding(images_dir, annotations_file, preset=None, split=None, batch_size=32, threshold=0.5,
              max_new_tokens=64, progress=True, model=None):
    """Referring expression comprehension (Acc@0.5, mean IoU) on a RefCOCO layout.

    Args:
        images_dir: the folder `file_name`s are relative to (COCO's
            `train2014/` for RefCOCO, RefCOCO+ and RefCOCOg).
        annotations_file: a JSON file in one of the flavours of the module
            docstring.
        preset: a LocCa or PaliGemma preset (name, folder or URI); or
        model: a `LocCaCaptioner` or `PaliGemmaCausalLM` (exactly one of the two).
        split: refs flavour only: the refs' `split` to evaluate ("val",
            "testA", ...); needed when the file holds several.
        batch_size: expressions per model call. Pictures of one size go
            together (an image converter takes one size per call) and a short
            batch is padded to the same size by repeating its last expression,
            so every call has one shape (one compilation).
        threshold: an expression is correct when IoU >= `threshold`.
        max_new_tokens: PaliGemma: tokens generated, as `detect` (64); LocCa
            generates its 4 location tokens.
        progress: show a progress bar on standard error.

    Returns:
        dict: `accuracy` (fraction with IoU >= threshold), `mean_iou`,
        `no_box` (count of expressions without a box: PaliGemma detected
        nothing well formed, or LocCa's box was not valid), `num_expressions`,
        `num_images`, and per expression `iou` `(N,)`, `predictions` `(N, 4)`
        float32 (NaN rows: no box), `targets` `(N, 4)` and `texts`, in the
        file's order.
    """
    from tqdm.auto import tqdm

    from keras_siglip.layers.boxes import box_iou, grounding_metrics
    from keras_siglip.models.pali_gemma.pali_gemma_outputs import parse_detections
    from keras_siglip.utils.images import read_image

    if (preset is None) == (model is None):
        raise ValueError("Pass exactly one of `preset` (a LocCa or PaliGemma preset) and `model`.")
    if model is not None:
        _check_grounding_model(model)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive number; got {batch_size!r}.")
    paths, sizes, texts, targets, owners = refcoco(images_dir, annotations_file, split)
    model = model if model is not None else _grounding_model(preset)
    pali_gemma = _check_grounding_model(model)

    # Expressions grouped by picture size, then picture: each batch stacks one size, reads each picture once.
    order = sorted(range(len(texts)), key=lambda i: (tuple(sizes[owners[i]]), owners[i], i))
    width = min(int(batch_size), len(texts))
    batches, start = [], 0
    while start < len(order):
        size = tuple(sizes[owners[order[start]]])
        stop = start
        while stop < len(order) and stop - start < width and tuple(sizes[owners[order[stop]]]) == size:
            stop += 1
        batches.append(order[start:stop])
        start = stop
    predicted = [None] * len(texts)
    last = (None, None)  # (image index, pixels): an image's expressions may span two batches
    with tqdm(total=len(texts), unit="expression", desc="grounding", disable=not progress, file=sys.stderr) as bar:
        for batch in batches:
            pixels = []
            for i in batch:
                if last[0] != owners[i]:
                    last = (owners[i], read_image(paths[owners[i]]))
                pixels.append(last[1])
            rows = batch + [batch[-1]] * (width - len(batch))
            pixels = np.stack(pixels + [pixels[-1]] * (width - len(batch)))
            if pali_gemma:
                prompts = [f"detect {' '.join(texts[i].split())}" for i in rows]  # a newline would end the prompt
                outputs = model.generate(pixels, prompts, max_new_tokens=max_new_tokens, output_grammar="detect")
                for i, text in zip(batch, outputs):
                    found = parse_detections(text).boxes
                    predicted[i] = found[0] if len(found) else None
            else:
                boxes, valid = model.ground(pixels, [texts[i] for i in rows])
                for i, box, ok in zip(batch, boxes, valid):
                    predicted[i] = np.asarray(box, np.float32) if ok else None
            bar.update(len(batch))
    metrics = grounding_metrics(predicted, targets, threshold=threshold)
    found = np.array([p is not None for p in predicted], bool)
    boxes = np.array([p if p is not None else np.full(4, np.nan) for p in predicted], np.float32).reshape(-1, 4)
    iou = np.where(found, box_iou(np.where(found[:, None], boxes, 0.0)[:, None].astype(np.float64),
                                  targets[:, None])[:, 0, 0], 0.0)
    return {"accuracy": metrics["accuracy"], "mean_iou": metrics["mean_iou"], "no_box": int((~found).sum()),
            "num_expressions": len(texts), "num_images": len(paths), "iou": iou, "predictions": boxes,
            "targets": targets, "texts": texts}
