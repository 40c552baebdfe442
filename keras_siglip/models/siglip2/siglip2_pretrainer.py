"""SigLIP2Pretrainer: the SigLIP 2 training recipe as one `fit`-able Task.

Stage A (all of training): the sigmoid image-text loss plus a LocCa decoder
(same width / heads / MLP as the text tower, half its depth) that
cross-attends to the image tower's un-pooled tokens and is trained on one of
three targets per example: caption (parallel prediction with probability
`masked_pred_prob`), referring expression (text -> box) or grounded caption
(box -> text); its loss is chunked over the vocabulary. Weights 1:1.

Stage B (from `distillation_start * total_steps`): an EMA teacher of the image
tower, SILC local-to-global consistency (the student's local crops match the
teacher's global view through a DINO head) and TIPS masked prediction (the
student sees the global view with `mask_ratio` of its patch embeddings
replaced by a learned mask token and matches the teacher's per-patch outputs
there). Total: `L_sig + L_dec + f_size * (1.0 * L_l2g + 0.25 * L_mask)`.
The teacher, the heads, the mask token and their optimizer slots are created
at the switch (a `fit` callback does it), and the compiled step is rebuilt
once there.

Choices where the paper is silent (see `keras_siglip.presets.siglip2_recipes.NOTES`):
- The teacher is updated in the forward pass from the student weights the
  step's gradients are computed at (`teacher <- m teacher + (1 - m) student`
  with the pre-step student; DINO updates after the optimizer step, one step
  later). This keeps the update inside the one compiled step on every backend.
- SILC and TIPS use separate heads (image-level on the pooled embedding,
  patch-level on the tokens) and separate centres; each teacher head is the
  EMA of its student head.
- The student's local crops and masked global view are extra forwards of the
  student image tower; the sigmoid and decoder losses use the un-augmented
  image (paper). One forward per tower per view per step.
"""

import keras
from keras import ops
from keras_hub.models import Task

from keras_siglip.layers.decoder import TextDecoder
from keras_siglip.layers.distillation_head import DistillationHead
from keras_siglip.layers.vit import VisionTransformer
from keras_siglip.losses.captioning import chunked_token_nll, per_caption_mean
from keras_siglip.losses.distributed import matching_pairs_sigmoid_loss
from keras_siglip.losses.self_distillation import (
    CENTER_MOMENTUM,
    STUDENT_TEMPERATURE,
    TEACHER_TEMPERATURE,
    ema_update,
    local_to_global_loss,
    masked_prediction_loss,
    random_patch_mask,
    updated_center,
)
from keras_siglip.losses.sigmoid import SigmoidLoss
from keras_siglip.layers.contrastive import l2_normalize
from keras_siglip.models.cappa.cappa_backbone import encoder_input, encoder_mask
from keras_siglip.models.cappa.locca_preprocessor import CAP
from keras_siglip.models.siglip.siglip_backbone import SigLIPBackbone
from keras_siglip.presets.siglip2_recipes import size_factor_for_width
from keras_siglip.optimizers import SigLIPAdamW
from keras_siglip.utils.fit import BuildOptimizerBeforeFitMixin, ShuffledArraysMixin
from keras_siglip.utils.seeds import SavedSeedMixin
from keras_siglip.utils.tensors import ArrayChecksMixin, check_token_ids, refuse_quantized

TERMS = ("sigmoid_loss", "decoder_loss", "distillation_loss", "masked_prediction_loss")
LOGGED = TERMS + ("temperature", "bias", "ema_momentum")
VIEW_KEYS = ("global_view", "local_views")
DECODER_KEYS = ("decoder_token_ids", "decoder_targets", "tasks")


