"""Fractal parameters (S, H, J, D) of surprisal series: estimators on exact fractional
Gaussian noise, bootstrap, plot, input errors, and token scoring on every backend.

Measured tolerances (fGn, 32 documents x 2048 = 2^16 tokens, `normalize="none"` since
fGn is already standardised, eps = 0.1, tau 4..128, n 16..256; 20 seeds per H):
  S: max |S - H| 0.032 / 0.032 / 0.076 at H = 0.5 / 0.7 / 0.9 (sd up to 0.035) -> 0.1
  J: max |J - H| 0.015 / 0.024 / 0.026 -> 0.05
  H, plain R/S (the paper's estimator): mean 0.559 / 0.712 / 0.841, i.e. the known
     small-window bias of R/S (+0.06 at 0.5, -0.06 at 0.9), sd 0.005 -> 0.08
  H, Anis-Lloyd-Peters corrected R/S at H = 0.5 (fGn and i.i.d.): max error 0.021 -> 0.04
"""

import numpy as np
import pytest

from keras_siglip.analysis import fractal as F

KW = dict(epsilon=0.1, tau_scales=[4, 8, 16, 32, 64, 128], hurst_scales=[16, 32, 64, 128, 256],
          normalize="none")


@pytest.fixture(scope="module")
def fgn():
    return {h: F.fractional_gaussian_noise(2048, h, seed=0, size=32) for h in (0.5, 0.7, 0.9)}


def test_fgn_has_the_exact_covariance():
    h = 0.7
    x = F.fractional_gaussian_noise(4096, h, seed=1, size=64)
    assert x.shape == (64, 4096)
    gamma = lambda k: 0.5 * ((k + 1) ** (2 * h) - 2 * k ** (2 * h) + abs(k - 1) ** (2 * h))  # noqa: E731
    for lag in (0, 1, 10):
        sample = np.mean(x[:, : x.shape[1] - lag] * x[:, lag:])
        assert abs(sample - gamma(lag)) < 0.03, (lag, sample, gamma(lag))
    assert F.fractional_gaussian_noise(16, 0.5, seed=3).shape == (16,)
    np.testing.assert_array_equal(F.fractional_gaussian_noise(64, 0.6, seed=5),
                                  F.fractional_gaussian_noise(64, 0.6, seed=5))


@pytest.mark.parametrize("hurst", [0.5, 0.7, 0.9])
def test_exponents_recover_the_hurst_parameter_of_fgn(fgn, hurst):
    result = F.fractal_parameters(fgn[hurst], **KW)
    # For fGn, p_eps(tau) ~ tau^-H and std(tau) = tau^H: S = J = H.
    assert abs(result.S - hurst) <= 0.1, result.S
    assert abs(result.J - hurst) <= 0.05, result.J
    assert abs(result.H - hurst) <= 0.08, result.H
    assert result.D == pytest.approx(2 - result.S)
    for fit in result.fits.values():
        assert fit.r_squared > 0.97


def test_anis_lloyd_correction_removes_the_rs_bias_at_one_half(fgn):
    plain = F.hurst_exponent(fgn[0.5], KW["hurst_scales"])
    corrected = F.hurst_exponent(fgn[0.5], KW["hurst_scales"], correction="anis-lloyd")
    assert abs(corrected.exponent - 0.5) <= 0.04
    assert plain.exponent > corrected.exponent  # R/S is biased upward at small n


def test_iid_noise_is_not_long_range_dependent():
    noise = np.random.default_rng(0).standard_normal((32, 2048)) * 3.0 + 7.0
    result = F.fractal_parameters(noise, **{**KW, "normalize": "document"})
    assert abs(result.H - 0.5) <= 0.08
    assert abs(result.S - 0.5) <= 0.1 and abs(result.J - 0.5) <= 0.05
    corrected = F.fractal_parameters(noise, hurst_correction="anis-lloyd",
                                     **{**KW, "normalize": "document"})
    assert abs(corrected.H - 0.5) <= 0.04


