"""`score_token_log_probs` with causal LMs: a keras-hub `CausalLM` (token ids and
texts) and a Hugging Face causal LM, both tiny and random. Reference: each token's
log-probability recomputed from the logits after its prefix alone (no shifting, and
no padding before it), so an off-by-one alignment or a padding leak shows."""

import keras
import numpy as np
import pytest

from keras_siglip.analysis import score_token_log_probs
from tests.helpers import tiny_gemma_causal_lm

DOCUMENTS = [[2, 5, 9, 4, 7, 11], [2, 3, 3, 8], [2, 12, 6, 10, 5, 4, 9, 13, 6]]


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def prefix_reference(last_logits, documents):
    """log p(w_t | w_<t) for t >= 1 from `last_logits(prefix)`, the logits after a prefix."""
    return [np.array([log_softmax(last_logits(doc[:t]))[doc[t]] for t in range(1, len(doc))])
            for doc in documents]


@pytest.fixture(scope="module")
def keras_hub_lm():
    return tiny_gemma_causal_lm(num_layers=2)


def keras_hub_prefix_logits(lm, documents):
    """`last_logits(prefix)` for every prefix of `documents`, from one forward pass:
    each prefix in its own row, right-padded with the padding masked (a causal LM's
    logits at a position never see the positions after it). One input shape: on
    JAX, every distinct shape of an eager call compiles each op again."""
    prefixes = [tuple(doc[:t]) for doc in documents for t in range(1, len(doc))]
    ids = np.zeros((len(prefixes), max(map(len, prefixes))), "int32")
    mask = np.zeros_like(ids)
    for row, prefix in enumerate(prefixes):
        ids[row, : len(prefix)], mask[row, : len(prefix)] = prefix, 1
    logits = keras.ops.convert_to_numpy(lm({"token_ids": ids, "padding_mask": mask}))
    return {prefix: logits[row, len(prefix) - 1] for row, prefix in enumerate(prefixes)}


def test_keras_hub_causal_lm_scores_each_token_given_its_prefix(keras_hub_lm):
    after = keras_hub_prefix_logits(keras_hub_lm, DOCUMENTS)
    got = score_token_log_probs(keras_hub_lm, DOCUMENTS, batch_size=2, progress=False)
    want = prefix_reference(lambda prefix: after[tuple(prefix)], DOCUMENTS)
    assert [g.shape for g in got] == [(5,), (3,), (8,)]  # the first token is context only
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5)
    with pytest.raises(ValueError, match="text only"):
        score_token_log_probs(keras_hub_lm, DOCUMENTS, images=np.zeros((3, 8, 8, 3)), progress=False)


def test_keras_hub_batches_come_in_few_shapes(keras_hub_lm, monkeypatch):
    """JAX and XLA compile a program per input shape: batches are padded to full
    rows and to lengths in steps of 64 tokens (results as above)."""
    from keras_siglip.analysis import fractal

    shapes, call = [], fractal._causal_lm_logits
    monkeypatch.setattr(fractal, "_causal_lm_logits", lambda lm, kind, ids, pad: shapes.append(ids.shape)
                        or call(lm, kind, ids, pad))
    documents = DOCUMENTS + [[2] + [3 + i % 17 for i in range(67)]]  # 68 tokens: the next step, 128
    got = score_token_log_probs(keras_hub_lm, documents, batch_size=3, progress=False)
    assert shapes == [(3, 64), (3, 128)]
    # Each document alone (in a batch padded with empty rows: the same two shapes, no new compile).
    one_by_one = [score_token_log_probs(keras_hub_lm, [doc], batch_size=3, progress=False)[0] for doc in documents]
    assert shapes[2:] == [(3, 64)] * 3 + [(3, 128)]
    for g, w in zip(got, one_by_one):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_keras_hub_texts_are_tokenized_with_the_start_token_and_never_truncated(gemma_proto):
    import keras_hub

    tokenizer = keras_hub.models.GemmaTokenizer(proto=gemma_proto)
    lm = tiny_gemma_causal_lm(tokenizer, seed=1, sequence_length=4)  # shorter than a text
    texts = ["a photo of a red circle", "two blue squares at the bottom"]
    ids = [[tokenizer.start_token_id] + [int(t) for t in np.asarray(tokenizer(text))] for text in texts]
    from_texts = score_token_log_probs(lm, texts=texts, progress=False)
    from_ids = score_token_log_probs(lm, ids, pad_id=tokenizer.pad_token_id, progress=False)
    assert [len(x) for x in from_texts] == [len(i) - 1 for i in ids]  # every word scored, none cut at 4
    for a, b in zip(from_texts, from_ids):
        np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="two tokens"):
        score_token_log_probs(lm, texts=[""], progress=False)


def test_hugging_face_causal_lm_scores_each_token_given_its_prefix():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=20, n_positions=16, n_embd=16, n_layer=2, n_head=2)).eval()

    def last_logits(prefix):
        with torch.no_grad():
            return model(input_ids=torch.tensor([prefix])).logits[0, -1].numpy()

    got = score_token_log_probs(model, DOCUMENTS, batch_size=3, pad_id=0, progress=False)
    for g, w in zip(got, prefix_reference(last_logits, DOCUMENTS)):
        np.testing.assert_allclose(g, w, atol=1e-5)
    with pytest.raises(ValueError, match="its tokenizer"):
        score_token_log_probs(model, texts=["a red circle"], progress=False)
