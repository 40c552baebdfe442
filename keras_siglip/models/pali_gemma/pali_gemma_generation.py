"""KV-cached PaliGemma decoding with keras-hub samplers (static shapes, jit-friendly).

Layout (big_vision `prefill_cache`, which right-aligns each example): a batch of
prompts of different lengths is *left*-padded over the whole sequence, pads
before the image,

    row b:  [pad x (T - n_b)] [image x N] [BOS prompt "\\n" (n_b tokens)] [generated x G]

so every row's prompt ends at the same cache slot `P = N + T` and each step
writes one token at the same slot for all rows (one scalar cache index). RoPE
sees only differences of positions, which padding before the image leaves
unchanged, and padded slots are masked out as keys, so a row's logits equal
those of the row decoded alone (Gemma 2's sliding window also depends on
position differences only). Right padding would need a position per row.

The cache `(B, layers, 2, P + G, K, head_dim)` is filled by one prefill call over
image + prompt (bidirectional block: `ar_mask` 0); each loop step then feeds
the token of column `index - 1` at slot `index - 1` (ar 1: causal) and its
logits pick column `index`. The first step re-feeds the last prompt token (its
key/value are rewritten with the same values) to get the logits of the first
generated token, as keras-hub's `CausalLM` does.

Stopping: the keras-hub sampler's `ops.while_loop` ends as soon as every row has
produced EOS; a row that has finished earlier gets a point mass on the pad id
(`pad_finished_rows`), so it keeps padding while the others continue.

Constrained decoding (`output_grammar`): detection and segmentation outputs
have a fixed shape, `<loc>` x 4 then a label (detect), or `<loc>` x 4,
`<seg>` x 16, then a label (segment), objects one after another. A step's
logits are masked to the tokens that keep the output well formed, computed from
the run of location / segmentation tokens at the end of what is generated, so
every object the model emits parses.
"""

from keras import ops

from keras_siglip.models.cappa.cappa_generation import pad_finished_rows

GRAMMARS = ("detect", "segment")
SEG_PER_OBJECT = 16


def output_grammar(kind, loc_offset, seg_offset, eos_id, prompt_length):
    """`fn(logits, sequence, index)` masking `(R, V)` logits to what keeps a
    `kind` ("detect" or "segment") output well formed.

    At the start: a location token or EOS (no object). Inside an object's
    4 location tokens: location tokens; then (segment) 16 segmentation tokens;
    then at least one label token (anything but location, segmentation and EOS
    tokens); inside a label: anything but segmentation tokens (a location
    token starts the next object; the separator is the label's own text).
    `sequence` is the sampler's `(R, S)` buffer, generated tokens from column
    `prompt_length` on; `index` the column being predicted.
    """
    # Here, not at the top: the tokenizer module imports the backbone, which imports this one.
    from keras_siglip.models.pali_gemma.pali_gemma_tokenizer import NUM_LOC_TOKENS, NUM_SEG_TOKENS

    if kind not in GRAMMARS:
        raise ValueError(f"The output grammar must be one of {GRAMMARS}; got {kind!r}.")
    structure = 4 + (SEG_PER_OBJECT if kind == "segment" else 0)

    def process(logits, sequence, index):
        vocabulary = ops.arange(ops.shape(logits)[-1], dtype="int32")[None]
        loc_id = ops.logical_and(vocabulary >= loc_offset, vocabulary < loc_offset + NUM_LOC_TOKENS)
        seg_id = ops.logical_and(vocabulary >= seg_offset, vocabulary < seg_offset + NUM_SEG_TOKENS)
        eos = ops.equal(vocabulary, eos_id)
        tokens = ops.cast(sequence, "int32")
        in_object = ops.logical_and(tokens >= loc_offset, tokens < loc_offset + NUM_LOC_TOKENS)
        if kind == "segment":
            in_object = ops.logical_or(in_object, ops.logical_and(tokens >= seg_offset,
                                                                  tokens < seg_offset + NUM_SEG_TOKENS))
        positions = ops.arange(ops.shape(sequence)[1], dtype="int32")[None]
        written = ops.logical_and(positions >= prompt_length, positions < index)
        # The run of object tokens ending at column index - 1 (0: none, or a label).
        last_other = ops.max(ops.where(ops.logical_and(written, ops.logical_not(in_object)), positions,
                                       prompt_length - 1), axis=1)
        run = (index - 1 - last_other)[:, None]
        started = index > prompt_length
        label = ops.logical_not(ops.logical_or(ops.logical_or(loc_id, seg_id), eos))
        allowed = ops.where(
            ops.logical_not(started), ops.logical_or(loc_id, eos),  # the first token
            ops.where(run == 0, ops.logical_not(seg_id),  # in a label (or the next object)
                      ops.where(run < 4, loc_id,
                                ops.where(run < structure, seg_id, label))))
        return ops.where(allowed, logits, ops.full_like(logits, -1e9))

    return process


