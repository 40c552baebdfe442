"""SigLIP 2 stage D: distillation through active data curation (ACID).

The small SigLIP 2 models (B/16, B/32) end with a phase where a frozen,
stronger reference model picks what the learner trains on. Every step sees a
super-batch of `B` image-text pairs; the learner (current weights, no
gradient) and the reference score every pair with the sigmoid loss, and a
sub-batch of `b = (1 - filter_ratio) * B` is selected *jointly* by its
learnability (JEST, Evans et al. 2024; ACID, Udandarao et al. 2024):

    A_ij = l_learner(i, j) - l_reference(i, j)        (B, B), per pair
    learnability(S) = (1/|S|) sum_{i, j in S} A_ij     (the sigmoid loss's form)

`joint_selection` draws S in `num_chunks` blocks: the first from the pairs'
own scores `A_ii`, each next one conditioned on what is already chosen
(`A_ii + sum_{j in S} (A_ij + A_ji)`), sampling without replacement by
Gumbel-top-k. The learner then trains on S with the plain sigmoid loss
(the paper: no other term in stage D, lr 1e-5, no weight decay).

It all runs inside the one compiled train step (static shapes: `B`, `b` and
the chunks are fixed when the step is traced). Cost of a step relative to a
plain step on `b` pairs (forward = 1 unit per `b` examples, a training step
about 3): the learner's scoring forward on `B` (`B / b` units), the
reference's forward on `B` (`B / b` times its cost relative to the learner),
and the `(B, B)` selection (matmuls, negligible next to the towers). With the
paper's filter ratio 0.5 and a reference of the learner's size that is
about 3 + 2 + 2 = 7 units, 2.3x a plain step on `b` by this count; measured
1.54x on CPU (S/16, JAX; `benchmarks/recipe_step.py`), where forwards cost
less than a third of a step. Pass the reference's embeddings with the data
(`reference_image_embeddings` / `reference_text_embeddings`, e.g. computed
once offline: the reference is frozen) and it drops to about 5 units
(measured 1.40x).
"""

import keras
from keras import ops
from keras_hub.models import Task

from keras_siglip.layers.contrastive import l2_normalize
from keras_siglip.losses.distributed import matching_pairs_sigmoid_loss
from keras_siglip.losses.sigmoid import SigmoidLoss, pairwise_sigmoid_losses
from keras_siglip.models.cappa.cappa_backbone import encoder_input
from keras_siglip.models.siglip.siglip_backbone import SigLIPBackbone
from keras_siglip.optimizers import SigLIPAdamW
from keras_siglip.utils.fit import BuildOptimizerBeforeFitMixin, ShuffledArraysMixin
from keras_siglip.utils.seeds import SavedSeedMixin
from keras_siglip.utils.tensors import ArrayChecksMixin, check_token_ids

LOGGED = ("sigmoid_loss", "learnability", "random_learnability", "temperature", "bias")
REFERENCE_KEYS = ("reference_image_embeddings", "reference_text_embeddings")
FILTER_RATIO = 0.5
NUM_CHUNKS = 16  # JEST's


def learnability_scores(learner, reference):
    """`(B, B)` float32 `A_ij = l_learner(i, j) - l_reference(i, j)`.

    Args:
        learner, reference: `(image_embeddings (B, D), text_embeddings (B, D),
            log_temperature, bias)` of each model, embeddings L2-normalised
            (the two models' widths may differ).
    """
    return pairwise_sigmoid_losses(*learner) - pairwise_sigmoid_losses(*reference)


def subset_learnability(scores, mask):
    """`(1/|S|) sum_{i, j in S} A_ij` for the subset `mask` `(B,)` (0/1)."""
    mask = ops.cast(mask, "float32")
    return ops.sum(mask[:, None] * scores * mask[None, :]) / ops.maximum(ops.sum(mask), 1.0)


def random_subset_learnability(scores, num_selected):
    """The expected `subset_learnability` of a uniformly random subset of
    `num_selected` of the `B` pairs (the baseline curation has to beat)."""
    size = scores.shape[0]
    diagonal = ops.sum(ops.diagonal(scores))
    off_diagonal = ops.sum(scores) - diagonal
    pair_fraction = (num_selected - 1) / max(size - 1, 1)
    return (diagonal + pair_fraction * off_diagonal) / size


