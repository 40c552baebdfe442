"""PaliGemmaCausalLM: generation against HF, cache/batching invariants, the
big_vision text layout and loss, fit, sampling, EOS, detection parsing, presets.

Generation parity: tiny random HF `PaliGemmaForConditionalGeneration` models
(Gemma 1, and Gemma 2 with soft caps that bite and a 4-token sliding window on
its even layers, shorter than the 16 image + 6 prompt + 10 generated tokens),
converted with `load_pali_gemma(..., sliding_window="config")`, and HF's
`generate(do_sample=False)` on the same images and prompt ids. The greedy ids
must be identical; the logits along the generated path agree to ATOL.
Measured max abs logit differences (CPU, float32, logits up to ~5),
Gemma 1 / Gemma 2: jax 9.5e-7 / 1.2e-6, tensorflow 1.3e-6 / 1.3e-6,
torch 1.1e-6 / 1.2e-6.
"""

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import keras  # noqa: E402
from keras import ops  # noqa: E402

from keras_siglip.convert.pali_gemma import load_pali_gemma  # noqa: E402
from keras_siglip.models.cappa.cappa_generation import compile_stateless  # noqa: E402
from keras_siglip.models.pali_gemma import (  # noqa: E402
    PaliGemmaBackbone,
    PaliGemmaCausalLM,
    PaliGemmaCausalLMPreprocessor,
    PaliGemmaImageConverter,
    PaliGemmaTokenizer,
    PrefixLMLoss,
    detections_to_text,
    parse_detections,
)
from keras_siglip.models.pali_gemma.pali_gemma_generation import left_align  # noqa: E402
from tests.helpers import numpy  # noqa: E402
from tests.pali_gemma_reference import (  # noqa: E402
    GEMMA_1,
    GEMMA_2,
    IMAGE_TOKEN,
    NUM_IMAGE_TOKENS,
    TEXTS,
    build_hf_pali_gemma,
    random_images,
    random_prompts,
    uncached_greedy,
)

ATOL = 1e-5
BOS, EOS, PAD = 2, 1, 0
NEW_TOKENS = 10


def _converted(tmp_path_factory, name, text, seed):
    model = build_hf_pali_gemma(text, seed)
    folder = str(tmp_path_factory.mktemp(name))
    model.save_pretrained(folder, safe_serialization=True)
    return model, load_pali_gemma(folder, sliding_window="config")


@pytest.fixture(scope="module")
def gemma1(tmp_path_factory):
    return _converted(tmp_path_factory, "gemma1", GEMMA_1, 10)


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    return _converted(tmp_path_factory, "gemma2", GEMMA_2, 11)


@pytest.fixture(scope="module")
def gemma2_lm(gemma2):
    return PaliGemmaCausalLM(gemma2[1])


# === Generation against Hugging Face ===


@pytest.mark.parametrize("which", ["gemma1", "gemma2"])
def test_greedy_matches_transformers(request, which):
    """Greedy ids identical to HF `generate(do_sample=False)`; logits along the
    generated path equal HF's per-step logits."""
    model, backbone = request.getfixturevalue(which)
    images = random_images(2, seed=3)
    prompt, _ = random_prompts([6, 6], seed=4, avoid=(EOS,))
    lm = PaliGemmaCausalLM(backbone)
    ours = lm.generate(images, token_ids=prompt, max_new_tokens=NEW_TOKENS)

    image_ids = np.full((2, NUM_IMAGE_TOKENS), IMAGE_TOKEN, "int64")
    input_ids = np.concatenate([image_ids, prompt], axis=1)
    model.generation_config.update(eos_token_id=EOS, pad_token_id=PAD, bos_token_id=BOS)
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.from_numpy(input_ids),
            pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
            attention_mask=torch.ones(input_ids.shape, dtype=torch.long),
            token_type_ids=torch.zeros(input_ids.shape, dtype=torch.long),
            do_sample=False, max_new_tokens=NEW_TOKENS, output_logits=True, return_dict_in_generate=True,
        )
    theirs = out.sequences.numpy()[:, input_ids.shape[1]:]
    theirs = np.pad(theirs, ((0, 0), (0, NEW_TOKENS - theirs.shape[1])), constant_values=PAD)
    np.testing.assert_array_equal(ours, theirs)
    assert (ours[0] != PAD).sum() >= 8, ours  # a long generation, not an early EOS

    # Logits: our teacher-forced forward over prompt + generated tokens (row 0).
    hf_logits = np.stack([step.numpy() for step in out.logits], axis=1)[0]
    steps = hf_logits.shape[0]
    tokens = np.concatenate([prompt[0], ours[0, : steps - 1]])[None]
    n = tokens.shape[1]
    inputs = dict(images=images[:1], token_ids=tokens.astype("int32"), padding_mask=np.ones((1, n), "int32"),
                  response_mask=(np.arange(n) >= prompt.shape[1]).astype("int32")[None])
    our_logits = numpy(backbone(inputs))[0, prompt.shape[1] - 1:]
    difference = float(np.abs(our_logits - hf_logits).max())
    print(f"{which} {keras.backend.backend()}: max |logit difference| along the greedy path = {difference:.2e}")
    assert difference <= ATOL


