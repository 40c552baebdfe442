"""What sampling does to the next-token distribution: `make_sampler` (used by the
CapPa / LocCa / LiT-decoder captioners and by PaliGemma's `generate`) on fixed logits.

Each sampler runs its whole keras-hub loop (`sampler(next, prompt, index=1)`)
for one step over N rows that all see the same logits, so the N draws are N
samples of one distribution; the expected distribution is computed here with
numpy. With N = 4000 draws, the total-variation distance between the empirical
and the expected distribution measures 0.002-0.022 on the three backends, and
0.05 is the bound. `make_sampler` offers no
top-p (nucleus) sampling, so there is none to test.
"""

import numpy as np
import pytest
from keras import ops

from keras_siglip.models.cappa.cappa_generation import make_sampler

N = 4000
# Eight tokens, the most likely first after a shuffle (argmax is token 5).
LOGITS = np.array([0.5, -1.0, 2.0, -2.0, 0.0, 3.0, 1.0, -0.5], "float32")


def draw(sampler, logits=LOGITS, n=N):
    """`n` tokens drawn by `sampler`'s loop, every row seeing `logits`."""
    rows = ops.convert_to_tensor(np.tile(logits, (n, 1)))

    def fixed_logits(prompt, cache, index):
        return rows, None, cache

    out = sampler(fixed_logits, ops.zeros((n, 2), "int32"), index=1)
    return np.asarray(ops.convert_to_numpy(out))[:, 1]


def softmax(logits, temperature=1.0):
    z = np.asarray(logits, "float64") / temperature
    p = np.exp(z - z.max())
    return p / p.sum()


def frequencies(tokens, vocabulary=len(LOGITS)):
    return np.bincount(tokens, minlength=vocabulary) / len(tokens)


def entropy(p):
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def total_variation(p, q):
    return 0.5 * float(np.abs(p - q).sum())


def test_temperature_sets_the_spread_of_the_sampled_tokens():
    """Draws follow softmax(logits / T): the empirical entropy grows with T
    (0.25: nearly always the argmax; 4: close to uniform over the 8 tokens), and
    T -> 0 is greedy decoding."""
    greedy = draw(make_sampler("greedy"))
    assert np.all(greedy == np.argmax(LOGITS))
    entropies = []
    for temperature in (0.25, 1.0, 4.0):
        tokens = draw(make_sampler("sampling", temperature=temperature, seed=0))
        empirical, expected = frequencies(tokens), softmax(LOGITS, temperature)
        assert total_variation(empirical, expected) < 0.05, (temperature, empirical, expected)
        entropies.append(entropy(empirical))
    # Expected entropies 0.09, 1.24, 2.01 nats (uniform: log 8 = 2.08).
    assert entropies[0] < 0.2 < 1.0 < entropies[1] < 1.5 < 1.85 < entropies[2], entropies
    cold = draw(make_sampler("sampling", temperature=1e-3, seed=0))
    np.testing.assert_array_equal(cold, greedy)


def test_top_k_keeps_the_draws_among_the_k_most_likely():
    """Top-k draws never leave the k most likely ids and follow softmax(logits / T)
    renormalised over them; k = 1 is greedy decoding. At T = 4 every id has
    probability >= 4% without top-k, so a sampler that ignored k would draw
    outside the support thousands of times."""
    ranked = np.argsort(-LOGITS)
    for k in (1, 3):
        tokens = draw(make_sampler("sampling", temperature=4.0, top_k=k, seed=0))
        support = ranked[:k]
        assert np.isin(tokens, support).all(), np.unique(tokens)
        expected = np.zeros(len(LOGITS))
        expected[support] = softmax(LOGITS[support], 4.0)
        assert total_variation(frequencies(tokens), expected) < 0.05, (k, frequencies(tokens), expected)
        if k == 1:
            np.testing.assert_array_equal(tokens, draw(make_sampler("greedy")))
        else:
            assert set(np.unique(tokens)) == set(support)  # all k are drawn (the least likely: 25%)



def nucleus(logits, p, temperature=1.0):
    """The expected top-p distribution: the most likely ids until their
    probability reaches p (the smallest such set), renormalised."""
    probabilities = softmax(logits, temperature)
    ranked = np.argsort(-probabilities)
    before = np.concatenate([[0.0], np.cumsum(probabilities[ranked])[:-1]])
    support = ranked[before < p]
    expected = np.zeros(len(logits))
    expected[support] = probabilities[support] / probabilities[support].sum()
    return support, expected


def test_top_p_keeps_the_draws_in_the_nucleus():
    """Top-p draws stay in the smallest set of most likely ids whose probability
    reaches p and follow the renormalised softmax there. softmax(LOGITS) puts
    0.59 on id 5, 0.22 on id 2, 0.08 on id 6: p = 0.5 is greedy, p = 0.8 keeps
    {5, 2}, p = 0.85 keeps {5, 2, 6}; at T = 2 (flatter) p = 0.8 keeps five ids. With
    top_k as well the smaller of the two sets is kept."""
    for p, temperature, size in ((0.5, 1.0, 1), (0.8, 1.0, 2), (0.85, 1.0, 3), (0.8, 2.0, 5), (1.0, 1.0, 8)):
        support, expected = nucleus(LOGITS, p, temperature)
        assert len(support) == size, (p, temperature, support)
        tokens = draw(make_sampler("sampling", temperature=temperature, top_p=p, seed=0))
        assert np.isin(tokens, support).all(), (p, temperature, np.unique(tokens))
        assert set(np.unique(tokens)) == set(support)
        assert total_variation(frequencies(tokens), expected) < 0.05, (p, temperature, frequencies(tokens), expected)
    both = draw(make_sampler("sampling", temperature=2.0, top_p=0.8, top_k=2, seed=0))
    assert set(np.unique(both)) == set(np.argsort(-LOGITS)[:2])


def test_sampling_options_are_checked():
    for kwargs, message in (
        (dict(strategy="sampling", top_p=0.0), "top_p` must be in \\(0, 1\\]"),
        (dict(strategy="sampling", top_p=1.5), "top_p` must be in \\(0, 1\\]"),
        (dict(strategy="sampling", top_k=0), "top_k` must be a positive integer"),
        (dict(strategy="greedy", top_p=0.9), "apply to strategy='sampling', not 'greedy'"),
        (dict(strategy="beam", top_k=3), "apply to strategy='sampling', not 'beam'"),
    ):
        with pytest.raises(ValueError, match=message):
            make_sampler(**kwargs)
