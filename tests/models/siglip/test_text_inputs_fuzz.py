"""Property tests: any text batch a user may pass becomes well-formed token ids
(or a clear ValueError); token ids of the wrong type never reach the model."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from keras import ops

from keras_siglip.models import SigLIPImageConverter, SigLIPPreprocessor, SigLIPTokenizer
from tests.helpers import tiny_backbone

LENGTH = 8
EOS = 1


@pytest.fixture(scope="module", params=["</s>", "<pad>"], ids=["siglip1_pad_eos", "siglip2_pad_0"])
def preprocessor(request, t5_proto):
    tokenizer = SigLIPTokenizer(proto=t5_proto, pad_token=request.param)
    return SigLIPPreprocessor(tokenizer, SigLIPImageConverter(image_size=(32, 32)), sequence_length=LENGTH)


# Any unicode (surrogates cannot be UTF-8 encoded and are not valid text).
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


@given(batch=st.lists(texts, max_size=5))
def test_any_unicode_batch_packs_to_well_formed_ids(preprocessor, batch):
    ids = ops.convert_to_numpy(preprocessor({"texts": batch})["token_ids"])
    vocabulary = preprocessor.tokenizer.vocabulary_size()
    assert ids.shape == (len(batch), LENGTH) and ids.dtype == np.int32
    assert ((ids >= 0) & (ids < vocabulary)).all()
    pad = preprocessor.tokenizer.pad_token_id
    for row in ids:
        real = row[row != pad] if pad != EOS else row[: np.argmax(row == EOS) + 1]
        assert real[-1] == EOS  # the sticky EOS is always kept, however long the text


@given(text=texts)
def test_one_string_and_its_bytes_pack_the_same(preprocessor, text):
    one = ops.convert_to_numpy(preprocessor.pack_texts(text))
    assert one.shape == (LENGTH,)
    np.testing.assert_array_equal(one, ops.convert_to_numpy(preprocessor.pack_texts([text.encode("utf-8")]))[0])


not_texts = st.one_of(
    st.none(), st.integers(), st.floats(allow_nan=True), st.booleans(),
    st.lists(st.one_of(st.none(), st.integers(), st.floats(), st.lists(texts, max_size=2)), min_size=1, max_size=3),
    st.lists(texts, max_size=2).map(lambda xs: xs + [None]),
    st.binary(min_size=1, max_size=8).filter(lambda b: not _utf8(b)).map(lambda b: [b]),
    st.just(np.zeros((2, 2), "U1")), st.just(np.arange(3)),
)


def _utf8(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@given(value=not_texts)
def test_anything_else_is_a_clear_error(preprocessor, value):
    with pytest.raises(ValueError, match=r"(?i)text|string|utf-8"):
        preprocessor({"texts": value})
    with pytest.raises(ValueError, match=r"(?i)text|string|utf-8"):
        preprocessor.tokenizer(value)


@pytest.mark.parametrize("empty", [[], (), np.array([], dtype=str)], ids=["list", "tuple", "array"])
def test_an_empty_batch_gives_zero_rows(preprocessor, empty):
    assert tuple(ops.shape(preprocessor({"texts": empty})["token_ids"])) == (0, LENGTH)
    assert tuple(ops.shape(preprocessor.pack_texts(empty))) == (0, LENGTH)


def test_float_token_ids_are_refused_not_truncated():
    backbone = tiny_backbone()
    ids = np.full((2, 8), 1.7)
    with pytest.raises(ValueError, match="Token ids must be integers; got dtype float64"):
        backbone.encode_texts(ids)
    with pytest.raises(ValueError, match="must be integers"):
        backbone({"images": np.zeros((2, 32, 32, 3), "float32"), "token_ids": ids.astype("float32")})
    with pytest.raises(ValueError, match="must be integers"):
        backbone.predict({"images": np.zeros((2, 32, 32, 3), "float32"), "token_ids": ids}, verbose=0)
    assert ops.convert_to_numpy(backbone.encode_texts(ids.astype("int64"))).shape[0] == 2
