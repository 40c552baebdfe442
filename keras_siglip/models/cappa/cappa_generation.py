"""Cached caption decoding with keras-hub samplers, and per-backend compilation.

The sampler's "prompt" is the decoder's input sequence `(B, P + L + 1)`: column
0 is the pad id 0 the decoder starts from, columns `1..P` an optional per-example
prompt (both held fixed by the sampler's mask), the next columns receive the
generated targets. At loop index i the step feeds
column i - 1 at decoder position i - 1 (`call_with_cache`), whose logits
predict column i. Without a prompt the generated targets are columns `1..L`.

A row that has produced EOS is finished: its later logits are replaced by a
point mass on the pad id (log-probability 0), so finished rows keep padding,
and a finished beam keeps its score while the others grow.
"""

import itertools

import keras
from keras import ops
from keras_hub.samplers import BeamSampler, GreedySampler, RandomSampler, TopKSampler, TopPSampler

PAD_ID = 0
EOS_ID = 1
STRATEGIES = ("greedy", "beam", "sampling")


def make_sampler(strategy, num_beams=4, temperature=1.0, top_k=None, seed=None, top_p=None):
    """A keras-hub sampler for `strategy` ("greedy", "beam" or "sampling").

    Sampling draws from the softmax at `temperature`, restricted to the
    `top_k` most likely tokens and / or to the nucleus (`top_p`: the most
    likely tokens until their probability reaches `p`, Holtzman et al. 2020).
    """
    if top_p is not None and not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"`top_p` must be in (0, 1]; got {top_p}.")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ValueError(f"`top_k` must be a positive integer; got {top_k!r}.")
    if (top_p is not None or top_k is not None) and strategy != "sampling":
        raise ValueError(f"`top_k` and `top_p` apply to strategy='sampling', not {strategy!r}.")
    if strategy == "greedy":
        return GreedySampler(temperature=temperature)
    if strategy == "beam":
        if num_beams < 1:
            raise ValueError(f"`num_beams` must be >= 1; got {num_beams}.")
        return BeamSampler(num_beams=num_beams, return_all_beams=True, temperature=temperature)
    if strategy == "sampling":
        if top_p is not None:
            return TopPSampler(p=float(top_p), k=top_k, seed=seed, temperature=temperature)
        if top_k:
            return TopKSampler(k=top_k, seed=seed, temperature=temperature)
        return RandomSampler(seed=seed, temperature=temperature)
    raise ValueError(f"`strategy` must be one of {STRATEGIES}; got {strategy!r}.")


def decode_with_sampler(
    decoder, encoded, sampler, max_length, model=None, prompt_ids=None, logits_processor=None,
    encoder_mask=None, length_penalty=0.0,
):
    """Generate captions for encoder tokens, optionally after a prompt per example.

    Args:
        decoder: a `TextDecoder`.
        encoded: `(B, N, E_enc)` encoder tokens.
        sampler: a keras-hub `Sampler` (`make_sampler`).
        max_length: L, the number of generated positions; with a prompt of
            width P, `P + L <= decoder.max_length`.
        model: the model holding the decoder; on JAX the sampler's loop maps
            its variables (needed inside `compile_stateless`).
        prompt_ids: optional `(B, P)` int prompt (teacher-forced prefix) per
            example, right-padded with the pad id 0 (never a prompt token), so
            row b's prompt is its first `n_b = count(prompt_ids[b] != 0)`
            tokens. The cache is prefilled with all P columns in one
            `call_with_cache`; the loop starts at the shortest prompt's end and
            the sampler's mask keeps longer prompts' tokens, rewriting their
            cache entries with the same values. Static shapes throughout.
        logits_processor: optional `fn(logits, sequence, index, step) ->
            logits` applied to each step's float32 `(R, V)` logits (R = B, or
            B * beams); `sequence` is the sampler's `(R, P + L + 1)` buffer,
            `index` the column being predicted and `step` `(R,)` int32 the
            number of tokens the row has generated before it (negative while
            the row is still inside its prompt).
        encoder_mask: optional `(B, N)` bool, the real encoder tokens (NaFlex).
        length_penalty: beam search only: rank the finished beams by
            `log_prob / ((5 + length) / 6) ** length_penalty` (GNMT's length
            normalisation; `length` counts the generated tokens, EOS
            included); 0 ranks by total log-probability, which favours short
            captions.

    Returns:
        `(token_ids, log_probs)`: `(B, L)` int32 targets generated after each
        row's prompt (pad 0 after EOS) and, for beam search, `(B,)` the best
        beam's total log-probability (prompt tokens add 0; else None).
    """
    batch = ops.shape(encoded)[0]
    if prompt_ids is None:
        prompt_ids = ops.zeros((batch, 0), dtype="int32")
    prompt_ids = ops.cast(prompt_ids, "int32")
    width = prompt_ids.shape[1]
    total = width + max_length
    if total > decoder.max_length:
        raise ValueError(
            f"A prompt of {width} tokens and max_length={max_length} exceed the decoder's "
            f"position table ({decoder.max_length})."
        )
    cross_cache = decoder.cross_attention_cache(encoded)
    in_prompt = ops.not_equal(prompt_ids, PAD_ID)
    lengths = ops.sum(ops.cast(in_prompt, "int32"), axis=1)  # (B,)
    start = ops.zeros((batch, 1), dtype="int32")
    prompt = ops.concatenate(
        [start, prompt_ids, ops.zeros((batch, max_length), dtype="int32")], axis=1
    )
    mask = ops.concatenate(
        [ops.ones((batch, 1), "bool"), in_prompt, ops.zeros((batch, max_length), "bool")], axis=1
    )
    cache = decoder.initial_cache(batch, total)
    index = 1
    if width:
        _, _, cache = decoder.call_with_cache(prompt[:, :width], cache, 0, cross_cache, encoder_mask)
        index = ops.min(lengths) + 1
    beams = getattr(sampler, "num_beams", None)
    row_mask, row_lengths = mask, lengths
    if beams is not None:  # the sampler repeats rows beam-major per example
        cross_cache = ops.repeat(cross_cache, beams, axis=0)
        if encoder_mask is not None:
            encoder_mask = ops.repeat(encoder_mask, beams, axis=0)
        row_mask, row_lengths = ops.repeat(mask, beams, axis=0), ops.repeat(lengths, beams, axis=0)
    positions = ops.arange(total + 1, dtype="int32")[None, :]
    vocabulary = ops.arange(decoder.vocabulary_size, dtype="int32")
    forced_pad = ops.where(ops.equal(vocabulary, PAD_ID), 0.0, -1e9)[None, :]

    def next(prompt, cache, index):
        rows = ops.shape(prompt)[0]
        inputs = ops.slice(prompt, (0, index - 1), (rows, 1))
        logits, hidden, cache = decoder.call_with_cache(
            inputs, cache, index - 1, cross_cache, encoder_mask
        )
        logits = ops.cast(logits[:, 0], "float32")
        if logits_processor is not None:
            logits = logits_processor(logits, prompt, index, index - 1 - row_lengths)
        # A row still inside its prompt gets a point mass on its next prompt
        # token: beams keep their scores and stay distinct, as with finished rows.
        forced = ops.slice(prompt, (0, index), (rows, 1))
        forced = ops.where(ops.equal(vocabulary[None, :], forced), 0.0, -1e9)
        logits = ops.where(ops.slice(row_mask, (0, index), (rows, 1)), forced, logits)
        logits = pad_finished_rows(logits, prompt, row_mask, index, forced_pad, positions)
        return logits, hidden[:, 0], cache

    outputs = sampler(
        next, prompt, cache=cache, index=index, mask=mask, stop_token_ids=(EOS_ID,), model=model
    )
    log_probs = None
    columns = lengths[:, None] + 1 + ops.arange(max_length, dtype="int32")[None, :]
    if beams is None:
        return ops.take_along_axis(outputs, columns, axis=1), log_probs
    # All beams, best first by total log-probability: (B, K, P + L + 1), (B, K).
    all_outputs, all_log_probs = outputs
    generated = ops.take_along_axis(all_outputs, ops.repeat(columns[:, None, :], beams, axis=1), axis=2)
    best = ops.zeros((batch,), dtype="int32")
    if length_penalty:
        length = ops.sum(ops.cast(ops.not_equal(generated, PAD_ID), "float32"), axis=-1)
        normalised = all_log_probs / ops.power((5.0 + length) / 6.0, float(length_penalty))
        best = ops.cast(ops.argmax(normalised, axis=1), "int32")
    pick = best[:, None, None]
    token_ids = ops.take_along_axis(generated, ops.repeat(pick, max_length, axis=2), axis=1)[:, 0]
    return token_ids, ops.take_along_axis(all_log_probs, best[:, None], axis=1)[:, 0]