def joint_selection(scores, num_selected, num_chunks, gumbel_noise):
    """JEST's joint example selection.

    Args:
        scores: `(B, B)` learnability `A` (float32; no gradient flows).
        num_selected: `b`, a multiple of `num_chunks`, at most `B`.
        num_chunks: blocks drawn one after another.
        gumbel_noise: `(num_chunks, B)` standard Gumbel noise (0: the
            greedy, deterministic selection).

    Returns:
        `(b,)` int32 distinct indices into the super-batch, in draw order.
    """
    size = scores.shape[0]
    if size is None:
        raise ValueError("Joint selection needs a static super-batch size: batch the data with "
                         "drop_remainder=True.")
    num_selected, num_chunks = int(num_selected), int(num_chunks)
    if num_chunks < 1 or num_selected % num_chunks or not 0 < num_selected <= size:
        raise ValueError(f"Cannot select {num_selected} of {size} pairs in {num_chunks} equal chunks: "
                         "the selected count must be a positive multiple of num_chunks, at most the "
                         "super-batch size.")
    scores = ops.stop_gradient(ops.cast(scores, "float32"))
    own = ops.diagonal(scores)
    chosen = ops.zeros((size,), "float32")
    per_chunk = num_selected // num_chunks
    indices = []
    for chunk in range(num_chunks):
        logits = own
        if chunk:
            logits = own + ops.matmul(chosen, scores) + ops.matmul(scores, chosen)
        logits = ops.where(chosen > 0, float("-inf"), logits + gumbel_noise[chunk])
        _, drawn = ops.top_k(logits, per_chunk)
        indices.append(ops.cast(drawn, "int32"))
        chosen = chosen + ops.sum(ops.one_hot(drawn, size, dtype="float32"), axis=0)
    return ops.concatenate(indices, axis=0)


def gumbel_noise(shape, seed):
    """Standard Gumbel noise `-log(-log(u))` (float32)."""
    tiny = 1e-20
    uniform = keras.random.uniform(shape, minval=tiny, maxval=1.0, seed=seed)
    return -ops.log(-ops.log(uniform))