# === Cache, batching, padding ===


def test_cached_batched_generation_equals_uncached_one_by_one(gemma2_lm):
    """Prompts of 3, 6 and 5 tokens in one batch (right- or left-padded) give
    the tokens each prompt gives alone, with the cache, and without it (full
    forward recomputed each step). Gemma 2: sliding window and soft caps."""
    lm = gemma2_lm
    images = random_images(3, seed=5)
    lengths = [3, 6, 5]
    prompt, mask = random_prompts(lengths, seed=6, avoid=(EOS,))
    batched = lm.generate(images, token_ids=prompt, padding_mask=mask, max_new_tokens=8)
    # Left padding (and an explicit mask) gives the same.
    left = np.stack([np.roll(row, len(row) - n) for row, n in zip(prompt, lengths)])
    left_mask = np.stack([np.roll(row, len(row) - n) for row, n in zip(mask, lengths)])
    np.testing.assert_array_equal(lm.generate(images, token_ids=left, padding_mask=left_mask, max_new_tokens=8),
                                  batched)
    for row in range(len(lengths)):
        # One by one (batch 1, padded to the batch width: same compiled shape).
        alone = lm.generate(images[row], token_ids=prompt[row], padding_mask=mask[row], max_new_tokens=8)
        np.testing.assert_array_equal(alone, batched[row])
    np.testing.assert_array_equal(batched, uncached_greedy(lm.backbone, images, prompt, mask, 8))
    assert (batched != PAD).sum(axis=1).max() == 8


def reference_beam_search(backbone, image, prompt, beams, steps):
    """Beam search for one (image, prompt) without a cache, with numpy: each step
    extends every live beam by every token (float64 log-softmax of the full
    forward's logits), a finished beam (EOS) carries on with its score and pads,
    and the `beams` most likely candidates survive. Returns the best beam's
    `steps` ids and its log-probability."""
    forward = compile_stateless(backbone, backbone)
    length, width = len(prompt), len(prompt) + steps
    positions = np.arange(width)[None]
    alive = [((), 0.0, False)]  # (generated ids, log-probability, finished)
    for step in range(steps):
        candidates = [(ids + (PAD,), score, True) for ids, score, finished in alive if finished]
        live = [(ids, score) for ids, score, finished in alive if not finished]
        tokens = np.zeros((len(live), width), "int32")
        tokens[:, :length] = prompt
        for row, (ids, _) in enumerate(live):
            tokens[row, length:length + step] = ids
        inputs = dict(images=np.repeat(image[None], len(live), 0), token_ids=tokens,
                      padding_mask=np.broadcast_to(positions < length + step, tokens.shape).astype("int32"),
                      response_mask=np.broadcast_to(positions >= length, tokens.shape).astype("int32"))
        logits = numpy(forward({k: ops.convert_to_tensor(v) for k, v in inputs.items()}))
        logits = logits[:, length + step - 1].astype(np.float64)
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        for (ids, score), row in zip(live, log_probs):
            candidates += [(ids + (token,), score + row[token], token == EOS) for token in range(len(row))]
        alive = sorted(candidates, key=lambda c: -c[1])[:beams]
    best, score, _ = alive[0]
    return np.array(best, "int32"), score


