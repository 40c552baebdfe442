"""LiTDecoder: a frozen image encoder answering many tasks through one small decoder."""

import keras
import numpy as np

from keras_siglip.models.cappa.cappa_captioner import CapPaCaptioner
from keras_siglip.models.lit_decoder.lit_decoder_backbone import LiTDecoderBackbone
from keras_siglip.models.lit_decoder.lit_decoder_preprocessor import LiTDecoderPreprocessor
from keras_siglip.models.siglip.siglip_backbone import SigLIPBackbone
from keras_siglip.models.siglip.siglip_preprocessor import SigLIPPreprocessor
from keras_siglip.utils.preset import preset_loader


@keras.saving.register_keras_serializable(package="keras_siglip")
class LiTDecoder(CapPaCaptioner):
    """Multi-task image-to-text on a frozen encoder (LiT-decoder, Beyer et al. 2023).

    A `LiTDecoderBackbone` (frozen image tower + small decoder) trained with
    teacher forcing on a mixture of tasks, each named by a text prompt:
    classification (the target is the class name), captioning, question
    answering, text reading; the loss covers the target only
    (`LiTDecoderPreprocessor`). Decoding is autoregressive, KV-cached and
    starts from each example's prompt (the cache is prefilled in one call).

    Args:
        backbone: a `LiTDecoderBackbone`.
        preprocessor: a `LiTDecoderPreprocessor` (needed for the text helpers).
        seed: seed for sampling-based generation defaults.

    `fit` takes `{"images", "prompts", "targets"}` through the preprocessor
    (e.g. a `keras_siglip.data.mix_tasks` dataset), or `(inputs, y)` with `y`
    the target ids (0 = unscored). Loss `CaptioningLoss`, metric
    `TokenAccuracy` (on the targets).
    """

    backbone_cls = LiTDecoderBackbone
    preprocessor_cls = LiTDecoderPreprocessor

    def __init__(self, backbone, preprocessor=None, seed=None, masked_pred_prob=0.0, **kwargs):
        super().__init__(backbone, preprocessor, masked_pred_prob=masked_pred_prob, seed=seed, **kwargs)

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Build from a preset folder, URI or name.

        Args:
            preset: a two-tower `SigLIPBackbone` preset (e.g.
                `"siglip2_shapes_tiny"` or a converted checkpoint): its image
                tower (frozen), tokenizer and image converter, with a new
                decoder sized by `decoder_width`, `decoder_depth`,
                `decoder_num_heads`, `decoder_mlp_dim` (required) and
                `max_length`, `decoder_bias`, `decoder_dropout`,
                `freeze_encoder` (optional);
                `sequence_length` sets the preprocessor's (default 32).
                Or a saved `LiTDecoder` preset: the whole task.
            load_weights: load the saved weights (else random ones).
        """
        resolved, _, backbone_cls = preset_loader(preset)
        if not (isinstance(backbone_cls, type) and issubclass(backbone_cls, SigLIPBackbone)):
            return super().from_preset(resolved, load_weights=load_weights, **kwargs)
        decoder_keys = ("decoder_width", "decoder_depth", "decoder_num_heads", "decoder_mlp_dim")
        missing = [key for key in decoder_keys if key not in kwargs]
        if missing:
            raise ValueError(
                f"Preset {preset!r} is a two-tower SigLIP model: a new decoder is built on its image "
                f"tower, so pass its sizes; missing {missing}."
            )
        sequence_length = kwargs.pop("sequence_length", 32)
        optional = ("decoder_bias", "decoder_dropout", "freeze_encoder")
        backbone_kwargs = {key: kwargs.pop(key) for key in (*decoder_keys, *optional) if key in kwargs}
        backbone_kwargs["max_length"] = kwargs.pop("max_length", sequence_length)
        siglip = SigLIPBackbone.from_preset(resolved, load_weights=load_weights)
        preprocessor = kwargs.pop("preprocessor", None)
        if preprocessor is None:
            reference = SigLIPPreprocessor.from_preset(resolved)
            preprocessor = LiTDecoderPreprocessor(
                reference.tokenizer, reference.image_converter, sequence_length=sequence_length
            )
        backbone = LiTDecoderBackbone(
            siglip.vision_encoder,
            vocabulary_size=preprocessor.tokenizer.vocabulary_size(),
            **backbone_kwargs,
        )
        return cls(backbone, preprocessor, **kwargs)

    # === Prompted tasks ===

    def _needs_text(self):
        if self.preprocessor is None or self.preprocessor.tokenizer is None:
            raise ValueError("This helper needs a LiTDecoderPreprocessor with a tokenizer.")
        return self.preprocessor

    def _class_sequences(self, class_names, prompt):
        """Class names scored as targets after the task prompt (not scored)."""
        token_ids, loss_mask = self._needs_text().build_sequences([prompt] * len(class_names), class_names)
        targets = np.where(loss_mask.numpy(), token_ids.numpy(), 0)
        return token_ids.numpy().astype(np.int32), targets.astype(np.int32)

    def answer(self, images, prompts, max_length=None, **generate_kwargs):
        """Answers to `prompts` about `images` (any task): a list of B strings.

        Args:
            images: B raw images (or model-ready inputs).
            prompts: one prompt for every image, or B prompts.
            max_length: generated tokens (default: the preprocessor's
                `sequence_length` minus the prompt width).
            **generate_kwargs: as in `generate` (strategy, num_beams, ...).
        """
        preprocessor = self._needs_text()
        batch = len(self._image_list(images))
        prompts = [prompts] * batch if isinstance(prompts, str) else list(prompts)
        if len(prompts) != batch:
            raise ValueError(f"Got {len(prompts)} prompts for {batch} images.")
        prompt_ids = preprocessor.prompt_ids(prompts)
        if max_length is None:
            max_length = self._default_length(None) - prompt_ids.shape[1]
        return self.generate(images, max_length=max_length, prompt_ids=prompt_ids, **generate_kwargs)

    def answer_accuracy(self, images, prompts, answers, **generate_kwargs):
        """Exact-match accuracy of `answer(images, prompts)` against `answers`
        (after the tokenizer's normalisation: lowercase, no punctuation)."""
        predicted = self.answer(images, prompts, **generate_kwargs)
        expected = self._needs_text().detokenize(
            self.preprocessor.build_sequences([""] * len(answers), list(answers))[0].numpy()
        )
        return float(np.mean([p.strip() == e.strip() for p, e in zip(predicted, expected)]))

    @staticmethod
    def _image_list(images):
        if isinstance(images, dict):
            return next(iter(images.values()))
        return images[None] if getattr(images, "ndim", 4) == 3 else images

