"""Detecting generated text from per-document fractal features: ROC-AUC, bootstrap
intervals, the logistic detector and the features, against numpy references
written here (pairwise AUC, the penalised gradient at the optimum) and synthetic
documents of known Hurst exponent."""

import numpy as np
import pytest

from keras_siglip.analysis import fractional_gaussian_noise
from keras_siglip.analysis.detection import (FEATURE_SETS, LogisticDetector, bootstrap_interval,
                                             detection_experiment, document_features, roc_auc)
from tests.helpers import numpy


def pairwise_auc(scores, labels):
    positive, negative = scores[labels == 1], scores[labels == 0]
    wins = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return wins / (len(positive) * len(negative))


def test_roc_auc_equals_the_pairwise_count_with_ties(rng):
    for _ in range(5):
        scores = rng.integers(0, 6, 60).astype(float)  # many ties
        labels = rng.integers(0, 2, 60)
        assert roc_auc(scores, labels) == pytest.approx(pairwise_auc(scores, labels), abs=1e-12)
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [0, 0, 1, 1]) == 0.0
    assert roc_auc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5


def test_roc_auc_refuses_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 2], [1, 1])
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([1, 2], [0, 2])
    with pytest.raises(ValueError, match="3 scores for 2 labels"):
        roc_auc([1, 2, 3], [0, 1])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([np.nan, 1], [0, 1])


def test_bootstrap_interval_is_seeded_covers_the_estimate_and_narrows_with_data(rng):
    def sample(n):
        labels = np.r_[np.zeros(n), np.ones(n)].astype(int)
        return rng.normal(labels * 0.8), labels

    small, large = sample(30), sample(600)
    a = bootstrap_interval(roc_auc, *small, num_samples=300, seed=1)
    assert a == bootstrap_interval(roc_auc, *small, num_samples=300, seed=1)
    assert a != bootstrap_interval(roc_auc, *small, num_samples=300, seed=2)
    assert a[0] <= roc_auc(*small) <= a[1]
    b = bootstrap_interval(roc_auc, *large, num_samples=300, seed=1)
    assert b[0] <= roc_auc(*large) <= b[1]
    assert (b[1] - b[0]) < (a[1] - a[0]) / 3  # ~ 1 / sqrt(n): 20x the data, ~4.5x narrower
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(roc_auc, *small, confidence=1.5)


@pytest.mark.parametrize("quadratic", [False, True])
def test_logistic_detector_reaches_the_penalised_optimum(quadratic, rng):
    x = rng.normal(size=(200, 3)) * [1.0, 5.0, 0.1] + [0, 3, -1]
    y = (x[:, 0] + 0.2 * x[:, 1] + rng.normal(size=200) > 0.5).astype(int)
    l2 = 0.05
    detector = LogisticDetector(l2, quadratic=quadratic).fit(x, y)
    # The gradient of the objective written out independently: standardised design, bias unpenalised.
    z = (x - x.mean(0)) / x.std(0)
    if quadratic:
        z = np.c_[z, np.stack([z[:, i] * z[:, j] for i in range(3) for j in range(i, 3)], 1)]
    w, b = detector.coef_, detector.intercept_
    assert w.shape == ((9,) if quadratic else (3,))
    p = 1 / (1 + np.exp(-(z @ w + b)))
    np.testing.assert_allclose(z.T @ (p - y) / len(y) + l2 * w, 0, atol=1e-9)
    assert abs(np.mean(p - y)) < 1e-9
    np.testing.assert_allclose(detector.predict_proba(x), p, atol=1e-12)


def test_quadratic_terms_flag_both_sides_of_a_band(rng):
    """Class 1 lies on either side of class 0 (as generated text at too low and too
    high temperatures around human text): a linear score cannot rank it, a
    quadratic one can."""
    x = np.r_[rng.normal(0, 0.3, 200), rng.choice([-2.0, 2.0], 200) + rng.normal(0, 0.3, 200)][:, None]
    y = np.r_[np.zeros(200), np.ones(200)].astype(int)
    linear = roc_auc(LogisticDetector(quadratic=False).fit(x, y).decision_function(x), y)
    quadratic = roc_auc(LogisticDetector().fit(x, y).decision_function(x), y)
    assert abs(linear - 0.5) < 0.1 and quadratic > 0.99


