"""LocCaCaptioner: captioning, referring expressions and grounding on one model.

A `CapPaCaptioner` whose decoder vocabulary is the text vocabulary followed by
n `<locDDDD>` ids (n = 1024 by default; `loc_offset` = text vocabulary size), trained on the
three LocCa tasks serialised by `LocCaPreprocessor` (see there for the layout
and the choices made). Generation starts from a per-example prompt whose
cache is prefilled in one call (`decode_with_sampler`).
"""

import functools

import keras
import numpy as np
from keras import ops

from keras_siglip.layers.boxes import NUM_LOC_TOKENS, grounding_metrics, ids_to_boxes
from keras_siglip.models.cappa.cappa_captioner import CapPaCaptioner
from keras_siglip.models.cappa.cappa_preprocessor import EOS_ID
from keras_siglip.models.cappa.locca_preprocessor import CAP, LocCaPreprocessor

_NEG = -1e9


@functools.lru_cache(maxsize=None)
def text_only_processor(loc_offset):
    """Logits processor allowing only text ids (`< loc_offset`): captions and
    referring expressions never contain location tokens."""

    def process(logits, sequence, index, step):
        allowed = ops.arange(ops.shape(logits)[-1], dtype="int32") < loc_offset
        return ops.where(allowed[None, :], logits, _NEG)

    return process


@functools.lru_cache(maxsize=None)
def box_processor(loc_offset, num_bins=NUM_LOC_TOKENS):
    """Logits processor making generated tokens 0-3 a well-formed box.

    Token k in {0, 1} may be any loc id; token 2 (y2) a loc id `>=` token 0
    (y1), token 3 (x2) one `>=` token 1 (x1), so `ids_to_boxes` always accepts
    the box; token 4 on is EOS. Rows still in their prompt (`step < 0`) are
    left alone. Only the ordering and range are imposed: among the allowed
    ids the model's own scores decide.
    """

    def process(logits, sequence, index, step):
        rows = ops.shape(logits)[0]
        ids = ops.arange(ops.shape(logits)[-1], dtype="int32")[None, :]
        two_back = ops.slice(sequence, (0, ops.maximum(index - 2, 0)), (rows, 1))
        lower = ops.where(ops.logical_or(step == 2, step == 3)[:, None], two_back, loc_offset)
        loc = ops.logical_and(ids >= lower, ids < loc_offset + num_bins)
        allowed = ops.where((step < 4)[:, None], loc, ids == EOS_ID)
        allowed = ops.logical_or(allowed, (step < 0)[:, None])
        return ops.where(allowed, logits, _NEG)

    return process