@keras.saving.register_keras_serializable(package="keras_siglip")
class DistillationState(keras.layers.Layer):
    """What stage B adds to the model: the EMA teacher image tower, student and
    teacher heads (image-level `global_head`, per-patch `patch_head`), the
    mask token and the two centres. Built (weights created) at the switch.

    Args:
        vit_config: the student `VisionTransformer`'s config (the teacher's).
        num_prototypes, hidden_dim, bottleneck_dim, num_layers: the heads'
            sizes (`DistillationHead`).
    """

    def __init__(self, vit_config, num_prototypes, hidden_dim, bottleneck_dim, num_layers, **kwargs):
        super().__init__(**kwargs)
        self.vit_config = dict(vit_config)
        self.head_config = dict(num_prototypes=num_prototypes, hidden_dim=hidden_dim,
                                bottleneck_dim=bottleneck_dim, num_layers=num_layers)
        dtype = self.dtype_policy
        self.teacher_vit = VisionTransformer.from_config({**self.vit_config, "name": "teacher_vit", "dtype": dtype})
        self.global_head, self.patch_head, self.teacher_global_head, self.teacher_patch_head = (
            DistillationHead(**self.head_config, name=name, dtype=dtype)
            for name in ("global_head", "patch_head", "teacher_global_head", "teacher_patch_head")
        )

    def build(self, input_shape=None):
        vit = self.teacher_vit
        feature_dim = vit.num_classes or vit.width
        vit.build((None, None, None, vit.num_channels))
        for head in (self.global_head, self.teacher_global_head):
            head.build((None, feature_dim))
        for head in (self.patch_head, self.teacher_patch_head):
            head.build((None, None, vit.width))
        self.mask_token = self.add_weight(
            name="mask_token", shape=(vit.width,), initializer=keras.initializers.TruncatedNormal(stddev=0.02)
        )
        k = self.head_config["num_prototypes"]
        self.global_center = self.add_weight(name="global_center", shape=(k,), initializer="zeros",
                                             trainable=False, dtype="float32")
        self.patch_center = self.add_weight(name="patch_center", shape=(k,), initializer="zeros",
                                            trainable=False, dtype="float32")
        for layer in (vit, self.teacher_global_head, self.teacher_patch_head):
            layer.trainable = False

    def teacher_weights(self):
        return self.teacher_vit.weights + self.teacher_global_head.weights + self.teacher_patch_head.weights

    def student_weights(self, vit):
        return vit.weights + self.global_head.weights + self.patch_head.weights

    def get_config(self):
        return {**super().get_config(), "vit_config": self.vit_config, **self.head_config}


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIP2Pretrainer(SavedSeedMixin, ArrayChecksMixin, ShuffledArraysMixin, BuildOptimizerBeforeFitMixin, Task):
    """Train a `SigLIPBackbone` with the SigLIP 2 recipe (stages A and B).

    Args:
        backbone: a `SigLIPBackbone` (`input_format` "images" or "naflex").
            After training, `pretrainer.backbone` is the product: an ordinary
            two-tower model; the decoder and stage-B parts are discarded.
        total_steps: the training length in optimizer steps (sets the switch
            and the default optimizer's schedule).
        distillation_start: fraction of `total_steps` where stage B starts
            (0.8); None: never (stage A only).
        num_loc_tokens: location ids after the text vocabulary (the decoder's
            vocabulary is `text vocabulary + num_loc_tokens`, LocCa's layout:
            a `LocCaPreprocessor` over the same tokenizer).
        decoder_depth: default half the text tower's depth (at least 1).
        decoder_sequence_length: the decoder's longest sequence (default the
            text length).
        decoder_chunk_size: vocabulary columns per chunk of the decoder loss
            (None: one block).
        masked_pred_prob: probability that a caption example is trained with
            parallel prediction (0.5).
        sigmoid_loss: a `SigmoidLoss` whose `chunk_size` / `cross_device` set
            how the image-text loss runs (default `SigmoidLoss()`: across
            devices on a mesh).
        size_factor: `f_size`; default from the image width (B 0.25, L 0.5,
            So400m 1.0, g-opt 0.5); other widths must pass it (unless stage B
            never starts).
        local_to_global_weight, masked_prediction_weight, decoder_weight:
            the terms' weights (1.0, 0.25, 1.0).
        ema_momentum: the teacher's fixed EMA momentum.
        num_prototypes, head_hidden_dim, head_bottleneck_dim, head_layers:
            the DINO heads.
        student_temperature, teacher_temperature, center_momentum: the
            distillation softmaxes and centring.
        mask_ratio: fraction of the student's global-view patches masked.
        seed: seed of the parallel-prediction draws and patch masks.

    Inputs (`fit`'s `x`; no `y`): the backbone's image input(s) (`"images"`
    `(B, H, W, C)` in [-1, 1], or the NaFlex keys), `"token_ids"` `(B, L)`
    for the text tower, `"decoder_token_ids"` `(B, L_d)` (LocCa sequences),
    `"decoder_targets"` `(B, L_d)` (0 = not scored), `"tasks"` `(B,)` (0 cap,
    1 aref, 2 gcap); from stage B also `"global_view"` `(B, h, w, C)` and
    `"local_views"` `(B, V, h', w', C)` (`keras_siglip.data.recipe_dataset`
    makes all of them).

    `fit` logs `sigmoid_loss`, `decoder_loss`, `distillation_loss`,
    `masked_prediction_loss` (0 before stage B), `temperature`, `bias` and
    `ema_momentum` (0 before stage B).
    """

    backbone_cls = SigLIPBackbone

    def __init__(
        self,
        backbone,
        total_steps,
        distillation_start=0.8,
        num_loc_tokens=1024,
        decoder_depth=None,
        decoder_sequence_length=None,
        decoder_chunk_size=None,
        masked_pred_prob=0.5,
        sigmoid_loss=None,
        size_factor=None,
        local_to_global_weight=1.0,
        masked_prediction_weight=0.25,
        decoder_weight=1.0,
        ema_momentum=0.996,
        num_prototypes=65536,
        head_hidden_dim=2048,
        head_bottleneck_dim=256,
        head_layers=3,
        student_temperature=STUDENT_TEMPERATURE,
        teacher_temperature=TEACHER_TEMPERATURE,
        center_momentum=CENTER_MOMENTUM,
        mask_ratio=0.5,
        seed=None,
        preprocessor=None,
        **kwargs,
    ):
        input_format = getattr(backbone.vision_encoder, "input_format", "images")
        if input_format not in ("images", "naflex"):
            raise ValueError(f"SigLIP2Pretrainer trains image towers of input_format 'images' or 'naflex'; "
                             f"got {input_format!r}.")
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be a positive number of steps; got {total_steps}.")
        if distillation_start is not None and not 0.0 <= distillation_start <= 1.0:
            raise ValueError(f"distillation_start must be a fraction in [0, 1] or None; got {distillation_start}.")
        for name, value in (("masked_pred_prob", masked_pred_prob), ("mask_ratio", mask_ratio),
                            ("ema_momentum", ema_momentum), ("center_momentum", center_momentum)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]; got {value}.")
        vit = backbone.vision_encoder.vit
        text = backbone.text_encoder.transformer
        if size_factor is None:  # weighs the stage-B terms only
            size_factor = size_factor_for_width(vit.width) if distillation_start is not None else 0.0
        dtype = kwargs.pop("dtype", None) or backbone.dtype_policy
        compile_now = kwargs.pop("compile", True)
        # Layers are set after `Task.__init__`: before it, torch would not track them.
        super().__init__(dtype=dtype, compile=False, **kwargs)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.decoder = TextDecoder(
            vocabulary_size=text.vocabulary_size + int(num_loc_tokens),
            width=text.width,
            depth=int(decoder_depth or max(1, text.depth // 2)),
            num_heads=text.num_heads,
            mlp_dim=text.mlp_dim,
            max_length=int(decoder_sequence_length or text.sequence_length),
            masked_pred=True,
            use_bias=False,
            encoder_width=vit.width,
            name="decoder",
            dtype=dtype,
        )
        self.decoder.build()  # used through its methods, never called as a layer
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.distillation = None
        self.total_steps = int(total_steps)
        self.distillation_start = distillation_start
        self.num_loc_tokens = int(num_loc_tokens)
        self.decoder_chunk_size = decoder_chunk_size
        self.masked_pred_prob = float(masked_pred_prob)
        self.sigmoid_loss = sigmoid_loss or SigmoidLoss()
        self.size_factor = float(size_factor)
        self.local_to_global_weight = float(local_to_global_weight)
        self.masked_prediction_weight = float(masked_prediction_weight)
        self.decoder_weight = float(decoder_weight)
        self.ema_momentum = float(ema_momentum)
        self.head_config = dict(num_prototypes=int(num_prototypes), hidden_dim=int(head_hidden_dim),
                                bottleneck_dim=int(head_bottleneck_dim), num_layers=int(head_layers))
        self.student_temperature = float(student_temperature)
        self.teacher_temperature = float(teacher_temperature)
        self.center_momentum = float(center_momentum)
        self.mask_ratio = float(mask_ratio)
        self.seed = seed
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOGGED}
        self.built = True  # every layer is built: `BackupAndRestore` may restore before the first step
        if compile_now:
            self.compile()

    # === Stages ===

    @property
    def distilling(self):
        """True once stage B has started (the teacher exists)."""
        return self.distillation is not None

    @property
    def distillation_step(self):
        """The optimizer step at which stage B starts (None: never)."""
        if self.distillation_start is None:
            return None
        return int(round(self.distillation_start * self.total_steps))

    def start_distillation(self, initialise=True):
        """Enter stage B: build the teacher (a copy of the student image
        tower), the heads, the mask token and the centres, give the optimizer
        slots for the new trainable weights (keeping every existing slot and
        its step count), and rebuild the compiled train step once. `fit` calls
        this at `distillation_step`; `load_weights` calls it (without copying,
        `initialise=False`) when the checkpoint is from stage B."""
        if self.distilling:
            return
        jax = keras.backend.backend() == "jax"
        if jax:
            self.jax_state_sync()  # inside `fit` the weights' current values live in the step's state
        vit = self.backbone.vision_encoder.vit
        state = DistillationState(vit.get_config(), **self.head_config, name="distillation",
                                  dtype=self.dtype_policy)
        state.build()
        if initialise:
            for teacher, student in zip(state.teacher_weights(), state.student_weights(vit)):
                teacher.assign(ops.copy(student))  # a buffer of its own (JAX donates the step's state)
        self._tracker.unlock()
        try:
            self.distillation = state
            self._extend_optimizer()
        finally:
            self._tracker.lock()
        rebuild = self.train_function is not None
        self.train_function = self.test_function = self.predict_function = None
        if rebuild:
            self.make_train_function(force=True)
        if jax:
            self._jax_state_synced = True  # `fit` re-reads the state, now with the new weights

    def _extend_optimizer(self):
        old = getattr(self, "optimizer", None)
        if old is None or not old.built:
            return
        new = old.__class__.from_config(old.get_config())
        new.build(self.trainable_variables)
        by_path = {v.path: v for v in new.variables}
        for variable in old.variables:
            if variable.path not in by_path:
                raise ValueError(f"Cannot carry optimizer state {variable.path} over to stage B.")
            by_path[variable.path].assign(ops.copy(variable))
        self.optimizer = new

    def load_weights(self, filepath, *args, **kwargs):
        """As `keras.Model.load_weights`; a checkpoint saved in stage B starts
        stage B first (so `BackupAndRestore` resumes mid-stage)."""
        self.prepare_to_load(filepath)
        return super().load_weights(filepath, *args, **kwargs)

    def prepare_to_load(self, filepath):
        """Start stage B (without copying) if the checkpoint at `filepath` (a
        `.weights.h5` file or an Orbax checkpoint folder) was saved in it.
        `load_weights` and `keras_siglip.callbacks.load_sharded_state` call it."""
        if not self.distilling and _saved_in_stage_b(filepath):
            self.start_distillation(initialise=False)

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, plus the callback that starts stage B at
        `distillation_step` (with `steps_per_execution=k`, at the first
        execution that starts at or after it)."""
        callbacks = list(callbacks or [])
        if self.distillation_step is not None:
            callbacks.append(DistillationSwitch())
        return super().fit(*args, callbacks=callbacks, **kwargs)

    # === Forward ===

    def call(self, inputs, training=False):
        self._check_keys(inputs)
        vit = self.backbone.vision_encoder.vit
        images = encoder_input(inputs)
        image_mask = encoder_mask(images)
        tokens = vit(images, return_tokens=True)  # (B, N, W): one forward for both losses
        image_features = vit.pool(tokens, image_mask) if vit.pooling != "none" else tokens
        text_features = self.backbone.text_encoder(inputs["token_ids"])
        targets = inputs["decoder_token_ids"]
        parallel = None
        if training and self.masked_pred_prob > 0:
            draws = keras.random.uniform(ops.shape(targets)[:1], seed=self.seed_generator)
            parallel = ops.logical_and(draws < self.masked_pred_prob, ops.equal(inputs["tasks"], CAP))
        input_ids, attention_mask = self.decoder.prepare_inputs(targets, parallel)
        outputs = {
            "image_embeddings": l2_normalize(image_features),
            "text_embeddings": l2_normalize(text_features),
            "decoder_hidden_states": self.decoder.hidden_states(input_ids, tokens, attention_mask, image_mask),
        }
        if self.distilling:
            outputs.update(self._distillation_terms(inputs, training))
        return outputs

    def _distillation_terms(self, inputs, training):
        missing = [key for key in VIEW_KEYS if key not in inputs]
        if missing:
            raise ValueError(
                f"Stage B (self-distillation) needs the inputs {list(VIEW_KEYS)}; missing {missing}. "
                "Make them with keras_siglip.data.recipe_dataset(..., num_local_views=V)."
            )
        state, vit = self.distillation, self.backbone.vision_encoder.vit
        global_view, local_views = inputs["global_view"], inputs["local_views"]
        if len(local_views.shape) != 5 or len(global_view.shape) != 4:
            raise ValueError(
                f"global_view must be (B, h, w, C) and local_views (B, V, h', w', C); got "
                f"{tuple(global_view.shape)} and {tuple(local_views.shape)}."
            )
        # Teacher: one forward of the global view.
        teacher_tokens = state.teacher_vit(global_view, return_tokens=True)
        teacher_global = state.teacher_global_head(state.teacher_vit.pool(teacher_tokens))
        teacher_patches = state.teacher_patch_head(teacher_tokens)
        # Student: the V local crops in one batch, and the masked global view.
        views = local_views.shape[1]
        flat = ops.reshape(local_views, (-1, *local_views.shape[2:]))
        student_local = state.global_head(vit(flat))
        student_local = ops.reshape(student_local, (-1, views, student_local.shape[-1]))
        batch, num_patches = ops.shape(teacher_tokens)[0], teacher_tokens.shape[1]
        mask = random_patch_mask(batch, num_patches, self.mask_ratio, seed=self.seed_generator)
        student_tokens = vit(global_view, return_tokens=True, masked_patches=mask, mask_token=state.mask_token)
        student_patches = state.patch_head(student_tokens)
        temperatures = (self.student_temperature, self.teacher_temperature)
        terms = {
            "distillation_loss": local_to_global_loss(student_local, teacher_global, state.global_center,
                                                      *temperatures),
            "masked_prediction_loss": masked_prediction_loss(student_patches, teacher_patches, mask,
                                                             state.patch_center, *temperatures),
        }
        if training:
            state.global_center.assign(updated_center(state.global_center, teacher_global, self.center_momentum))
            state.patch_center.assign(updated_center(state.patch_center, teacher_patches, self.center_momentum))
            ema_update(state.teacher_weights(), state.student_weights(vit), self.ema_momentum)
        return terms

    def _check_keys(self, inputs):
        if not isinstance(inputs, dict):
            raise ValueError("SigLIP2Pretrainer takes a dict of inputs (see its docstring).")
        image_keys = ("images",) if "images" in inputs else ("patches", "patch_coords", "patch_mask")
        missing = [key for key in (*image_keys, "token_ids", *DECODER_KEYS) if key not in inputs]
        if missing:
            raise ValueError(
                f"SigLIP2Pretrainer inputs are missing {missing}; got {sorted(inputs)}. "
                "keras_siglip.data.recipe_dataset makes every input of the recipe."
            )

    def _check_arrays(self, x):
        if isinstance(x, dict):
            self._check_keys(x)
            check_token_ids(x["token_ids"], self.backbone.text_encoder.vocabulary_size)
            check_token_ids(x["decoder_token_ids"], self.decoder.vocabulary_size)

    # === Loss ===

    def compile(self, optimizer="auto", **kwargs):
        """Default optimizer: `SigLIPAdamW` (the paper's Adam, lr 1e-3,
        decoupled weight decay 1e-4, clipping 1.0) with warmup + cosine over
        `total_steps`. The loss is the recipe's (no `loss` argument)."""
        if kwargs.get("loss") not in (None, "auto"):
            raise ValueError("SigLIP2Pretrainer trains with the recipe's loss; set its terms in the constructor.")
        kwargs.pop("loss", None)
        if optimizer == "auto":
            optimizer = SigLIPAdamW(total_steps=self.total_steps)
        super().compile(optimizer=optimizer, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y is not None or sample_weight is not None:
            raise ValueError("SigLIP2Pretrainer trains on matching pairs and its own targets; pass no y "
                             "or sample weights.")
        head = self.backbone.contrastive_head
        sigmoid = matching_pairs_sigmoid_loss(
            ops.cast(y_pred["image_embeddings"], "float32"), ops.cast(y_pred["text_embeddings"], "float32"),
            head.log_temperature, head.bias,
            self.sigmoid_loss.chunk_size, self.sigmoid_loss.cross_device,
        )
        targets = x["decoder_targets"]
        refuse_quantized(self.decoder.logits_dense, "SigLIP2Pretrainer's chunked decoder loss")
        nll = chunked_token_nll(y_pred["decoder_hidden_states"], self.decoder.logits_dense.kernel,
                                self.decoder.logits_dense.bias, targets, self.decoder_chunk_size)
        decoder = ops.mean(per_caption_mean(nll, targets))
        zero = ops.zeros((), "float32")
        distillation = y_pred.get("distillation_loss", zero)
        masked = y_pred.get("masked_prediction_loss", zero)
        total = (sigmoid + self.decoder_weight * decoder + self.size_factor
                 * (self.local_to_global_weight * distillation + self.masked_prediction_weight * masked))
        values = {
            "sigmoid_loss": sigmoid, "decoder_loss": decoder, "distillation_loss": distillation,
            "masked_prediction_loss": masked, "temperature": ops.exp(head.log_temperature[0]),
            "bias": head.bias[0], "ema_momentum": self.ema_momentum if self.distilling else 0.0,
        }
        for name, value in values.items():
            self.trackers[name].update_state(value)
        if self.losses:
            total = total + ops.sum(self.losses)
        return total

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.layers.serialize(self.backbone),
            total_steps=self.total_steps,
            distillation_start=self.distillation_start,
            num_loc_tokens=self.num_loc_tokens,
            decoder_depth=self.decoder.depth,
            decoder_sequence_length=self.decoder.max_length,
            decoder_chunk_size=self.decoder_chunk_size,
            masked_pred_prob=self.masked_pred_prob,
            sigmoid_loss=keras.losses.serialize(self.sigmoid_loss),
            size_factor=self.size_factor,
            local_to_global_weight=self.local_to_global_weight,
            masked_prediction_weight=self.masked_prediction_weight,
            decoder_weight=self.decoder_weight,
            ema_momentum=self.ema_momentum,
            num_prototypes=self.head_config["num_prototypes"],
            head_hidden_dim=self.head_config["hidden_dim"],
            head_bottleneck_dim=self.head_config["bottleneck_dim"],
            head_layers=self.head_config["num_layers"],
            student_temperature=self.student_temperature,
            teacher_temperature=self.teacher_temperature,
            center_momentum=self.center_momentum,
            mask_ratio=self.mask_ratio,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        if isinstance(config.get("sigmoid_loss"), dict):
            config["sigmoid_loss"] = keras.losses.deserialize(config["sigmoid_loss"])
        return cls(**config)


class DistillationSwitch(keras.callbacks.Callback):
    """Starts stage B of a `SigLIP2Pretrainer` at its `distillation_step`.

    Counts the optimizer steps trained (from the optimizer's step counter at
    the start of `fit`, so a resumed run switches at the same step); the
    steps a resumed `BackupAndRestore` skips train nothing and are not
    counted."""

    def on_train_begin(self, logs=None):
        self._steps = int(ops.convert_to_numpy(self.model.optimizer.iterations))
        self._begin = 0

    def on_train_batch_begin(self, batch, logs=None):
        self._begin = batch
        model = self.model
        if (not model.distilling and self._steps >= model.distillation_step
                and not getattr(model, "_skipping_restored_steps", False)):
            model.start_distillation()

    def on_train_batch_end(self, batch, logs=None):
        if logs:  # a skipped (already trained) step logs nothing
            self._steps += batch - self._begin + 1


def _saved_in_stage_b(filepath):
    """Whether a `.weights.h5` file or an Orbax checkpoint folder holds
    stage-B weights (the teacher)."""
    path = str(filepath)
    if path.endswith(".weights.h5"):
        import h5py

        with h5py.File(path, "r") as f:
            found = []
            f.visit(lambda name: found.append(name) if "distillation" in name.split("/") else None)
            return bool(found)
    from keras_siglip.callbacks import checkpoint_variable_paths, is_orbax_checkpoint

    if is_orbax_checkpoint(path):
        paths = checkpoint_variable_paths(path).get("trainable_variables", [])
        return any("distillation" in p.split("/") for p in paths)
    return False
