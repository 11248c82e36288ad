"""Baselines: k-mer counts and Markov bits per base against float64 references; naive Bayes beats chance."""
import math
from collections import Counter

import numpy as np
import pytest

from genomics.baselines import KmerNaiveBayes, MarkovBaseline, kmer_counts, markov_scored_mask
from genomics.datasets import SpeciesWindows
from genomics.simulate import simulate
from genomics.tokenizer import A, N, PAD


def random_tokens(rng, shape, n_fraction=0.05):
    tokens = rng.integers(A, A + 4, size=shape).astype(np.uint8)
    tokens[rng.random(shape) < n_fraction] = N
    tokens[..., :3] = PAD
    return tokens


def test_kmer_counts_match_a_python_count():
    rng = np.random.default_rng(0)
    tokens = random_tokens(rng, (4, 300))
    for k in (1, 3, 5):
        counts = kmer_counts(tokens, k)
        for row, vector in zip(tokens, counts):
            expected = Counter()
            for i in range(len(row) - k + 1):
                kmer = row[i:i + k]
                if all(A <= t < A + 4 for t in kmer):
                    expected[sum(int(t - A) * 4 ** (k - 1 - j) for j, t in enumerate(kmer))] += 1
            assert dict(expected) == {i: c for i, c in enumerate(vector) if c}


def test_markov_bits_per_base_matches_a_float64_reference():
    rng = np.random.default_rng(1)
    train = random_tokens(rng, 5000)
    test = random_tokens(rng, 2000)
    order, alpha = 2, 0.5
    model = MarkovBaseline(order, alpha).fit([train[:2500], train[2500:]])
    counts = Counter()
    for chunk in (train[:2500], train[2500:]):
        for i in range(order, len(chunk)):
            window = chunk[i - order: i + 1]
            if all(A <= t < A + 4 for t in window):
                counts[tuple(int(t) for t in window)] += 1
    total, scored = 0.0, 0
    mask = markov_scored_mask(test, order)
    for i in range(order, len(test)):
        window = tuple(int(t) for t in test[i - order: i + 1])
        if not all(A <= t < A + 4 for t in window):
            assert not mask[i]
            continue
        assert mask[i]
        context_total = sum(counts[window[:-1] + (b,)] for b in range(A, A + 4))
        total -= math.log2((counts[window] + alpha) / (context_total + 4 * alpha))
        scored += 1
    assert model.bits_per_base(test) == pytest.approx(total / scored, rel=1e-12)
    assert mask.sum() == scored


def test_markov_learns_structure():
    uniform = np.random.default_rng(2).integers(A, A + 4, size=50_000).astype(np.uint8)
    model = MarkovBaseline(order=3).fit(uniform[:40_000])
    assert model.bits_per_base(uniform[40_000:]) == pytest.approx(2.0, abs=0.03)
    periodic = np.tile(np.array([A, A + 1, A + 2, A + 3, A + 3, A + 2], dtype=np.uint8), 2000)  # ACGTTG...
    assert MarkovBaseline(order=3).fit(periodic).bits_per_base(periodic) < 0.01


def test_naive_bayes_beats_chance_on_simulated_apes(tmp_path):
    simulate(tmp_path, "tiny", seed=0, progress=False)
    train = SpeciesWindows(tmp_path, "train", 8192, samples=500, seed=0)
    test = SpeciesWindows(tmp_path, "test", 8192, samples=400, seed=1)
    model = KmerNaiveBayes(k=6).fit(*train.arrays())
    tokens, labels = test.arrays()
    accuracy = model.score(tokens, labels)
    assert accuracy > 0.3  # chance is 0.2; test chromosomes were never trained on
    probabilities = model.predict_proba(tokens)
    assert probabilities.shape == (400, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_naive_bayes_probabilities_match_a_float64_reference():
    """predict_proba is the multinomial posterior: class prior times the add-alpha k-mer likelihoods, normalised
    (a reference written from the formula, so a change of smoothing, prior or k-mer layout shows up)."""
    rng = np.random.default_rng(3)
    tokens = random_tokens(rng, (40, 200))
    labels = np.repeat([0, 1, 2], [10, 12, 18])
    tokens[labels == 1, 3::2] = A  # class 1: every other base an A, so its k-mers differ from the others'
    k, alpha = 2, 0.5
    model = KmerNaiveBayes(k=k, alpha=alpha).fit(tokens, labels)
    test = random_tokens(rng, (6, 200))
    test[:2, 3::2] = A
    counts = kmer_counts(tokens, k).astype(np.float64)
    log_prior = np.log(np.bincount(labels) / len(labels))
    per_class = np.stack([counts[labels == c].sum(axis=0) for c in range(3)]) + alpha
    log_likelihood = np.log(per_class / per_class.sum(axis=1, keepdims=True))  # (classes, 4**k)
    joint = log_prior + kmer_counts(test, k) @ log_likelihood.T
    expected = np.exp(joint - joint.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(model.predict_proba(test), expected, rtol=1e-9, atol=1e-12)
    assert list(model.predict(test[:2])) == [1, 1]  # the A-rich windows go to the A-rich class
