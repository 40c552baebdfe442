"""Three Towers (3T): contrastive learning with a frozen pretrained third tower.

Kossen et al., "Three Towers: Flexible Contrastive Learning with Pretrained Image
Models", NeurIPS 2023 (arXiv 2305.16999). LiT replaces the image tower by frozen
pretrained embeddings; 3T keeps a trainable image tower `f` and text tower `g`
(trained contrastively, here from scratch or from any init) and adds a third
tower `h`: the frozen pretrained image model followed by a learnable linear
head. Linear heads `f_h`, `g_h` on the main towers map their embeddings into the
space where they are aligned with `h`. The loss is

    L_3T = w_0 L(f, g) + w_1 L(f_h, h) + w_2 L(g_h, h),

each term a contrastive loss with its own learnable temperature (and, for the
sigmoid form, bias). At inference `f` and `g` are a two-tower model
(`encode_images` / `encode_texts`); the paper also combines them with the third
tower at inference, a convex combination of the two similarities weighted by
`w` (`combined_similarity`; `encode_images_combined` / `encode_texts_combined`
give embeddings whose dot product is that combination; the form, a convex
combination of the two cosine similarities, is our reading: UNCONFIRMED).

What is from the paper and what is a choice made here
-----------------------------------------------------
Searches of public copies of the paper found its abstract and introduction
(arXiv / OpenReview / Hugging Face paper pages and a full-text extract whose
reachable part ends in the introduction), not the method section, and no
public code (big_vision has no 3T). Confirmed there: the three towers, the
frozen pretrained embeddings in the third tower, contrastive alignment of the
third tower with *both* main towers, LiT and a CLIP-style from-scratch model
as baselines. The formula-level items below follow our reading of the method
section and stay UNCONFIRMED (as in the project's reference notes):

- Equal weights, `L_3T = (1/3) [L(f, g) + L(f_h, h) + L(g_h, h)]`
  (UNCONFIRMED; `term_weights` changes them).
- Separate linear heads `f_h`, `g_h` for the alignment terms, and a learnable
  linear head on the frozen embeddings (UNCONFIRMED; `alignment_dim` sets the
  heads' width, `third_tower_head=False` aligns to the raw frozen embeddings).
- The paper's terms are CLIP (softmax) losses, each with its own learned
  temperature (UNCONFIRMED). `contrastive_loss="softmax"` is that form
  (temperature init 1/0.07, CLIP's); `contrastive_loss="sigmoid"` (the default:
  the SigLIP loss, `t`, `b` starting at log 10 / -10 in every term) is this
  package's choice, as every contrastive model here trains with it.
- Choices made here: the heads read the towers' final embeddings (before L2
  normalisation) and the alignment embeddings are L2-normalised like the main
  ones; the frozen embeddings may be precomputed once
  (`third_tower_input="third_tower_embeddings"`), the same objective at a
  lower cost when the third tower sees un-augmented images.

The loss terms reuse the package's one sigmoid loss (`keras_siglip.losses.
SigmoidLoss`) and one softmax loss (`keras_siglip.losses.softmax`).
"""

import os

import keras
import numpy as np
from keras import ops
from keras_hub.models import Backbone

from keras_siglip.layers.contrastive import ContrastiveHead, L2Normalize, l2_normalize
from keras_siglip.losses.sigmoid import SigmoidLoss, sigmoid_labels
from keras_siglip.losses.softmax import softmax_loss_from_logits
from keras_siglip.models.siglip.siglip_vision_encoder import image_inputs
from keras_siglip.optimizers import SigLIPAdamW
from keras_siglip.utils.fit import BuildOptimizerBeforeFitMixin
from keras_siglip.utils.preset import PresetMixin
from keras_siglip.utils.tensors import ArrayChecksMixin, check_token_ids

