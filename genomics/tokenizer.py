"""Byte-level DNA tokenizer: one token per base, a fixed 9-symbol vocabulary.

Tokens::

    PAD=0  CLS=1  SEP=2  MASK=3  A=4  C=5  G=6  T=7  N=8      (VOCAB_SIZE = 9)

* Soft-masked (lowercase) bases map to the same tokens as uppercase ones; ``encode(..., return_mask=True)``
  also returns the soft-mask (True where the input was lowercase).
* ``U``/``u`` is read as T. The other IUPAC ambiguity codes (R Y K M S W B D H V, either case) become N with
  ``iupac="n"`` (the default) or are refused with ``iupac="error"``.
* Anything else (digits, ``-``, ``*``, whitespace, non-ASCII) is refused with a :class:`GenomicsInputError`
  naming the source (file/record) and the 1-based position and character.

Encoding is a single lookup in a 256-entry table over the bytes, so millions of bases encode in milliseconds.
"""
from __future__ import annotations

import numpy as np

from genomics.errors import GenomicsInputError

PAD, CLS, SEP, MASK, A, C, G, T, N = range(9)
VOCAB_SIZE = 9
BASES = (A, C, G, T)
SPECIAL_TOKENS = (PAD, CLS, SEP, MASK)
IUPAC_AMBIGUOUS = "RYKMSWBDHV"
IUPAC_MODES = ("n", "error")

_INVALID = 255  # table value for a byte outside the alphabet
_AMBIGUOUS = 254  # table value for an IUPAC ambiguity code (mode "error" refuses it)


def _build_table() -> np.ndarray:
    table = np.full(256, _INVALID, dtype=np.uint8)
    for letters, token in (("A", A), ("C", C), ("G", G), ("T", T), ("U", T), ("N", N)):
        table[ord(letters)] = table[ord(letters.lower())] = token
    for code in IUPAC_AMBIGUOUS:
        table[ord(code)] = table[ord(code.lower())] = _AMBIGUOUS
    return table


_TABLE = _build_table()
_DECODE = np.frombuffer(b"????ACGTN", dtype=np.uint8)
_COMPLEMENT = np.arange(VOCAB_SIZE, dtype=np.uint8)
_COMPLEMENT[[A, C, G, T]] = [T, G, C, A]


def _as_bytes(seq: str | bytes | bytearray | np.ndarray, source: str, offset: int) -> np.ndarray:
    """View the input as a uint8 array of ASCII codes (no copy for bytes and uint8 arrays)."""
    if isinstance(seq, np.ndarray):
        if seq.dtype != np.uint8:
            raise GenomicsInputError(f"{source}: expected a uint8 array of ASCII bytes, got dtype {seq.dtype}")
        return seq.reshape(-1)
    if isinstance(seq, str):
        try:
            seq = seq.encode("ascii")
        except UnicodeEncodeError as exc:
            bad = seq[exc.start]
            raise GenomicsInputError(
                f"{source}: character {bad!r} at position {offset + exc.start + 1} is not a nucleotide code"
            ) from None
    return np.frombuffer(seq, dtype=np.uint8)


def encode(seq: str | bytes | np.ndarray, *, iupac: str = "n", return_mask: bool = False,
           source: str = "sequence", offset: int = 0):
    """Encode DNA text to tokens.

    ``seq``: str, bytes, or a uint8 array of ASCII codes, shape (length,).
    ``source``/``offset`` only shape error messages: positions are reported 1-based as ``offset + i + 1``
    (pass the window's start on its record so the position is the record's).
    Returns tokens uint8 (length,), or (tokens, soft_mask bool (length,)) with ``return_mask=True``.
    """
    if iupac not in IUPAC_MODES:
        raise GenomicsInputError(f"iupac must be one of {IUPAC_MODES}, got {iupac!r}")
    raw = _as_bytes(seq, source, offset)
    tokens = _TABLE[raw]
    if tokens.size and tokens.max() >= _AMBIGUOUS:  # fast path: clean sequence needs no further look
        invalid = tokens == _INVALID if iupac == "n" else tokens >= _AMBIGUOUS
        if invalid.any():
            i = int(np.argmax(invalid))
            char = chr(raw[i])
            what = ("an IUPAC ambiguity code (refused with iupac='error'; iupac='n' maps it to N)"
                    if tokens[i] == _AMBIGUOUS else "not a nucleotide code")
            raise GenomicsInputError(f"{source}: character {char!r} at position {offset + i + 1} is {what}")
        tokens[tokens == _AMBIGUOUS] = N
    if return_mask:
        return tokens, raw >= ord("a")  # every valid lowercase code is >= 'a'; uppercase ones are below
    return tokens


def tokenizer_settings(iupac: str) -> dict[str, str | int]:
    """What a model directory records about the tokenizer its model reads (model.json, metadata.tokenizer)."""
    return {"name": "genomics byte-level DNA", "vocab": "PAD CLS SEP MASK A C G T N", "vocab_size": VOCAB_SIZE,
            "lowercase": "same tokens as uppercase", "iupac": iupac}


def decode(tokens: np.ndarray, *, skip_special: bool = False) -> str:
    """Tokens (length,) back to uppercase text ``ACGTN``.

    Special tokens (PAD, CLS, SEP, MASK) are dropped with ``skip_special=True``, refused otherwise.
    """
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= VOCAB_SIZE):
        raise GenomicsInputError(f"token ids must lie in [0, {VOCAB_SIZE}), got {tokens.min()}..{tokens.max()}")
    tokens = tokens.astype(np.uint8, copy=False)
    special = tokens < A
    if special.any():
        if not skip_special:
            i = int(np.argmax(special))
            raise GenomicsInputError(f"special token {int(tokens[i])} at index {i} has no base to decode "
                                     "(pass skip_special=True to drop special tokens)")
        tokens = tokens[~special]
    return _DECODE[tokens].tobytes().decode("ascii")


def reverse_complement(tokens):
    """Reverse complement along the last axis: A<->T, C<->G; N and special tokens are kept as they are.

    Accepts a numpy array or a torch tensor of token ids, shape (..., length); returns the same type.
    """
    if isinstance(tokens, np.ndarray):
        return _COMPLEMENT[tokens[..., ::-1]].astype(tokens.dtype, copy=False)
    import torch

    if isinstance(tokens, torch.Tensor):
        table = torch.as_tensor(_COMPLEMENT, device=tokens.device).to(tokens.dtype)
        return table[tokens.flip(-1).long()]
    raise TypeError(f"reverse_complement expects a numpy array or torch tensor, got {type(tokens).__name__}")


def is_base(tokens: np.ndarray) -> np.ndarray:
    """True where a token is one of A, C, G, T (not N, not special): the positions worth scoring."""
    return (tokens >= A) & (tokens <= T)
