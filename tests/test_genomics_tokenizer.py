"""Tokenizer: round trip, soft mask, IUPAC handling, errors with positions, reverse complement. (Its speed is
measured in benchmarks/data_speed.py, not here: timings on shared cores make flaky tests.)"""
import numpy as np
import pytest
import torch

from genomics.errors import GenomicsInputError
from genomics.tokenizer import (A, C, CLS, G, MASK, N, PAD, SEP, T, VOCAB_SIZE, decode, encode, is_base,
                                reverse_complement)

COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}


def random_dna(rng, n, alphabet="ACGTNacgtn"):
    return "".join(rng.choice(list(alphabet), size=n))


def test_vocabulary_is_fixed():
    assert (PAD, CLS, SEP, MASK, A, C, G, T, N, VOCAB_SIZE) == (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)


def test_round_trip_and_soft_mask():
    rng = np.random.default_rng(0)
    text = random_dna(rng, 5000)
    tokens, mask = encode(text, return_mask=True)
    assert tokens.dtype == np.uint8 and tokens.shape == (5000,)
    assert decode(tokens) == text.upper()
    np.testing.assert_array_equal(mask, np.array([c.islower() for c in text]))
    expected = np.array(["ACGTN".index(c) + A for c in text.upper()], dtype=np.uint8)
    np.testing.assert_array_equal(tokens, expected)


def test_bytes_and_array_inputs_agree_with_str():
    text = "ACGTNacgtnRYU"
    reference = encode(text)
    np.testing.assert_array_equal(encode(text.encode()), reference)
    np.testing.assert_array_equal(encode(np.frombuffer(text.encode(), dtype=np.uint8)), reference)
    assert decode(reference) == "ACGTNACGTNNNT"  # R, Y -> N; U read as T


def test_iupac_codes_map_to_n_or_are_refused():
    for code in "RYKMSWBDHVrykmswbdhv":
        assert encode("A" + code)[1] == N
        with pytest.raises(GenomicsInputError, match=rf"'{code}' at position 2 is an IUPAC ambiguity code"):
            encode("A" + code, iupac="error")
    with pytest.raises(GenomicsInputError, match="iupac must be one of"):
        encode("ACGT", iupac="drop")


@pytest.mark.parametrize("bad", ["X", "-", "*", " ", "1", "é", "\n"])
def test_characters_outside_iupac_are_refused_with_source_and_position(bad):
    text = "ACGTACGTAC" + bad + "GT"
    with pytest.raises(GenomicsInputError) as info:
        encode(text, source="genome.fa, record 'chr7'", offset=1000)
    message = str(info.value)
    assert "genome.fa, record 'chr7'" in message and "position 1011" in message and repr(bad) in message


def test_reverse_complement_matches_string_reference():
    rng = np.random.default_rng(1)
    text = random_dna(rng, 2000, "ACGTN")
    tokens = encode(text)
    expected = "".join(COMPLEMENT[c] for c in reversed(text))
    assert decode(reverse_complement(tokens)) == expected
    np.testing.assert_array_equal(reverse_complement(reverse_complement(tokens)), tokens)


def test_reverse_complement_batched_torch_and_specials():
    rng = np.random.default_rng(2)
    batch = rng.integers(0, VOCAB_SIZE, size=(3, 50)).astype(np.int64)
    result = reverse_complement(torch.from_numpy(batch))
    assert isinstance(result, torch.Tensor) and result.dtype == torch.int64
    np.testing.assert_array_equal(result.numpy(), reverse_complement(batch))
    for row_in, row_out in zip(batch, reverse_complement(batch)):
        special = row_in[::-1] < A
        np.testing.assert_array_equal(row_out[special], row_in[::-1][special])  # PAD/CLS/SEP/MASK unchanged


def test_decode_refuses_special_tokens_unless_skipped():
    tokens = np.array([CLS, A, PAD, T, SEP], dtype=np.uint8)
    with pytest.raises(GenomicsInputError, match="special token 1 at index 0"):
        decode(tokens)
    assert decode(tokens, skip_special=True) == "AT"
    with pytest.raises(GenomicsInputError, match="token ids must lie"):
        decode(np.array([4, 9]))


def test_is_base():
    np.testing.assert_array_equal(is_base(np.array([PAD, A, C, G, T, N, MASK])),
                                  [False, True, True, True, True, False, False])


def test_encoding_a_long_text_is_the_short_encoding_repeated():
    tokens = encode("ACGTacgtNN" * 400_000)  # 4 Mbp, as one FASTA record of a real genome
    assert tokens.shape == (4_000_000,)
    np.testing.assert_array_equal(tokens, np.tile([A, C, G, T, A, C, G, T, N, N], 400_000))