LOSS_TYPES = ("sigmoid", "softmax")
THIRD_TOWER_INPUTS = ("images", "third_tower_images", "third_tower_embeddings")
TERM_NAMES = ("contrastive_loss", "image_alignment_loss", "text_alignment_loss")
# Initial exp(t) and b per loss form: SigLIP from scratch, and CLIP's 1 / 0.07.
_INITS = {"sigmoid": (10.0, -10.0), "softmax": (1.0 / 0.07, 0.0)}


def three_towers_loss(logits, contrastive_loss="sigmoid", term_weights=(1 / 3, 1 / 3, 1 / 3)):
    """The 3T objective from the three `(B, B)` logit matrices.

    Args:
        logits: `(main, image_alignment, text_alignment)`: image-text logits,
            image-head vs third-tower logits, text-head vs third-tower logits;
            each `exp(t) * cos + b` with its own `t`, `b`; pair `(i, i)` matches.
        contrastive_loss: `"sigmoid"` (SigLIP: summed over columns, mean over
            rows) or `"softmax"` (CLIP: mean of the row and column
            cross-entropies; the bias cancels).
        term_weights: the three weights.

    Returns:
        `(total, terms)`: the weighted sum and the three unweighted terms.
    """
    if contrastive_loss not in LOSS_TYPES:
        raise ValueError(f"contrastive_loss must be one of {LOSS_TYPES}; got {contrastive_loss!r}.")
    if contrastive_loss == "sigmoid":
        loss_fn = SigmoidLoss()

        def term(x):
            return loss_fn(sigmoid_labels(ops.shape(x)[0], x.dtype), x)
    else:
        term = softmax_loss_from_logits
    terms = tuple(term(x) for x in logits)
    total = sum(w * t for w, t in zip(term_weights, terms))
    return total, terms


def _check_weight(weight):
    weight = float(weight)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"third_tower_weight must be in [0, 1]; got {weight}.")
    return weight


def resolve_third_tower(third_tower):
    """The frozen model of a 3T third tower from what a user gives.

    A preset name / folder / URI loads that preset (a two-tower preset gives its
    image tower); a two-tower model (anything with `vision_encoder`) gives its
    image tower; any other Keras model (or layer) is used as it is.
    """
    if isinstance(third_tower, (str, os.PathLike)):
        from keras_siglip.utils.preset import preset_loader

        preset, _, backbone_class = preset_loader(third_tower)
        third_tower = backbone_class.from_preset(preset)
    if hasattr(third_tower, "vision_encoder"):
        third_tower = third_tower.vision_encoder
    if not isinstance(third_tower, keras.layers.Layer):
        raise TypeError(
            "`third_tower` must be a Keras model (or layer), a SigLIP vision encoder or "
            f"two-tower model, or a preset name; got {type(third_tower).__name__}."
        )
    return third_tower


def precompute_third_tower_embeddings(third_tower, images, batch_size=256):
    """Run a (frozen) third tower once over `images`: `(N, D)` numpy embeddings
    for a `ThreeTowersBackbone(..., third_tower_input="third_tower_embeddings")`,
    which then never runs the pretrained model while training.

    `third_tower` is anything `ThreeTowersBackbone` takes as one (a preset name,
    a SigLIP model, any Keras model); a Keras model runs with its compiled
    `predict`, in inference mode.
    """
    model = resolve_third_tower(third_tower)
    if isinstance(model, keras.Model):
        return np.asarray(model.predict(images, batch_size=batch_size, verbose=0))
    outputs = [
        ops.convert_to_numpy(model(images[start : start + batch_size], training=False))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs, axis=0)


