"""CapPaCaptioner: Cap / CapPa training, caption generation, scoring classifier."""

import types

import keras
import numpy as np
from keras import ops
from keras_hub.models import Task

from keras_siglip.losses.captioning import CaptioningLoss, TokenAccuracy, caption_log_likelihood
from keras_siglip.models.cappa.cappa_backbone import CapPaBackbone, encoder_input_spec
from keras_siglip.models.cappa.cappa_generation import (
    compile_stateless,
    decode_with_sampler,
    make_sampler,
)
from keras_siglip.models.cappa.cappa_preprocessor import CapPaPreprocessor, strip_after_eos
from keras_siglip.utils.fit import BuildOptimizerBeforeFitMixin, ShuffledArraysMixin
from keras_siglip.utils.images import check_model_images
from keras_siglip.utils.preset import PresetMixin
from keras_siglip.utils.seeds import SavedSeedMixin


class ParallelPredictionSwitch(SavedSeedMixin, keras.layers.Layer):
    """Runs the `TextDecoder`, choosing parallel prediction per example in training.

    In training each example is decoded in parallel-prediction mode (all
    inputs [MASK], bidirectional attention) with probability `masked_pred_prob`
    (a Bernoulli draw from a `SeedGenerator`, big_vision CapPa), else
    autoregressively; outside training always autoregressively. The
    generator's state is saved with the weights (a resumed run draws what an
    uninterrupted one would).

    Call args: `token_ids` `(B, L)` targets, `encoded` `(B, N, E_enc)`,
    optional `allowed` `(B,)` bool: only these examples may be drawn for
    parallel prediction (LocCa: caption examples only); optional
    `encoder_mask` `(B, N)` bool (NaFlex: real patches).
    Returns `(B, L, V)` logits.
    """

    def __init__(self, decoder, masked_pred_prob=0.75, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.decoder = decoder
        self.masked_pred_prob = float(masked_pred_prob)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def parallel_choice(self, batch_size):
        """`(B,)` bool: True for the examples decoded in parallel."""
        draws = keras.random.uniform((batch_size,), seed=self.seed_generator)
        return ops.less(draws, self.masked_pred_prob)

    def call(self, token_ids, encoded, allowed=None, encoder_mask=None, training=None):
        if training and self.masked_pred_prob > 0:
            parallel = self.parallel_choice(ops.shape(token_ids)[0])
            if allowed is not None:
                parallel = ops.logical_and(parallel, ops.cast(allowed, "bool"))
            return self.decoder(token_ids, encoded, parallel=parallel, encoder_mask=encoder_mask)
        return self.decoder(token_ids, encoded, encoder_mask=encoder_mask)

    def compute_output_shape(self, token_ids_shape, encoded_shape=None, *args, **kwargs):
        return (*token_ids_shape[:2], self.decoder.vocabulary_size)


@keras.saving.register_keras_serializable(package="keras_siglip")
class CapPaCaptioner(PresetMixin, ShuffledArraysMixin, BuildOptimizerBeforeFitMixin, Task):
    """Image captioning with a `CapPaBackbone`: Cap / CapPa training, decoding,
    caption scoring and zero-shot classification by scoring.

    Args:
        backbone: a `CapPaBackbone`.
        preprocessor: a `CapPaPreprocessor`, or None to feed preprocessed
            images and token ids (then `generate` returns ids, not text).
        masked_pred_prob: probability that a training example uses parallel
            prediction (CapPa: 0.75; 0.0 = the plain Cap baseline). Needs a
            backbone built with `masked_pred=True` when > 0.
        seed: seed of the per-example parallel-prediction draws.

    Model inputs: `{"images": (B, H, W, C) in [-1, 1], "token_ids": (B, L)}`;
    output `(B, L, V)` logits, position t predicting `token_ids[:, t]`
    (autoregressive; in training a mix, see `masked_pred_prob`). `fit` takes
    `{"images": raw images, "texts": captions}` with a preprocessor, or
    `(inputs, token_ids)`; loss: `CaptioningLoss` (per-caption mean token NLL,
    mean over the batch); metric: `TokenAccuracy`.
    """

    backbone_cls = CapPaBackbone
    preprocessor_cls = CapPaPreprocessor

    def __init__(self, backbone, preprocessor=None, masked_pred_prob=0.75, seed=None, **kwargs):
        if not 0.0 <= masked_pred_prob <= 1.0:
            raise ValueError(f"`masked_pred_prob` must be in [0, 1]; got {masked_pred_prob}.")
        if masked_pred_prob > 0 and not backbone.decoder.masked_pred:
            raise ValueError(
                "Parallel prediction needs the [MASK] token: build the backbone with "
                "`masked_pred=True`, or use `masked_pred_prob=0.0` (plain Cap)."
            )
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.caption_decoder = ParallelPredictionSwitch(
            backbone.decoder, masked_pred_prob, seed, name="caption_decoder"
        )
        inputs, logits = self._functional_graph(backbone)
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.masked_pred_prob = float(masked_pred_prob)
        self.seed = seed
        # A plain namespace: Keras would track (and rewrap) a dict attribute.
        self._compiled_functions = types.SimpleNamespace(table={})

    def _encoder_graph(self, backbone):
        """Symbolic `(inputs, encoded, encoder_mask)` of the backbone's encoder."""
        inputs, images = encoder_input_spec(backbone.input_format, backbone.vit)
        encoded = backbone.vit(images, return_tokens=True)
        return inputs, encoded, backbone.encoder_mask(images)

    def _functional_graph(self, backbone):
        """`(inputs, logits)` of the task's functional model."""
        inputs, encoded, mask = self._encoder_graph(backbone)
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        logits = self.caption_decoder(token_ids, encoded, encoder_mask=mask)
        return {**inputs, "token_ids": token_ids}, logits

    @property
    def decoder(self):
        return self.backbone.decoder

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """Defaults: AdamW (lr 1e-3, weight decay 1e-4, global norm clip 1; the
        CapPa recipe's values), `CaptioningLoss`, `TokenAccuracy`."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(1e-3, weight_decay=1e-4, global_clipnorm=1.0)
        if loss == "auto":
            loss = CaptioningLoss()
        if metrics == "auto":
            metrics = [TokenAccuracy()]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    # === Inputs ===

    def _image_batch(self, images):
        """Raw images (with a preprocessor) or model-ready `(B, H, W, C)` (or
        NaFlex dict) -> encoder input tensor(s)."""
        if isinstance(images, dict):  # model-ready NaFlex inputs
            check_model_images(images, "CapPaCaptioner")
            return {k: ops.convert_to_tensor(ops.convert_to_numpy(v)) for k, v in images.items()}
        if self.preprocessor is not None:
            images = self.preprocessor.convert_images(images)
            if isinstance(images, dict):
                return self._image_batch(images)
        check_model_images(images, "CapPaCaptioner")
        images = ops.convert_to_tensor(images, dtype="float32")
        return images[None] if len(images.shape) == 3 else images

    def _encode(self, images):
        """`(encoded (B, N, E), encoder_mask (B, N) or None)` of an image batch."""
        return self.backbone.encode_images(images), self.backbone.encoder_mask(images)

    def _token_batch(self, texts=None, token_ids=None):
        if (texts is None) == (token_ids is None):
            raise ValueError("Pass exactly one of `texts` and `token_ids`.")
        if texts is not None:
            if self.preprocessor is None or self.preprocessor.tokenizer is None:
                raise ValueError("Scoring texts needs a preprocessor with a tokenizer.")
            texts = [texts] if isinstance(texts, str) else list(texts)
            token_ids = self.preprocessor.pack_texts(texts)
        return ops.convert_to_tensor(ops.convert_to_numpy(token_ids), dtype="int32")

    def _compiled(self, key, build):
        table = self._compiled_functions.table
        if key not in table:
            table[key] = build()
        return table[key]

    def _default_length(self, max_length):
        if max_length is None:
            max_length = getattr(self.preprocessor, "sequence_length", None) or self.decoder.max_length
        return min(int(max_length), self.decoder.max_length)

    def _format_output(self, token_ids, detokenize):
        token_ids = np.asarray(ops.convert_to_numpy(token_ids))
        if detokenize and self.preprocessor is not None and self.preprocessor.tokenizer is not None:
            return self.preprocessor.detokenize(token_ids)
        return token_ids

    # === Decoding ===

    def generate(
        self,
        images,
        max_length=None,
        strategy="greedy",
        num_beams=4,
        temperature=1.0,
        top_k=None,
        seed=None,
        detokenize=True,
        prompt_ids=None,
        logits_processor=None,
        length_penalty=0.0,
        top_p=None,
    ):
        """Caption images with the KV-cached autoregressive decoder.

        Cross-attention keys/values are computed once per image; the loop is a
        keras-hub sampler's `ops.while_loop` (jit-compiled on JAX and
        TensorFlow, eager on torch) that stops when every row has produced EOS
        (id 1); finished rows are padded with 0.

        Args:
            images: raw images (with a preprocessor) or `(B, H, W, C)` in [-1, 1].
            max_length: generated tokens L (default: the preprocessor's
                `sequence_length`, else the decoder's `max_length`).
            strategy: "greedy", "beam" (best of `num_beams` by total
                log-probability, or length-normalised: `length_penalty`)
                or "sampling" (from the softmax at
                `temperature`, restricted to the `top_k` most likely and / or
                to the nucleus of probability `top_p` if set).
            seed: sampling seed (same seed, same captions); None draws anew.
            detokenize: return strings when the preprocessor has a tokenizer.
            prompt_ids: optional `(B, P)` int prompt per example, right-padded
                with 0: the decoder is teacher-forced through it (the cache is
                prefilled in one call) and generation continues after it;
                `P + L <= decoder.max_length` (default L: the default length
                above minus P).
            logits_processor: optional `fn(logits, sequence, index, step)`
                rewriting each step's logits (constrained decoding; see
                `decode_with_sampler`). Compiled functions are cached per
                processor object, so reuse one object.
            length_penalty: beam search: rank beams by log-probability over
                `((5 + length) / 6) ** length_penalty` (GNMT); 0 (default)
                ranks by total log-probability.

        Returns:
            A list of B captions, or `(B, L)` int token ids ending in EOS
            (with a prompt: the tokens generated after it).
        """
        prompt = ()
        length = self._default_length(max_length)
        if prompt_ids is not None:
            prompt = (ops.convert_to_tensor(ops.convert_to_numpy(prompt_ids), dtype="int32"),)
            if max_length is None:
                length -= prompt[0].shape[1]
        key = ("generate", strategy, num_beams if strategy == "beam" else None,
               float(temperature), top_k, top_p, length, bool(prompt), logits_processor, float(length_penalty))

        def build():
            sampler = make_sampler(strategy, num_beams, temperature, top_k, top_p=top_p)

            def step(images, *prompt):
                encoded, mask = self._encode(images)
                return decode_with_sampler(
                    self.decoder, encoded, sampler, length, model=self,
                    prompt_ids=prompt[0] if prompt else None, logits_processor=logits_processor,
                    encoder_mask=mask, length_penalty=length_penalty,
                )[0]

            return sampler, compile_stateless(self, step, sampler.variables)

        sampler, function = self._compiled(key, build)
        if seed is not None:
            for generator in sampler._seed_generators:
                generator.state.assign(keras.random.SeedGenerator(seed).state.value)
        return self._format_output(function(self._image_batch(images), *prompt), detokenize)

    def parallel_decode(self, images, max_length=None, detokenize=True):
        """One-shot parallel decoding: every input is [MASK], each position
        takes its argmax token; tokens after the first EOS become padding.

        Returns a list of B captions, or `(B, L)` int token ids.
        """
        length = self._default_length(max_length)

        def build():
            def step(images):
                encoded, mask = self._encode(images)
                placeholder = ops.zeros((ops.shape(encoded)[0], length), dtype="int32")
                logits = self.decoder(placeholder, encoded, parallel=True, encoder_mask=mask)
                return strip_after_eos(ops.argmax(logits, axis=-1))

            return compile_stateless(self, step)

        function = self._compiled(("parallel", length), build)
        return self._format_output(function(self._image_batch(images)), detokenize)

    # === Scoring ===

    def score(self, images, texts=None, token_ids=None):
        """`(B,)` teacher-forced log-likelihood of caption i given image i: the
        sum of log p(token) over non-pad targets (EOS included), autoregressive.

        Args:
            images: raw images (with a preprocessor) or `(B, H, W, C)` in [-1, 1].
            texts: B captions (tokenized by the preprocessor, EOS appended), or
            token_ids: `(B, L)` targets padded with 0.
        """
        token_ids = self._token_batch(texts, token_ids)

        def build():
            def step(images, token_ids):
                encoded, mask = self._encode(images)
                logits = self.decoder(token_ids, encoded, encoder_mask=mask)
                return caption_log_likelihood(logits, token_ids)

            return compile_stateless(self, step)

        scores = self._compiled(("score",), build)(self._image_batch(images), token_ids)
        return np.asarray(ops.convert_to_numpy(scores))

    def _class_sequences(self, class_names, prompt):
        """`(inputs, targets)`, `(K, L)` each: the decoder's teacher-forced
        sequences for the K class names and the scored targets (pad 0 where
        unscored). CapPa scores the whole `prompt + name` (big_vision)."""
        token_ids = self._token_batch(texts=[prompt + name for name in class_names])
        return token_ids, token_ids

    def class_log_likelihoods(self, images, class_names, prompt="", batch_size=64):
        """`(B, K)` log-likelihood of each class name for each image (big_vision
        `scoring_classifier`: unnormalised sum over the scored tokens; see
        `_class_sequences`).

        Images are encoded once; classes are scored `batch_size` at a time.
        """
        if not class_names:
            raise ValueError("`class_names` must name at least one class.")
        token_ids, targets = self._class_sequences(class_names, prompt)

        def build_encode():
            def encode(images):
                encoded, mask = self._encode(images)
                return (encoded,) if mask is None else (encoded, mask)

            return compile_stateless(self, encode)

        def build_scores():
            def step(class_ids, class_targets, encoded, *mask):
                # (B, N, W) x (k, L) -> all B * k pairs, image-major.
                batch, classes = ops.shape(encoded)[0], ops.shape(class_ids)[0]
                pair_tokens = ops.tile(class_ids, (batch, 1))
                mask = ops.repeat(mask[0], classes, axis=0) if mask else None
                logits = self.decoder(
                    pair_tokens, ops.repeat(encoded, classes, axis=0), encoder_mask=mask
                )
                scores = caption_log_likelihood(logits, ops.tile(class_targets, (batch, 1)))
                return ops.reshape(scores, (batch, classes))

            return compile_stateless(self, step)

        encoded = self._compiled(("encode",), build_encode)(self._image_batch(images))
        scores = self._compiled(("class_scores",), build_scores)
        chunks = [
            ops.convert_to_numpy(
                scores(token_ids[start : start + batch_size], targets[start : start + batch_size], *encoded)
            )
            for start in range(0, len(class_names), batch_size)
        ]
        return np.concatenate(chunks, axis=1)

    def zero_shot_classify(self, images, class_names, prompt="", batch_size=64):
        """`(B,)` index of the most likely class name for each image (argmax of
        `class_log_likelihoods`)."""
        return np.argmax(self.class_log_likelihoods(images, class_names, prompt, batch_size), axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(masked_pred_prob=self.masked_pred_prob, seed=self.seed)
        return config
