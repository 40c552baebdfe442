import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_siglip.data import (BalanceReport, balance_weights, balanced_subsample,
                               statistics, weighted_dataset)


def planted(n=4000, seed=0):
    """Group 1 is 20% of the data (80/20 imbalance); label 0 is strongly tied to the
    group (80% vs 20%), label 1 is independent, label 2 mildly anti-correlated."""
    rng = np.random.default_rng(seed)
    codes = (rng.uniform(size=n) < 0.2).astype(np.int64)
    rates = np.where(codes[:, None] == 1, [0.8, 0.5, 0.2], [0.2, 0.5, 0.4])
    return codes, (rng.uniform(size=(n, 3)) < rates).astype(np.float32)


def weighted_moments(s, y, w):
    """Independent reference: weighted proportions and covariances via np.cov."""
    rep = (w[:, None] * s).sum(0) / w.sum()
    cov = np.array([[np.cov(s[:, k], y[:, r], aweights=w, bias=True)[0, 1]
                     for r in range(y.shape[1])] for k in range(s.shape[1])])
    return rep, cov


@pytest.mark.parametrize("tolerance,bound", [(0.01, 0.01), (0.02, 0.005)])
def test_planted_biases_are_removed(tolerance, bound):
    codes, labels = planted()
    weights, report = balance_weights(codes, labels, representation_tolerance=tolerance,
                                      association_bound=bound)
    rep, cov = weighted_moments(np.eye(2)[codes], labels, weights)
    assert np.all(np.abs(rep - 0.5) <= tolerance + 1e-9)
    assert np.all(np.abs(cov) <= bound + 1e-9)
    # The data was biased, and balancing is not the identity (all-ones weights fail).
    rep0, cov0 = weighted_moments(np.eye(2)[codes], labels, np.ones(len(codes)))
    assert np.abs(rep0 - 0.5).max() > 0.25 and np.abs(cov0).max() > 0.08
    assert np.ptp(weights) > 0.5
    assert isinstance(report, BalanceReport)
    assert report.representation_gap_before > 0.25 >= tolerance >= report.representation_gap_after
    assert report.association_gap_before > 0.08 > bound >= report.association_gap_after
    np.testing.assert_allclose(report.after["representation"], rep, atol=1e-12)
    np.testing.assert_allclose(report.after["association"], cov, atol=1e-12)
    assert "->" in report.summary()


@pytest.mark.parametrize("max_weight", [1.0, 3.0])
def test_weights_are_bounded_and_rare_group_counts_more(max_weight):
    codes, labels = planted()
    weights, _ = balance_weights(codes, labels, max_weight=max_weight)
    assert weights.shape == codes.shape and weights.dtype == np.float64
    assert weights.min() >= 0 and weights.max() <= max_weight
    assert weights[codes == 1].mean() > 2 * weights[codes == 0].mean()
    if max_weight > 1:
        assert weights.max() > 1.5  # up-weighting is used when allowed


def test_given_targets_overlapping_attributes_and_no_labels():
    rng = np.random.default_rng(1)
    # Two overlapping binary attributes (each example may have both or neither).
    attributes = (rng.uniform(size=(3000, 2)) < [0.7, 0.25]).astype(bool)
    weights, report = balance_weights(attributes, None, [0.5, 0.4], representation_tolerance=0.01)
    rep, _ = weighted_moments(attributes.astype(float), np.zeros((3000, 1)), weights)
    np.testing.assert_array_less(np.abs(rep - [0.5, 0.4]), 0.01 + 1e-9)
    assert report.association_gap_after == 0.0
    with pytest.raises(ValueError, match="explicit targets"):
        balance_weights(attributes, None)


def test_association_only_keeps_proportions_free():
    codes, labels = planted()
    weights, report = balance_weights(codes, labels, representation_tolerance=None, association_bound=0.01)
    _, cov = weighted_moments(np.eye(2)[codes], labels, weights)
    assert np.abs(cov).max() <= 0.01 + 1e-9
    np.testing.assert_allclose(report.representation_targets, [0.8005, 0.1995], atol=0.02)


def test_mean_weight_and_utility():
    codes, labels = planted()
    utility = np.random.default_rng(2).uniform(0.5, 1.0, len(codes))
    weights, report = balance_weights(codes, labels, mean_weight=0.3, utility=utility)
    assert weights.mean() == pytest.approx(0.3, rel=1e-3)
    assert report.representation_gap_after <= 0.01 and report.association_gap_after <= 0.01
    # Within one (group, labels) cell, higher utility never gets a lower weight.
    cell = codes * 8 + labels @ [1, 2, 4]
    for c in np.unique(cell)[:4]:
        order = np.argsort(utility[cell == c])
        assert np.all(np.diff(weights[cell == c][order]) >= -1e-9)


def test_grouped_and_per_example_solutions_agree():
    codes, labels = planted(1500)
    grouped, _ = balance_weights(codes, labels)
    per_example, report = balance_weights(codes, labels, utility=np.ones(len(codes)))
    np.testing.assert_allclose(grouped, per_example, atol=1e-6)
    soft = np.eye(2)[codes] * 0.96 + 0.02  # not binary: one row per example
    weights, report = balance_weights(soft, labels)
    assert report.rows == len(codes)
    rep, cov = weighted_moments(soft, labels, weights)
    assert np.abs(rep - 0.5).max() <= 0.01 + 1e-9 and np.abs(cov).max() <= 0.01 + 1e-9