def fgn_log_probs(num_docs, hurst, seed, length=512, standardize=False):
    """Per-token log-probabilities whose surprisal (bits) is 6 + fGn of the given H
    (with `standardize`, each document's fGn rescaled to mean 0 and std 1)."""
    noise = fractional_gaussian_noise(length, hurst, seed=seed, size=num_docs)
    if standardize:
        noise = (noise - noise.mean(1, keepdims=True)) / noise.std(1, keepdims=True)
    return [-(6.0 + np.clip(row, -5.5, None)) * np.log(2.0) for row in noise]


def test_document_features_recover_each_documents_hurst_exponent():
    features, names = document_features(fgn_log_probs(20, 0.5, 0) + fgn_log_probs(20, 0.85, 1))
    assert names == list(FEATURE_SETS["both"]) and features.shape == (40, 5)
    h = features[:, names.index("H")]
    # R/S on 512-token windows is biased up at H = 0.5 (Anis-Lloyd); the two groups separate.
    assert 0.45 < np.median(h[:20]) < 0.65 and 0.75 < np.median(h[20:]) < 0.95
    # Mean surprisal: 6 bits for both (long memory spreads the documents' means more at H = 0.85).
    assert abs(np.median(features[:20, 3]) - 6) < 0.1 and abs(np.median(features[20:, 3]) - 6) < 0.3


def test_fractal_features_detect_what_perplexity_features_cannot():
    """Human-like (H = 0.7) vs 'generated' documents at H = 0.5 or 0.9, every
    document with surprisal mean 6 bits and deviation 1: the fractal detector
    separates them, the perplexity baseline has nothing to go on (chance)."""
    human = document_features(fgn_log_probs(60, 0.7, 10, standardize=True))[0]
    generated = document_features(fgn_log_probs(30, 0.5, 11, standardize=True)
                                  + fgn_log_probs(30, 0.9, 12, standardize=True))[0]
    results = detection_experiment(human, generated, num_bootstrap=300, seed=0)
    fractal, baseline = results["fractal"], results["baseline"]
    assert fractal.auc > 0.9 and fractal.interval[0] > 0.8, fractal
    assert baseline.auc == 0.5, baseline  # constant features: every document scores the same
    assert fractal.num_train == fractal.num_test == 60
    linear = detection_experiment(human, generated, feature_sets=("fractal",), quadratic=False, num_bootstrap=10)
    assert linear["fractal"].auc < fractal.auc - 0.1  # generated text lies on both sides


def test_bad_inputs_are_refused():
    constant = [np.full(300, -2.0)]
    with pytest.raises(ValueError, match="constant"):
        document_features(constant)
    good = np.zeros((10, 5))
    with pytest.raises(ValueError, match="Unknown feature columns"):
        detection_experiment(good, good + 1, feature_sets=(("S", "perplexity"),))
    with pytest.raises(ValueError, match="5 columns"):
        detection_experiment(good[:, :3], good)
    with pytest.raises(ValueError, match="test_fraction"):
        detection_experiment(good, good, test_fraction=1.0)
    with pytest.raises(ValueError, match="both classes"):
        LogisticDetector().fit(good, np.zeros(10))


V = 12
BIGRAM = np.random.default_rng(5).normal(size=(V, V)) * 2.0  # peaked next-token distributions
BIGRAM[:, 0] = -1e9  # never the padding id


def bigram_generate(prompts, temperature, length=400):
    """A numpy bigram LM sampling at `temperature`: each document starts with its prompt token."""
    documents = []
    for prompt in prompts:
        rng = np.random.default_rng([int(prompt), int(temperature * 100)])
        tokens = [int(prompt)]
        for _ in range(length - 1):
            logits = BIGRAM[tokens[-1]] / temperature
            p = np.exp(logits - logits.max())
            tokens.append(int(rng.choice(V, p=p / p.sum())))
        documents.append(tokens)
    return documents