def test_beam_search_equals_a_reference_beam_search_without_cache(gemma2_lm):
    """Beam search with the cache (2 prompts of 3 and 5 tokens in one batch,
    Gemma 2: sliding window, soft caps) returns the best beam of an uncached
    numpy beam search; 1 beam is greedy decoding, and 3 beams find more likely
    continuations than greedy's here (float32 vs float64 scores: 1e-5)."""
    lm = gemma2_lm
    images = random_images(2, seed=9)
    lengths, steps = [3, 5], 5
    prompt, mask = random_prompts(lengths, seed=10, avoid=(EOS,))
    greedy = lm.generate(images, token_ids=prompt, padding_mask=mask, max_new_tokens=steps)
    np.testing.assert_array_equal(
        lm.generate(images, token_ids=prompt, padding_mask=mask, max_new_tokens=steps, strategy="beam", num_beams=1),
        greedy)
    beam = lm.generate(images, token_ids=prompt, padding_mask=mask, max_new_tokens=steps, strategy="beam",
                       num_beams=3)
    gains = []
    for row, n in enumerate(lengths):
        expected, score = reference_beam_search(lm.backbone, images[row], prompt[row, :n], 3, steps)
        np.testing.assert_array_equal(beam[row], expected)
        _, greedy_score = reference_beam_search(lm.backbone, images[row], prompt[row, :n], 1, steps)
        gains.append(score - greedy_score)
        assert not np.array_equal(beam[row], greedy[row])
    assert min(gains) > 1e-3, gains


def test_left_align_puts_pads_first_for_any_padding_side():
    values = np.array([[5, 6, 0, 0], [0, 7, 0, 8], [0, 0, 9, 4]], "int32")
    valid = (values != 0).astype("int32")
    aligned, aligned_valid = left_align(values, valid)
    np.testing.assert_array_equal(numpy(aligned), [[0, 0, 5, 6], [0, 0, 7, 8], [0, 0, 9, 4]])
    np.testing.assert_array_equal(numpy(aligned_valid), [[0, 0, 1, 1]] * 3)


def _swap_rows(weight, a, b):
    value = numpy(weight).copy()
    value[[a, b]] = value[[b, a]]
    weight.assign(value)


def test_eos_stops_rows(gemma2_lm):
    """Relabel a token the model emits as EOS (swap its tied embedding row with
    EOS's): rows stop right there and are padded, the others run on."""
    lm = gemma2_lm
    images = random_images(3, seed=5)
    prompt, mask = random_prompts([3, 6, 5], seed=6, avoid=(EOS,))  # the shapes compiled above
    before = lm.generate(images, token_ids=prompt, padding_mask=mask, max_new_tokens=8)
    others = before[1:].ravel()
    candidates = [t for t in before[0, 1:5] if t not in others and t not in prompt and t != EOS]
    assert candidates, before
    token = int(candidates[0])
    stop = int(np.flatnonzero(before[0] == token)[0])
    embeddings = lm.backbone.decoder.token_embedding.embeddings
    _swap_rows(embeddings, EOS, token)
    try:
        after = lm.generate(images, token_ids=prompt, padding_mask=mask, max_new_tokens=8)
    finally:
        _swap_rows(embeddings, EOS, token)
    relabel = lambda ids: np.where(ids == token, EOS, np.where(ids == EOS, token, ids))  # noqa: E731
    expected = relabel(before)
    expected[0, stop + 1:] = PAD
    np.testing.assert_array_equal(after, expected)
    assert after[0, stop] == EOS and (after[1:] != PAD).all()
    np.testing.assert_array_equal(lm.generate(images, token_ids=prompt, padding_mask=mask, max_new_tokens=8), before)


# === Tokenizer and preprocessor ===


@pytest.fixture(scope="module")
def tokenizer():
    return PaliGemmaTokenizer.from_texts(TEXTS, vocabulary_size=1500)


@pytest.fixture(scope="module")
def preprocessor(tokenizer):
    return PaliGemmaCausalLMPreprocessor(tokenizer, PaliGemmaImageConverter(image_size=(16, 16)), sequence_length=14)