def pad_finished_rows(logits, sequence, mask, index, forced_pad, positions=None, eos_id=EOS_ID):
    """Replace the logits of rows that already produced EOS by `forced_pad`.

    Args:
        logits: `(R, V)` float32 logits of column `index`.
        sequence: `(R, S)` the sampler's token buffer.
        mask: `(R, S)` bool, True on fixed (prompt) columns.
        index: the column being predicted; columns before it are written.
        forced_pad: `(1, V)` float32, 0 on the pad id and -1e9 elsewhere: a
            point mass on padding (log-probability 0, so beams keep scores).
        positions: optional `(1, S)` int32 column indices (`arange(S)`).
        eos_id: the end-of-sequence id.

    Returns `(R, V)` logits (static shapes; used under jit).
    """
    if positions is None:
        positions = ops.arange(ops.shape(sequence)[1], dtype="int32")[None, :]
    generated = ops.logical_and(ops.logical_not(mask), positions < index)
    finished = ops.any(ops.logical_and(ops.equal(sequence, eos_id), generated), axis=1)
    return ops.where(finished[:, None], forced_pad, logits)


def compile_stateless(model, fn, extra_variables=()):
    """`fn(*args)` compiled for the backend, reading `model`'s variables.

    JAX: `jax.jit` with the model's and `extra_variables`' values passed in
    (`extra_variables`, e.g. a sampler's seed state, are written back).
    TensorFlow: `tf.function(jit_compile=True)`. Torch: eager under `no_grad`.
    """
    backend = keras.config.backend()
    if backend == "torch":
        import torch

        def run_torch(*args):
            with torch.no_grad():
                return fn(*args)

        return run_torch
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    import jax

    extra_variables = list(extra_variables)

    @jax.jit
    def compiled(args, state):
        extra, trainable, non_trainable = state
        mapping = itertools.chain(
            zip(extra_variables, extra),
            zip(model.trainable_variables, trainable),
            zip(model.non_trainable_variables, non_trainable),
        )
        with keras.StatelessScope(state_mapping=mapping) as scope:
            outputs = fn(*args)
        new_extra = []
        for variable, value in zip(extra_variables, extra):
            current = scope.get_current_value(variable)
            new_extra.append(value if current is None else current)
        return outputs, new_extra

    def run_jax(*args):
        state = (
            [v.value for v in extra_variables],
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
        )
        outputs, new_extra = compiled(args, state)
        for variable, value in zip(extra_variables, new_extra):
            variable.assign(value)
        return outputs

    return run_jax
