"""Fractal parameters of per-token surprisal series (Alabdulmohsin, Tran, Dehghani,
"Fractal Patterns May Illuminate the Success of Next-Token Prediction", NeurIPS 2024,
arXiv 2402.01825; reused by Alabdulmohsin & Steiner, ICML 2025, arXiv 2502.14924).

Pipeline (paper sec. 2):

1. A scoring model gives `log p(w_t | w_<t)` per token; the information content is
   `z_t = -log p` (bits by default).
2. Increment process: `x_t = (z_t - mean z) / std z` per document (zero mean, unit
   variance); integral process `X_t = sum_{k <= t} x_k`.
3. Exponents, each an OLS fit in log-log space `log y = a + c log s`:

   - self-similarity (Hölder) exponent S: `p_eps(tau) = P(|X_{t+tau} - X_t| <= eps)`,
     pooled over t and documents, `p_eps(tau) ~ tau^-S` (paper eps = 5e-3);
   - Hurst exponent H by rescaled range: random windows of n increments, in each
     `Y = cumsum(x - mean x)`, `R = max Y - min Y`, `S = std x`; the mean R/S over
     windows and documents `~ n^H` (official colab: 100 windows per document, scales
     25..300; the window mean is used, as in the code);
   - Joseph exponent J: `std(X_{t+tau} - X_t) ~ tau^J`, pooled over t and documents;
   - fractal dimension `D = 2 - S` (paper sec. 2.4).

   For fractional Gaussian noise with Hurst parameter H (the increments of fractional
   Brownian motion) all three exponents equal H: `X_{t+tau} - X_t ~ N(0, tau^2H)`, so
   `p_eps(tau) ~ 2 eps phi(0) tau^-H` and `std = tau^H`. For language they differ
   (paper: S 0.59, H 0.70, J 0.49).

Everything is vectorised numpy: loops run over scales, window chunks and batches only.
Error bars come from a seeded bootstrap over documents (paper: bootstrap, Efron &
Tibshirani); per-document sufficient statistics are computed once, so a replicate costs
a matrix product.
"""

import dataclasses
import math
import sys

import numpy as np

PAD_ID = 0

# The paper's data selection and estimator settings (sec. 2.1-2.2, appendix B tables;
# Hurst scales and windows from the official colab). `fractal_analysis(lp, **PAPER_SETTINGS)`.
PAPER_SETTINGS = dict(
    bits=True,
    epsilon=5e-3,
    min_tokens=4097,  # "documents of length > 4K tokens"
    max_tokens=2048,  # "use the first 2K tokens only"
    skip_first=100,  # "after trimming the first 100 tokens"
    normalize="document",
    hurst_scales=(25, 50, 75, 100, 200, 300),
    samples_per_doc=100,
)

DEFAULT_TAU_SCALES = (10, 15, 22, 32, 46, 68, 100, 147, 215, 300)  # paper figures: ~1e1..3e2
DEFAULT_HURST_SCALES = (25, 50, 75, 100, 200, 300)  # official colab
EXPONENTS = ("S", "H", "J", "D")
_WINDOW_CHUNK = 1 << 22  # elements per R/S chunk (32 MiB of float64)


# === Synthetic data ===


def fractional_gaussian_noise(n, hurst, seed=None, size=None):
    """Exact fractional Gaussian noise by circulant embedding (Davies & Harte, 1987).

    The autocovariance of unit-variance fGn is
    `g(k) = (|k+1|^2H - 2|k|^2H + |k-1|^2H) / 2`. It is embedded in a circulant
    matrix of order 2n whose eigenvalues (one FFT) are non-negative for 0 < H < 1;
    one complex FFT of scaled complex Gaussian noise then gives a sample with exactly
    this covariance (its real part).

    Args:
        n: series length (>= 2).
        hurst: Hurst parameter in (0, 1); 0.5 gives i.i.d. N(0, 1) noise.
        seed: seed of `np.random.default_rng`.
        size: None for one series, or an int number of independent series.

    Returns:
        float64 `(n,)` or `(size, n)` with zero mean and unit variance per entry.
    """
    n = int(n)
    if n < 2:
        raise ValueError(f"`n` must be >= 2; got {n}.")
    if not 0.0 < hurst < 1.0:
        raise ValueError(f"`hurst` must be in (0, 1); got {hurst}.")
    rows = 1 if size is None else int(size)
    if rows < 1:
        raise ValueError(f"`size` must be a positive int or None; got {size}.")
    k = np.arange(n + 1, dtype=np.float64)
    two_h = 2.0 * hurst
    gamma = 0.5 * (np.abs(k + 1) ** two_h - 2.0 * k**two_h + np.abs(k - 1) ** two_h)
    first_row = np.concatenate([gamma, gamma[-2:0:-1]])  # (2n,)
    eigenvalues = np.fft.fft(first_row).real
    if eigenvalues.min() < -1e-8 * eigenvalues.max():
        raise ValueError(f"Circulant embedding is not non-negative definite for H={hurst}.")
    scale = np.sqrt(np.clip(eigenvalues, 0.0, None) / (2 * n))
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((rows, 2 * n)) + 1j * rng.standard_normal((rows, 2 * n))
    series = np.fft.fft(scale * noise, axis=-1).real[:, :n]
    return series[0] if size is None else series


# === Scoring ===