@keras.saving.register_keras_serializable(package="keras_siglip")
class FrozenTower(keras.layers.Layer):
    """A pretrained model whose weights never train: always called in inference
    mode (no dropout, no batch-statistics updates) and behind a stop-gradient.

    The wrapped model's weights are non-trainable, and stay so when a parent
    model is set `trainable = True`; they are saved and loaded with the layer.
    """

    def __init__(self, tower, **kwargs):
        kwargs["trainable"] = False
        super().__init__(**kwargs)
        self.tower = tower
        self.tower.trainable = False

    @property
    def trainable(self):
        return False

    @trainable.setter
    def trainable(self, value):
        # Ignore `True`: a parent's `trainable = True` must not unfreeze the tower.
        self._trainable = False
        for layer in getattr(self, "_layers", []):
            layer.trainable = False

    def call(self, inputs):
        outputs = self.tower(inputs, training=False)
        if isinstance(outputs, dict) or isinstance(outputs, (list, tuple)):
            raise ValueError(
                "The third tower must return one `(B, D)` embedding tensor; it returned a "
                f"{type(outputs).__name__}. Wrap it so that it returns the image embedding."
            )
        return ops.stop_gradient(outputs)

    def compute_output_shape(self, input_shape):
        return self.tower.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "tower": keras.saving.serialize_keras_object(self.tower)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["tower"] = keras.saving.deserialize_keras_object(config["tower"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_siglip")
class ThreeTowersBackbone(ArrayChecksMixin, PresetMixin, BuildOptimizerBeforeFitMixin, Backbone):
    """Three Towers (3T): trainable image and text towers plus a frozen third tower.

    Args:
        vision_encoder: the trainable image tower `f` (a `SigLIPVisionEncoder`,
            input format "images").
        text_encoder: the trainable text tower `g` (a `SigLIPTextEncoder`) whose
            output width equals the image embedding width.
        third_tower: the frozen pretrained image model `h`: a preset name,
            folder or URI (its image tower), a `SigLIPVisionEncoder` /
            `SigLIPBackbone`, or any Keras model mapping images to `(B, D_h)`.
            None with `third_tower_input="third_tower_embeddings"`.
        third_tower_input: what the third tower reads:
            `"images"`: the main `"images"` input (same preprocessing);
            `"third_tower_images"`: its own input `"third_tower_images"` (its
            own resolution / preprocessing; the model must have one input);
            `"third_tower_embeddings"`: precomputed frozen embeddings
            `(B, D_h)` under the key `"third_tower_embeddings"`
            (`precompute_third_tower_embeddings`); no pretrained model runs.
        third_tower_dim: `D_h`; needed only for precomputed embeddings
            without a model.
        alignment_dim: width of the alignment heads (default: the main
            embedding width; with `third_tower_head=False`, `D_h`).
        third_tower_head: a learnable linear head on the frozen embeddings.
        contrastive_loss: `"sigmoid"` (SigLIP) or `"softmax"` (CLIP) for all
            three terms.
        term_weights: weights of the (image-text, image-third,
            text-third) terms; default 1/3 each.
        temperature_init, bias_init: initial `exp(t)` and `b` of every term
            (default 10 / -10 for sigmoid, 1/0.07 / 0 for softmax).

    Inputs: `{"images": (B, H, W, C) in [-1, 1], "token_ids": (B, L) int}`,
    plus `"third_tower_images"` or `"third_tower_embeddings"` as set by
    `third_tower_input`.

    Outputs: `"image_embeddings"`, `"text_embeddings"` (main towers,
    L2-normalised), `"logits"` (image-text), `"image_alignment_embeddings"`,
    `"text_alignment_embeddings"`, `"third_tower_embeddings"` (alignment
    space, L2-normalised), `"image_alignment_logits"`,
    `"text_alignment_logits"` (`(B, B)`, against the third tower).

    `fit` trains with the 3T loss of the one forward pass and logs each
    unweighted term (`contrastive_loss`, `image_alignment_loss`,
    `text_alignment_loss`); `y` is not used (pair `i` matches pair `i`).
    """

    def __init__(
        self,
        vision_encoder,
        text_encoder,
        third_tower=None,
        third_tower_input="images",
        third_tower_dim=None,
        alignment_dim=None,
        third_tower_head=True,
        contrastive_loss="sigmoid",
        term_weights=(1 / 3, 1 / 3, 1 / 3),
        temperature_init=None,
        bias_init=None,
        dtype=None,
        **kwargs,
    ):
        if contrastive_loss not in LOSS_TYPES:
            raise ValueError(f"contrastive_loss must be one of {LOSS_TYPES}; got {contrastive_loss!r}.")
        if third_tower_input not in THIRD_TOWER_INPUTS:
            raise ValueError(f"third_tower_input must be one of {THIRD_TOWER_INPUTS}; got {third_tower_input!r}.")
        term_weights = tuple(float(w) for w in term_weights)
        if len(term_weights) != 3 or min(term_weights) < 0:
            raise ValueError(f"term_weights must be three non-negative numbers; got {term_weights!r}.")
        if vision_encoder.output_dim != text_encoder.output_dim:
            raise ValueError(
                f"The image embedding width ({vision_encoder.output_dim}) and text embedding width "
                f"({text_encoder.output_dim}) differ; give the text encoder a head (`num_classes`) "
                "of the image width."
            )
        if getattr(vision_encoder, "input_format", "images") != "images":
            raise ValueError("ThreeTowersBackbone takes an image tower with input_format='images'.")
        embeddings_input = third_tower_input == "third_tower_embeddings"
        if third_tower is None and not embeddings_input:
            raise ValueError(
                "Give a `third_tower` (a preset name or a Keras model), or pass "
                "third_tower_input='third_tower_embeddings' and `third_tower_dim` for precomputed embeddings."
            )
        if third_tower is not None and embeddings_input:
            raise ValueError(
                "With precomputed third-tower embeddings the model holds no third tower; pass "
                "third_tower=None and third_tower_dim, and compute the embeddings with "
                "`precompute_third_tower_embeddings(third_tower, images)`."
            )
        frozen = None
        if third_tower is not None:
            third_tower = resolve_third_tower(third_tower)
            frozen = FrozenTower(third_tower, name="third_tower", dtype=dtype)
        temperature_default, bias_default = _INITS[contrastive_loss]
        temperature_init = temperature_default if temperature_init is None else float(temperature_init)
        bias_init = bias_default if bias_init is None else float(bias_init)

        # Inputs.
        channels = vision_encoder.num_channels
        inputs = dict(image_inputs("images", vision_encoder.patch_size, channels))
        inputs["token_ids"] = keras.Input(
            shape=(text_encoder.sequence_length,), dtype="int32", name="token_ids"
        )
        if third_tower_input == "images":
            third_images = inputs["images"]
        elif third_tower_input == "third_tower_images":
            tower_inputs = getattr(third_tower, "inputs", None)
            if not tower_inputs or len(tower_inputs) != 1:
                raise ValueError(
                    "third_tower_input='third_tower_images' needs a third tower with one input "
                    "(a functional Keras model) to know its input shape."
                )
            third_images = keras.Input(shape=tuple(tower_inputs[0].shape[1:]), name="third_tower_images")
            inputs["third_tower_images"] = third_images
        if embeddings_input:
            if third_tower_dim is None:
                raise ValueError("Precomputed third-tower embeddings need `third_tower_dim`.")
            frozen_features = keras.Input(shape=(int(third_tower_dim),), name="third_tower_embeddings")
            inputs["third_tower_embeddings"] = frozen_features
        else:
            frozen_features = frozen(third_images)
            if len(frozen_features.shape) != 2:
                raise ValueError(
                    f"The third tower must return `(B, D)` embeddings; it returns shape {frozen_features.shape}."
                )
        third_tower_dim = int(frozen_features.shape[-1])
        embedding_dim = vision_encoder.output_dim
        if alignment_dim is None:
            alignment_dim = embedding_dim if third_tower_head else third_tower_dim
        if not third_tower_head and alignment_dim != third_tower_dim:
            raise ValueError(
                f"Without a third-tower head the alignment width must be the third tower's ({third_tower_dim}); "
                f"got alignment_dim={alignment_dim}."
            )

        # Layers.
        self.vision_encoder = vision_encoder
        self.text_encoder = text_encoder
        self.third_tower = frozen
        self.normalize = L2Normalize(name="normalize", dtype=dtype)
        self.image_alignment_head = keras.layers.Dense(alignment_dim, name="image_alignment_head", dtype=dtype)
        self.text_alignment_head = keras.layers.Dense(alignment_dim, name="text_alignment_head", dtype=dtype)
        self.third_tower_head = (
            keras.layers.Dense(alignment_dim, name="third_tower_head", dtype=dtype) if third_tower_head else None
        )
        heads = [
            ContrastiveHead(temperature_init, bias_init, name=name, dtype=dtype)
            for name in ("contrastive_head", "image_alignment_contrastive_head", "text_alignment_contrastive_head")
        ]
        self.contrastive_head, self.image_alignment_contrastive_head, self.text_alignment_contrastive_head = heads

        # Graph.
        image_features = vision_encoder(inputs["images"])
        text_features = text_encoder(inputs["token_ids"])
        image_embeddings = self.normalize(image_features)
        text_embeddings = self.normalize(text_features)
        third = self.third_tower_head(frozen_features) if self.third_tower_head is not None else frozen_features
        third_embeddings = self.normalize(third)
        image_alignment = self.normalize(self.image_alignment_head(image_features))
        text_alignment = self.normalize(self.text_alignment_head(text_features))
        outputs = {
            "image_embeddings": image_embeddings,
            "text_embeddings": text_embeddings,
            "logits": self.contrastive_head(image_embeddings, text_embeddings),
            "image_alignment_embeddings": image_alignment,
            "text_alignment_embeddings": text_alignment,
            "third_tower_embeddings": third_embeddings,
            "image_alignment_logits": self.image_alignment_contrastive_head(image_alignment, third_embeddings),
            "text_alignment_logits": self.text_alignment_contrastive_head(text_alignment, third_embeddings),
        }
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self.third_tower_input = third_tower_input
        self.third_tower_dim = third_tower_dim
        self.alignment_dim = int(alignment_dim)
        self.use_third_tower_head = bool(third_tower_head)
        self.contrastive_loss = contrastive_loss
        self.term_weights = term_weights
        self.temperature_init = temperature_init
        self.bias_init = bias_init
        self.loss_trackers = [keras.metrics.Mean(name=name) for name in TERM_NAMES]

    # Inference: the main towers only, as in a two-tower model.
    @property
    def embedding_dim(self):
        return self.vision_encoder.output_dim

    def encode_images(self, images):
        """`(B, H, W, C)` preprocessed images -> `(B, D)` L2-normalised embeddings
        of the trained image tower `f`."""
        return l2_normalize(self.vision_encoder(images))

    def encode_texts(self, token_ids):
        """`(B, L)` token ids -> `(B, D)` L2-normalised embeddings of `g`."""
        return l2_normalize(self.text_encoder(token_ids))

    # Inference with the third tower: a convex combination of the main towers'
    # similarity and the third tower's, through the text tower's alignment head.
    def encode_third_tower(self, third_tower_inputs):
        """The frozen tower's embeddings in the alignment space, `(B, A)`, L2-normalised.

        `third_tower_inputs`: what the third tower reads (`third_tower_input`):
        `(B, H, W, C)` images (the main images, or its own), or `(B, D_h)`
        precomputed frozen embeddings.
        """
        features = third_tower_inputs
        if self.third_tower_input != "third_tower_embeddings":
            features = self.third_tower(third_tower_inputs)
        elif tuple(features.shape[1:]) != (self.third_tower_dim,):
            raise ValueError(
                f"Precomputed third-tower embeddings must have shape (B, {self.third_tower_dim}); "
                f"got {tuple(features.shape)}."
            )
        if self.third_tower_head is not None:
            features = self.third_tower_head(features)
        return l2_normalize(features)

    def encode_images_combined(self, images, third_tower_weight, third_tower_inputs=None):
        """`[sqrt(1 - w) f(x), sqrt(w) h(x)]`, `(B, D + A)`: image embeddings whose
        dot product with `encode_texts_combined(t, w)` is the combined similarity
        `(1 - w) cos(f(x), g(t)) + w cos(h(x), g_h(t))` (`combined_similarity`),
        so an index or a zero-shot classifier uses it as it is.

        Args:
            images: `(B, H, W, C)` preprocessed images for the main tower.
            third_tower_weight: `w` in [0, 1]; 0 is the two-tower model,
                1 the frozen tower with the text tower's alignment head
                (a LiT-like model).
            third_tower_inputs: what the third tower reads, when it is not
                `images` (`third_tower_input` "third_tower_images" or
                "third_tower_embeddings").
        """
        weight = _check_weight(third_tower_weight)
        if third_tower_inputs is None:
            if self.third_tower_input != "images":
                raise ValueError(
                    f"This model's third tower reads {self.third_tower_input!r}: pass them as "
                    "`third_tower_inputs`."
                )
            third_tower_inputs = images
        main, third = self.encode_images(images), self.encode_third_tower(third_tower_inputs)
        if main.shape[0] is not None and third.shape[0] is not None and main.shape[0] != third.shape[0]:
            raise ValueError(
                f"The main images ({main.shape[0]}) and the third tower's inputs ({third.shape[0]}) "
                "must have the same batch size."
            )
        return ops.concatenate([main * (1.0 - weight) ** 0.5, third * weight**0.5], axis=-1)

    def encode_texts_combined(self, token_ids, third_tower_weight):
        """`[sqrt(1 - w) g(t), sqrt(w) g_h(t)]`, `(B, D + A)`, L2-normalised parts:
        the text side of `encode_images_combined`."""
        weight = _check_weight(third_tower_weight)
        features = self.text_encoder(token_ids)
        main, aligned = l2_normalize(features), l2_normalize(self.text_alignment_head(features))
        return ops.concatenate([main * (1.0 - weight) ** 0.5, aligned * weight**0.5], axis=-1)

    def combined_similarity(self, images, token_ids, third_tower_weight, third_tower_inputs=None):
        """`(B_images, B_texts)` `(1 - w) cos(f(x), g(t)) + w cos(h(x), g_h(t))`.

        A similarity to rank or classify by (argmax), not a calibrated logit:
        the two terms have their own learned temperatures and biases.
        """
        return ops.matmul(
            self.encode_images_combined(images, third_tower_weight, third_tower_inputs),
            ops.transpose(self.encode_texts_combined(token_ids, third_tower_weight)),
        )

    def expected_inputs(self):
        """`{key: shape without the batch axis}` of the inputs this model takes."""
        return {name: tuple(t.shape[1:]) for name, t in self.input.items()}

    def _check_inputs(self, x):
        if not isinstance(x, dict):
            return
        expected = self.expected_inputs()
        missing = [k for k in expected if k not in x]
        if missing:
            hint = {
                "third_tower_images": " (the third tower's own images, set by third_tower_input='third_tower_images')",
                "third_tower_embeddings": " (precomputed frozen embeddings: `precompute_third_tower_embeddings`)",
            }
            details = "".join(f"\n  {k!r}: shape (B, {', '.join(map(str, expected[k]))}){hint.get(k, '')}" for k in missing)
            raise ValueError(
                f"ThreeTowersBackbone inputs are missing {missing}; it takes the keys {sorted(expected)}.{details}"
            )
        for key in ("third_tower_images", "third_tower_embeddings"):
            if key not in expected:
                continue
            shape = tuple(getattr(x[key], "shape", ()))
            want = expected[key]
            if len(shape) != len(want) + 1 or any(w is not None and s is not None and s != w for s, w in zip(shape[1:], want)):
                raise ValueError(
                    f"Input {key!r} must have shape (B, {', '.join(map(str, want))}); got {shape}."
                )
        if len({getattr(x[k], "shape", (None,))[0] for k in expected} - {None}) > 1:
            sizes = {k: tuple(getattr(x[k], "shape", ()))[:1] for k in expected}
            raise ValueError(f"Every 3T input needs the same batch size (one pair per row); got {sizes}.")

    def __call__(self, inputs, *args, **kwargs):
        self._check_inputs(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def _check_arrays(self, x):
        self._check_inputs(x)
        if isinstance(x, dict) and x.get("token_ids") is not None:
            check_token_ids(x["token_ids"], self.text_encoder.vocabulary_size)

    def compile(self, optimizer="auto", total_steps=None, **kwargs):
        """Defaults as `SigLIPBackbone.compile`: `SigLIPAdamW` (with
        `total_steps`, warmup + cosine decay). The loss is the 3T loss set by
        the constructor (`contrastive_loss`, `term_weights`)."""
        if kwargs.get("loss") not in (None, "auto"):
            raise ValueError(
                "ThreeTowersBackbone trains with its 3T loss; choose its form with "
                "`contrastive_loss='sigmoid' | 'softmax'` and `term_weights` in the constructor."
            )
        kwargs.pop("loss", None)
        if optimizer == "auto":
            optimizer = SigLIPAdamW(total_steps=total_steps)
        elif total_steps is not None:
            raise ValueError("`total_steps` sets the default optimizer's schedule; give your optimizer its own.")
        super().compile(optimizer=optimizer, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y is not None or sample_weight is not None:
            raise ValueError(
                "ThreeTowersBackbone trains on matching pairs (row i of every input belongs "
                "together); pass no `y` or sample weights."
            )
        total, terms = three_towers_loss(
            (y_pred["logits"], y_pred["image_alignment_logits"], y_pred["text_alignment_logits"]),
            self.contrastive_loss,
            self.term_weights,
        )
        for tracker, value in zip(self.loss_trackers, terms):
            tracker.update_state(value)
        if self.losses:
            total = total + ops.sum(self.losses)
        return total

    def get_config(self):
        # keras-hub's Backbone keys quantized layers by path, and the image tower
        # and a third tower of the same class have the same inner paths. Each
        # tower's own config records its quantization, so the backbone's map
        # needs only the layers outside the towers (alignment heads).
        towers = [t for t in (self.vision_encoder, self.text_encoder, self.third_tower) if t is not None]
        inside = {id(layer) for tower in towers for layer in tower._flatten_layers()}
        policy = self.dtype_policy
        if not isinstance(policy, keras.dtype_policies.DTypePolicyMap):
            own = keras.dtype_policies.DTypePolicyMap()
            for layer in self._flatten_layers():
                if layer.quantization_mode is not None and id(layer) not in inside:
                    own[layer.path] = layer.dtype_policy
            policy = own if len(own) else policy
        config = {"name": self.name, "trainable": self.trainable, "dtype": keras.dtype_policies.serialize(policy)}
        config.update(
            vision_encoder=keras.layers.serialize(self.vision_encoder),
            text_encoder=keras.layers.serialize(self.text_encoder),
            third_tower=None if self.third_tower is None else keras.layers.serialize(self.third_tower.tower),
            third_tower_input=self.third_tower_input,
            third_tower_dim=self.third_tower_dim,
            alignment_dim=self.alignment_dim,
            third_tower_head=self.use_third_tower_head,
            contrastive_loss=self.contrastive_loss,
            term_weights=list(self.term_weights),
            temperature_init=self.temperature_init,
            bias_init=self.bias_init,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("vision_encoder", "text_encoder", "third_tower"):
            if isinstance(config.get(key), dict):
                config[key] = keras.layers.deserialize(config[key])
        return super().from_config(config)
