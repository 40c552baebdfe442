"""PaliGemmaCausalLM: prefix-LM fine-tuning and KV-cached generation."""

import functools
import types

import keras
import numpy as np
from keras import ops
from keras_hub.models import Task

from keras_siglip.models.cappa.cappa_generation import compile_stateless, make_sampler
from keras_siglip.models.pali_gemma.pali_gemma_backbone import PaliGemmaBackbone, image_batch
from keras_siglip.models.pali_gemma.pali_gemma_causal_lm_preprocessor import PaliGemmaCausalLMPreprocessor
from keras_siglip.models.pali_gemma.pali_gemma_generation import GRAMMARS, generate_with_cache
from keras_siglip.models.pali_gemma.pali_gemma_generation import output_grammar as output_grammar_fn
from keras_siglip.models.pali_gemma.pali_gemma_tasks import (
    answer_prompt, caption_prompt, detect_prompt, ocr_prompt, parse_detect, parse_segment, parse_text, segment_prompt,
)
from keras_siglip.utils.fit import BuildOptimizerBeforeFitMixin, ShuffledArraysMixin
from keras_siglip.utils.images import check_model_images
from keras_siglip.utils.preset import PresetMixin

PAD_ID = 0
EOS_ID = 1
STRATEGIES = ("greedy", "beam", "sampling")


@keras.saving.register_keras_serializable(package="keras_siglip")
class PrefixLMLoss(keras.losses.Loss):
    """big_vision's PaliGemma loss: weighted token softmax cross-entropy,
    normalised per example, then reduced over the batch (mean by default).

    Per example: `-sum_t w_t log p_t(y_t) / max(sum_t w_t, 1)`, with `w` the
    `sample_weight` (the preprocessor's loss mask: 1 on suffix tokens and EOS)
    or all ones. With `label_smoothing` ls the target gets `1 - ls` and every
    other token `ls / (V - 1)` (big_vision).

    Call args: `y_true` `(B, L)` int targets, `y_pred` `(B, L, V)` logits,
    `sample_weight` `(B, L)`.
    """

    def __init__(self, label_smoothing=0.0, name="prefix_lm_loss", reduction="sum_over_batch_size", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def per_token(self, y_true, y_pred):
        log_probs = ops.log_softmax(ops.cast(y_pred, "float32"), axis=-1)
        y_true = ops.cast(y_true, "int32")
        target = ops.take_along_axis(log_probs, y_true[..., None], axis=-1)[..., 0]
        if not self.label_smoothing:
            return -target
        ls, vocabulary = self.label_smoothing, ops.shape(log_probs)[-1]
        others = ops.sum(log_probs, axis=-1) - target
        return -((1.0 - ls) * target + ls / ops.cast(vocabulary - 1, "float32") * others)

    def __call__(self, y_true, y_pred, sample_weight=None):
        nll = self.per_token(y_true, y_pred)
        if sample_weight is None:
            weights = ops.ones_like(nll)
        else:
            weights = ops.cast(sample_weight, "float32")
        per_example = ops.sum(nll * weights, axis=-1) / ops.maximum(ops.sum(weights, axis=-1), 1.0)
        if self.reduction in (None, "none"):
            return per_example
        if self.reduction == "sum":
            return ops.sum(per_example)
        return ops.mean(per_example)

    def call(self, y_true, y_pred):
        return self.per_token(y_true, y_pred)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="keras_siglip")