@keras.saving.register_keras_serializable(package="keras_siglip")
class ActiveCurationTrainer(SavedSeedMixin, ArrayChecksMixin, ShuffledArraysMixin, BuildOptimizerBeforeFitMixin, Task):
    """Train a `SigLIPBackbone` on the pairs a frozen reference selects (ACID).

    Args:
        backbone: the learner (`SigLIPBackbone`, fixed-res or NaFlex); after
            training it is the product.
        reference: the frozen reference `SigLIPBackbone` (e.g. a larger
            model's preset); it reads the same token ids (same vocabulary and
            text length) and the same image input format; fixed-resolution
            images are resized to its size when it differs. Never trained.
        filter_ratio: fraction of each super-batch left out (0.5; the paper
            uses 0.75 for B/32).
        num_chunks: blocks of the joint selection (16; must divide the
            selected count).
        sigmoid_loss: a `SigmoidLoss` whose `chunk_size` / `cross_device`
            set how the learner's loss on the selected pairs runs. Selection
            uses the whole super-batch of this step: on a JAX mesh the global
            one; with TensorFlow / torch replicas each replica's own.
        total_steps: for the default optimizer's schedule.
        seed: seed of the Gumbel draws (saved with the weights).

    Inputs (`fit`'s `x`, no `y`): the backbone's image input(s) and
    `"token_ids"` of a super-batch of `B` matching pairs; optionally
    `"reference_image_embeddings"` / `"reference_text_embeddings"` `(B, D_ref)`
    (the reference's L2-normalised embeddings, precomputed) to skip the
    reference's forward. Outside training (`evaluate`, `predict`) nothing is
    selected.

    `fit` logs `sigmoid_loss` (on the selected pairs), `learnability` (of the
    selected sub-batch), `random_learnability` (what a uniformly random
    sub-batch of the same size would have: selection should beat it),
    `temperature` and `bias`.
    """

    backbone_cls = SigLIPBackbone

    def __init__(self, backbone, reference, filter_ratio=FILTER_RATIO, num_chunks=NUM_CHUNKS, sigmoid_loss=None,
                 total_steps=None, seed=None, preprocessor=None, **kwargs):
        if isinstance(reference, str):
            reference = SigLIPBackbone.from_preset(reference)
        _check_compatible(backbone, reference)
        if not 0.0 <= filter_ratio < 1.0:
            raise ValueError(f"filter_ratio must lie in [0, 1); got {filter_ratio}.")
        if int(num_chunks) < 1:
            raise ValueError(f"num_chunks must be a positive int; got {num_chunks}.")
        dtype = kwargs.pop("dtype", None) or backbone.dtype_policy
        compile_now = kwargs.pop("compile", True)
        super().__init__(dtype=dtype, compile=False, **kwargs)
        self.backbone = backbone
        self.reference = reference
        reference.trainable = False
        self.preprocessor = preprocessor
        self.filter_ratio = float(filter_ratio)
        self.num_chunks = int(num_chunks)
        self.sigmoid_loss = sigmoid_loss or SigmoidLoss()
        self.total_steps = total_steps
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in LOGGED}
        self.built = True
        if compile_now:
            self.compile()

    def selected_count(self, super_batch_size):
        """`b`: the pairs trained on from a super-batch of `super_batch_size`."""
        return int(round((1.0 - self.filter_ratio) * super_batch_size))

    def fit(self, x=None, y=None, batch_size=None, **kwargs):
        """`keras.Model.fit`. In-memory inputs must split into whole
        super-batches of `batch_size` (a partial one would change what is
        selected, and the step's shapes); they are then batched with a static
        super-batch size (see `ShuffledArraysMixin`)."""
        arrays = isinstance(x, dict) and all(hasattr(value, "shape") for value in x.values())
        if arrays and not _is_dataset(x):
            count, size = len(next(iter(x.values()))), batch_size or 32
            if count % size:
                raise ValueError(f"ActiveCurationTrainer selects from whole super-batches: {count} examples "
                                 f"do not split into super-batches of {size}; drop {count % size} or change "
                                 "batch_size.")
        return super().fit(x, y, batch_size=batch_size, **kwargs)

    # === Forward ===

    def call(self, inputs, training=False):
        self._check_keys(inputs)
        if not training:
            return self._embed(self.backbone, inputs)
        scores = self.score(inputs)
        size = scores.shape[0]
        if size is None:
            raise ValueError("ActiveCurationTrainer needs a static super-batch size: batch a tf.data "
                             "dataset with drop_remainder=True.")
        count = self.selected_count(size)
        noise = gumbel_noise((self.num_chunks, size), self.seed_generator)
        selection = joint_selection(scores, count, self.num_chunks, noise)
        chosen = ops.sum(ops.one_hot(selection, size, dtype="float32"), axis=0)
        selected = {key: ops.take(inputs[key], selection, axis=0) for key in inputs if key not in REFERENCE_KEYS}
        outputs = self._embed(self.backbone, selected)
        outputs.update(selection=selection, learnability=subset_learnability(scores, chosen),
                       random_learnability=random_subset_learnability(scores, count))
        return outputs

    def score(self, inputs):
        """`(B, B)` learnability of every pair of the super-batch (no gradient)."""
        learner = self._embed(self.backbone, inputs)
        if all(key in inputs for key in REFERENCE_KEYS):
            reference = {"image_embeddings": ops.cast(inputs[REFERENCE_KEYS[0]], "float32"),
                         "text_embeddings": ops.cast(inputs[REFERENCE_KEYS[1]], "float32")}
        else:
            reference = self._embed(self.reference, self._reference_inputs(inputs))
        return ops.stop_gradient(learnability_scores(self._scored(self.backbone, learner),
                                                     self._scored(self.reference, reference)))

    @staticmethod
    def _embed(model, inputs):
        images = encoder_input(inputs)
        return {"image_embeddings": l2_normalize(model.vision_encoder(images)),
                "text_embeddings": l2_normalize(model.text_encoder(inputs["token_ids"]))}

    @staticmethod
    def _scored(model, outputs):
        head = model.contrastive_head
        return (ops.stop_gradient(ops.cast(outputs["image_embeddings"], "float32")),
                ops.stop_gradient(ops.cast(outputs["text_embeddings"], "float32")),
                ops.stop_gradient(head.log_temperature), ops.stop_gradient(head.bias))

    def _reference_inputs(self, inputs):
        images = encoder_input(inputs)
        if isinstance(images, dict):
            return inputs
        size = tuple(self.reference.vision_encoder.image_size)
        if tuple(images.shape[1:3]) != size:
            images = ops.image.resize(images, size, interpolation="bilinear", antialias=True)
        return {"images": images, "token_ids": inputs["token_ids"]}

    def _check_keys(self, inputs):
        if not isinstance(inputs, dict):
            raise ValueError("ActiveCurationTrainer takes a dict of inputs (see its docstring).")
        image_keys = ("images",) if "images" in inputs else ("patches", "patch_coords", "patch_mask")
        missing = [key for key in (*image_keys, "token_ids") if key not in inputs]
        given = [key for key in REFERENCE_KEYS if key in inputs]
        if missing or len(given) == 1:
            missing += [key for key in REFERENCE_KEYS if key not in inputs] if given else []
            raise ValueError(f"ActiveCurationTrainer inputs are missing {missing}; got {sorted(inputs)}.")

    def _check_arrays(self, x):
        if isinstance(x, dict):
            self._check_keys(x)
            check_token_ids(x["token_ids"], self.backbone.text_encoder.vocabulary_size)

    # === Loss ===

    def compile(self, optimizer="auto", **kwargs):
        """Default optimizer: the paper's stage D Adam (lr 1e-5, no weight
        decay, global-norm clipping 1.0), warmup + cosine over `total_steps`
        when given. The loss is the sigmoid loss of the selected pairs."""
        if kwargs.get("loss") not in (None, "auto"):
            raise ValueError("ActiveCurationTrainer trains with the sigmoid loss; set it with `sigmoid_loss`.")
        kwargs.pop("loss", None)
        if optimizer == "auto":
            optimizer = SigLIPAdamW(learning_rate=1e-5, weight_decay=0.0, total_steps=self.total_steps)
        super().compile(optimizer=optimizer, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y is not None or sample_weight is not None:
            raise ValueError("ActiveCurationTrainer trains on matching pairs; pass no y or sample weights.")
        head = self.backbone.contrastive_head
        loss = matching_pairs_sigmoid_loss(
            ops.cast(y_pred["image_embeddings"], "float32"), ops.cast(y_pred["text_embeddings"], "float32"),
            head.log_temperature, head.bias, self.sigmoid_loss.chunk_size, self.sigmoid_loss.cross_device,
        )
        zero = ops.zeros((), "float32")
        values = {"sigmoid_loss": loss, "learnability": y_pred.get("learnability", zero),
                  "random_learnability": y_pred.get("random_learnability", zero),
                  "temperature": ops.exp(head.log_temperature[0]), "bias": head.bias[0]}
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return loss + ops.sum(self.losses) if self.losses else loss

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.layers.serialize(self.backbone),
            reference=keras.layers.serialize(self.reference),
            filter_ratio=self.filter_ratio,
            num_chunks=self.num_chunks,
            sigmoid_loss=keras.losses.serialize(self.sigmoid_loss),
            total_steps=self.total_steps,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone", "reference"):
            config[key] = keras.layers.deserialize(config[key])
        if isinstance(config.get("sigmoid_loss"), dict):
            config["sigmoid_loss"] = keras.losses.deserialize(config["sigmoid_loss"])
        return cls(**config)


def _is_dataset(x):
    return type(x).__module__.startswith(("tensorflow", "torch.utils"))


def _check_compatible(learner, reference):
    """The reference must read the learner's inputs."""
    if not isinstance(reference, SigLIPBackbone):
        raise ValueError(f"The reference must be a SigLIPBackbone (or a preset name); got {type(reference).__name__}.")
    problems = []
    learner_text, reference_text = learner.text_encoder.transformer, reference.text_encoder.transformer
    for name in ("vocabulary_size", "sequence_length"):
        if getattr(learner_text, name) != getattr(reference_text, name):
            problems.append(f"text {name} {getattr(learner_text, name)} vs {getattr(reference_text, name)}")
    formats = [getattr(model.vision_encoder, "input_format", "images") for model in (learner, reference)]
    if formats[0] != formats[1]:
        problems.append(f"image input_format {formats[0]!r} vs {formats[1]!r}")
    elif formats[0] == "naflex" and learner.vision_encoder.vit.patch_size != reference.vision_encoder.vit.patch_size:
        problems.append(f"NaFlex patch size {learner.vision_encoder.vit.patch_size} vs "
                        f"{reference.vision_encoder.vit.patch_size}")
    if problems:
        raise ValueError("The reference model cannot score the learner's inputs: " + "; ".join(problems) + ".")