@pytest.mark.parametrize("kwargs,message", [
    (dict(representation_targets=[0.3, 0.3, 0.4]), "group 2 has no examples"),
    (dict(representation_targets=[0.6, 0.6]), "sum to 1.2"),
    (dict(mean_weight=0.9), r"mean_weight=0.9 cannot be met with max_weight=1: attribute group 1 holds"),
])
def test_infeasible_targets_raise(kwargs, message):
    codes, labels = planted()
    with pytest.raises(ValueError, match=message):
        balance_weights(codes, labels, **kwargs)


def test_jointly_infeasible_constraints_raise():
    codes = np.arange(400) % 2
    # The label is the group: its covariance with the group is p(1-p) ~ 0.25 whatever
    # the weights, unless every weight is 0.
    with pytest.raises(ValueError, match="infeasible|cannot be met"):
        balance_weights(codes, codes[:, None], association_bound=0.01)


@pytest.mark.parametrize("attributes,labels,kwargs,message", [
    (np.array([[0.0, 1.0], [np.nan, 0.0]]), None, {}, "NaN"),
    (np.zeros((3, 2, 1)), None, {}, "shape"),
    (np.array([[0.0, 2.0]]), None, {}, r"\[0, 1\]"),
    (np.array([["a", "b"]]), None, {}, "numeric"),
    (np.array([0.0, 1.0]), None, {}, "integer group codes"),
    (np.array([0, 1, 1]), np.ones((2, 1)), {}, "disagree on N"),
    (np.eye(2)[[0, 1, 1]], None, dict(representation_targets=[0.2, 0.3, 0.5]), "shape"),
    (np.array([0, 1, 1]), None, dict(representation_tolerance=-1), "representation_tolerance"),
    (np.array([0, 1, 1]), None, dict(max_weight=0), "max_weight"),
    (np.array([0, 1, 1]), None, dict(utility=np.ones(2)), "utility"),
])
def test_bad_inputs_raise(attributes, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        balance_weights(attributes, labels, **kwargs)


def test_statistics_matches_reference():
    codes, labels = planted(500)
    w = np.random.default_rng(3).uniform(0, 2, 500)
    stats = statistics(codes, labels, w)
    rep, cov = weighted_moments(np.eye(2)[codes], labels, w)
    np.testing.assert_allclose(stats["representation"], rep)
    np.testing.assert_allclose(stats["association"], cov, atol=1e-12)
    np.testing.assert_allclose(stats["label_rate"], (w[:, None] * labels).sum(0) / w.sum())
    assert stats["effective_size"] == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert statistics(codes, labels)["effective_size"] == pytest.approx(500)
    with pytest.raises(ValueError, match="non-negative"):
        statistics(codes, labels, -w)


def test_subsample_reproducible_proportional_and_balanced():
    codes, labels = planted()
    weights, _ = balance_weights(codes, labels)
    a, b = balanced_subsample(weights, 1200, seed=7), balanced_subsample(weights, 1200, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, balanced_subsample(weights, 1200, seed=8))
    assert a.dtype == np.int64 and len(np.unique(a)) == 1200 and np.all(np.diff(a) > 0)
    assert np.all(weights[a] > 0)
    stats = statistics(codes[a], labels[a])
    assert np.abs(stats["representation"] - 0.5).max() < 0.05
    assert np.abs(stats["association"]).max() < 0.04

    # Inclusion probabilities are min(1, c * w): the heavy example is always kept, the
    # zero-weight one never, the rest in proportion to their weights.
    w = np.array([0.0, 1.0, 2.0, 3.0, 30.0, 4.0])
    counts = np.zeros(len(w))
    for seed in range(2000):
        counts[balanced_subsample(w, 3, seed=seed)] += 1
    np.testing.assert_allclose(counts / 2000, [0, 0.2, 0.4, 0.6, 1.0, 0.8], atol=0.04)
    with pytest.raises(ValueError, match="size"):
        balanced_subsample(w, 6)


def test_weighted_dataset_resample_is_deterministic():
    weights = np.array([0.0, 1.0, 2.0, 0.5] * 50)
    data = tf.data.Dataset.from_tensor_slices(np.arange(200))
    seen = [int(x) for x in weighted_dataset(data, weights, seed=3)]
    assert seen == [int(x) for x in weighted_dataset(data, weights, seed=3)]
    counts = np.bincount(seen, minlength=200).reshape(50, 4)
    np.testing.assert_array_equal(counts[:, :3], np.tile([0, 1, 2], (50, 1)))
    assert 10 < counts[:, 3].sum() < 40  # Bernoulli(0.5) over 50 examples
    with pytest.raises(ValueError, match="200 elements but weights has 10"):
        weighted_dataset(data, weights[:10])
    with pytest.raises(ValueError, match="mode"):
        weighted_dataset(data, weights, mode="bogus")


def test_weighted_dataset_sample_weights_feed_fit():
    codes, labels = planted(64)
    weights, _ = balance_weights(codes, labels)
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, labels[:, 0]))
    weighted = list(weighted_dataset(data, weights, mode="sample_weight").as_numpy_iterator())
    np.testing.assert_allclose([w for _, _, w in weighted], weights, rtol=1e-6)
    triples = tf.data.Dataset.from_tensor_slices((x, labels[:, 0], np.full(64, 2.0)))
    doubled = [w for _, _, w in weighted_dataset(triples, weights, mode="sample_weight").as_numpy_iterator()]
    np.testing.assert_allclose(doubled, 2 * weights, rtol=1e-6)
    x_only = weighted_dataset(tf.data.Dataset.from_tensor_slices({"x": x}), weights, mode="sample_weight")
    assert x_only.element_spec[1] is None or isinstance(x_only.element_spec[1], tf.NoneTensorSpec)

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    history = model.fit(weighted_dataset(data, weights, mode="sample_weight").batch(16), epochs=1,
                        shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])
