"""LocCa task serialisation: captioning, ARef and GCap as one decoder sequence.

Tasks (names and directions follow the LocCa paper, Wan et al. 2024, and
SigLIP 2's use of it):
- `"cap"` (id 0), captioning:   prefix `Cap:`             target `{caption}`
- `"aref"` (id 1), automatic referring expression, text -> box:
                                 prefix `ARef: {text} :`   target `{box}`
- `"gcap"` (id 2), grounded captioning, box -> text:
                                 prefix `GCap: {box} :`    target `{text}`
Every sequence ends with EOS (id 1) and is right-padded with 0 to
`sequence_length`. A box is four location tokens `[y1, x1, y2, x2]`
(`keras_siglip.layers.boxes`: n = 1024 bins by default, `round(v * (n - 1))`,
y before x), whose ids follow the text vocabulary: `<locDDDD>` is id
`loc_offset + DDDD`, with `loc_offset` = the tokenizer's vocabulary size by
default, so a LocCa decoder has `vocabulary_size = text_vocab + n`.

Choices where the paper leaves details open (UNCONFIRMED there):
- Boxes are dedicated location tokens, not integer strings: the paper reports
  the two perform alike, and loc tokens give every box the same length (4) and
  a direct decoding (`ids_to_boxes`) with no number parsing.
- Coordinates are PaliGemma's: y before x, 1024 bins by default. The number
  of bins is an option (`num_loc_tokens`): the paper's secondary sources
  mention integers up to 500, and small images with little data learn a
  coarser grid much faster (each bin is its own output class).
- Loss: by default only on the target (+ EOS); the prefix (task prompt,
  condition, separator) is teacher-forced and not scored, so each example
  trains exactly the direction its task names. LocCa scores everything after
  the task prompt (condition too); `score_condition=True` gives that.
- The prompt and separator go through the tokenizer's normalisation; with
  SigLIP's (lowercase, ASCII punctuation dropped) `"ARef:"` becomes `aref` and
  `":"` vanishes, which is harmless: the box tokens delimit the text.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from keras_hub.src.utils.tensor_utils import preprocessing_function

from keras_siglip.layers.boxes import NUM_LOC_TOKENS
from keras_siglip.models.cappa.cappa_preprocessor import EOS_ID, PAD_ID, CapPaPreprocessor

TASKS = ("cap", "aref", "gcap")
CAP, AREF, GCAP = 0, 1, 2
DEFAULT_PROMPTS = {"cap": "Cap:", "aref": "ARef:", "gcap": "GCap:"}


def task_ids(tasks):
    """Task names (or ids) -> int32 numpy ids (`TASKS` order)."""
    tasks = np.atleast_1d(np.asarray(tasks))
    if tasks.dtype.kind in "SUO":
        return np.array([TASKS.index(t.decode() if isinstance(t, bytes) else str(t)) for t in tasks], np.int32)
    return tasks.astype(np.int32)


def locca_examples(images, captions, texts, boxes):
    """Each image -> its three LocCa examples: Cap (its caption), ARef (`text`
    -> its box) and GCap (box -> `text`), as LocCa draws one region per image.

    Args:
        images: `(B, H, W, C)` array.
        captions: `(B,)` image captions.
        texts: `(B,)` region texts (e.g. "a red circle").
        boxes: `(B, 4)` the regions' normalised `[y1, x1, y2, x2]`.

    Returns:
        numpy `{"images": (3B, H, W, C), "texts": (3B,), "boxes": (3B, 4),
        "tasks": (3B,) int32}`, image-major (rows 3i, 3i+1, 3i+2 are image
        i's Cap, ARef, GCap): the input of a `LocCaPreprocessor`.
    """
    images, boxes = np.asarray(images), np.asarray(boxes, np.float32).reshape(-1, 4)
    captions, texts = np.asarray(captions), np.asarray(texts)
    if not len(images) == len(captions) == len(texts) == len(boxes):
        raise ValueError(
            f"Got {len(images)} images, {len(captions)} captions, {len(texts)} texts and {len(boxes)} boxes."
        )
    return {
        "images": np.repeat(images, 3, axis=0),
        "texts": np.stack([captions, texts, texts], axis=1).reshape(-1),
        "boxes": np.repeat(boxes, 3, axis=0),
        "tasks": np.tile(np.array([CAP, AREF, GCAP], np.int32), len(images)),
    }


@keras.saving.register_keras_serializable(package="keras_siglip")
class LocCaPreprocessor(CapPaPreprocessor):
    """Raw images, texts, boxes and tasks -> `LocCaCaptioner` inputs and targets.

    Args:
        tokenizer: a `SigLIPTokenizer` (text vocabulary `[0, loc_offset)`).
        image_converter: a `SigLIPImageConverter`.
        sequence_length: L, the whole sequence (prefix + target + EOS).
        loc_offset: id of `<loc0000>`; default the tokenizer's vocabulary size.
        task_prompts: dict task name -> prompt string (default LocCa's
            `"Cap:"`, `"ARef:"`, `"GCap:"`).
        separator: text between the condition and the target (`":"`).
        score_condition: also score the condition (ARef's text, GCap's box),
            as LocCa does; default False (target only, see module docstring).
        num_loc_tokens: n, bins per box coordinate (location ids
            `[loc_offset, loc_offset + n)`); default 1024 (PaliGemma's).

    Call args:
        x: dict with `"texts"` `(B,)` strings (caption for Cap, the region's
            text for ARef / GCap), `"tasks"` `(B,)` int ids or names (or one
            for the whole batch), optional `"boxes"` `(B, 4)` normalised
            `[y1, x1, y2, x2]` (needed by ARef / GCap rows; non-finite values
            count as 0; absent: zeros) and optional `"images"`. Batched only.

    Returns:
        `(x, y)`: `x = {"images", "token_ids": (B, L) int32, "tasks": (B,)
        int32}`, `y = token_ids` with every position outside the loss mask set
        to 0 (the pad id `CaptioningLoss` ignores). A text that does not fit is
        truncated; the box, separator, prompt and EOS always fit. Unknown task
        ids give an all-padding row (no loss). Runs in tf.data and eagerly.
    """

    def __init__(
        self,
        tokenizer=None,
        image_converter=None,
        sequence_length=64,
        loc_offset=None,
        task_prompts=None,
        separator=":",
        score_condition=False,
        num_loc_tokens=NUM_LOC_TOKENS,
        **kwargs,
    ):
        super().__init__(tokenizer, image_converter, sequence_length, **kwargs)
        if loc_offset is None and tokenizer is not None:
            loc_offset = tokenizer.vocabulary_size()
        self.loc_offset = None if loc_offset is None else int(loc_offset)
        self.task_prompts = {**DEFAULT_PROMPTS, **(task_prompts or {})}
        self.separator = separator
        self.score_condition = bool(score_condition)
        if int(num_loc_tokens) < 2:
            raise ValueError(f"num_loc_tokens must be >= 2; got {num_loc_tokens}.")
        self.num_loc_tokens = int(num_loc_tokens)
        self._constant_cache = {}

    @property
    def vocabulary_size(self):
        """Decoder vocabulary a model for these sequences needs: text + loc ids."""
        return self.loc_offset + self.num_loc_tokens

    # === Pieces ===

    def constant_ids(self, text):
        """Token ids of a fixed string (prompt, separator) as a numpy int32
        `(n,)`, computed eagerly once (also when called while tracing)."""
        if text not in self._constant_cache:
            with tf.init_scope():
                ids = self.tokenizer(tf.constant([text]))
                ids = ids.to_tensor() if isinstance(ids, tf.RaggedTensor) else ids
            self._constant_cache[text] = np.asarray(ops.convert_to_numpy(ids)).reshape(-1).astype(np.int32)
        return self._constant_cache[text]

    def box_ids(self, boxes):
        """tf `(B, 4)` float boxes -> `(B, 4)` int32 loc token ids
        (`boxes_to_ids` numerics: float32, round half to even, clip)."""
        boxes = tf.cast(boxes, tf.float32)
        boxes = tf.where(tf.math.is_finite(boxes), boxes, tf.zeros_like(boxes))
        n = self.num_loc_tokens
        bins = tf.clip_by_value(tf.round(boxes * float(n - 1)), 0.0, n - 1.0)
        return tf.cast(bins, tf.int32) + self.loc_offset

    def _layout(self, task, texts, boxes):
        """Ragged `(prefix, target, scored_prefix)` pieces of one task for the
        whole batch; `scored_prefix` marks the scored prefix tokens."""
        batch = tf.shape(boxes)[0]

        def constant(ids):
            return tf.RaggedTensor.from_tensor(tf.tile(tf.constant(ids, tf.int32)[None], [batch, 1]))

        prompt = self.constant_ids(self.task_prompts[task])
        separator = self.constant_ids(self.separator) if task != "cap" else np.zeros(0, np.int32)
        box = tf.RaggedTensor.from_tensor(self.box_ids(boxes))
        fixed = len(prompt) + len(separator) + 1 + (0 if task == "cap" else 4)
        room = self.sequence_length - fixed
        if room < 1:
            raise ValueError(f"sequence_length={self.sequence_length} leaves no room for text in {task!r}.")
        text = texts[:, :room]
        if task == "cap":
            condition, target = None, text
        elif task == "aref":
            condition, target = text, box
        else:
            condition, target = box, text
        pieces, scored = [constant(prompt)], [tf.zeros_like(constant(prompt))]
        if condition is not None:
            pieces += [condition, constant(separator)]
            flag = tf.ones_like if self.score_condition else tf.zeros_like
            scored += [flag(condition), tf.zeros_like(constant(separator))]
        return tf.concat(pieces, axis=1), target, tf.concat(scored, axis=1)

    def _inputs(self, tasks, texts, boxes):
        texts = tf.reshape(tf.convert_to_tensor(texts), [-1])
        batch = tf.shape(texts)[0]
        boxes = tf.zeros([batch, 4]) if boxes is None else tf.reshape(tf.convert_to_tensor(boxes), [-1, 4])
        tasks = tf.convert_to_tensor(tasks)
        if tasks.dtype == tf.string:  # names -> ids (unknown names -> -1)
            names = tasks
            tasks = tf.fill(tf.shape(names), -1)
            for task_id, name in enumerate(TASKS):
                tasks = tf.where(tf.equal(names, name), task_id, tasks)
        tasks = tf.broadcast_to(tf.reshape(tf.cast(tasks, tf.int32), [-1]), [batch])
        return tasks, self.tokenize_ragged(texts), boxes

    def build_sequences(self, tasks, texts, boxes=None):
        """The training sequences (TensorFlow; tf.data and eager).

        Args:
            tasks: `(B,)` int task ids, or one task name.
            texts: `(B,)` strings.
            boxes: `(B, 4)` normalised boxes, or None (zeros).

        Returns:
            `(token_ids, loss_mask, tasks)`: `(B, L)` int32 (prefix, target,
            EOS, zero padding), `(B, L)` bool (target and EOS, plus the
            condition when `score_condition`), `(B,)` int32.
        """
        tasks, texts, boxes = self._inputs(tasks, texts, boxes)
        batch = tf.shape(tasks)[0]
        eos = tf.RaggedTensor.from_tensor(tf.fill([batch, 1], EOS_ID))
        shape = [None, self.sequence_length]
        token_ids = tf.zeros([batch, self.sequence_length], tf.int32)
        loss_mask = tf.zeros([batch, self.sequence_length], tf.int32)
        for task_id, task in enumerate(TASKS):
            prefix, target, scored = self._layout(task, texts, boxes)
            ids = tf.concat([prefix, target, eos], axis=1).to_tensor(PAD_ID, shape=shape)
            mask = tf.concat([scored, tf.ones_like(target), tf.ones_like(eos)], axis=1)
            mask = mask.to_tensor(0, shape=shape)
            chosen = tf.equal(tasks, task_id)[:, None]
            token_ids = tf.where(chosen, ids, token_ids)
            loss_mask = tf.where(chosen, mask, loss_mask)
        return token_ids, tf.cast(loss_mask, tf.bool), tasks

    def prompt_ids(self, task, texts=None, boxes=None, batch_size=None):
        """Generation prompts (the prefixes) for one task, eagerly.

        Args:
            task: "cap", "aref" or "gcap".
            texts: `(B,)` strings (ARef).
            boxes: `(B, 4)` boxes (GCap).
            batch_size: B for "cap" (no texts or boxes).

        Returns:
            numpy int32 `(B, P)` right-padded with 0, P static per task:
            the prompt's length for "cap", prompt + 4 + separator for "gcap",
            `sequence_length - 5` for "aref" (room for the box and EOS).
        """
        if texts is None:
            count = batch_size if boxes is None else len(np.asarray(boxes).reshape(-1, 4))
            texts = [""] * int(count)
        tasks, texts, boxes = self._inputs(task, texts, boxes)
        prefix, _, _ = self._layout(task, texts, boxes)
        width = {
            "cap": len(self.constant_ids(self.task_prompts["cap"])),
            "gcap": len(self.constant_ids(self.task_prompts["gcap"])) + 4 + len(self.constant_ids(self.separator)),
            "aref": self.sequence_length - 5,
        }[task]
        return np.asarray(prefix.to_tensor(PAD_ID, shape=[None, width]).numpy(), np.int32)

    # === Call ===

    @preprocessing_function
    def call(self, x, y=None, sample_weight=None):
        if not isinstance(x, dict) or "texts" not in x or "tasks" not in x:
            raise ValueError("LocCaPreprocessor takes a dict with 'texts', 'tasks' and optional 'boxes', 'images'.")
        unknown = set(x) - {"images", "texts", "boxes", "tasks"}
        if unknown:
            raise ValueError(f"Unknown LocCaPreprocessor keys {sorted(unknown)}.")
        token_ids, loss_mask, tasks = self.build_sequences(x["tasks"], x["texts"], x.get("boxes"))
        outputs = {"token_ids": token_ids, "tasks": tasks}
        if "images" in x:
            outputs.update(self.model_images(x["images"]))
        if y is None:
            y = tf.where(loss_mask, token_ids, tf.zeros_like(token_ids))
        return keras.utils.pack_x_y_sample_weight(outputs, y, sample_weight)

    def detokenize(self, token_ids):
        """`(B, L)` ids -> B strings; location ids (`>= loc_offset`) are dropped."""
        ids = np.asarray(ops.convert_to_numpy(token_ids)).copy()
        ids[ids >= self.loc_offset] = PAD_ID
        return super().detokenize(ids)

    def get_config(self):
        config = super().get_config()
        config.update(
            loc_offset=self.loc_offset,
            task_prompts=self.task_prompts,
            separator=self.separator,
            score_condition=self.score_condition,
            num_loc_tokens=self.num_loc_tokens,
        )
        return config
