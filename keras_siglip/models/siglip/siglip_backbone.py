import keras
from keras import ops
from keras_hub.models import Backbone

from keras_siglip.distribution import transformer_layout_map
from keras_siglip.layers.contrastive import ContrastiveHead, L2Normalize, l2_normalize
from keras_siglip.losses.distributed import cross_device_setup, matching_pairs_sigmoid_loss
from keras_siglip.losses.sigmoid import SigmoidLoss, sigmoid_labels
from keras_siglip.metrics import mean_pair_logits
from keras_siglip.optimizers import SigLIPAdamW
from keras_siglip.models.siglip.siglip_vision_encoder import image_inputs
from keras_siglip.utils.fit import BuildOptimizerBeforeFitMixin
from keras_siglip.utils.images import check_model_images
from keras_siglip.utils.preset import PresetMixin
from keras_siglip.utils.tensors import ArrayChecksMixin, check_token_ids


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIPBackbone(ArrayChecksMixin, PresetMixin, BuildOptimizerBeforeFitMixin, Backbone):
    """SigLIP / SigLIP 2 two-tower model.

    Args:
        vision_encoder: a `SigLIPVisionEncoder`.
        text_encoder: a `SigLIPTextEncoder` whose output width equals the
            image embedding width.
        temperature_init, bias_init: initial `exp(t)` and `b` (10 and -10, the
            SigLIP paper's values for training from scratch).

    Inputs: `{"images": (B, H, W, C) float in [-1, 1], "token_ids": (B', L) int}`;
    with a NaFlex vision encoder (`input_format="naflex"`) the image tensors
    `"patches"`, `"patch_coords"`, `"patch_mask"` replace `"images"`; with
    `input_format="packed"` (NaViT sequences holding up to S images each) the
    packed image tensors and `"token_ids"` `(B, S, L)`, one text per image slot.
    Outputs: `{"image_embeddings": (B, D), "text_embeddings": (B', D)` (both
    L2-normalised), `"logits": (B, B')}` with `logits = exp(t) * cos + b`.
    Packed inputs give `B = B' = B_seq * S` rows in slot order, plus
    `"image_mask"` `(B,)`; empty slots are left out of the loss.

    `fit` trains with the sigmoid loss computed from the outputs of the one
    forward pass (no second forward in `compute_loss`); `y`, when given, is a
    `(B, B)` matrix of +1 / -1 pair labels, else the diagonal pairs match.
    """

    def __init__(
        self,
        vision_encoder,
        text_encoder,
        temperature_init=10.0,
        bias_init=-10.0,
        dtype=None,
        **kwargs,
    ):
        if vision_encoder.output_dim != text_encoder.output_dim:
            raise ValueError(
                f"The image embedding width ({vision_encoder.output_dim}) and text "
                f"embedding width ({text_encoder.output_dim}) differ; give the "
                "text encoder a head (`num_classes`) of the image width."
            )
        self.vision_encoder = vision_encoder
        self.text_encoder = text_encoder
        self.normalize = L2Normalize(name="normalize", dtype=dtype)
        self.contrastive_head = ContrastiveHead(
            temperature_init, bias_init, name="contrastive_head", dtype=dtype
        )
        input_format = getattr(vision_encoder, "input_format", "images")
        packed = input_format == "packed"
        inputs = image_inputs(input_format, vision_encoder.patch_size, vision_encoder.num_channels)
        length = text_encoder.sequence_length
        token_ids = keras.Input(
            shape=(None, length) if packed else (length,), dtype="int32", name="token_ids"
        )
        image_features = vision_encoder(inputs["images"] if input_format == "images" else inputs)
        text_tokens = token_ids
        outputs = {}
        if packed:
            # One row per image slot: (B_seq, S, ...) -> (B_seq * S, ...).
            image_features = ops.reshape(image_features, (-1, image_features.shape[-1]))
            text_tokens = ops.reshape(token_ids, (-1, length))
            outputs["image_mask"] = ops.reshape(inputs["image_mask"], (-1,))
        image_embeddings = self.normalize(image_features)
        text_embeddings = self.normalize(text_encoder(text_tokens))
        logits = self.contrastive_head(image_embeddings, text_embeddings)
        outputs.update(
            image_embeddings=image_embeddings,
            text_embeddings=text_embeddings,
            logits=logits,
        )
        super().__init__(
            inputs={**inputs, "token_ids": token_ids},
            outputs=outputs,
            dtype=dtype,
            **kwargs,
        )
        self.temperature_init = temperature_init
        self.bias_init = bias_init
        # What SigLIP logs while training (epoch means in `fit` / `evaluate` logs).
        self.contrastive_trackers = [
            keras.metrics.Mean(name=name)
            for name in ("temperature", "bias", "positive_logit", "negative_logit")
        ]

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Load a preset folder, URI or name.

        A published checkpoint's name (`keras-siglip presets`) downloads its
        weights from the card's first source that answers and converts them
        once (`keras_siglip.hub`); with `load_weights=False` it builds the
        architecture with random weights, offline.
        """
        from keras_siglip.models.siglip.siglip_presets import published_backbone
        from keras_siglip.presets import PUBLISHED_PRESETS

        if isinstance(preset, str) and preset in PUBLISHED_PRESETS and not load_weights:
            return published_backbone(cls, preset, **kwargs)
        return super().from_preset(preset, load_weights=load_weights, **kwargs)

    @staticmethod
    def get_layout_map(device_mesh, model_axis="model", data_axis="batch"):
        """Sharding of both towers' weights for `keras.distribution.ModelParallel`
        (FSDP over `data_axis`, tensor parallel over `model_axis`; either may be
        None). See `keras_siglip.distribution`."""
        return transformer_layout_map(device_mesh, model_axis, data_axis)

    @property
    def embedding_dim(self):
        return self.vision_encoder.output_dim

    @property
    def temperature(self):
        """The current `exp(t)`."""
        return ops.exp(self.contrastive_head.log_temperature[0])

    @property
    def bias(self):
        return self.contrastive_head.bias[0]

    def encode_images(self, images):
        """`(B, H, W, C)` preprocessed images (or the NaFlex / packed dict) ->
        `(B, D)` (packed: `(B, S, D)`) L2-normalised embeddings.

        Eager inputs are checked (`check_model_images`): integer (raw uint8)
        images, values beyond +-1.5 and NaN / inf raise. An empty batch gives
        `(0, D)` (packed: `(0, S, D)`)."""
        check_model_images(images, "encode_images")
        return l2_normalize(self.vision_encoder(images))

    def encode_texts(self, token_ids):
        """`(B, L)` token ids -> `(B, D)` L2-normalised embeddings."""
        return l2_normalize(self.text_encoder(token_ids))

    def __call__(self, inputs, *args, **kwargs):
        if isinstance(inputs, dict) and inputs.get("token_ids") is not None:
            check_token_ids(inputs["token_ids"], self.text_encoder.vocabulary_size)  # before Keras' cast
        return super().__call__(inputs, *args, **kwargs)

    def _check_arrays(self, x):
        # Compiled steps cannot raise on values; check in-memory arrays up front
        # so out-of-vocabulary ids fail clearly instead of being clamped.
        if isinstance(x, dict) and x.get("token_ids") is not None:
            check_token_ids(x["token_ids"], self.text_encoder.vocabulary_size)
        if isinstance(x, dict):
            check_model_images(x, "SigLIPBackbone")

    def compile(self, optimizer="auto", loss="auto", total_steps=None, **kwargs):
        """Defaults as in the SigLIP papers: `SigLIPAdamW` (lr 1e-3, decoupled
        weight decay 1e-4 on kernels, beta2 0.95, global-norm clipping 1.0;
        with `total_steps`, linear warmup over 10% of them and cosine decay)
        and `SigmoidLoss`."""
        if optimizer == "auto":
            optimizer = SigLIPAdamW(total_steps=total_steps)
        elif total_steps is not None:
            raise ValueError("`total_steps` sets the default optimizer's schedule; give your optimizer its own.")
        if loss == "auto":
            loss = SigmoidLoss()
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        self._track_statistics(y_pred)
        loss_fn = getattr(self, "loss", None)
        chunk_size = getattr(loss_fn, "chunk_size", None)
        setup = cross_device_setup() if getattr(loss_fn, "cross_device", False) else None
        matching_pairs = y is None and sample_weight is None and "image_mask" not in y_pred
        if setup and setup[0] == "gathered" and not matching_pairs:
            raise ValueError(
                "Across replicas the sigmoid loss pairs image i with text i: pass no `y` or sample "
                "weights and no packed sequences, or use SigmoidLoss(cross_device=False) for "
                "per-replica losses."
            )
        if matching_pairs and (chunk_size or setup):
            return self._loss_from_embeddings(y_pred, chunk_size, setup is not None)
        logits = y_pred["logits"]
        if y is None:
            y = sigmoid_labels(ops.shape(logits)[0], logits.dtype)
        if "image_mask" in y_pred:
            # Packed: pairs with an empty slot get label 0 (ignored); the mean
            # runs over the real images only.
            real = ops.cast(y_pred["image_mask"], logits.dtype)
            y = ops.cast(y, logits.dtype) * real[:, None] * real[None, :]
            weights = real / ops.maximum(ops.mean(real), 1e-6)
            sample_weight = weights if sample_weight is None else sample_weight * weights
        return super().compute_loss(x, y, logits, sample_weight, training=training)

    def _loss_from_embeddings(self, y_pred, chunk_size, cross_device):
        """The loss of matching pairs from the embeddings: chunked and/or across devices."""
        loss = matching_pairs_sigmoid_loss(
            y_pred["image_embeddings"], y_pred["text_embeddings"],
            self.contrastive_head.log_temperature, self.contrastive_head.bias, chunk_size, cross_device,
        )
        return loss + ops.sum(self.losses) if self.losses else loss

    def _track_statistics(self, y_pred):
        # Here rather than in `compute_metrics`: JAX's stateless step maps the
        # model's variables (t, b) only while computing the loss.
        scale, bias = self.temperature, self.bias
        positive, negative = mean_pair_logits(
            y_pred["image_embeddings"], y_pred["text_embeddings"], scale, bias, y_pred.get("image_mask")
        )
        for tracker, value in zip(self.contrastive_trackers, (scale, bias, positive, negative)):
            tracker.update_state(value)

    def get_config(self):
        config = super().get_config()
        config.update(
            vision_encoder=keras.layers.serialize(self.vision_encoder),
            text_encoder=keras.layers.serialize(self.text_encoder),
            temperature_init=self.temperature_init,
            bias_init=self.bias_init,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("vision_encoder", "text_encoder"):
            if isinstance(config[key], dict):
                config[key] = keras.layers.deserialize(config[key])
        return super().from_config(config)