def test_tokenizer_knows_gemma_ids_and_loc_seg_tokens(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.end_token_id, tokenizer.start_token_id) == (0, 1, 2)
    loc, seg = tokenizer.loc_token_offset, tokenizer.seg_token_offset
    assert tokenizer.id_to_token(loc + 123) == "<loc0123>" and tokenizer.id_to_token(seg + 127) == "<seg127>"
    ids = list(numpy(tokenizer.tokenize("<loc0001><loc1023> cat<seg005>")))
    assert ids[:2] == [loc + 1, loc + 1023] and ids[-1] == seg + 5
    assert tokenizer.separator_ids == [tokenizer.token_to_id("\n")]


def test_tokenizer_without_loc_tokens_fails_clearly():
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS), model_writer=model, vocab_size=60, model_type="word",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", hard_vocab_limit=False, minloglevel=2,
    )
    with pytest.raises(ValueError, match=r"lacks 1024 of the 1024 location tokens \(<loc0000>"):
        PaliGemmaTokenizer(model.getvalue())


def test_gemma_sentencepiece_without_loc_tokens_serves_keras_hub_gemma():
    """The one Gemma-layout trainer also makes plain Gemma vocabularies (the
    fractal detection guide's LM): Gemma's special ids, "\\n" whole, bytes
    for unseen characters, lossless round trip."""
    import keras_hub

    from keras_siglip.models.pali_gemma.pali_gemma_tokenizer import train_gemma_sentencepiece

    tokenizer = keras_hub.models.GemmaTokenizer(proto=train_gemma_sentencepiece(TEXTS, 600))
    assert (tokenizer.pad_token_id, tokenizer.end_token_id, tokenizer.start_token_id) == (0, 1, 2)
    assert tokenizer.vocabulary_size() <= 600 and "<loc0000>" not in tokenizer.get_vocabulary()
    text = "a red circle\n  Zürich 2024"
    ids = [int(t) for t in numpy(tokenizer.tokenize(text))]
    assert tokenizer.token_to_id("\n") in ids and tokenizer.detokenize(ids) == text
    with pytest.raises(ValueError, match="at least one text"):
        train_gemma_sentencepiece([], 200)


def test_preprocessor_layout_and_masks(preprocessor, tokenizer):
    """big_vision: `[BOS] prefix "\\n" suffix [EOS] pad`, ar 0/0/1 (pad 1),
    loss on suffix + EOS, packed to L + 1 and shifted; images in [-1, 1]."""
    tok = lambda s: [int(t) for t in numpy(tokenizer.tokenize(s))]  # noqa: E731
    prompt, response = "caption en", "a red circle"
    sep = tokenizer.separator_ids
    full = [BOS] + tok(prompt) + sep + tok(response) + [EOS]
    n_prefix = 1 + len(tok(prompt)) + len(sep)
    length = preprocessor.sequence_length
    images = np.full((1, 20, 24, 3), 255, "uint8")
    x, y, w = preprocessor({"images": images, "prompts": [prompt], "responses": [response]})
    padded = full + [PAD] * (length + 1 - len(full))
    ar = [0] * n_prefix + [1] * (length + 1 - n_prefix)
    loss = [0] * n_prefix + [1] * (len(full) - n_prefix) + [0] * (length + 1 - len(full))
    np.testing.assert_array_equal(numpy(x["token_ids"])[0], padded[:-1])
    np.testing.assert_array_equal(numpy(x["padding_mask"])[0], [1] * len(full) + [0] * (length - len(full)))
    np.testing.assert_array_equal(numpy(x["response_mask"])[0], ar[:-1])
    np.testing.assert_array_equal(numpy(y)[0], padded[1:])
    np.testing.assert_array_equal(numpy(w)[0], loss[1:])
    assert numpy(x["images"]).shape == (1, 16, 16, 3) and np.allclose(numpy(x["images"]), 1.0)
    # The separator is its own token, never merged into the prompt's last piece.
    assert numpy(x["token_ids"])[0, n_prefix - 1] == sep[-1]

    # Too long: cut from the right (big_vision `tolen`), the EOS is lost.
    x, y, w = preprocessor({"prompts": [prompt], "responses": ["a red circle on a blue square " * 3]})
    assert numpy(x["padding_mask"]).all() and EOS not in numpy(y)

    # Generation: prompt only, right-padded, no EOS.
    g = preprocessor.generate_preprocess({"prompts": [prompt, "detect cat"]})
    expected = [BOS] + tok(prompt) + sep
    np.testing.assert_array_equal(numpy(g["token_ids"])[0], expected + [PAD] * (length - len(expected)))
    np.testing.assert_array_equal(numpy(g["padding_mask"])[0], [1] * len(expected) + [0] * (length - len(expected)))


