import keras
import numpy as np
from keras import ops
from keras_hub.models import Task

from keras_siglip.models.siglip.siglip_backbone import SigLIPBackbone
from keras_siglip.models.siglip.siglip_preprocessor import SigLIPPreprocessor
from keras_siglip.utils.compiled_forward import compiled_forward
from keras_siglip.utils.fit import BuildOptimizerBeforeFitMixin, ShuffledArraysMixin
from keras_siglip.utils.images import check_raw_images
from keras_siglip.utils.preset import PresetMixin


def class_text_embeddings(backbone, preprocessor, class_names, templates=("{}",), batch_size=256):
    """Class embeddings as big_vision's zero-shot evaluator builds them.

    Each class name is put into every template, embedded, and the normalised
    embeddings are averaged over templates and renormalised.

    Returns:
        `(num_classes, D)` float32 numpy array.
    """
    texts = [template.format(name) for name in class_names for template in templates]
    chunks = []
    for start in range(0, len(texts), batch_size):
        token_ids = preprocessor.pack_texts(texts[start : start + batch_size])
        chunks.append(ops.convert_to_numpy(backbone.encode_texts(token_ids)))
    embeddings = np.concatenate(chunks).reshape(len(class_names), len(templates), -1).mean(1)
    return embeddings / (np.linalg.norm(embeddings, axis=-1, keepdims=True) + 1e-8)


def check_class_names(class_names):
    """Raise unless `class_names` is a non-empty list of distinct, non-blank strings."""
    if isinstance(class_names, str) or not class_names:
        raise ValueError(f"`class_names` must be a non-empty list of label strings; got {class_names!r:.80}.")
    seen = set()
    for name in class_names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"Every class name must be a non-blank string; got {name!r}.")
        if name in seen:
            raise ValueError(f"The class name {name!r} is given twice; each label must be distinct.")
        seen.add(name)


class ClassScores(keras.layers.Layer):
    """Sigmoid probability of each class text for each image.

    Holds the class embeddings `(K, D)` as a non-trainable weight and shares `t`
    and `b` with the backbone's `ContrastiveHead`.

    Call args: image embeddings `(B, D)`, L2-normalised. Returns `(B, K)`.
    """

    def __init__(self, contrastive_head, num_classes, embedding_dim, **kwargs):
        super().__init__(**kwargs)
        self.contrastive_head = contrastive_head
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim

    def build(self, input_shape):
        self.class_embeddings = self.add_weight(
            name="class_embeddings",
            shape=(self.num_classes, self.embedding_dim),
            initializer="zeros",
            trainable=False,
        )

    def call(self, image_embeddings):
        return ops.sigmoid(self.contrastive_head(image_embeddings, self.class_embeddings))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIPZeroShotClassifier(PresetMixin, ShuffledArraysMixin, BuildOptimizerBeforeFitMixin, Task):
    """Zero-shot image classification with a SigLIP model.

    Args:
        backbone: a `SigLIPBackbone`.
        preprocessor: a `SigLIPPreprocessor` (its tokenizer embeds the class
            texts; its image converter prepares images in `predict`).
        class_names: the labels, e.g. `["red circle", "blue square"]`.
        templates: prompt templates with one `{}`; class embeddings are the
            renormalised mean over templates.

    Inputs: raw images `(B, H, W, 3)` through `predict` and `classify`;
    `{"images": preprocessed images}` when calling the model directly. Outputs: `(B, num_classes)` sigmoid
    probabilities, each an independent image-text match probability (they do
    not sum to 1).
    """

    backbone_cls = SigLIPBackbone
    preprocessor_cls = SigLIPPreprocessor

    def __init__(self, backbone, preprocessor, class_names, templates=("{}",), **kwargs):
        check_class_names(class_names)
        templates = (templates,) if isinstance(templates, str) else tuple(templates)
        if any(t.count("{}") != 1 for t in templates):
            raise ValueError(f"Each template needs exactly one '{{}}'; got {templates}.")
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.class_scores = ClassScores(
            backbone.contrastive_head,
            len(class_names),
            backbone.embedding_dim,
            name="class_scores",
        )
        images = keras.Input(shape=(None, None, backbone.vision_encoder.num_channels), name="images")
        probabilities = self.class_scores(backbone.normalize(backbone.vision_encoder(images)))
        super().__init__(inputs={"images": images}, outputs=probabilities, **kwargs)
        # The graph holds only the image tower. On torch, layers set before the
        # functional init are not tracked: set them again so `weights`,
        # `get_weights` and `quantize` include the text tower on every backend.
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.class_names = list(class_names)
        self.templates = templates
        # A task restored from its own preset has no vocabulary yet at this
        # point; its class embeddings come back with the task weights.
        if preprocessor.tokenizer.proto is not None:
            self.class_scores.class_embeddings.assign(
                class_text_embeddings(backbone, preprocessor, self.class_names, templates)
            )

    def classify(self, images, top_k=5):
        """Rank the labels for each image.

        Args:
            images: one raw image `(H, W, 3)` or a list of them (any sizes).
            top_k: how many labels to return per image.

        Returns:
            One list per image of `(label, probability)` pairs, best first.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer; got {top_k!r}.")
        if getattr(images, "ndim", None) == 3 or (
            hasattr(images, "shape") and len(images.shape) == 3
        ):
            images = [images]
        check_raw_images(images, "SigLIPZeroShotClassifier.classify")  # names the bad image's index
        batch = np.stack(
            [ops.convert_to_numpy(self.preprocessor.convert_images(image)) for image in images]
        )
        probabilities = ops.convert_to_numpy(self._classify_forward()({"images": batch}))
        ranked = np.argsort(-probabilities, axis=-1)[:, :top_k]
        return [
            [(self.class_names[k], float(p[k])) for k in order]
            for order, p in zip(ranked, probabilities)
        ]

    def _classify_forward(self):
        """What `classify` runs: the model eagerly on the first call, then
        compiled (`compiled_forward`). Compiling costs 0.5-2 s, more than a
        one-off call (0.1 s eager on TensorFlow and torch); repeated calls then
        take 2.9-11x less time per image at one image per call
        (`python -m benchmarks.zero_shot_latency`)."""
        self._classify_calls = getattr(self, "_classify_calls", 0) + 1
        if self._classify_calls == 1:
            return lambda inputs: self(inputs, training=False)
        if getattr(self, "_compiled_forward", None) is None:
            self._compiled_forward = compiled_forward(self)
        return self._compiled_forward

    def get_config(self):
        config = super().get_config()
        config.update(class_names=self.class_names, templates=list(self.templates))
        return config
