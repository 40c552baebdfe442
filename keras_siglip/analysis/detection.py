"""Telling generated from human text by its fractal structure (Alabdulmohsin & Steiner 2025).

"A Tale of Two Structures" finds that human text occupies a narrow region of
self-similarity S and Hurst H while language-model output spreads with the
decoding temperature and the prompt, so per-document fractal parameters can flag
generated documents. Here:

- `document_features`: per document, from its per-token log-probabilities under
  a scoring LM, the fractal features S, H, J (each estimated on that document
  alone, as in `keras_siglip.analysis.fractal`) and the baseline features a
  perplexity detector uses: mean and standard deviation of the surprisal (bits).
- `LogisticDetector`: L2-regularised logistic regression on standardised
  features and, by default, their squares and pairwise products (Newton's
  method; numpy only). The quadratic terms let it flag documents on *either*
  side of the human region (too low and too high temperatures), which no
  linear score can.
- `roc_auc`: the area under the ROC curve (Mann-Whitney U, ties counted half).
- `bootstrap_interval`: percentile interval of any statistic of resampled
  (score, label) pairs.
- `detection_experiment`: split documents into train / test halves, fit one
  detector per feature set, report held-out ROC-AUC with a bootstrap interval.
- `generation_sweep`: the paper's other experiment, one LM generating at several
  temperatures and prompting methods, each set of documents scored and measured
  (pooled parameters and the per-document spread); `keras_hub_generator` makes
  the `generate` function of a keras-hub `CausalLM`.

The paper's exact baseline features and classifier are not public (its summaries
name neither); these are the standard perplexity-based features and a linear
classifier, and the comparison between feature sets is what carries over.
"""

import dataclasses

import numpy as np

from keras_siglip.analysis.fractal import (hurst_exponent, joseph_exponent, prepare_increments,
                                           self_similarity_exponent, surprisal)

FEATURE_SETS = {
    "fractal": ("S", "H", "J"),
    "baseline": ("mean_surprisal", "std_surprisal"),
    "both": ("S", "H", "J", "mean_surprisal", "std_surprisal"),
}


def document_features(log_probs, *, epsilon=0.25, tau_scales=(2, 4, 8, 16),
                      hurst_scales=(16, 32, 64, 128), samples_per_doc=100, skip_first=0, max_tokens=None,
                      seed=0):
    """Per-document features from per-token log-probabilities.

    Args:
        log_probs: a list of N 1-D arrays of natural-log token probabilities
            (`score_token_log_probs` output), each longer than the largest scale.
        epsilon, tau_scales: threshold and granularities of S (taus also for
            J). One document has far fewer tokens than the paper's pooled
            domains (5e-3 and taus 10-300 need ~1e5 tokens per estimate): the
            defaults keep a few counts in the window at the largest tau of a
            500-token document with H up to 0.9 (`P(|X_{t+tau} - X_t| <= eps)`
            ~ 2 eps / (2.5 tau^H)).
        hurst_scales: window sizes for H (the paper's `DEFAULT_HURST_SCALES`
            need 300 tokens per window; these, 128).
        samples_per_doc, seed: R/S windows per document and their seed.
        skip_first, max_tokens: tokens `[skip_first, max_tokens)` of each document.

    Returns:
        `(features, names)`: float64 `(N, 5)` and the column names `S`, `H`,
        `J`, `mean_surprisal`, `std_surprisal` (bits).
    """
    bits = surprisal(log_probs, bits=True)
    bits = [doc[skip_first:max_tokens] for doc in bits]
    increments = prepare_increments(bits, normalize="document")
    rows = []
    for doc, steps in zip(bits, increments):  # prepare_increments refused constant documents
        rows.append([
            self_similarity_exponent([steps], epsilon, tau_scales).exponent,
            hurst_exponent([steps], hurst_scales, samples_per_doc, seed).exponent,
            joseph_exponent([steps], tau_scales).exponent,
            float(np.mean(doc)),
            float(np.std(doc)),
        ])
    return np.array(rows, np.float64).reshape(-1, 5), list(FEATURE_SETS["both"])


def roc_auc(scores, labels):
    """Area under the ROC curve of `scores` for binary `labels` (1 = positive):
    the probability that a random positive outscores a random negative, ties
    counting one half (the Mann-Whitney U statistic / (n_pos * n_neg))."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"Got {scores.size} scores for {labels.size} labels.")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"Labels must be 0 or 1; got {np.unique(labels)}.")
    positives, negatives = int(labels.sum()), int((1 - labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("ROC-AUC needs both classes among the labels.")
    if not np.isfinite(scores).all():
        raise ValueError("Scores must be finite.")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # Midranks: tied scores share the mean of their ranks.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[labels == 1].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def bootstrap_interval(statistic, scores, labels, num_samples=1000, confidence=0.95, seed=0):
    """Percentile bootstrap interval of `statistic(scores, labels)`.

    Resamples (score, label) pairs with replacement, stratified by label (each
    replicate keeps both classes and their counts). Returns `(low, high)`.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1); got {confidence}.")
    if int(num_samples) < 1:
        raise ValueError(f"`num_samples` must be >= 1; got {num_samples}.")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    values = []
    for _ in range(int(num_samples)):
        index = np.concatenate([rng.choice(group, len(group)) for group in groups])
        values.append(statistic(scores[index], labels[index]))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


