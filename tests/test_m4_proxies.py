"""balance_weights' proxies: decorrelated from the sensitive attribute like labels,
reported apart; without proxies the weights are unchanged."""

import numpy as np
import pytest

from keras_siglip.data import balance_weights


def _data(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    s = (rng.uniform(size=n) < 0.6).astype(int)  # 2 groups
    labels = (rng.uniform(size=n) < np.where(s == 1, 0.7, 0.3)).astype(float)[:, None]  # correlated label
    proxy = (rng.uniform(size=n) < np.where(s == 1, 0.8, 0.2)).astype(float)[:, None]  # strong proxy
    return s, labels, proxy


def _cov(s, z, w):
    s, z = np.eye(2)[s], np.asarray(z, float)
    m_s, m_z = w @ s / w.sum(), w @ z / w.sum()
    return (s - m_s).T @ (w[:, None] * (z - m_z)) / w.sum()


def test_no_proxies_keeps_behaviour():
    s, labels, _ = _data()
    w0, r0 = balance_weights(s, labels)
    w1, r1 = balance_weights(s, labels, proxies=None)
    np.testing.assert_array_equal(w0, w1)
    assert r1.proxy_association_before is None and r1.proxy_gap_after == 0.0


def test_proxies_are_decorrelated_and_reported():
    s, labels, proxy = _data()
    plain, _ = balance_weights(s, labels, association_bound=0.01)
    assert np.abs(_cov(s, proxy, plain)).max() > 0.05  # balancing the labels alone leaves the proxy
    w, report = balance_weights(s, labels, proxies=proxy, association_bound=0.01, proxy_bound=0.02)
    np.testing.assert_allclose(report.proxy_association_before, _cov(s, proxy, np.ones(len(s))), atol=1e-12)
    np.testing.assert_allclose(report.proxy_association_after, _cov(s, proxy, w), atol=1e-12)
    assert report.proxy_gap_before == pytest.approx(np.abs(_cov(s, proxy, np.ones(len(s)))).max())
    assert report.proxy_gap_after <= 0.02 * (1 + 1e-6)
    assert report.association_gap_after <= 0.01 * (1 + 1e-6)
    np.testing.assert_allclose(report.after["association"], _cov(s, labels, w), atol=1e-12)
    assert report.after["association"].shape == (2, 1)  # labels only; proxies apart
    assert np.abs(w @ np.eye(2)[s] / w.sum() - 0.5).max() <= 0.01 * (1 + 1e-6)
    assert "proxy |cov|" in report.summary()
    # Same as passing the proxy as a label with the same bound: the constraint form is shared.
    both, _ = balance_weights(s, np.concatenate([labels, proxy], 1), association_bound=0.01)
    w_same, _ = balance_weights(s, labels, proxies=proxy, association_bound=0.01)
    np.testing.assert_allclose(w_same, both, atol=1e-4)


def test_proxy_bound_none_only_reports():
    s, labels, proxy = _data()
    w, report = balance_weights(s, labels, proxies=proxy, proxy_bound=None)
    np.testing.assert_allclose(w, balance_weights(s, labels)[0])
    assert report.proxy_gap_after == pytest.approx(np.abs(_cov(s, proxy, w)).max())


def test_proxy_errors():
    s, labels, proxy = _data(100)
    with pytest.raises(ValueError, match="disagree on N"):
        balance_weights(s, labels, proxies=proxy[:50])
    with pytest.raises(ValueError, match="proxy_bound"):
        balance_weights(s, labels, proxies=proxy, proxy_bound=-1.0)