def bigram_scorer(token_ids):
    """Logits aligned with the targets: position t scores token t given token t - 1 (0 before the first)."""
    ids = np.asarray(token_ids)
    previous = np.pad(ids[:, :-1], [[0, 0], [1, 0]])
    return BIGRAM[previous].astype("float32")


def test_generation_sweep_scores_each_temperature_and_method():
    from keras_siglip.analysis import detection
    from keras_siglip.analysis.fractal import fractal_analysis

    prompts = {"short": [1, 2, 3, 4], "long": [5, 6, 7, 8]}
    # A bigram's surprisal takes few distinct values: a wide epsilon keeps increments inside it.
    settings = {"tau_scales": (4, 8, 16, 32), "hurst_scales": (16, 32, 64), "epsilon": 1.0}
    rows = detection.generation_sweep(bigram_generate, bigram_scorer, prompts, (0.7, 1.0, 1.4),
                                      feature_kwargs={"epsilon": 1.0}, fractal_kwargs=settings, progress=False)
    assert [(r.method, r.temperature) for r in rows] == [(m, t) for m in prompts for t in (0.7, 1.0, 1.4)]
    table = BIGRAM - np.log(np.exp(BIGRAM - BIGRAM.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - BIGRAM.max(1, keepdims=True)
    for row in rows:
        documents = bigram_generate(prompts[row.method], row.temperature)
        for doc, log_probs in zip(documents, row.log_probs):  # numpy log-softmax of the bigram table
            np.testing.assert_allclose(log_probs, table[[0] + doc[:-1], doc], atol=1e-4)
        assert row.fractal.H == fractal_analysis(row.log_probs, **settings).H
        assert row.features.shape == (4, 5) and set(row.spread) == {"S", "H"}
    # Hotter sampling picks less likely tokens: the mean surprisal rises with temperature.
    for method in prompts:
        means = [r.features[:, 3].mean() for r in rows if r.method == method]
        assert means[0] < means[1] < means[2], means
    with pytest.raises(ValueError, match="3 documents for 4 prompts"):
        detection.generation_sweep(lambda p, t: bigram_generate(p[:3], t), bigram_scorer, [1, 2, 3, 4], (1.0,),
                                   progress=False)


def test_keras_hub_generator_samples_texts_at_a_temperature(gemma_proto):
    import keras_hub

    from keras_siglip.analysis.detection import keras_hub_generator
    from tests.helpers import tiny_gemma_causal_lm

    lm = tiny_gemma_causal_lm(keras_hub.models.GemmaTokenizer(proto=gemma_proto))
    generate = keras_hub_generator(lm, max_length=10, seed=3)
    texts = generate(["a photo of", "two blue"], 0.8)
    assert len(texts) == 2 and texts[0].startswith("a photo of") and texts[1].startswith("two blue")
    assert generate(["a photo of", "two blue"], 0.8) == texts  # seeded


def test_keras_hub_generator_samples_past_the_end_token_when_asked(gemma_proto):
    """Near-uniform sampling over a 60-piece vocabulary draws `<eos>` within 30
    tokens: by default a document stops there; with `stop_token_ids=None` the
    same draws go on to `max_length`, so each document extends the stopped one."""
    import keras_hub

    from keras_siglip.analysis.detection import keras_hub_generator
    from tests.helpers import tiny_gemma_causal_lm

    tokenizer = keras_hub.models.GemmaTokenizer(proto=gemma_proto)
    lm = tiny_gemma_causal_lm(tokenizer)
    prompts = ["a photo of"] * 8
    stopped, full = (keras_hub_generator(lm, max_length=32, seed=1, stop_token_ids=stop)(prompts, 50.0)
                     for stop in ("auto", None))
    for short, long in zip(stopped, full):
        assert long.startswith(short), (short, long)
    assert sum(len(long) > len(short) for short, long in zip(stopped, full)) >= 2, (stopped, full)