def test_preprocessor_runs_in_tf_data(preprocessor):
    import tensorflow as tf

    data = {"prompts": ["caption en", "detect cat"],
            "responses": ["a red circle", "<loc0001><loc0002><loc0003><loc0004> cat"]}
    eager = preprocessor(data)
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(2).map(preprocessor)
    graph = next(iter(dataset))
    for a, b in zip(keras.tree.flatten(eager), keras.tree.flatten(graph)):
        np.testing.assert_array_equal(numpy(a), np.asarray(b))


def test_loss_is_on_the_suffix_only(preprocessor):
    rng = np.random.default_rng(0)
    x, y, w = preprocessor({"prompts": ["caption en", "detect cat"], "responses": ["a red circle", "cat"]})
    y, w = numpy(y), numpy(w)
    logits = rng.normal(size=(*y.shape, 40)).astype("float32")
    y = y % 40
    loss = PrefixLMLoss()
    reference = float(loss(y, logits, w))
    # numpy: per-example mean over the weighted tokens, then the batch mean.
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, y[..., None], -1)[..., 0]
    np.testing.assert_allclose(reference, np.mean((nll * w).sum(1) / w.sum(1)), rtol=1e-5)
    prefix_changed, suffix_changed = y.copy(), y.copy()
    prefix_changed[0, 0] = (y[0, 0] + 1) % 40  # a prefix target (weight 0)
    suffix = np.flatnonzero(w[0])[0]
    suffix_changed[0, suffix] = (y[0, suffix] + 1) % 40
    assert float(loss(prefix_changed, logits, w)) == reference
    assert float(loss(suffix_changed, logits, w)) != reference


# === Task: fit, sampling, detection, presets ===


@pytest.fixture(scope="module")
def text_lm(preprocessor, tokenizer, gemma1):
    # The converted model's widths (JAX reuses its compiled initialisers), one
    # block per tower (faster compiles).
    config = {**gemma1[1].get_config(), "vocabulary_size": tokenizer.vocabulary_size(), "num_layers": 1,
              "vit_num_layers": 1}
    keras.utils.set_random_seed(0)
    return PaliGemmaCausalLM(PaliGemmaBackbone.from_config(config), preprocessor)


def grammar_allows(kind, generated, tokenizer, vocabulary):
    """Which next ids keep a detect / segment output well formed (4 locations
    [+ 16 segmentation tokens] then a label, per object), by walking back over
    what was generated."""
    loc, seg = tokenizer.loc_token_offset, tokenizer.seg_token_offset
    ids = np.arange(vocabulary)
    is_loc, is_seg = (ids >= loc) & (ids < loc + 1024), (ids >= seg) & (ids < seg + 128)
    run = 0
    for token in reversed(generated):
        if not (loc <= token < loc + 1024 or (kind == "segment" and seg <= token < seg + 128)):
            break
        run += 1
    if not generated:
        return is_loc | (ids == EOS)
    if run == 0:
        return ~is_seg
    if run < 4:
        return is_loc
    if run < (20 if kind == "segment" else 4):
        return is_seg
    return ~(is_loc | is_seg | (ids == EOS))


def well_formed(kind, ids, tokenizer):
    """Every object is 4 locations [+ 16 segmentation tokens] and >= 1 label
    token; an output cut by the length limit (no EOS) may end inside one."""
    ids = [int(t) for t in ids]
    complete = EOS in ids
    ids = ids[:ids.index(EOS)] if complete else ids
    loc, seg = tokenizer.loc_token_offset, tokenizer.seg_token_offset
    pattern = "".join("L" if loc <= t < loc + 1024 else "S" if seg <= t < seg + 128 else "t" for t in ids)
    objects = "(?:LLLLS{16}t+)*" if kind == "segment" else "(?:LLLLt+)*"
    cut = "(?:L{0,4}|LLLLS{0,16})" if kind == "segment" else "L{0,4}"
    return re.fullmatch(objects + ("" if complete else cut), pattern) is not None