class LogisticDetector:
    """L2-regularised logistic regression on standardised features.

    Minimises `mean(log(1 + exp(-y_i (w . phi(x_i) + b)))) + l2 / 2 * |w|^2`
    (labels y in {0, 1} read as -1 / +1, the bias unpenalised) by Newton's
    method: the objective is strictly convex, so the optimum is unique.
    `phi` standardises the features (training mean and deviation) and with
    `quadratic` appends their squares and pairwise products.
    """

    def __init__(self, l2=1e-2, quadratic=True, max_iterations=100, tolerance=1e-10):
        self.l2, self.quadratic = float(l2), bool(quadratic)
        self.max_iterations, self.tolerance = int(max_iterations), float(tolerance)

    def _design(self, features):
        z = (np.asarray(features, np.float64) - self.mean_) / self.scale_
        if self.quadratic:
            rows, cols = np.triu_indices(z.shape[1])
            z = np.c_[z, z[:, rows] * z[:, cols]]
        return np.c_[z, np.ones(len(z))]

    def fit(self, features, labels):
        x = np.asarray(features, np.float64)
        y = np.asarray(labels).ravel()
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(f"Expected features (N, F) and N labels; got {x.shape} and {y.shape}.")
        if not np.isin(y, (0, 1)).all() or len(np.unique(y)) < 2:
            raise ValueError("Labels must be 0 / 1 with both classes present.")
        if not np.isfinite(x).all():
            raise ValueError("Features must be finite.")
        self.mean_, deviation = x.mean(0), x.std(0)
        # A feature constant up to rounding carries nothing: scaling its rounding noise to unit variance would.
        self.scale_ = np.where(deviation > 1e-9 * np.maximum(1.0, np.abs(self.mean_)), deviation, np.inf)
        z = self._design(x)
        sign = 2.0 * y - 1.0
        penalty = np.r_[np.full(z.shape[1] - 1, self.l2), 0.0]
        w = np.zeros(z.shape[1])
        for _ in range(self.max_iterations):
            margin = sign * (z @ w)
            p = 1.0 / (1.0 + np.exp(margin))  # sigmoid(-margin)
            gradient = -(z.T @ (sign * p)) / len(z) + penalty * w
            hessian = (z.T * (p * (1 - p))) @ z / len(z) + np.diag(penalty)
            step = np.linalg.solve(hessian + 1e-12 * np.eye(len(w)), gradient)
            w -= step
            if np.max(np.abs(step)) < self.tolerance:
                break
        self.coef_, self.intercept_ = w[:-1], w[-1]
        return self

    def decision_function(self, features):
        """`(N,)` scores, higher = more likely label 1."""
        return self._design(features)[:, :-1] @ self.coef_ + self.intercept_

    def predict_proba(self, features):
        return 1.0 / (1.0 + np.exp(-self.decision_function(features)))


@dataclasses.dataclass(frozen=True)
class DetectionResult:
    """Held-out ROC-AUC of one feature set, with its bootstrap interval."""

    features: tuple
    auc: float
    interval: tuple
    num_train: int
    num_test: int