def test_single_estimators_match_the_full_analysis(fgn):
    result = F.fractal_parameters(fgn[0.7], **KW, seed=3)
    assert F.self_similarity_exponent(fgn[0.7], 0.1, KW["tau_scales"]).exponent == pytest.approx(result.S)
    assert F.joseph_exponent(fgn[0.7], KW["tau_scales"]).exponent == pytest.approx(result.J)
    np.testing.assert_allclose(result.fits["J"].values,
                               [np.concatenate([np.cumsum(d)[t:] - np.cumsum(d)[:-t] for d in fgn[0.7]]).std()
                                for t in KW["tau_scales"]], rtol=1e-3)


def test_bootstrap_interval_contains_the_true_value(fgn):
    result = F.fractal_parameters(fgn[0.7], num_bootstrap=200, seed=0, **KW)
    low, high = result.ci["S"]
    assert low <= 0.7 <= high
    for name in "SHJD":
        low, high = result.ci[name]
        assert low < high and low <= getattr(result, name) <= high
        assert result.bootstrap[name].shape == (200,)
    assert result.ci["D"][0] == pytest.approx(2 - result.ci["S"][1])
    again = F.fractal_parameters(fgn[0.7], num_bootstrap=200, seed=0, **KW)
    assert again.ci == result.ci  # seeded


def test_log_probs_pipeline_table_and_png(tmp_path):
    rng = np.random.default_rng(0)
    docs = [-np.abs(rng.standard_normal(n)) * 2.0 for n in (700, 900, 800)]
    path = tmp_path / "fractal.png"
    result = F.fractal_analysis(docs, epsilon=0.1, tau_scales=[2, 4, 8, 16], hurst_scales=[8, 16, 32],
                                skip_first=10, max_tokens=600, num_bootstrap=20, plot_path=path)
    assert result.num_units == 3 and result.num_tokens == 3 * 590
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = result.table("demo")
    assert "H" in table and "95% CI" in table
    # Bits vs nats: the exponents do not depend on the unit after normalisation.
    nats = F.fractal_analysis(docs, bits=False, epsilon=0.1, tau_scales=[2, 4, 8, 16],
                              hurst_scales=[8, 16, 32], skip_first=10, max_tokens=600)
    assert nats.H == pytest.approx(result.H) and nats.S == pytest.approx(result.S)


def test_concatenated_short_documents_are_cut_into_segments():
    rng = np.random.default_rng(1)
    captions = [-rng.uniform(0, 5, rng.integers(4, 12)) for _ in range(400)]
    result = F.fractal_analysis(captions, concatenate=True, segment_length=256, epsilon=0.1,
                                tau_scales=[2, 4, 8, 16], hurst_scales=[8, 16, 32], num_bootstrap=10)
    assert result.num_units == sum(len(c) for c in captions) // 256
    with pytest.raises(ValueError, match="too short"):
        F.fractal_analysis(captions, epsilon=0.1, tau_scales=[2, 4, 8, 16], hurst_scales=[8, 16, 32])


def test_clear_errors_on_bad_input():
    good = -np.abs(np.random.default_rng(0).standard_normal(500))
    kw = dict(tau_scales=[2, 4, 8], hurst_scales=[8, 16], epsilon=0.1)
    with pytest.raises(ValueError, match="empty"):
        F.fractal_analysis([], **kw)
    with pytest.raises(ValueError, match="empty"):
        F.fractal_analysis([np.array([])], **kw)
    with pytest.raises(ValueError, match="non-finite"):
        F.fractal_analysis([np.where(np.arange(500) == 7, np.nan, good)], **kw)
    with pytest.raises(ValueError, match="non-finite"):
        F.fractal_analysis([np.where(np.arange(500) == 7, -np.inf, good)], **kw)
    with pytest.raises(ValueError, match="positive log-probabilities"):
        F.fractal_analysis([-good], **kw)
    with pytest.raises(ValueError, match="too short"):
        F.fractal_analysis([good[:50]], tau_scales=[2, 4, 8], hurst_scales=[16, 64], epsilon=0.1)
    with pytest.raises(ValueError, match="too short"):
        F.self_similarity_exponent(good[:5], 0.1, [2, 8])
    with pytest.raises(ValueError, match=">= 2"):
        F.fractal_analysis([good], tau_scales=[4], hurst_scales=[8, 16])
    with pytest.raises(ValueError, match="positive integers"):
        F.fractal_analysis([good], tau_scales=[0, 4], hurst_scales=[8, 16])
    with pytest.raises(ValueError, match="increase `epsilon`"):
        F.fractal_analysis([good], tau_scales=[2, 4, 8], hurst_scales=[8, 16], epsilon=1e-9)
    with pytest.raises(ValueError, match="constant"):
        F.fractal_analysis([np.full(500, -1.0)], **kw)
    with pytest.raises(ValueError, match="bootstrap"):
        F.fractal_analysis([good], num_bootstrap=10, **kw)
    with pytest.raises(ValueError, match="min_tokens"):
        F.fractal_analysis([good], min_tokens=1000, **kw)
    with pytest.raises(ValueError, match="normalize"):
        F.fractal_analysis([good], normalize="zscore", **kw)
    with pytest.raises(ValueError, match="hurst"):
        F.fractional_gaussian_noise(10, 1.0)