@pytest.mark.parametrize("kind", ["detect", "segment"])
def test_output_grammar_decodes_well_formed_objects(preprocessor, tokenizer, gemma1, kind):
    """Greedy decoding under `output_grammar` equals an uncached greedy decoder
    masked by a pure-Python walk of the grammar, and every output is well formed;
    the same random model decodes ill-formed outputs without it."""
    config = {**gemma1[1].get_config(), "vocabulary_size": tokenizer.vocabulary_size(), "num_layers": 1,
              "vit_num_layers": 1}
    keras.utils.set_random_seed(1)
    lm = PaliGemmaCausalLM(PaliGemmaBackbone.from_config(config), preprocessor)
    # Location and segmentation tokens likelier than the rest, so objects start often.
    embedding = lm.backbone.decoder.token_embedding.embeddings
    table = numpy(embedding).copy()
    rng = np.random.default_rng(2)
    table += rng.normal(0, 0.5, table.shape).astype("float32")
    table[tokenizer.loc_token_offset:tokenizer.seg_token_offset + 128] *= 1.5
    embedding.assign(table)
    images = np.random.default_rng(3).integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    prompts = [f"{kind} cat", f"{kind} dog ; cat", f"{kind} square"]
    steps = 26 if kind == "segment" else 12
    _, ours = lm.generate(images, prompts, max_new_tokens=steps, output_grammar=kind, return_token_ids=True)
    _, free = lm.generate(images, prompts, max_new_tokens=steps, return_token_ids=True)
    (model_images, token_ids, mask), _ = lm._generation_inputs(images, prompts, None, None)
    model_images, token_ids, mask = numpy(model_images), numpy(token_ids), numpy(mask)
    forward = compile_stateless(lm.backbone, lm.backbone)
    vocabulary = tokenizer.vocabulary_size()
    for row in range(len(prompts)):
        prompt = token_ids[row][mask[row].astype(bool)]
        width, generated = len(prompt) + steps, []
        positions = np.arange(width)[None]
        for step in range(steps):
            tokens = np.zeros((1, width), "int32")
            tokens[0, :len(prompt)] = prompt
            tokens[0, len(prompt):len(prompt) + step] = generated
            inputs = dict(images=model_images[row:row + 1], token_ids=tokens,
                          padding_mask=(positions < len(prompt) + step).astype("int32"),
                          response_mask=(positions >= len(prompt)).astype("int32"))
            logits = numpy(forward({k: ops.convert_to_tensor(v) for k, v in inputs.items()}))[0, len(prompt) + step - 1]
            logits = np.where(grammar_allows(kind, generated, tokenizer, vocabulary), logits, -np.inf)
            generated.append(int(np.argmax(logits)))
            if generated[-1] == EOS:
                break
        expected = np.array(generated + [PAD] * (steps - len(generated)), "int32")
        np.testing.assert_array_equal(ours[row], expected)
    assert all(well_formed(kind, row, tokenizer) for row in ours), ours
    assert sum((row >= tokenizer.loc_token_offset).sum() for row in ours) >= 8  # objects were started
    assert not all(well_formed(kind, row, tokenizer) for row in free), free
    with pytest.raises(ValueError, match="output_grammar` must be None or one of"):
        lm.generate(images, prompts, output_grammar="caption")


BOX = np.array([0.1, 0.2, 0.7, 0.8], "float32")


def test_fit_learns_a_detection_and_detect_parses_it(text_lm):
    """Fit (raw images and texts through the preprocessor in tf.data) lowers the
    loss on a tiny config; after memorising one `detect cat` answer, `detect`
    returns its box (pixels of the raw image) and label."""
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype("uint8")
    answer = detections_to_text(BOX, ["cat"])
    copies = 8
    data = {"images": np.tile(images, (copies, 1, 1, 1)), "prompts": ["detect cat"] * 4 * copies,
            "responses": [answer] * 4 * copies}
    text_lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = text_lm.fit(data, batch_size=4, epochs=2, shuffle=False, verbose=0).history["loss"]
    assert history[1] < 0.3 * history[0], history
    [found] = text_lm.detect(images[:1], "cat", max_new_tokens=8, coordinates="pixels")
    assert found.text == answer and found.labels == ["cat"], found
    np.testing.assert_allclose(found.boxes[0], BOX * 32, atol=32 / 1023)