def token_log_probs(logits, token_ids, pad_id=PAD_ID, fill_value=0.0):
    """Per-token log-probabilities of the targets, padding masked.

    Backend-agnostic (`keras.ops`): takes numpy arrays or tensors of the current
    backend and returns a tensor of the current backend.

    Args:
        logits: `(B, L, V)` float, position t scoring `token_ids[:, t]`.
        token_ids: `(B, L)` int targets right-padded with `pad_id`.
        pad_id: padding id (0 in this package).
        fill_value: value at padding positions (0.0: adds nothing to sums; pass
            `float("nan")` to make accidental use of padding fail validation).

    Returns:
        `(B, L)` float32 `log softmax(logits)[b, t, token_ids[b, t]]`.
    """
    from keras import ops

    from keras_siglip.losses.captioning import token_log_probs as gather_log_probs

    token_ids = ops.convert_to_tensor(token_ids, dtype="int32")
    if len(token_ids.shape) != 2 or len(ops.shape(logits)) != 3:
        raise ValueError(
            f"Expected logits (B, L, V) and token_ids (B, L); got {tuple(ops.shape(logits))} "
            f"and {tuple(token_ids.shape)}."
        )
    log_probs = gather_log_probs(logits, token_ids)
    return ops.where(ops.not_equal(token_ids, pad_id), log_probs, ops.cast(fill_value, "float32"))