def test_token_log_probs_matches_numpy_log_softmax():
    from keras import ops

    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(3, 6, 11)) * 4).astype("float32")
    ids = rng.integers(1, 11, (3, 6)).astype("int32")
    ids[1, 4:] = 0
    ids[2, :] = 0
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    expected = np.take_along_axis(log_probs, ids[..., None], -1)[..., 0] * (ids != 0)
    got = F.token_log_probs(ops.convert_to_tensor(logits), ops.convert_to_tensor(ids))
    np.testing.assert_allclose(np.asarray(ops.convert_to_numpy(got)), expected, rtol=1e-5, atol=1e-5)
    nan_filled = np.asarray(ops.convert_to_numpy(F.token_log_probs(logits, ids, fill_value=np.nan)))
    assert np.isnan(nan_filled[2]).all() and not np.isnan(nan_filled[0]).any()


def test_score_token_log_probs_with_a_callable_and_a_captioner_task():
    """The real `CapPaCaptioner` is scored in guides/fractal_analysis.py (building one
    takes ~8 s); here a stand-in with the same interface (`backbone.encode_images`,
    `decoder(token_ids, encoded)`) keeps the file fast."""
    import types

    from keras import ops

    rng = np.random.default_rng(0)
    table = rng.normal(size=(13, 13)).astype("float32")
    log_softmax = table - np.log(np.exp(table).sum(-1, keepdims=True))

    def bigram_lm(token_ids, image_bias=None):  # any callable returning (B, L, V) logits
        previous = ops.pad(token_ids[:, :-1], [[0, 0], [1, 0]])
        logits = ops.take(ops.convert_to_tensor(table), previous, axis=0)
        return logits if image_bias is None else logits + image_bias[:, None, :]

    sequences = [rng.integers(1, 13, n) for n in (5, 9, 3)]
    out = F.score_token_log_probs(bigram_lm, sequences, batch_size=2)
    assert [o.shape for o in out] == [(5,), (9,), (3,)]
    previous = np.concatenate([[0], sequences[1][:-1]])
    np.testing.assert_allclose(out[1], log_softmax[previous, sequences[1]], rtol=1e-5, atol=1e-5)

    images = rng.normal(size=(3, 13)).astype("float32")  # "encoded" = a logit bias per image
    task = types.SimpleNamespace(
        backbone=types.SimpleNamespace(encode_images=lambda x: x),
        decoder=lambda token_ids, encoded: bigram_lm(token_ids, encoded),
        preprocessor=None,
    )
    padded = np.zeros((3, 9), "int32")
    for i, s in enumerate(sequences):
        padded[i, : len(s)] = s
    out = F.score_token_log_probs(task, padded, images=images, batch_size=2)
    biased = log_softmax[previous] + images[1][None] - np.log(
        np.exp(table[previous] + images[1][None]).sum(-1, keepdims=True)) + np.log(
        np.exp(table[previous]).sum(-1, keepdims=True))
    np.testing.assert_allclose(out[1], biased[np.arange(9), sequences[1]], rtol=1e-5, atol=1e-5)
    assert all(np.all(o <= 0) for o in out) and [o.size for o in out] == [5, 9, 3]
    with pytest.raises(ValueError, match="images"):
        F.score_token_log_probs(task, padded)
    with pytest.raises(ValueError, match="exactly one"):
        F.score_token_log_probs(bigram_lm)
    with pytest.raises(ValueError, match="tokenizer"):
        F.score_token_log_probs(bigram_lm, texts=["a red circle"])