def test_sampling_is_reproducible_with_a_seed(text_lm):
    images = np.random.default_rng(9).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)  # raw: the task preprocesses
    prompts = ["caption en", "answer en what colour is it"]
    kwargs = dict(strategy="sampling", top_k=50, temperature=3.0, max_new_tokens=6, return_token_ids=True)
    texts, first = text_lm.generate(images, prompts, seed=7, **kwargs)
    _, again = text_lm.generate(images, prompts, seed=7, **kwargs)
    _, other = text_lm.generate(images, prompts, seed=8, **kwargs)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    # `top_p` reaches the sampler: a nucleus this small is the most likely token alone.
    _, nucleus = text_lm.generate(images, prompts, seed=7, **{**kwargs, "top_k": None, "top_p": 1e-6})
    _, greedy = text_lm.generate(images, prompts, max_new_tokens=6, return_token_ids=True)
    np.testing.assert_array_equal(nucleus, greedy)


def test_save_and_load_preset_round_trip(text_lm, tmp_path):
    """The task, its tokenizer, image converter and preprocessor come back from a
    preset folder and give the same preprocessed inputs and logits."""
    text_lm.save_to_preset(str(tmp_path / "pg"))
    restored = PaliGemmaCausalLM.from_preset(str(tmp_path / "pg"))
    assert isinstance(restored.preprocessor.tokenizer, PaliGemmaTokenizer)
    assert isinstance(restored.preprocessor.image_converter, PaliGemmaImageConverter)
    assert restored.backbone.get_config() == text_lm.backbone.get_config()
    data = {"images": np.zeros((1, 20, 20, 3), "uint8"), "prompts": ["caption en"], "responses": ["a red circle"]}
    x, y, w = text_lm.preprocessor(data)
    x2, y2, w2 = restored.preprocessor(data)
    for a, b in zip(keras.tree.flatten((x, y, w)), keras.tree.flatten((x2, y2, w2))):
        np.testing.assert_array_equal(numpy(a), numpy(b))
    assert len(restored.weights) == len(text_lm.weights)
    for a, b in zip(restored.weights, text_lm.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(numpy(a), numpy(b))


# === Detection parsing ===


def test_detection_round_trip_and_malformed_output():
    boxes = np.array([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]], "float32")
    text = detections_to_text(boxes, ["cat", "big dog"])
    assert text == "<loc0102><loc0205><loc0512><loc0614> cat ; <loc0000><loc0000><loc1023><loc1023> big dog"
    parsed = parse_detections(text)
    assert parsed.labels == ["cat", "big dog"]
    np.testing.assert_allclose(parsed.boxes, boxes, atol=0.5 / 1023)
    pixels = parse_detections(text, image_size=(100, 200))
    np.testing.assert_allclose(pixels.boxes[1], [0, 0, 100, 200])
    assert np.allclose(parse_detections(detections_to_text(pixels.boxes, pixels.labels, (100, 200))).boxes,
                       parsed.boxes)

    malformed = [
        "", "cat", "<loc0001><loc0002><loc0003> cat",  # three locs
        "<loc0500><loc0002><loc0100><loc0004> cat",  # y2 < y1
        "<loc2000><loc0002><loc0003><loc0004> cat",  # bin out of range
        "<loc01><loc0002><loc0003><loc0004> cat",  # not four digits
        "cat <loc0001><loc0002><loc0003><loc0004>x",  # locs not first
        "<loc0001><loc0002><seg001><loc0003><loc0004>",  ";;;", b"\xff\xfe", None, 12,
    ]
    for garbage in malformed:
        assert len(parse_detections(garbage)) == 0, garbage
    mixed = parse_detections("<loc0001><loc0002><loc0003> a ; <loc0010><loc0020><loc0030><loc0040> b ;")
    assert mixed.labels == ["b"] and mixed.boxes.shape == (1, 4)
    assert parse_detections("").boxes.shape == (0, 4)