@keras.saving.register_keras_serializable(package="keras_siglip")
class LocCaCaptioner(CapPaCaptioner):
    """Captioning, automatic referring expression (text -> box) and grounded
    captioning (box -> text) with one `CapPaBackbone` (LocCa).

    Args:
        backbone: a `CapPaBackbone` with `vocabulary_size = text_vocab + n` (n loc ids).
        preprocessor: a `LocCaPreprocessor` (needed for the text helpers).
        masked_pred_prob: probability that a *caption* example is trained
            with parallel prediction (LocCa / SigLIP 2: 0.5); ARef and GCap
            examples are always autoregressive.
        seed: seed of the parallel-prediction draws.
        loc_offset: id of `<loc0000>` (default `vocabulary_size - n`).
        num_loc_tokens: n, bins per box coordinate (default the
            preprocessor's, else 1024).

    Model inputs: `{"images": (B, H, W, C), "token_ids": (B, L), "tasks": (B,)
    int32}`; output `(B, L, V)` logits, position t predicting `token_ids[:, t]`.
    Loss: `CaptioningLoss` on targets where 0 marks unscored positions (the
    preprocessor's `y`); a `(B, L)` `sample_weight` also works, as a 0/1 token
    mask (nonzero = scored) folded into the targets.
    """

    preprocessor_cls = LocCaPreprocessor

    def __init__(
        self, backbone, preprocessor=None, masked_pred_prob=0.5, seed=None, loc_offset=None,
        num_loc_tokens=None, **kwargs,
    ):
        vocabulary = backbone.vocabulary_size
        if num_loc_tokens is None:
            num_loc_tokens = getattr(preprocessor, "num_loc_tokens", NUM_LOC_TOKENS)
        num_loc_tokens = int(num_loc_tokens)
        loc_offset = vocabulary - num_loc_tokens if loc_offset is None else int(loc_offset)
        if loc_offset < 2 or loc_offset + num_loc_tokens > vocabulary:
            raise ValueError(
                f"loc_offset={loc_offset} and {num_loc_tokens} location ids do not fit a vocabulary of "
                f"{vocabulary} (a LocCa backbone needs vocabulary_size = text vocabulary + {num_loc_tokens})."
            )
        for name, value in (("loc_offset", loc_offset), ("num_loc_tokens", num_loc_tokens)):
            if preprocessor is not None and getattr(preprocessor, name, value) != value:
                raise ValueError(f"The preprocessor's {name} {getattr(preprocessor, name)} != {value}.")
        self.loc_offset = loc_offset
        self.num_loc_tokens = num_loc_tokens
        super().__init__(backbone, preprocessor, masked_pred_prob, seed, **kwargs)

    def _functional_graph(self, backbone):
        inputs, encoded, mask = self._encoder_graph(backbone)
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        tasks = keras.Input(shape=(), dtype="int32", name="tasks")
        logits = self.caption_decoder(token_ids, encoded, ops.equal(tasks, CAP), encoder_mask=mask)
        return {**inputs, "token_ids": token_ids, "tasks": tasks}, logits

    # === Loss with a token mask ===

    @staticmethod
    def _fold_mask(y, sample_weight):
        if y is not None and sample_weight is not None and len(ops.shape(sample_weight)) == 2:
            y = ops.where(ops.not_equal(sample_weight, 0), y, ops.zeros_like(y))
            sample_weight = None
        return y, sample_weight

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        y, sample_weight = self._fold_mask(y, sample_weight)
        return super().compute_loss(x, y, y_pred, sample_weight, training=training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        y, sample_weight = self._fold_mask(y, sample_weight)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    # === Tasks ===

    def _needs_text(self):
        if self.preprocessor is None or self.preprocessor.tokenizer is None:
            raise ValueError("This helper needs a LocCaPreprocessor with a tokenizer.")
        return self.preprocessor

    def _length(self, width, max_length):
        return self._default_length(None) - width if max_length is None else int(max_length)

    def caption(self, images, max_length=None, **generate_kwargs):
        """Captions (task "cap"): a list of B strings. `generate_kwargs` as in
        `generate` (strategy, num_beams, ...); text ids only."""
        preprocessor = self._needs_text()
        prompt = preprocessor.prompt_ids("cap", batch_size=len(images))
        return self.generate(
            images, max_length=self._length(prompt.shape[1], max_length), prompt_ids=prompt,
            logits_processor=text_only_processor(self.loc_offset), **generate_kwargs,
        )

    def refer(self, images, boxes, max_length=None, **generate_kwargs):
        """Referring expressions for boxes (GCap, box -> text).

        Args:
            images: B raw images (or model-ready `(B, H, W, C)`).
            boxes: `(B, 4)` normalised `[y1, x1, y2, x2]`.

        Returns:
            A list of B strings (text ids only are generated).
        """
        preprocessor = self._needs_text()
        prompt = preprocessor.prompt_ids("gcap", boxes=np.asarray(boxes, np.float32).reshape(-1, 4))
        return self.generate(
            images, max_length=self._length(prompt.shape[1], max_length), prompt_ids=prompt,
            logits_processor=text_only_processor(self.loc_offset), **generate_kwargs,
        )

    def ground(self, images, texts, constrained=True, **generate_kwargs):
        """Boxes for texts (ARef, text -> box): four generated loc tokens.

        Args:
            images: B raw images (or model-ready `(B, H, W, C)`).
            texts: B strings naming one object each.
            constrained: restrict the four tokens to loc ids with `y2 >= y1`,
                `x2 >= x1` (`box_processor`): every output is a valid box.
                Otherwise any token may come out, and a malformed box counts
                as no box.

        Returns:
            `(boxes, valid)`: numpy float32 `(B, 4)` (zeros where not valid)
            and bool `(B,)`.
        """
        preprocessor = self._needs_text()
        texts = [texts] if isinstance(texts, str) else list(texts)
        prompt = preprocessor.prompt_ids("aref", texts=texts)
        processor = box_processor(self.loc_offset, self.num_loc_tokens) if constrained else None
        ids = self.generate(
            images, max_length=4, prompt_ids=prompt, logits_processor=processor,
            detokenize=False, **generate_kwargs,
        )
        boxes, valid = ids_to_boxes(np.asarray(ids), offset=self.loc_offset, num_bins=self.num_loc_tokens)
        return boxes.astype(np.float32), valid

    def evaluate_grounding(self, images, texts, boxes, constrained=True, threshold=0.5):
        """`grounding_metrics` of `ground(images, texts)` against `(B, 4)`
        ground-truth boxes: `{"mean_iou", "accuracy" (IoU >= threshold),
        "invalid"}`."""
        predicted, valid = self.ground(images, texts, constrained=constrained)
        predicted = [box if ok else None for box, ok in zip(predicted, valid)]
        return grounding_metrics(predicted, boxes, threshold=threshold)

    def get_config(self):
        config = super().get_config()
        config.update(loc_offset=self.loc_offset, num_loc_tokens=self.num_loc_tokens)
        return config