def _pad_token_ids(token_ids, pad_id, num_rows=0, multiple=1, limit=None):
    """Right-pad to `(max(rows, num_rows), L)`: L is the longest row rounded up
    to a multiple of `multiple`, at most `limit` (a model's position limit)
    unless the row itself is longer."""
    rows = [np.asarray(row, dtype=np.int32).reshape(-1) for row in token_ids]
    if not rows:
        raise ValueError("No token sequences to score.")
    longest = max(len(r) for r in rows)
    length = max(longest, min(-(-longest // multiple) * multiple, limit or np.inf))
    padded = np.full((max(len(rows), num_rows), length), pad_id, dtype=np.int32)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    return padded


def score_token_log_probs(scorer, token_ids=None, *, texts=None, images=None, batch_size=32,
                          pad_id=PAD_ID, progress=True):
    """Teacher-forced per-token log-probabilities, one array per document.

    Args:
        scorer: one of
            - a keras-hub `CausalLM` (e.g. `GemmaCausalLM.from_preset(...)`);
            - a Hugging Face causal LM (`transformers.AutoModelForCausalLM`, torch);
            - a `CapPaCaptioner`-like task (anything with `backbone.encode_images`
              and `decoder(token_ids, encoded) -> (B, L, V)` logits; needs `images`);
            - any callable returning `(B, L, V)` logits: `scorer(token_ids)`
              without images, `scorer(token_ids, images)` with them, aligned so
              position t scores `token_ids[:, t]`.
            A causal LM's logits at position t predict token t + 1: its first
            token (BOS) is context only, so each document gets one log-probability
            fewer than it has tokens.
        token_ids: `(N, L)` int targets right-padded with `pad_id`, or a list of N
            variable-length int sequences (padded per batch). Or pass
        texts: N strings, tokenized by the scorer's preprocessor: a keras-hub
            CausalLM's tokenizer (with its start token when the preprocessor adds
            one; never truncated), or `pack_texts` of a captioner (CapPa: EOS
            appended, padded to the preprocessor's `sequence_length`). A Hugging
            Face model needs `token_ids` from its tokenizer.
        images: optional `(N, H, W, C)`; raw images when the scorer has a
            preprocessor with `convert_images` (as `CapPaCaptioner.score`), else
            model-ready.
        batch_size: documents per forward pass.
        pad_id: padding id of `token_ids` (a keras-hub CausalLM's texts are
            padded with its tokenizer's); padding positions are dropped.
        progress: show a progress bar over the batches (standard error).

    Returns:
        A list of N float64 arrays of natural-log probabilities (<= 0), each the
        length of its document's scored tokens.
    """
    from keras import ops

    if (token_ids is None) == (texts is None):
        raise ValueError("Pass exactly one of `token_ids` and `texts`.")
    causal = _causal_lm_kind(scorer)
    preprocessor = getattr(scorer, "preprocessor", None)
    if texts is not None:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("No texts to score.")
        if causal == "transformers":
            raise ValueError("A Hugging Face model scores `token_ids`: tokenize the texts with its tokenizer.")
        if preprocessor is None or getattr(preprocessor, "tokenizer", None) is None:
            raise ValueError("Scoring `texts` needs a scorer with a preprocessor and tokenizer.")
        if causal == "keras_hub":
            token_ids, pad_id = _causal_lm_token_ids(preprocessor, texts), preprocessor.tokenizer.pad_token_id
        else:
            token_ids = np.asarray(ops.convert_to_numpy(preprocessor.pack_texts(texts)))
    num_docs = len(token_ids)
    if num_docs == 0:
        raise ValueError("No token sequences to score.")
    is_task = causal is None and hasattr(scorer, "decoder") and hasattr(getattr(scorer, "backbone", None),
                                                                        "encode_images")
    if is_task and images is None:
        raise ValueError("An image-conditioned captioner needs `images` (one per document).")
    if causal is not None and images is not None:
        raise ValueError("A causal LM scores text only; `images` are for captioners.")
    if not is_task and not callable(scorer):
        raise TypeError(f"`scorer` must be a causal LM, a captioner task or a callable; got {type(scorer)}.")
    if images is not None and len(images) != num_docs:
        raise ValueError(f"Got {len(images)} images for {num_docs} documents.")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1; got {batch_size}.")

    from tqdm.auto import tqdm

    # Extra padding after a document cannot change a causal LM's scores of it: a
    # keras-hub one gets full batches, lengths in steps of 64 tokens (up to its
    # position limit), so JAX and XLA compile a few programs, not one per batch.
    padding = {}
    if causal == "keras_hub":
        padding = dict(num_rows=batch_size, multiple=64, limit=getattr(scorer.backbone, "max_sequence_length", None))
    outputs = []
    for start in tqdm(range(0, num_docs, batch_size), desc="scoring", unit="batch", disable=not progress,
                      file=sys.stderr):
        batch = token_ids[start : start + batch_size]
        ids = _pad_token_ids(batch, pad_id, **padding)
        if causal is not None:
            logits = _causal_lm_logits(scorer, causal, ids, pad_id)
            # Position t predicts token t + 1: the first token is context only.
            logits, ids = logits[: len(batch), :-1], ids[: len(batch), 1:]
        elif is_task or images is not None:
            batch_images = images[start : start + batch_size]
            if preprocessor is not None and hasattr(preprocessor, "convert_images"):
                batch_images = preprocessor.convert_images(batch_images)
            batch_images = ops.convert_to_tensor(batch_images, dtype="float32")
            if is_task:
                logits = scorer.decoder(ops.convert_to_tensor(ids), scorer.backbone.encode_images(batch_images))
            else:
                logits = scorer(ops.convert_to_tensor(ids), batch_images)
        else:
            logits = scorer(ops.convert_to_tensor(ids))
        log_probs = np.asarray(ops.convert_to_numpy(token_log_probs(logits, ids, pad_id)), np.float64)
        mask = ids != pad_id
        outputs.extend(row[keep] for row, keep in zip(log_probs, mask))
    return outputs


def _causal_lm_kind(scorer):
    """"keras_hub" for a keras-hub CausalLM, "transformers" for a Hugging Face
    model, else None."""
    if (type(scorer).__module__ or "").startswith("transformers.") and hasattr(scorer, "config"):
        return "transformers"
    from keras_hub.models import CausalLM

    return "keras_hub" if isinstance(scorer, CausalLM) else None


def _causal_lm_token_ids(preprocessor, texts):
    """keras-hub CausalLM texts -> token id lists, with the start token where the
    preprocessor adds one (no end token, no truncation)."""
    tokenizer = preprocessor.tokenizer
    start = [tokenizer.start_token_id] if getattr(preprocessor, "add_start_token", True) else []
    rows = [start + [int(t) for t in np.asarray(tokenizer(text)).reshape(-1)] for text in texts]
    if min(len(row) for row in rows) < 2:
        raise ValueError("A causal LM needs at least two tokens per document (the first is context only); "
                         "got an empty text.")
    return rows


def _causal_lm_logits(scorer, kind, ids, pad_id):
    """`(B, L, V)` logits of a causal LM on right-padded `ids`."""
    if kind == "keras_hub":
        return scorer({"token_ids": ids, "padding_mask": ids != pad_id})
    import torch

    with torch.no_grad():
        output = scorer(input_ids=torch.as_tensor(ids, dtype=torch.long),
                        attention_mask=torch.as_tensor(ids != pad_id, dtype=torch.long))
    return output.logits.float().cpu().numpy()


# === Series preparation ===


def _as_series_list(series, name):
    """List of 1-D float64 arrays from a list of arrays or a 1-D / 2-D array."""
    if isinstance(series, np.ndarray) or np.isscalar(series):
        array = np.asarray(series, dtype=np.float64)
        if array.ndim == 1:
            parts = [array]
        elif array.ndim == 2:
            parts = list(array)
        else:
            raise ValueError(f"`{name}` must be 1-D, 2-D or a list of 1-D arrays; got shape {array.shape}.")
    else:
        parts = [np.asarray(p, dtype=np.float64) for p in series]
        for i, p in enumerate(parts):
            if p.ndim != 1:
                raise ValueError(f"`{name}[{i}]` must be 1-D; got shape {p.shape}.")
    if not parts or all(p.size == 0 for p in parts):
        raise ValueError(f"`{name}` is empty: no documents or no tokens.")
    return parts


def surprisal(log_probs, bits=True):
    """Information content `-log p` per token.

    Args:
        log_probs: per-token natural-log probabilities, a 1-D array or a list of
            per-document 1-D arrays (`score_token_log_probs` output).
        bits: divide by ln 2 (the paper's unit) instead of nats.

    Returns:
        A list of float64 arrays (same lengths), each `>= 0`.

    Raises:
        ValueError: on empty input, NaN/inf, or positive log-probabilities (beyond
            a 1e-6 rounding tolerance, which is clipped to 0).
    """
    docs = _as_series_list(log_probs, "log_probs")
    out = []
    for i, lp in enumerate(docs):
        if not np.all(np.isfinite(lp)):
            bad = np.flatnonzero(~np.isfinite(lp))
            raise ValueError(
                f"Document {i} has {bad.size} non-finite log-probabilities (first at token "
                f"{bad[0]}: {lp[bad[0]]}); mask padding and check the scoring model."
            )
        if np.any(lp > 1e-6):
            bad = np.flatnonzero(lp > 1e-6)
            raise ValueError(
                f"Document {i} has {bad.size} positive log-probabilities (max {lp.max():.4g}); "
                "pass log p (<= 0), not logits or -log p."
            )
        info = -np.minimum(lp, 0.0)
        out.append(info / math.log(2.0) if bits else info)
    return out


def prepare_increments(series, *, normalize="document", concatenate=False, segment_length=None,
                       skip_first=0, max_tokens=None, min_tokens=1, clip_quantiles=None):
    """Surprisal (or any) series -> the zero-mean unit-variance increment process.

    Order of operations: drop documents with fewer than `min_tokens` tokens, keep
    tokens `[skip_first, max_tokens)` of each (paper: first 2048 tokens, first 100
    trimmed; this reads the two rules as one slice), optionally winsorise extremes,
    optionally concatenate and re-cut, then normalise.

    Args:
        series: a list of 1-D arrays (one per document) or a 1-D / 2-D array.
        normalize: "document" (paper: each unit to zero mean, unit variance),
            "global" (one mean and std over all tokens) or "none" (use as given).
        concatenate: join all documents end to end (short documents such as
            captions); then `segment_length` cuts the stream into consecutive units
            (the remainder is dropped; default: one unit). Increments never cross
            unit boundaries and the bootstrap resamples units.
        skip_first, max_tokens, min_tokens: per-document trimming and selection.
        clip_quantiles: optional `(lo, hi)` in [0, 1]: clip each document's values
            to its lo/hi quantiles (winsorise surprisal spikes; not in the paper).

    Returns:
        A list of float64 increment arrays, one per unit.
    """
    docs = _as_series_list(series, "series")
    for i, d in enumerate(docs):
        if not np.all(np.isfinite(d)):
            raise ValueError(f"Series {i} has NaN or inf values.")
    if normalize not in ("document", "global", "none"):
        raise ValueError(f"`normalize` must be 'document', 'global' or 'none'; got {normalize!r}.")
    skip_first, min_tokens = int(skip_first), int(min_tokens)
    if skip_first < 0 or min_tokens < 1:
        raise ValueError("`skip_first` must be >= 0 and `min_tokens` >= 1.")
    if max_tokens is not None and int(max_tokens) <= skip_first:
        raise ValueError(f"`max_tokens` ({max_tokens}) must exceed `skip_first` ({skip_first}).")
    kept = [d for d in docs if d.size >= min_tokens]
    if not kept:
        raise ValueError(
            f"No document has >= {min_tokens} tokens (longest: {max(d.size for d in docs)}); "
            "lower `min_tokens`."
        )
    kept = [d[skip_first:max_tokens] for d in kept]
    kept = [d for d in kept if d.size]
    if not kept:
        raise ValueError(f"Every document is empty after skipping the first {skip_first} tokens.")
    if clip_quantiles is not None:
        lo, hi = (float(q) for q in clip_quantiles)
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"`clip_quantiles` must satisfy 0 <= lo < hi <= 1; got {clip_quantiles}.")
        kept = [np.clip(d, *np.quantile(d, [lo, hi])) for d in kept]
    if concatenate:
        stream = np.concatenate(kept)
        if segment_length is None:
            kept = [stream]
        else:
            segment_length = int(segment_length)
            if not 2 <= segment_length <= stream.size:
                raise ValueError(
                    f"`segment_length` must be in [2, {stream.size}] (tokens in the stream); "
                    f"got {segment_length}."
                )
            count = stream.size // segment_length
            kept = list(stream[: count * segment_length].reshape(count, segment_length))
    elif segment_length is not None:
        raise ValueError("`segment_length` applies only with `concatenate=True`.")
    if normalize == "document":
        out = []
        for i, d in enumerate(kept):
            std = d.std()
            if d.size < 2 or std <= 1e-12 * max(1.0, abs(d.mean())):
                raise ValueError(
                    f"Unit {i} ({d.size} tokens) is constant: it cannot be normalised to unit "
                    "variance. Drop it or use normalize='global'."
                )
            out.append((d - d.mean()) / std)
        return out
    if normalize == "global":
        flat = np.concatenate(kept)
        std = flat.std()
        if std <= 1e-12 * max(1.0, abs(flat.mean())):
            raise ValueError("All values are equal: nothing to normalise.")
        return [(d - flat.mean()) / std for d in kept]
    return [d.copy() for d in kept]


# === Fits and estimators ===


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """OLS fit `log y = log_coefficient + slope * log scale`.

    `exponent` is the reported parameter: `slope` for H and J, `-slope` for S
    (`p_eps(tau) ~ tau^-S`). `scales`, `values`: the fitted points `(K,)`.
    """

    name: str
    exponent: float
    slope: float
    log_coefficient: float
    r_squared: float
    scales: np.ndarray
    values: np.ndarray

    def predict(self, scales):
        """Fitted `y` at `scales`."""
        return np.exp(self.log_coefficient) * np.asarray(scales, np.float64) ** self.slope


def _ols_slopes(log_x, log_y):
    """Slopes and intercepts of `log_y (..., K)` on `log_x (K,)`, vectorised."""
    centred = log_x - log_x.mean()
    slope = (log_y - log_y.mean(-1, keepdims=True)) @ centred / np.sum(centred**2)
    intercept = log_y.mean(-1) - slope * log_x.mean()
    return slope, intercept


def power_law_fit(scales, values, name="", sign=1.0):
    """Fit `values ~ scales^slope` by least squares in log-log space.

    Args:
        scales, values: `(K,)` positive, K >= 2 distinct scales.
        name: label of the fit.
        sign: `exponent = sign * slope` (-1 for the self-similarity exponent).

    Returns:
        A `PowerLawFit`.
    """
    scales = np.asarray(scales, np.float64)
    values = np.asarray(values, np.float64)
    if scales.shape != values.shape or scales.ndim != 1 or np.unique(scales).size < 2:
        raise ValueError("A power-law fit needs matching 1-D scales and values with >= 2 distinct scales.")
    if np.any(scales <= 0) or np.any(~np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"Power-law fit {name!r} needs positive finite values; got {values}.")
    log_x, log_y = np.log(scales), np.log(values)
    slope, intercept = _ols_slopes(log_x, log_y)
    residual = log_y - (intercept + slope * log_x)
    total = np.sum((log_y - log_y.mean()) ** 2)
    r_squared = 1.0 - np.sum(residual**2) / total if total > 0 else 1.0
    return PowerLawFit(name, float(sign * slope), float(slope), float(intercept), float(r_squared),
                       scales, values)


def _check_scales(scales, name):
    scales = np.asarray(scales)
    if scales.ndim != 1 or scales.size < 2:
        raise ValueError(f"`{name}` needs >= 2 scales; got {scales.tolist()}.")
    if not np.all(np.equal(np.round(scales), scales)) or np.any(scales < 1):
        raise ValueError(f"`{name}` must be positive integers; got {scales.tolist()}.")
    scales = np.unique(scales.astype(np.int64))
    if scales.size < 2:
        raise ValueError(f"`{name}` needs >= 2 distinct scales; got {scales.tolist()}.")
    return scales


def _check_lengths(increments, needed, what):
    lengths = np.array([x.size for x in increments])
    short = np.flatnonzero(lengths < needed)
    if short.size:
        raise ValueError(
            f"{short.size} of {lengths.size} series are too short for the requested {what}: "
            f"series {short[0]} has {lengths[short[0]]} tokens, the largest scale needs >= {needed}. "
            "Use smaller scales, drop short documents (`min_tokens`) or concatenate them "
            "(`concatenate=True`)."
        )
    return lengths


def _flat_integral(increments):
    """Integral processes `[0, cumsum(x)]` of all units, flattened, and unit ids."""
    lengths = np.array([x.size for x in increments])
    padded = np.concatenate([np.concatenate([[0.0], x]) for x in increments])
    unit = np.repeat(np.arange(lengths.size), lengths + 1)
    total = np.cumsum(padded)
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    return total - np.repeat(total[starts], lengths + 1), unit


def increment_statistics(increments, scales, epsilon):
    """Per-unit sufficient statistics of the tau-increments `X_{t+tau} - X_t`.

    Every t with both ends inside the unit counts (overlapping increments).

    Args:
        increments: list of U increment arrays.
        scales: `(K,)` ints tau.
        epsilon: threshold of the peak probability.

    Returns:
        dict of `(U, K)` float64 arrays: "count" (number of increments), "hits"
        (`|increment| <= epsilon`), "sum", "sum_sq".
    """
    integral, unit = _flat_integral(increments)
    num_units = len(increments)
    stats = {key: np.zeros((num_units, len(scales))) for key in ("count", "hits", "sum", "sum_sq")}
    for k, tau in enumerate(scales):
        same = unit[tau:] == unit[:-tau]
        ids = unit[:-tau][same]
        delta = (integral[tau:] - integral[:-tau])[same]
        stats["count"][:, k] = np.bincount(ids, minlength=num_units)
        stats["hits"][:, k] = np.bincount(ids, weights=np.abs(delta) <= epsilon, minlength=num_units)
        stats["sum"][:, k] = np.bincount(ids, weights=delta, minlength=num_units)
        stats["sum_sq"][:, k] = np.bincount(ids, weights=delta * delta, minlength=num_units)
    return stats


def rescaled_range_statistics(increments, scales, samples_per_doc=100, seed=0):
    """Per-unit sums of R/S over windows of each size n.

    Args:
        increments: list of U increment arrays, each of length >= max(scales).
        scales: `(K,)` window sizes n.
        samples_per_doc: random windows per unit and scale (official colab: 100,
            offsets uniform), or None for all non-overlapping windows tiling each
            unit (classic R/S).
        seed: seed of the window offsets.

    Returns:
        dict of `(U, K)` arrays: "rs_sum" (sum of R/S over the unit's windows) and
        "count" (windows with non-zero standard deviation; constant windows are
        skipped).
    """
    rng = np.random.default_rng(seed)
    flat = np.concatenate(increments)
    lengths = np.array([x.size for x in increments])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    num_units = lengths.size
    rs_sum, count = np.zeros((num_units, len(scales))), np.zeros((num_units, len(scales)))
    for k, n in enumerate(scales):
        if samples_per_doc is None:
            per_unit = lengths // n
            unit = np.repeat(np.arange(num_units), per_unit)
            index_in_unit = np.arange(unit.size) - np.repeat(np.cumsum(per_unit) - per_unit, per_unit)
            offsets = starts[unit] + index_in_unit * n
        else:
            unit = np.repeat(np.arange(num_units), int(samples_per_doc))
            room = lengths[unit] - n + 1
            offsets = starts[unit] + np.floor(rng.random(unit.size) * room).astype(np.int64)
        step = max(1, _WINDOW_CHUNK // n)
        for begin in range(0, unit.size, step):
            windows = flat[offsets[begin : begin + step, None] + np.arange(n)]  # (W, n)
            centred = windows - windows.mean(axis=1, keepdims=True)
            path = np.cumsum(centred, axis=1)
            ranges = np.ptp(path, axis=1)
            stds = windows.std(axis=1)
            valid = stds > 1e-12
            ids = unit[begin : begin + step][valid]
            rs_sum[:, k] += np.bincount(ids, weights=ranges[valid] / stds[valid], minlength=num_units)
            count[:, k] += np.bincount(ids, minlength=num_units)
    return {"rs_sum": rs_sum, "count": count}


def expected_rescaled_range(scales):
    """Anis-Lloyd expected R/S of n i.i.d. Gaussians with Peters' small-n factor
    (Anis & Lloyd 1976; Peters 1994; Weron 2002):
    `E[R/S]_n = (n - 1/2)/n * G(n) * sum_{i<n} sqrt((n - i)/i)` with
    `G(n) = Gamma((n-1)/2) / (sqrt(pi) Gamma(n/2))` for n <= 340, else
    `1 / sqrt(n pi / 2)`.

    Args:
        scales: `(K,)` window sizes n >= 2.

    Returns:
        `(K,)` float64 expected rescaled ranges.
    """
    out = []
    for n in np.asarray(scales, np.int64):
        if n <= 340:
            gamma_ratio = math.exp(math.lgamma((n - 1) / 2) - math.lgamma(n / 2)) / math.sqrt(math.pi)
        else:
            gamma_ratio = 1.0 / math.sqrt(n * math.pi / 2)
        i = np.arange(1, n, dtype=np.float64)
        out.append((n - 0.5) / n * gamma_ratio * np.sum(np.sqrt((n - i) / i)))
    return np.array(out)


def _hurst_values(rs, scales, correction):
    """R/S curve(s) -> the values whose log-log slope is H."""
    if correction == "none":
        return rs
    # Anis-Lloyd-Peters corrected R/S: H = 0.5 + slope of log(R/S / E[R/S]).
    return rs / expected_rescaled_range(scales) * np.sqrt(np.asarray(scales, np.float64))


def _check_correction(correction):
    if correction not in ("none", "anis-lloyd"):
        raise ValueError(f"`hurst_correction` must be 'none' or 'anis-lloyd'; got {correction!r}.")


def _pooled(stats, weights):
    """Curves `(B, K)` from per-unit statistics and unit weights `(B, U)`."""
    count = weights @ stats["count"]
    with np.errstate(divide="ignore", invalid="ignore"):
        peak = (weights @ stats["hits"]) / count
        mean = (weights @ stats["sum"]) / count
        variance = np.maximum((weights @ stats["sum_sq"]) / count - mean**2, 0.0)
    return peak, np.sqrt(variance)


def _rs_curve(stats, weights):
    with np.errstate(divide="ignore", invalid="ignore"):
        return (weights @ stats["rs_sum"]) / (weights @ stats["count"])


def _check_curve(values, scales, name, hint):
    bad = ~np.isfinite(values) | (values <= 0)
    if np.any(bad):
        raise ValueError(
            f"{name} is zero or undefined at scales {scales[bad].tolist()}: {hint}"
        )


def self_similarity_exponent(increments, epsilon=5e-3, scales=DEFAULT_TAU_SCALES):
    """Self-similarity (Hölder) exponent S: `P(|X_{t+tau} - X_t| <= eps) ~ tau^-S`.

    Args:
        increments: list of normalised increment arrays (`prepare_increments`) or a
            1-D / 2-D array.
        epsilon: threshold (paper 5e-3; small values need many tokens).
        scales: taus.

    Returns:
        `PowerLawFit` named "S" (values: the peak probabilities).
    """
    increments = _as_series_list(increments, "increments")
    scales = _check_scales(scales, "scales")
    _check_lengths(increments, int(scales.max()), "tau scales")
    if not epsilon > 0:
        raise ValueError(f"`epsilon` must be > 0; got {epsilon}.")
    stats = increment_statistics(increments, scales, epsilon)
    peak, _ = _pooled(stats, np.ones((1, len(increments))))
    _check_curve(peak[0], scales, "p_eps(tau)", "no increment fell within epsilon; increase "
                 "`epsilon` or supply more tokens.")
    return power_law_fit(scales, peak[0], "S", sign=-1.0)


def joseph_exponent(increments, scales=DEFAULT_TAU_SCALES):
    """Joseph exponent J: `std(X_{t+tau} - X_t) ~ tau^J`.

    Returns:
        `PowerLawFit` named "J" (values: the standard deviations).
    """
    increments = _as_series_list(increments, "increments")
    scales = _check_scales(scales, "scales")
    _check_lengths(increments, int(scales.max()), "tau scales")
    stats = increment_statistics(increments, scales, 0.0)
    _, std = _pooled(stats, np.ones((1, len(increments))))
    _check_curve(std[0], scales, "std of tau-increments", "the series is constant.")
    return power_law_fit(scales, std[0], "J")


def hurst_exponent(increments, scales=DEFAULT_HURST_SCALES, samples_per_doc=100, seed=0,
                   correction="none"):
    """Hurst exponent H by rescaled-range analysis: mean `R(n)/S(n) ~ n^H`.

    Args:
        increments: list of increment arrays or a 1-D / 2-D array.
        scales: window sizes n.
        samples_per_doc, seed: see `rescaled_range_statistics`.
        correction: "none" (the paper's estimator) or "anis-lloyd": fit
            `R/S / E_AL[R/S] * sqrt(n)` instead, removing the small-n bias of R/S
            (see `expected_rescaled_range`).

    Returns:
        `PowerLawFit` named "H" (values: mean rescaled ranges, corrected if asked).
    """
    _check_correction(correction)
    increments = _as_series_list(increments, "increments")
    scales = _check_scales(scales, "scales")
    _check_lengths(increments, int(scales.max()), "Hurst window sizes")
    stats = rescaled_range_statistics(increments, scales, samples_per_doc, seed)
    curve = _rs_curve(stats, np.ones((1, len(increments))))[0]
    _check_curve(curve, scales, "R/S", "every window was constant.")
    return power_law_fit(scales, _hurst_values(curve, scales, correction), "H")


# === Full analysis ===


@dataclasses.dataclass(frozen=True)
class FractalResult:
    """Fractal parameters of a collection of series.

    Attributes:
        S, H, J, D: point estimates (D = 2 - S).
        fits: {"S", "H", "J"} -> `PowerLawFit` (the fitted points and lines).
        ci: {"S", "H", "J", "D"} -> (low, high) bootstrap percentile interval at
            `confidence`, or {} without bootstrap.
        bootstrap: {"S", "H", "J", "D"} -> `(B,)` replicate estimates (finite ones).
        confidence: the interval's level.
        num_units, num_tokens: units analysed (documents or segments) and tokens.
        settings: the options used.
    """

    S: float
    H: float
    J: float
    D: float
    fits: dict
    ci: dict
    bootstrap: dict
    confidence: float
    num_units: int
    num_tokens: int
    settings: dict

    def as_dict(self):
        """{"S": ..., "H": ..., "J": ..., "D": ..., "S_ci": (lo, hi), ...}."""
        out = {name: getattr(self, name) for name in EXPONENTS}
        out.update({f"{name}_ci": interval for name, interval in self.ci.items()})
        return out

    def table(self, title=None):
        """A plain-text table of the estimates and intervals."""
        level = f"{self.confidence:.0%} CI" if self.ci else "CI"
        lines = [title] if title else []
        lines.append(f"{'param':<6}{'estimate':>10}{level:>22}{'fit R^2':>10}")
        for name in EXPONENTS:
            low_high = self.ci.get(name)
            interval = f"[{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else "-"
            fit = self.fits.get(name if name != "D" else "S")
            lines.append(f"{name:<6}{getattr(self, name):>10.3f}{interval:>22}{fit.r_squared:>10.3f}")
        lines.append(f"({self.num_units} units, {self.num_tokens} tokens)")
        return "\n".join(lines)

    def plot(self, path, title=None):
        """Write the log-log plots with fits to a PNG; returns `path`."""
        return plot_fractal_fits(self, path, title)


def fractal_parameters(series, *, epsilon=5e-3, tau_scales=DEFAULT_TAU_SCALES,
                       hurst_scales=DEFAULT_HURST_SCALES, samples_per_doc=100,
                       hurst_correction="none", normalize="document", concatenate=False, segment_length=None,
                       skip_first=0, max_tokens=None, min_tokens=1, clip_quantiles=None,
                       num_bootstrap=0, confidence=0.95, seed=0, plot_path=None):
    """S, H, J and D of real-valued series (surprisals, or synthetic increments).

    The series are turned into increment processes by `prepare_increments` (see
    it for `normalize`, `concatenate`, `segment_length`, `skip_first`,
    `max_tokens`, `min_tokens`, `clip_quantiles`), then:

    Args:
        series: a list of 1-D arrays (documents) or a 1-D / 2-D array.
        epsilon: threshold of the self-similarity peak probability (paper 5e-3).
        tau_scales: granularities tau for S and J (>= 2 ints).
        hurst_scales: window sizes n for R/S (>= 2 ints).
        samples_per_doc: random R/S windows per unit and size (colab 100), or None
            for all non-overlapping windows.
        hurst_correction: "none" (paper) or "anis-lloyd" (see `hurst_exponent`).
        num_bootstrap: bootstrap replicates over units (0: none; needs >= 2 units).
        confidence: level of the percentile intervals.
        seed: seed of the R/S windows and the bootstrap.
        plot_path: optional PNG path for `plot_fractal_fits`.

    Returns:
        A `FractalResult`.
    """
    settings = dict(epsilon=epsilon, tau_scales=tuple(int(s) for s in np.ravel(tau_scales)),
                    hurst_scales=tuple(int(s) for s in np.ravel(hurst_scales)),
                    samples_per_doc=samples_per_doc, hurst_correction=hurst_correction,
                    normalize=normalize, concatenate=concatenate,
                    segment_length=segment_length, skip_first=skip_first, max_tokens=max_tokens,
                    min_tokens=min_tokens, clip_quantiles=clip_quantiles,
                    num_bootstrap=num_bootstrap, confidence=confidence, seed=seed)
    if not epsilon > 0:
        raise ValueError(f"`epsilon` must be > 0; got {epsilon}.")
    _check_correction(hurst_correction)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1); got {confidence}.")
    if samples_per_doc is not None and int(samples_per_doc) < 1:
        raise ValueError(f"`samples_per_doc` must be >= 1 or None; got {samples_per_doc}.")
    increments = prepare_increments(
        series, normalize=normalize, concatenate=concatenate, segment_length=segment_length,
        skip_first=skip_first, max_tokens=max_tokens, min_tokens=min_tokens,
        clip_quantiles=clip_quantiles,
    )
    taus = _check_scales(tau_scales, "tau_scales")
    windows = _check_scales(hurst_scales, "hurst_scales")
    _check_lengths(increments, int(taus.max()), "tau scales")
    _check_lengths(increments, int(windows.max()), "Hurst window sizes")
    num_units = len(increments)
    num_bootstrap = int(num_bootstrap)
    if num_bootstrap < 0:
        raise ValueError(f"`num_bootstrap` must be >= 0; got {num_bootstrap}.")
    if num_bootstrap and num_units < 2:
        raise ValueError(
            "The bootstrap resamples documents and needs >= 2; split a long series into "
            "segments (`concatenate=True, segment_length=...`)."
        )

    rng = np.random.default_rng(seed)
    increment_stats = increment_statistics(increments, taus, epsilon)
    rs_stats = rescaled_range_statistics(
        increments, windows, samples_per_doc, seed=int(rng.integers(2**31))
    )
    ones = np.ones((1, num_units))
    peak, std = _pooled(increment_stats, ones)
    rs = _rs_curve(rs_stats, ones)
    _check_curve(peak[0], taus, "p_eps(tau)",
                 "no tau-increment fell within epsilon; increase `epsilon` or supply more tokens.")
    _check_curve(std[0], taus, "std of tau-increments", "the series is constant.")
    _check_curve(rs[0], windows, "R/S", "every window was constant.")
    fits = {"S": power_law_fit(taus, peak[0], "S", sign=-1.0),
            "H": power_law_fit(windows, _hurst_values(rs[0], windows, hurst_correction), "H"),
            "J": power_law_fit(taus, std[0], "J")}

    ci, replicates = {}, {}
    if num_bootstrap:
        # (B, U) multiplicities of each unit in each resample.
        draws = rng.integers(0, num_units, (num_bootstrap, num_units))
        weights = np.zeros((num_bootstrap, num_units))
        np.add.at(weights, (np.repeat(np.arange(num_bootstrap), num_units), draws.ravel()), 1.0)
        peak_b, std_b = _pooled(increment_stats, weights)
        rs_b = _hurst_values(_rs_curve(rs_stats, weights), windows, hurst_correction)
        with np.errstate(divide="ignore", invalid="ignore"):
            estimates = {
                "S": -_ols_slopes(np.log(taus), np.log(peak_b))[0],
                "H": _ols_slopes(np.log(windows), np.log(rs_b))[0],
                "J": _ols_slopes(np.log(taus), np.log(std_b))[0],
            }
        estimates["D"] = 2.0 - estimates["S"]
        tail = 100.0 * (1.0 - confidence) / 2.0
        for name, values in estimates.items():
            values = values[np.isfinite(values)]
            replicates[name] = values
            if values.size:
                low, high = np.percentile(values, [tail, 100.0 - tail])
                ci[name] = (float(low), float(high))

    result = FractalResult(
        S=fits["S"].exponent, H=fits["H"].exponent, J=fits["J"].exponent,
        D=2.0 - fits["S"].exponent, fits=fits, ci=ci, bootstrap=replicates,
        confidence=float(confidence), num_units=num_units,
        num_tokens=int(sum(x.size for x in increments)), settings=settings,
    )
    if plot_path is not None:
        plot_fractal_fits(result, plot_path)
    return result


def fractal_analysis(log_probs, *, bits=True, **kwargs):
    """Fractal parameters of per-token log-probabilities from any scoring model.

    Validates the log-probabilities (finite, <= 0, non-empty), converts them to
    surprisal `-log p` (bits by default; the unit does not change the exponents
    after normalisation, but it is the paper's), then runs `fractal_parameters`
    with `kwargs` (e.g. `**PAPER_SETTINGS` minus `bits`).

    Args:
        log_probs: a list of per-document 1-D natural-log probability arrays
            (`score_token_log_probs`), or a 1-D / 2-D array.
        bits: surprisal in bits (True) or nats.

    Returns:
        A `FractalResult`.
    """
    return fractal_parameters(surprisal(log_probs, bits=bits), **kwargs)


# === Plot ===


def plot_fractal_fits(result, path, title=None):
    """Log-log plots of `p_eps(tau)`, `R/S(n)` and `std(tau)` with their fitted
    power laws, written to a PNG (matplotlib, Agg backend).

    Args:
        result: a `FractalResult`.
        path: output file path (`.png`).
        title: optional figure title.

    Returns:
        `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    panels = (("S", r"granularity $\tau$", r"$p_\epsilon(\tau)$"),
              ("H", "window size $n$", "$R(n)/S(n)$"),
              ("J", r"granularity $\tau$", r"std of $X_{t+\tau}-X_t$"))
    figure = Figure(figsize=(12, 3.8), layout="constrained")
    FigureCanvasAgg(figure)  # Agg rendering without pyplot's global state
    for axes, (name, xlabel, ylabel) in zip(figure.subplots(1, 3), panels):
        fit = result.fits[name]
        axes.loglog(fit.scales, fit.values, "o", label="measured")
        grid = np.geomspace(fit.scales.min(), fit.scales.max(), 50)
        interval = result.ci.get(name)
        extra = f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else ""
        axes.loglog(grid, fit.predict(grid), "-", label=f"{name} = {fit.exponent:.3f}{extra}")
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(True, which="both", alpha=0.3)
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.yaxis.set_minor_formatter(NullFormatter())
        axes.legend()
    figure.suptitle(title or f"S={result.S:.3f}  H={result.H:.3f}  J={result.J:.3f}  D={result.D:.3f}")
    figure.savefig(path, dpi=100)
    return path
