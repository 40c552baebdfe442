"""PaliGemma's tokenizer: Gemma SentencePiece + 1024 `<locNNNN>` + 128 `<segNNN>`.

Gemma's special ids: `<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3. The released
vocabulary (257,152 pieces) appends the location tokens `<loc0000>`..`<loc1023>`
(ids 256000..257023) and the segmentation tokens `<seg000>`..`<seg127>` (ids
257024..257151) as user-defined pieces (big_vision `tokensets=("loc", "seg")`),
so they are matched whole in text and never split.
"""

import io

import keras
from keras_hub.tokenizers import SentencePieceTokenizer

from keras_siglip.models.pali_gemma.pali_gemma_backbone import PaliGemmaBackbone
from keras_siglip.models.siglip.siglip_tokenizer import check_texts
from keras_siglip.utils.preset import PresetMixin

NUM_LOC_TOKENS = 1024
NUM_SEG_TOKENS = 128
LOC_TOKENS = tuple(f"<loc{i:04d}>" for i in range(NUM_LOC_TOKENS))
SEG_TOKENS = tuple(f"<seg{i:03d}>" for i in range(NUM_SEG_TOKENS))
# big_vision tokenizes the prefix/suffix separator on its own
# (`tok(septok, text="\n")`); Gemma has "\n" as a single (user-defined) piece.
SEPARATOR = "\n"


def train_gemma_sentencepiece(texts, vocabulary_size, model_type="bpe", user_defined_symbols=(SEPARATOR,)):
    """A SentencePiece model (serialized bytes) in Gemma's layout, trained on `texts`.

    `<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3, then `user_defined_symbols`
    (matched whole, never split), byte fallback, identity normalisation, no
    dummy prefix, digits split: what `keras_hub.models.GemmaTokenizer` and
    `PaliGemmaTokenizer` expect. `vocabulary_size` is an upper bound.
    """
    import sentencepiece

    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("Training a SentencePiece model needs at least one text.")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=int(vocabulary_size),
        model_type=model_type, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=list(user_defined_symbols),
        normalization_rule_name="identity", add_dummy_prefix=False,
        remove_extra_whitespaces=False, byte_fallback=True, split_digits=True,
        hard_vocab_limit=False, minloglevel=2,
    )
    return model.getvalue()


@keras.saving.register_keras_serializable(package="keras_siglip")
class PaliGemmaTokenizer(PresetMixin, SentencePieceTokenizer):
    """SentencePiece tokenizer of PaliGemma 1 and 2 (Gemma's, plus loc/seg tokens).

    Args:
        proto: SentencePiece model (path or serialized bytes). It must hold
            `<pad>`, `<eos>`, `<bos>`, the 1024 `<locNNNN>` and the 128
            `<segNNN>` pieces, each family at consecutive ids (a `ValueError`
            names what is missing otherwise).

    Attributes:
        start_token_id, end_token_id, pad_token_id: BOS, EOS and pad ids.
        loc_token_offset: id of `<loc0000>` (`<locN>` is `offset + N`).
        seg_token_offset: id of `<seg000>`.
        separator_ids: ids of the prefix/suffix separator "\\n" tokenized alone.

    Tokenizes without BOS/EOS and without any text normalisation (Gemma's
    identity normaliser); `PaliGemmaCausalLMPreprocessor` packs the sequences.
    """

    backbone_cls = PaliGemmaBackbone

    def __init__(self, proto=None, **kwargs):
        self._add_special_token("<bos>", "start_token")
        self._add_special_token("<eos>", "end_token")
        self._add_special_token("<pad>", "pad_token")
        self.loc_token_offset = None
        self.seg_token_offset = None
        self.separator_ids = None
        super().__init__(proto=proto, **kwargs)

    def set_proto(self, proto):
        super().set_proto(proto)
        if self.proto is None:
            return
        self.loc_token_offset = self._check_token_family(LOC_TOKENS, "location")
        self.seg_token_offset = self._check_token_family(SEG_TOKENS, "segmentation")
        self.separator_ids = [int(i) for i in self._sentence_piece_spm.Encode(SEPARATOR)]
        if not self.separator_ids or self.unk_token_id in self.separator_ids:
            raise ValueError(
                "This SentencePiece model cannot encode the separator '\\n' (PaliGemma "
                "tokenizes it as its own piece); train it with '\\n' as a user-defined symbol."
            )

    def __call__(self, inputs, *args, **kwargs):
        check_texts(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def tokenize(self, inputs):
        self._refresh_tf_tokenizer()
        return super().tokenize(inputs)

    def detokenize(self, inputs):
        self._refresh_tf_tokenizer()
        return super().detokenize(inputs)

    def _refresh_tf_tokenizer(self):
        """Rebuild the tf_text SentencePiece op when a `tf.data` pipeline traces
        this layer: setting the global seed (`keras.utils.set_random_seed`)
        deletes TensorFlow's eager kernels and with them the op's resource (as
        `SigLIPTokenizer` does)."""
        import tensorflow as tf

        if self.proto is not None and self._use_tf_workflow() and not tf.executing_eagerly():
            with tf.init_scope():
                self._set_proto_tf(self.proto)

    @property
    def unk_token_id(self):
        return self._unk_token_id

    def _check_token_family(self, tokens, what):
        ids = [self._token_to_id_map.get(token) for token in tokens]
        missing = [token for token, i in zip(tokens, ids) if i is None]
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise ValueError(
                f"This SentencePiece model is not a PaliGemma vocabulary: it lacks {len(missing)} "
                f"of the {len(tokens)} {what} tokens ({shown}). PaliGemma's tokenizer is Gemma's "
                f"with {NUM_LOC_TOKENS} <locNNNN> and {NUM_SEG_TOKENS} <segNNN> pieces appended "
                "(`PaliGemmaTokenizer.from_texts` trains a small one)."
            )
        if ids != list(range(ids[0], ids[0] + len(ids))):
            raise ValueError(
                f"The {what} tokens {tokens[0]}..{tokens[-1]} must have consecutive ids; "
                f"this SentencePiece model orders them otherwise."
            )
        return ids[0]

    @classmethod
    def from_texts(cls, texts, vocabulary_size=2000, model_type="bpe", **kwargs):
        """Train a small PaliGemma-style SentencePiece model on `texts`
        (`train_gemma_sentencepiece` with "\\n" and the 1024 + 128 loc/seg
        tokens as user-defined pieces). For tests and small domains; real models
        load Gemma's published vocabulary. `vocabulary_size` is an upper bound
        (the model may come out smaller).
        """
        proto = train_gemma_sentencepiece(texts, vocabulary_size, model_type,
                                          user_defined_symbols=[SEPARATOR, *LOC_TOKENS, *SEG_TOKENS])
        return cls(proto, **kwargs)
