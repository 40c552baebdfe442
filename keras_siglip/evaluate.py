"""Zero-shot classification and image-text retrieval on data in standard layouts.

    from keras_siglip import evaluate

    evaluate.zero_shot("val/", preset="siglip2_base_patch16_224")   # class folders
    # {"top1": 0.78, "top5": 0.95, "num_images": 50000, "num_classes": 1000, ...}
    evaluate.retrieval("val2017/", "captions_val2017.json", preset=...)
    # {"image_to_text": {1: ..., 5: ..., 10: ...}, "text_to_image": {...}, ...}

Layouts:
- ImageFolder (torchvision's): one folder per class under the root, images
  anywhere below it; classes in sorted folder order. Class names are the
  folder names, or come from a file: JSON `{"folder": "class name"}`, or text
  with one name per line in sorted folder order (as CLIP's ImageNet names).
- COCO captions: a JSON file `{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "caption"}]}` with `file_name` relative to the images folder.

Protocol (big_vision's image-text evaluators): class names and templates are
canonicalised (`_` to space, punctuation removed except the `{}` slot, lower
case, single spaces); a class embedding is the mean over templates of the
L2-normalised text embeddings, renormalised; the prediction is the argmax of
the cosine similarity (temperature and bias do not change it). Retrieval
ranks by cosine similarity: Recall@K image->text counts an image as found
when any of its captions ranks in the top K, text->image when a caption's
image does.
"""

import json
import os
import re
import string

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

