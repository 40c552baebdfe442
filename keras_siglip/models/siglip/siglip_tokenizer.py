import re
import string

import keras
import numpy as np
from keras_hub.tokenizers import SentencePieceTokenizer

from keras_siglip.models.siglip.siglip_backbone import SigLIPBackbone
from keras_siglip.utils.preset import PresetMixin

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_TF_PUNCTUATION = "[" + re.escape(string.punctuation) + "]"


def normalize_text(text, lowercase=True, canonicalize=True):
    """Python form: `_` -> space, drop ASCII punctuation, lowercase, collapse spaces."""
    if canonicalize:
        text = text.replace("_", " ").translate(_PUNCTUATION)
    if lowercase:
        text = text.lower()
    if canonicalize:
        text = re.sub(r"\s+", " ", text).strip()
    return text


def normalize_text_tf(text, lowercase=True, canonicalize=True):
    """TensorFlow form of `normalize_text`, for tf.data and graph tracing."""
    import tensorflow as tf

    if canonicalize:
        text = tf.strings.regex_replace(text, "_", " ")
        text = tf.strings.regex_replace(text, _TF_PUNCTUATION, "")
    if lowercase:
        text = tf.strings.lower(text, encoding="utf-8")
    if canonicalize:
        text = tf.strings.strip(tf.strings.regex_replace(text, r"\s+", " "))
    return text


def check_texts(texts):
    """Raise a clear error unless `texts` is one string or a flat batch of them.

    Accepts `str` / UTF-8 `bytes`, a list or tuple of them, a 0-D / 1-D numpy
    string array, or a TensorFlow string tensor (in `tf.data`). Anything else
    (None, numbers, nested lists, invalid UTF-8) would otherwise fail deep in
    TensorFlow or JAX with an unrelated message, or be tokenized as its repr.
    """
    if isinstance(texts, (str, bytes)):
        items = [texts]
    elif isinstance(texts, (list, tuple)):
        items = texts
    elif isinstance(texts, np.ndarray):
        if texts.dtype.kind not in "USO" or texts.ndim > 1:
            raise ValueError(f"Texts must be a string or a 1-D batch of strings; got an array of dtype "
                             f"{texts.dtype} and shape {texts.shape}.")
        items = texts.reshape(-1).tolist()
    elif hasattr(texts, "dtype"):  # a tensor: only TensorFlow holds strings
        if "string" not in str(texts.dtype) or len(getattr(texts, "shape", ())) > 1:
            raise ValueError(f"Texts must be a string or a 1-D batch of strings; got a tensor of dtype "
                             f"{texts.dtype} and shape {tuple(texts.shape)}.")
        return
    else:
        raise ValueError(f"Texts must be a string or a list of strings; got {type(texts).__name__} {texts!r:.60}.")
    for i, text in enumerate(items):
        if isinstance(text, bytes):
            try:
                text.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"Text {i} is bytes that are not valid UTF-8: {text!r:.60}.") from None
        elif not isinstance(text, str):
            raise ValueError(f"Text {i} is {type(text).__name__} {text!r:.60}, not a string.")


@keras.saving.register_keras_serializable(package="keras_siglip")
class SigLIPTokenizer(PresetMixin, SentencePieceTokenizer):
    """SentencePiece tokenizer with SigLIP's text normalisation and special tokens.

    Args:
        proto: SentencePiece model (path or serialized bytes). Vocabularies in
            use: T5 `cc_en.32000` and mT5 `mc4.250000` (SigLIP), Gemma 256k
            (SigLIP 2). All have their end-of-sequence piece at id 1: `</s>`
            in T5 / mT5, `<eos>` in Gemma (the end token is whichever the
            vocabulary has).
        pad_token: `"</s>"` for SigLIP 1 (pads with EOS), `"<pad>"` for SigLIP 2.
        lowercase: lowercase texts (all released checkpoints expect it).
        canonicalize: also replace `_` by space, drop ASCII punctuation and
            collapse whitespace (HF's SigLIP tokenizer, keras-hub, open_clip).

    Output: token ids without BOS or EOS; `SigLIPPreprocessor` packs them.
    """

    backbone_cls = SigLIPBackbone  # lets `from_preset` find this class in a SigLIP preset

    def __init__(self, proto=None, pad_token="</s>", lowercase=True, canonicalize=True, **kwargs):
        self.pad_token = pad_token
        self.lowercase = lowercase
        self.canonicalize = canonicalize
        self._add_special_token("</s>", "end_token")
        self._add_special_token(pad_token, "pad_token")
        super().__init__(proto=proto, **kwargs)

    @classmethod
    def from_texts(cls, texts, vocabulary_size, model_type="word", pad_token="<pad>", **kwargs):
        """Train a SentencePiece vocabulary on `texts` (normalised first):
        pad 0, `</s>` 1, `<unk>` 2, no BOS. `model_type` "word", "unigram" or
        "bpe"; word models may come out smaller than `vocabulary_size` (the
        distinct words plus the three specials). For small domains (the shapes
        data, tests); real models load their published vocabulary."""
        import io

        import sentencepiece

        texts = [normalize_text(str(t)) for t in texts]
        if not texts:
            raise ValueError("from_texts needs at least one text.")
        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=int(vocabulary_size),
            model_type=model_type, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            hard_vocab_limit=False, minloglevel=2,
        )
        return cls(model.getvalue(), pad_token=pad_token, **kwargs)

    def _update_special_token_ids(self):
        # Gemma's vocabulary names its end-of-sequence piece `<eos>`, T5's `</s>`.
        if self.end_token == "</s>" and "</s>" not in self.get_vocabulary() and "<eos>" in self.get_vocabulary():
            self.end_token = "<eos>"
        super()._update_special_token_ids()

    def __call__(self, inputs, *args, **kwargs):
        check_texts(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def normalize(self, inputs):
        if self._use_tf_workflow():
            return normalize_text_tf(inputs, self.lowercase, self.canonicalize)
        norm = lambda s: normalize_text(
            s.decode("utf-8") if isinstance(s, bytes) else s, self.lowercase, self.canonicalize
        )
        if isinstance(inputs, (str, bytes)):
            return norm(inputs)
        if not isinstance(inputs, (list, tuple)):
            inputs = np.asarray(inputs).tolist()
            if not isinstance(inputs, list):
                return norm(inputs)
        return [norm(s) for s in inputs]

    def tokenize(self, inputs):
        self._refresh_tf_tokenizer()
        return super().tokenize(self.normalize(inputs))

    def detokenize(self, inputs):
        self._refresh_tf_tokenizer()
        return super().detokenize(inputs)

    def _refresh_tf_tokenizer(self):
        """Build the tf_text tokenizer anew when a `tf.data` pipeline traces this layer.

        TensorFlow deletes its eager kernels, and with them the tf_text
        SentencePiece resource, whenever the global seed is set
        (`keras.utils.set_random_seed`, `tf.random.set_seed`); a tokenizer built
        before that would fail inside the next pipeline ("SentencepieceResource
        does not exist"). One build per trace, outside the traced graph.
        """
        import tensorflow as tf

        if self.proto is not None and self._use_tf_workflow() and not tf.executing_eagerly():
            with tf.init_scope():
                self._set_proto_tf(self.proto)

    def get_config(self):
        config = super().get_config()
        config.update(
            pad_token=self.pad_token, lowercase=self.lowercase, canonicalize=self.canonicalize
        )
        return config