class PaliGemmaCausalLM(PresetMixin, ShuffledArraysMixin, BuildOptimizerBeforeFitMixin, Task):
    """PaliGemma 1 / 2 image + prompt -> text: fine-tuning and generation.

    Args:
        backbone: a `PaliGemmaBackbone`.
        preprocessor: a `PaliGemmaCausalLMPreprocessor`, or None to feed
            preprocessed inputs (then `generate` takes token ids and returns ids).

    Model inputs: the backbone's `{"images", "token_ids", "padding_mask",
    "response_mask"}`; output `(B, L, V)` logits, position t predicting token
    t + 1. `fit` takes `{"images", "prompts", "responses"}` with a
    preprocessor (targets and loss weights come from it), or `(x, y,
    sample_weight)`. Loss: `PrefixLMLoss` (suffix + EOS tokens only, normalised
    per example); metric: weighted token accuracy.

    Example:
    ```python
    lm = PaliGemmaCausalLM(backbone, PaliGemmaCausalLMPreprocessor(
        PaliGemmaTokenizer("paligemma_tokenizer.model"),
        PaliGemmaImageConverter(image_size=(224, 224)), sequence_length=64))
    lm.generate(images, ["caption en", "detect cat ; dog"], max_new_tokens=32)
    lm.detect(image, ["cat", "dog"], coordinates="pixels")   # [Detections(boxes, labels, text)]
    lm.caption(images, long=True)   # "describe en"; also ocr, answer(images, "what is this"), segment
    lm.compile()
    lm.fit({"images": x, "prompts": p, "responses": r}, batch_size=8)
    lm.save_to_preset("my_paligemma")   # PaliGemmaCausalLM.from_preset("my_paligemma")
    ```
    A preset holding only a backbone (no tokenizer) loads with
    `from_preset(preset, preprocessor=None)`; `generate` then takes and
    returns token ids.
    """

    backbone_cls = PaliGemmaBackbone
    preprocessor_cls = PaliGemmaCausalLMPreprocessor

    def __init__(self, backbone, preprocessor=None, **kwargs):
        self.backbone = backbone
        self.preprocessor = preprocessor
        inputs = backbone.input  # {"images" or the NaFlex keys, "token_ids", "padding_mask", "response_mask"}
        super().__init__(inputs=inputs, outputs=backbone(inputs), **kwargs)
        # A plain namespace: Keras would track (and rewrap) a dict attribute.
        self._compiled_functions = types.SimpleNamespace(table={})

    def compile(self, optimizer="auto", loss="auto", *, weighted_metrics="auto", **kwargs):
        """Defaults: AdamW (lr 1e-5, weight decay 3e-7 decoupled, global norm
        clip 1; big_vision's transfer recipe uses Adam with these), `PrefixLMLoss`,
        weighted `SparseCategoricalAccuracy`."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(1e-5, weight_decay=3e-7, global_clipnorm=1.0)
        if loss == "auto":
            loss = PrefixLMLoss()
        if weighted_metrics == "auto":
            weighted_metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        super().compile(optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics, **kwargs)

    # === Generation ===

    def _compiled(self, key, build):
        table = self._compiled_functions.table
        if key not in table:
            table[key] = build()
        return table[key]

    def _generation_inputs(self, images, prompts, token_ids, padding_mask):
        """`(images, token_ids, padding_mask)` backend tensors and whether the
        input was a single example."""
        if (prompts is None) == (token_ids is None):
            raise ValueError("Pass exactly one of `prompts` (strings) and `token_ids`.")
        single = isinstance(prompts, str) or (token_ids is not None and np.ndim(token_ids) == 1)
        if prompts is not None:
            if self.preprocessor is None:
                raise ValueError("Generating from prompt strings needs a preprocessor; pass `token_ids`.")
            prompts = [prompts] if isinstance(prompts, str) else list(prompts)
            packed = self.preprocessor.generate_preprocess({"prompts": prompts})
            token_ids, padding_mask = packed["token_ids"], packed["padding_mask"]
        token_ids = np.atleast_2d(np.asarray(ops.convert_to_numpy(token_ids))).astype("int32")
        if padding_mask is None:
            padding_mask = token_ids != PAD_ID
        padding_mask = np.atleast_2d(np.asarray(ops.convert_to_numpy(padding_mask))).astype("int32")
        if padding_mask.shape != token_ids.shape:
            raise ValueError(f"padding_mask {padding_mask.shape} must match token_ids {token_ids.shape}.")
        if not padding_mask.any(axis=1).all():
            raise ValueError("Every prompt needs at least one token (the preprocessor adds BOS).")
        if self.preprocessor is not None and self.preprocessor.image_converter is not None and not isinstance(
            images, dict  # model-ready NaFlex inputs
        ):
            images = self.preprocessor.convert_images(images)
        images, count = image_batch(images)  # images, or NaFlex patches
        check_model_images(images, "PaliGemmaCausalLM")
        if count != len(token_ids):
            raise ValueError(f"{count} images but {len(token_ids)} prompts.")
        convert = ops.convert_to_tensor
        return (images, convert(token_ids, "int32"), convert(padding_mask, "int32")), single

    def generate(
        self,
        images,
        prompts=None,
        max_new_tokens=None,
        max_length=None,
        strategy="greedy",
        temperature=1.0,
        top_k=None,
        seed=None,
        return_token_ids=False,
        token_ids=None,
        padding_mask=None,
        top_p=None,
        num_beams=4,
        output_grammar=None,
    ):
        """Generate text after each (image, prompt) with the KV cache.

        One prefill pass over image + prompt fills the cache, then one token
        per step inside a keras-hub sampler's `ops.while_loop` (jit-compiled
        on JAX and TensorFlow, eager on torch). Prompts of different lengths
        are batched by left-aligning them (see `pali_gemma_generation`); the
        loop ends when every row has produced EOS, rows that finished earlier
        are padded.

        Args:
            images: raw images (with a preprocessor; any size, [0, 255]) or
                `(B, H, W, 3)` in [-1, 1] at the backbone's `image_size`; one
                `(H, W, 3)` image for a single prompt.
            prompts: a string or B strings ("caption en", "detect cat", ...);
                packed as `[BOS] prompt "\\n"` to the preprocessor's
                `sequence_length` (one compiled shape).
            max_new_tokens: G, tokens to generate (default 32, or
                `max_length - T` when `max_length` is given).
            max_length: alternatively the total text length `T + G` (T: the
                padded prompt width).
            strategy: "greedy", "beam" (the most likely of `num_beams`
                beams by total log-probability; EOS ends a beam, which keeps
                its score) or "sampling" (softmax at `temperature`,
                restricted to the `top_k` most likely tokens and / or to the
                nucleus of probability `top_p` if set).
            output_grammar: None, or "detect" / "segment": every step's
                logits are masked to tokens that keep the output well formed
                (`<loc>` x 4 [+ `<seg>` x 16] then a label, per object; see
                `pali_gemma_generation.output_grammar`); needs the tokenizer.
            seed: sampling seed (same seed, same output); None draws anew.
            return_token_ids: also return the `(B, G)` generated ids (EOS
                kept, pad 0 after it).
            token_ids, padding_mask: instead of `prompts`, `(B, T)` packed
                prompt ids and their mask (either padding side).

        Returns:
            B strings (one string for a single prompt); `(texts, token_ids)`
            with `return_token_ids`; only the ids without a tokenizer.
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"`strategy` must be one of {STRATEGIES}; got {strategy!r}.")
        (images, token_ids, padding_mask), single = self._generation_inputs(
            images, prompts, token_ids, padding_mask
        )
        width = token_ids.shape[1]
        if max_new_tokens is None:
            max_new_tokens = 32 if max_length is None else int(max_length) - width
        elif max_length is not None:
            raise ValueError("Pass at most one of `max_new_tokens` and `max_length`.")
        if max_new_tokens < 1:
            raise ValueError(f"Nothing to generate: max_new_tokens={max_new_tokens} (prompt width {width}).")
        max_new_tokens = int(max_new_tokens)
        num_beams = int(num_beams) if strategy == "beam" else None
        grammar = None
        if output_grammar is not None:
            if output_grammar not in GRAMMARS:
                raise ValueError(f"`output_grammar` must be None or one of {GRAMMARS}; got {output_grammar!r}.")
            tokenizer = getattr(self.preprocessor, "tokenizer", None)
            if tokenizer is None or tokenizer.loc_token_offset is None:
                raise ValueError("output_grammar needs a tokenizer with PaliGemma's <loc> and <seg> tokens.")
            grammar = functools.partial(output_grammar_fn, output_grammar, tokenizer.loc_token_offset,
                                        tokenizer.seg_token_offset, self._eos_id)
        key = ("generate", strategy, float(temperature), top_k, top_p, num_beams, output_grammar, max_new_tokens)

        def build():
            sampler = make_sampler(strategy, num_beams=num_beams, temperature=temperature, top_k=top_k, top_p=top_p)

            def step(images, token_ids, padding_mask):
                processor = None
                if grammar is not None:  # generated tokens start after the image and the prompt
                    processor = grammar(self.backbone.num_image_tokens + token_ids.shape[1])
                return generate_with_cache(
                    self.backbone, images, token_ids, padding_mask, sampler, max_new_tokens,
                    eos_id=self._eos_id, pad_id=self._pad_id, model=self, logits_processor=processor,
                )

            return sampler, compile_stateless(self, step, sampler.variables)

        sampler, function = self._compiled(key, build)
        if seed is not None:
            for generator in sampler._seed_generators:
                generator.state.assign(keras.random.SeedGenerator(seed).state.value)
        ids = np.asarray(ops.convert_to_numpy(function(images, token_ids, padding_mask))).astype("int32")
        tokenizer = getattr(self.preprocessor, "tokenizer", None)
        if tokenizer is None:
            return ids[0] if single else ids
        texts = self.preprocessor.generate_postprocess(ids)
        if single:
            texts, ids = texts[0], ids[0]
        return (texts, ids) if return_token_ids else texts

    @property
    def _eos_id(self):
        tokenizer = getattr(self.preprocessor, "tokenizer", None)
        return EOS_ID if tokenizer is None else tokenizer.end_token_id

    @property
    def _pad_id(self):
        tokenizer = getattr(self.preprocessor, "tokenizer", None)
        return PAD_ID if tokenizer is None else tokenizer.pad_token_id

    # === Tasks (PaliGemma's prompt prefixes, `pali_gemma_tasks`) ===

    def _run_task(self, images, prompts, parse, max_new_tokens, kwargs):
        """Generate after one prompt per image (`prompts`: one string for all,
        or a list) and parse each output: `parse(text, (height, width) or None)`."""
        if kwargs.get("return_token_ids"):
            raise ValueError("Task methods return parsed outputs; use `generate(..., return_token_ids=True)` for ids.")
        sizes = _image_sizes(images)
        prompts = [prompts] * len(sizes) if isinstance(prompts, str) else list(prompts)
        texts = self.generate(images, prompts, max_new_tokens=max_new_tokens, **kwargs)
        return [parse(text, size) for text, size in zip(texts, sizes)]

    def caption(self, images, lang="en", long=False, max_new_tokens=None, **kwargs):
        """Caption each image: the `caption {lang}` prompt, or `describe {lang}`
        (longer, more detailed; PaliGemma 2 mix) with `long`.

        Args:
            images: as `generate`; one image or a batch.
            max_new_tokens: default 32, 256 with `long`.
            kwargs: passed to `generate` (strategy, num_beams, ...).

        Returns:
            A list with one caption per image (`pali_gemma_tasks.parse_text`).
        """
        if max_new_tokens is None:
            max_new_tokens = 256 if long else 32
        return self._run_task(images, caption_prompt(lang, long), lambda text, _: parse_text(text), max_new_tokens,
                              kwargs)

    def ocr(self, images, max_new_tokens=128, **kwargs):
        """The text in each image (the `ocr` prompt); a list of strings."""
        return self._run_task(images, ocr_prompt(), lambda text, _: parse_text(text), max_new_tokens, kwargs)

    def answer(self, images, questions, lang="en", max_new_tokens=32, **kwargs):
        """Answer a question about each image (`answer {lang} {question}`).

        Args:
            questions: one question for every image, or a list with one per image.

        Returns:
            A list with one answer per image.
        """
        prompts = (answer_prompt(questions, lang) if isinstance(questions, str)
                   else [answer_prompt(question, lang) for question in questions])
        return self._run_task(images, prompts, lambda text, _: parse_text(text), max_new_tokens, kwargs)

    def detect(self, images, objects, max_new_tokens=64, coordinates="normalized", **kwargs):
        """Run the `detect {objects}` prompt and parse the output into boxes.

        Args:
            images: as `generate`; one image or a batch.
            objects: a string ("cat ; dog") or a list of names, for every
                image (`pali_gemma_tasks.detect_prompt`).
            coordinates: "normalized" (`[y1, x1, y2, x2]` in [0, 1]) or
                "pixels" (of the images given; needs raw arrays).
            kwargs: passed to `generate` (its `output_grammar` is "detect":
                every object the model emits is 4 location tokens and a
                label; None decodes freely).

        Returns:
            A list with one `Detections` (`boxes (n, 4)` float32, `labels`,
            `text`) per image; malformed objects in the output are dropped.
        """
        if coordinates not in ("normalized", "pixels"):
            raise ValueError(f"`coordinates` must be 'normalized' or 'pixels'; got {coordinates!r}.")
        pixels = coordinates == "pixels"

        def parse(text, size):
            if pixels and size is None:
                raise ValueError("coordinates='pixels' needs image arrays, not NaFlex patches.")
            return parse_detect(text, image_size=size if pixels else None)

        kwargs.setdefault("output_grammar", "detect")
        return self._run_task(images, detect_prompt(objects), parse, max_new_tokens, kwargs)

    def segment(self, images, objects, mask_decoder=None, max_new_tokens=128, **kwargs):
        """Run the `segment {objects}` prompt and parse boxes, labels and masks.

        Args:
            images: as `generate`; one image or a batch.
            objects: as `detect`.
            mask_decoder: a `PaliGemmaMaskDecoder` (`load_mask_decoder(
                "vae-oid.npz")`) to decode each object's mask, pasted at the
                size of the image given; None for boxes and codes only.
            kwargs: passed to `generate` (`output_grammar` "segment" by
                default: 4 location, 16 segmentation tokens and a label per
                object).

        Returns:
            One list per image of `parse_segmentation` dicts (`"box"`,
            `"box_pixels"`, `"label"`, `"codes"`, `"mask_logits"`, `"mask"`),
            or, for NaFlex inputs (no pixel size), `parse_segmentation_tokens`
            dicts.
        """
        kwargs.setdefault("output_grammar", "segment")
        return self._run_task(images, segment_prompt(objects),
                              lambda text, size: parse_segment(text, mask_decoder, size), max_new_tokens, kwargs)


def _image_sizes(images):
    """`(height, width)` of each image given to a task method (None for NaFlex
    patches); one entry per image."""
    if isinstance(images, dict):
        count = 1 if np.ndim(images["patches"]) == 2 else len(images["patches"])
        return [None] * count
    if isinstance(images, (list, tuple)):
        return [tuple(int(s) for s in np.shape(image)[:2]) for image in images]
    shape = tuple(int(s) for s in np.shape(images))
    return [shape[:2]] if len(shape) == 3 else [shape[1:3]] * shape[0]
