"""Guide: zero-shot classification and image-text retrieval with a SigLIP preset.

Runs offline on the shipped `siglip2_shapes_tiny` preset and the procedural shapes
data set; swap in any converted SigLIP / SigLIP 2 preset folder for real photos.

    python guides/zero_shot_and_retrieval.py
"""

import numpy as np
from keras import ops

import keras_siglip as ks
from keras_siglip.data import shapes
from keras_siglip.presets import SHIPPED_PRESETS, shipped_metadata

PRESET = "siglip2_shapes_tiny"

# 1. Load the two towers and the matching preprocessing.
backbone = ks.models.SigLIPBackbone.from_preset(PRESET)
preprocessor = ks.models.SigLIPPreprocessor.from_preset(PRESET)

# 2. Zero-shot classification. SigLIP scores every (image, label) pair with an
#    independent sigmoid probability, so probabilities do not sum to one; rank
#    them, or threshold them for multi-label use.
labels = [shapes.with_article(name) for name in shapes.class_names()]
classifier = ks.models.SigLIPZeroShotClassifier(
    backbone, preprocessor, class_names=labels, templates=shapes.PROMPT_TEMPLATES
)
held_out = shapes.ShapesDataset(200, seed=123).arrays()  # a seed never trained on
probabilities = classifier.predict(held_out["images"], batch_size=100, verbose=0)
accuracy = np.mean(probabilities.argmax(-1) == held_out["labels"])
chance = 1 / len(labels)
print(f"zero-shot top-1 over {len(labels)} labels: {accuracy:.1%} (chance {chance:.1%})")
assert accuracy > 20 * chance, f"zero-shot top-1 {accuracy:.1%} is not far above chance {chance:.1%}"
# The preset's card measured it on 500 other held-out images: the two agree within 4 standard
# deviations of their difference (binomial), or the model, its weights or its preprocessing moved.
card = shipped_metadata(SHIPPED_PRESETS[PRESET])["zero_shot_accuracy"]
margin = 4 * np.sqrt(card * (1 - card) * (1 / 200 + 1 / 500))
print(f"  the preset's card: {card:.1%} on 500 images (agreement asserted within {margin:.1%})")
assert abs(accuracy - card) < margin, f"zero-shot top-1 {accuracy:.1%}, the card says {card:.1%}"
for label, p in classifier.classify(held_out["images"][0], top_k=3)[0]:
    print(f"  {p:.3f}  {label}")

# 3. Retrieval: embed images and their captions, then Recall@K both ways.
x = preprocessor({"images": held_out["images"], "texts": held_out["captions"]})
image_embeddings = ops.convert_to_numpy(backbone.encode_images(x["images"]))
text_embeddings = ops.convert_to_numpy(backbone.encode_texts(x["token_ids"]))
recall = ks.metrics.retrieval_recall(
    image_embeddings, text_embeddings, text_to_image=np.arange(200), ks=(1, 5, 10)
)
print("image -> text recall:", recall["image_to_text"])
print("text -> image recall:", recall["text_to_image"])
# Chance Recall@K over 200 candidates is K / 200 (5% at K = 10).
for direction in ("image_to_text", "text_to_image"):
    assert recall[direction][10] > 5 * 10 / 200, (direction, recall[direction])

# 4. The same from files, as with your own data: an ImageFolder layout (one folder per
#    class) for zero-shot accuracy, a COCO captions file for retrieval, and an index of the
#    folder searched by text (`keras-siglip eval zero-shot | eval retrieval | index | search`).
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402

from PIL import Image  # noqa: E402

from keras_siglip import evaluate  # noqa: E402
from keras_siglip.search import ImageIndex  # noqa: E402

names = shapes.class_names()
with tempfile.TemporaryDirectory() as root:
    coco = {"images": [], "annotations": []}
    for i, (image, label, caption) in enumerate(zip(held_out["images"], held_out["labels"], held_out["captions"])):
        path = os.path.join(root, "classes", names[label].replace(" ", "_"), f"{i:03d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.asarray(image, np.uint8)).save(path)
        coco["images"].append({"id": i, "file_name": os.path.relpath(path, root)})
        coco["annotations"].append({"image_id": i, "caption": str(caption)})
    with open(os.path.join(root, "captions.json"), "w") as f:
        json.dump(coco, f)
    with open(os.path.join(root, "class_names.json"), "w") as f:  # folder -> the labels used above
        json.dump({name.replace(" ", "_"): shapes.with_article(name) for name in names}, f)

    folder = evaluate.zero_shot(os.path.join(root, "classes"), PRESET,
                                class_names=os.path.join(root, "class_names.json"),
                                templates=shapes.PROMPT_TEMPLATES, progress=False)
    print(f"from class folders: top-1 {folder['top1']:.1%}, top-5 {folder['top5']:.1%} over the "
          f"{folder['num_classes']} classes present ({folder['num_images']} images)")
    # The same prompts as above, but only the classes present compete, so every image right
    # among all 48 labels stays right: top-1 can only rise.
    assert folder["top1"] >= accuracy - 1e-9, (folder["top1"], accuracy)
    files = evaluate.retrieval(root, os.path.join(root, "captions.json"), PRESET, progress=False)
    print("from a COCO captions file: image -> text", files["image_to_text"], "text -> image", files["text_to_image"])
    # The same pixels (PNG is lossless) and captions: the recalls above, up to a near-tie flipping
    # (the index's compiled forward and the eager one differ by ~1e-6).
    for direction in ("image_to_text", "text_to_image"):
        for k in (1, 5, 10):
            assert abs(files[direction][k] - recall[direction][k]) <= 0.01, (direction, k, files, recall)

    index, report = ImageIndex.update(os.path.join(root, "classes"), preset=PRESET, progress=False)
    hits = index.search("a photo of a red circle", k=5)
    print(f"indexed {report.added} images; 'a photo of a red circle':")
    for path, probability in hits:
        print(f"  {probability:.3f}  {os.path.relpath(path, root)}")
    red_circles = int(np.sum(held_out["labels"] == names.index("red circle")))
    found = sum(os.path.basename(os.path.dirname(p)) == "red_circle" for p, _ in hits[:red_circles])
    # Ranking the index at random would put a red circle among the first min(5, n) with
    # probability n / 200 each; require most of them.
    print(f"  red circles among the first {min(5, red_circles)}: {found} (at random: "
          f"{min(5, red_circles) * red_circles / 200:.2f})")
    assert found >= min(5, red_circles) - 1 and red_circles > 0, (found, red_circles)
    index.close()