def detection_experiment(human_features, generated_features, names=FEATURE_SETS["both"],
                         feature_sets=("fractal", "baseline", "both"), test_fraction=0.5, l2=1e-2,
                         quadratic=True, num_bootstrap=1000, confidence=0.95, seed=0):
    """Fit a `LogisticDetector` per feature set on a random stratified split of
    human (label 0) and generated (label 1) documents; score the held-out part.

    Args:
        human_features, generated_features: `(N_h, F)` / `(N_g, F)` from
            `document_features` (columns `names`).
        feature_sets: keys of `FEATURE_SETS`, or tuples of column names.
        test_fraction: share of each class held out.
        l2, quadratic: of each `LogisticDetector`.
        num_bootstrap, confidence: of the AUC interval (`bootstrap_interval`).

    Returns:
        `{name: DetectionResult}`; chance is an AUC of 0.5.
    """
    human, generated = (np.asarray(f, np.float64) for f in (human_features, generated_features))
    names = list(names)
    if human.ndim != 2 or generated.ndim != 2 or human.shape[1] != len(names) or generated.shape[1] != len(names):
        raise ValueError(f"Expected feature matrices with {len(names)} columns {names}; got {human.shape} and "
                         f"{generated.shape}.")
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must be in (0, 1); got {test_fraction}.")
    rng = np.random.default_rng(seed)
    splits = []
    for group in (human, generated):
        order = rng.permutation(len(group))
        held = int(round(test_fraction * len(group)))
        if held < 1 or held >= len(group):
            raise ValueError(f"{len(group)} documents of a class leave none to train or test on.")
        splits.append((group[order[held:]], group[order[:held]]))
    (human_train, human_test), (generated_train, generated_test) = splits
    train = np.r_[human_train, generated_train]
    test = np.r_[human_test, generated_test]
    train_labels = np.r_[np.zeros(len(human_train)), np.ones(len(generated_train))].astype(int)
    test_labels = np.r_[np.zeros(len(human_test)), np.ones(len(generated_test))].astype(int)
    results = {}
    for feature_set in feature_sets:
        columns = FEATURE_SETS[feature_set] if isinstance(feature_set, str) else tuple(feature_set)
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise ValueError(f"Unknown feature columns {unknown}; have {names}.")
        index = [names.index(c) for c in columns]
        detector = LogisticDetector(l2, quadratic).fit(train[:, index], train_labels)
        scores = detector.decision_function(test[:, index])
        name = feature_set if isinstance(feature_set, str) else "+".join(columns)
        results[name] = DetectionResult(
            tuple(columns), roc_auc(scores, test_labels),
            bootstrap_interval(roc_auc, scores, test_labels, num_bootstrap, confidence, seed),
            len(train), len(test))
    return results


# === The follow-up paper's experiment: one LM generating at several temperatures ===


@dataclasses.dataclass(frozen=True)
class GenerationRow:
    """Fractal structure of the documents one prompting method produced at one
    temperature: `fractal` pools them (`fractal_analysis`), `features` holds each
    document's `document_features` row, `spread` the standard deviation of the
    per-document S and H (the paper: generated text spreads where human text
    stays in a narrow region)."""

    method: str
    temperature: float
    fractal: object
    features: np.ndarray
    spread: dict
    log_probs: list


def generation_sweep(generate, scorer, prompts, temperatures, *, batch_size=8, feature_kwargs=None,
                     fractal_kwargs=None, progress=True):
    """Generate with one LM at several temperatures (and prompting methods), score
    the documents, and measure their fractal parameters.

    Args:
        generate: `generate(prompts, temperature) -> documents`, a list of token
            id sequences or of texts (e.g. `keras_hub_generator(lm, max_length)`).
        scorer: what scores the documents, as `score_token_log_probs` takes it
            (the generating LM itself, or a reference LM); texts need a scorer
            that tokenizes.
        prompts: a list of prompts (one document each), or `{method: prompts}`
            to compare prompting methods (continuation, outline, keywords...).
        temperatures: decoding temperatures.
        batch_size: documents per scoring pass.
        feature_kwargs: passed to `document_features`.
        fractal_kwargs: passed to `fractal_analysis` (pooled S, H, J, D).

    Returns:
        A list of `GenerationRow`, methods outer, temperatures inner.
    """
    from keras_siglip.analysis.fractal import fractal_analysis, score_token_log_probs

    methods = prompts if isinstance(prompts, dict) else {"prompts": prompts}
    rows = []
    for method, method_prompts in methods.items():
        for temperature in temperatures:
            documents = list(generate(list(method_prompts), float(temperature)))
            if len(documents) != len(method_prompts):
                raise ValueError(f"generate returned {len(documents)} documents for {len(method_prompts)} prompts.")
            as_texts = bool(documents) and isinstance(documents[0], str)
            log_probs = score_token_log_probs(
                scorer, texts=documents if as_texts else None, token_ids=None if as_texts else documents,
                batch_size=batch_size, progress=progress)
            features, names = document_features(log_probs, **(feature_kwargs or {}))
            spread = {name: float(np.std(features[:, names.index(name)])) for name in ("S", "H")}
            rows.append(GenerationRow(method, float(temperature), fractal_analysis(log_probs, **(fractal_kwargs or {})),
                                      features, spread, log_probs))
    return rows


def keras_hub_generator(causal_lm, max_length, seed=0, stop_token_ids="auto"):
    """`generate(prompts, temperature)` for `generation_sweep` from a keras-hub
    `CausalLM`: random sampling at the temperature (`keras_hub.samplers.
    RandomSampler`), `max_length` tokens in all, texts out (prompt included).
    `stop_token_ids=None` samples every document to `max_length` even past an
    end token (fractal statistics want documents of a known length)."""
    import keras_hub

    def generate(prompts, temperature):
        causal_lm.compile(sampler=keras_hub.samplers.RandomSampler(temperature=temperature, seed=seed))
        texts = causal_lm.generate(list(prompts), max_length=max_length, stop_token_ids=stop_token_ids)
        return [str(text) for text in texts]

    return generate