def left_align(values, valid):
    """Gather `(B, S, ...)` values so that each row's valid entries come last,
    in order, pads first. `valid` `(B, S)`; returns `(values, valid)` gathered.

    The order is an argsort of the unique keys `valid * S + j`, so it does not
    depend on the backend's sort stability, and any padding side (or pads in
    between) works.
    """
    valid = ops.cast(valid, "int32")
    length = ops.shape(valid)[1]
    keys = valid * length + ops.arange(length, dtype="int32")[None, :]
    order = ops.cast(ops.argsort(keys, axis=1), "int32")
    index = order
    for _ in range(len(values.shape) - 2):
        index = index[..., None]
    if len(values.shape) > 2:
        index = index * ops.ones((1, 1, *values.shape[2:]), "int32")
    return ops.take_along_axis(values, index, axis=1), ops.take_along_axis(valid, order, axis=1)


def prefill_inputs(backbone, images, token_ids, padding_mask):
    """The left-aligned `[pads, image, prompt]` sequence of a prompt batch.

    Args:
        backbone: a `PaliGemmaBackbone`.
        images: `(B, H, W, 3)` in [-1, 1].
        token_ids, padding_mask: `(B, T)` prompts `[BOS] prefix "\\n"` (either
            padding side); every row needs at least one real token.

    Returns:
        `(embeddings (B, N + T, D), token_ids (B, N + T), padding_mask (B, N + T))`:
        image slots hold token id 0 in `token_ids`.
    """
    decoder = backbone.decoder
    image_tokens, image_valid = backbone.image_prefix(images)  # NaFlex: padding slots invalid
    text = decoder.embed(token_ids)
    embeddings = ops.concatenate([ops.cast(image_tokens, text.dtype), text], axis=1)
    valid = ops.concatenate([image_valid, ops.cast(padding_mask, "int32")], axis=1)
    ids = ops.concatenate([ops.zeros_like(image_valid), ops.cast(token_ids, "int32")], axis=1)
    embeddings, _ = left_align(embeddings, valid)
    ids, valid = left_align(ids, valid)
    return embeddings, ids, valid


def generate_with_cache(
    backbone, images, token_ids, padding_mask, sampler, max_new_tokens, eos_id=1, pad_id=0,
    model=None, logits_processor=None,
):
    """Generate `max_new_tokens` tokens after each prompt.

    Args:
        backbone: a `PaliGemmaBackbone`.
        images: `(B, H, W, 3)` in [-1, 1].
        token_ids, padding_mask: `(B, T)` int prompts `[BOS] prefix "\\n"`.
        sampler: a keras-hub sampler (`cappa_generation.make_sampler`: greedy,
            beam (the most likely beam by total log-probability is returned)
            or sampling).
        max_new_tokens: G, generated positions.
        eos_id, pad_id: EOS stops a row; finished rows are padded with `pad_id`.
        model: the model holding the backbone (the sampler maps its variables
            on JAX).
        logits_processor: optional `fn(logits, sequence, index)` rewriting
            each step's `(R, V)` logits (`output_grammar`).

    Returns:
        `(B, G)` int32: the generated tokens, EOS kept, `pad_id` after it.
    """
    decoder = backbone.decoder
    embeddings, prompt_ids, valid = prefill_inputs(backbone, images, token_ids, padding_mask)
    batch = ops.shape(prompt_ids)[0]
    prompt_length = embeddings.shape[1]
    total = prompt_length + max_new_tokens
    new = (batch, max_new_tokens)
    padding = ops.concatenate([valid, ops.ones(new, "int32")], axis=1)
    ar_mask = ops.concatenate([ops.zeros_like(valid), ops.ones(new, "int32")], axis=1)
    cache = decoder.initial_cache(batch, total)
    _, _, cache = decoder.call_with_cache(embeddings, cache, 0, padding, ar_mask)

    sequence = ops.concatenate([prompt_ids, ops.full(new, pad_id, "int32")], axis=1)
    mask = ops.concatenate([ops.ones((batch, prompt_length), "bool"), ops.zeros(new, "bool")], axis=1)
    positions = ops.arange(total, dtype="int32")[None, :]
    vocabulary = ops.arange(decoder.vocabulary_size, dtype="int32")
    forced_pad = ops.where(ops.equal(vocabulary, pad_id), 0.0, -1e9)[None, :]

    beams = getattr(sampler, "num_beams", None)
    # The beam sampler repeats each row's sequence, mask and cache per beam (row-major); the
    # masks this step closes over follow.
    row_padding, row_ar_mask, row_mask = (
        (padding, ar_mask, mask) if beams is None else (ops.repeat(x, beams, axis=0) for x in (padding, ar_mask, mask))
    )

    def next(sequence, cache, index):
        rows = ops.shape(sequence)[0]
        token = ops.slice(sequence, (0, index - 1), (rows, 1))
        logits, hidden, cache = decoder.call_with_cache(
            decoder.embed(token), cache, index - 1, row_padding, row_ar_mask
        )
        logits = ops.cast(logits[:, 0], "float32")
        if logits_processor is not None:
            logits = logits_processor(logits, sequence, index)
        logits = pad_finished_rows(logits, sequence, row_mask, index, forced_pad, positions, eos_id)
        return logits, hidden[:, 0], cache

    outputs = sampler(
        next, sequence, cache=cache, index=prompt_length, mask=mask, stop_token_ids=(eos_id,), model=model
    )
    if beams is not None:  # every row's beams, most likely first (a finished beam keeps its score)
        outputs = outputs[0][:, 0]
    return outputs[:, prompt_length:]
