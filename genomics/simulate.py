"""A simulated great-apes genome benchmark: five species evolved from one ancestral genome.

``python -m genomics simulate --out DIR [--size tiny|small|full] [--seed N]`` writes ``DIR/<species>.fa`` for
human, chimpanzee, bonobo, gorilla and orangutan. The model, step by step:

1. **Ancestral background**: an order-3 Markov chain whose transition table has human-like composition (GC
   about 41 %), CpG depletion (the probability of G after C scaled down to an eighth: CpG
   observed/expected about 0.33 in the output, human: about 0.25), a mild excess of homopolymer runs, and random
   context-specific structure (log-normal noise on each context's probabilities). Sampled as thousands of
   independent segments stepped in parallel, so the loop runs over a segment's length, not the genome's.
2. **Ancestral repeats** (shared by all five species, soft-masked in lowercase): interspersed families - a
   SINE-like 300 bp element, a LINE-like 6 kbp element whose copies are mostly 5'-truncated, an old MIR-like
   element, a DNA transposon, an LTR - whose copies are diverged 4-30 % from their consensus and inserted in
   either orientation (about a third of the genome); microsatellites (1-6 bp units, slightly impure); and per
   chromosome a centromeric satellite array (171 bp monomers organised in higher-order repeats).
3. **Evolution along the great-ape tree** (ultrametric, in substitutions per site)::

       root ─┬─ orangutan 0.015
             └─ homininae 0.007 ─┬─ gorilla 0.008
                                 └─ hominini 0.002 ─┬─ human 0.006
                                                    └─ pan 0.004 ─┬─ chimpanzee 0.002
                                                                  └─ bonobo 0.002

   giving pairwise divergences human-chimpanzee 1.2 %, chimpanzee-bonobo 0.4 %, human/chimpanzee-gorilla
   1.6 %, any-orangutan 3.0 %. On every branch: point substitutions (Poisson number, sites uniform except
   CpG sites, which mutate ``cpg_factor`` times faster and mostly by C->T/G->A; transitions favoured by a
   branch-specific kappa around 4, and a branch-specific mild GC bias on the target base), small insertions
   (half tandem duplications of the preceding bases, half random) and deletions at ``indel_ratio`` times
   the substitution rate with geometric lengths (mean about 2.5 bp), and **lineage-specific insertions** of
   a young SINE subfamily of that branch (each branch's subfamily consensus is its parent's mutated at 3 %,
   copies 0.5-2 % diverged from it, 30 % of them 5'-truncated, with a poly-A tail), at
   ``lineage_insert_rate`` insertions per base per unit branch length (about one per 30 kbp on the human
   branch, one per 90 kbp on the chimpanzee and bonobo branches).
4. **Assemblies**: each species gets its own assembly gaps (N-runs) at the telomeres, over part of each
   centromeric satellite, and at random places (about one per 500 kbp). Records are named like the real
   assemblies: ``chr1``, ``chr2A``, ``chr2B``, ``chr3`` ... ``chr22``, ``chrX``; human's ``chr2`` is the fusion
   of the ancestral 2A and 2B, joined head to head by telomeric repeats, as in the real human genome.

Why it is learnable but hard: a test window comes from a chromosome no training window came from (HyenaDNA's
split), so memorising alleles does not help. What tells the species apart is a sparse signal (the branch's
own SINE subfamily, which differs from its relatives' at a few diagnostic positions) and a weak dense one
(branch-specific substitution spectra over a few per cent of the sites). A 1 kbp window seldom holds a
lineage-specific insertion; a 64 kbp window almost always does: accuracy rises with window length, as in
the Mamba paper's Great Apes task. The chimpanzee-bonobo pair, separated by the shortest branches, is the
hardest.

Chromosome lengths are proportional to the human ones (GRCh38), scaled to the requested total size. Sizes:
``tiny`` 2 Mbp per species (about a second), ``small`` 30 Mbp (seconds), ``full`` 300 Mbp (a few minutes,
2.5 GB of memory; for GPU runs at windows up to 2^20).

Signal (``--signal``): ``realistic`` (the default for small and full) is the density above; at it a 1.4M model
fine-tuned for minutes on an H100 stays at chance up to 16 kbp while 6-mer naive Bayes reaches 34 %. ``strong``
(the default for tiny, what the main job, the notebook and the CPU tests use) makes the lineage insertions 20 times
as dense and each branch's subfamily 10 % from its parent's: about a third of each genome is then young SINE
copies (shared ones included), far more than in real apes, but a model learns it in minutes and its accuracy
rises with the window as the paper's does (H100, small size, 1.4m preset: 64.5 % at 1 kbp, 91.9 % at 4 kbp,
98.6 % at 16 kbp, 100 % at 64 kbp).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from ssm_core.utils.progress import progress_bar

from genomics.errors import GenomicsInputError
from ssm_core.utils.outputs import check_output, first_line_matches

SPECIES = ("human", "chimpanzee", "bonobo", "gorilla", "orangutan")
SIZES = {"tiny": 2_000_000, "small": 30_000_000, "full": 300_000_000}  # ancestral bases

# Internal codes: low 3 bits 0..4 = A, C, G, T, N; bit 3 set = soft-masked (repeat, lowercase in FASTA).
A_, C_, G_, T_, N_ = range(5)
MASKED = 8
_ASCII = np.frombuffer(b"ACGTN???acgtn???", dtype=np.uint8)
_TRANSVERSIONS = np.array([[C_, T_], [A_, G_], [C_, T_], [A_, G_]], dtype=np.uint8)

# (name, parent, length in substitutions per site); parents come before children.
TREE = (
    ("orangutan", "root", 0.015),
    ("homininae", "root", 0.007),
    ("gorilla", "homininae", 0.008),
    ("hominini", "homininae", 0.002),
    ("human", "hominini", 0.006),
    ("pan", "hominini", 0.004),
    ("chimpanzee", "pan", 0.002),
    ("bonobo", "pan", 0.002),
)

# Human (GRCh38) chromosome lengths in Mbp; 2A/2B are the great apes' two chromosomes fused in human chr2.
CHROMOSOME_MBP = {
    "1": 248.96, "2A": 111.0, "2B": 131.2, "3": 198.3, "4": 190.2, "5": 181.5, "6": 170.8, "7": 159.3,
    "8": 145.1, "9": 138.4, "10": 133.8, "11": 135.1, "12": 133.3, "13": 114.4, "14": 107.0, "15": 102.0,
    "16": 90.3, "17": 83.3, "18": 80.4, "19": 58.6, "20": 64.4, "21": 46.7, "22": 50.8, "X": 156.0,
}


@dataclass(frozen=True)
class RepeatFamily:
    name: str
    length: int  # consensus length
    coverage: float  # fraction of the ancestral genome its copies cover
    divergence: tuple[float, float]  # copies' divergence from the consensus, uniform in this range
    truncated: bool  # LINE-like: copies keep a random 3' part (mean ~1 kbp)


ANCESTRAL_FAMILIES = (
    RepeatFamily("SINE", 300, 0.10, (0.04, 0.15), False),
    RepeatFamily("LINE", 6000, 0.14, (0.05, 0.20), True),
    RepeatFamily("MIR", 260, 0.03, (0.15, 0.30), False),
    RepeatFamily("DNA", 1200, 0.03, (0.10, 0.25), False),
    RepeatFamily("LTR", 500, 0.04, (0.08, 0.20), False),
)


@dataclass(frozen=True)
class SimConfig:
    total_length: int = SIZES["small"]  # ancestral genome size in bases (all chromosomes)
    markov_order: int = 3
    gc: float = 0.44  # the chain's nominal GC; CpG depletion lowers it, to about 41 % in the output
    cpg_depletion: float = 0.12  # factor on P(G | ...C)
    families: tuple[RepeatFamily, ...] = ANCESTRAL_FAMILIES
    microsatellite_coverage: float = 0.02
    satellite_fraction: float = 0.01  # centromeric array, fraction of each chromosome
    cpg_factor: float = 10.0  # CpG sites mutate this much faster
    kappa: float = 4.0  # transition/transversion rate ratio (branch values vary around it)
    indel_ratio: float = 0.1  # small indels per substitution
    lineage_insert_rate: float = 0.0056  # lineage SINE insertions per base per unit branch length
    lineage_family_length: int = 300
    lineage_family_divergence: float = 0.03  # each branch's subfamily consensus vs its parent's
    assembly_gaps: bool = True
    tree: tuple = TREE
    chromosomes: dict = field(default_factory=lambda: dict(CHROMOSOME_MBP))


SIGNALS = ("realistic", "strong")


def default_signal(size: str) -> str:
    """Strong for tiny (minutes of CPU training must show the effect), realistic for the others."""
    return "strong" if size == "tiny" else "realistic"


def config_for_size(size: str, signal: str | None = None) -> SimConfig:
    """The simulation of a size; ``signal`` (default: :func:`default_signal`) sets how dense and how distinct the
    lineage-specific insertions are."""
    if size not in SIZES:
        raise GenomicsInputError(f"size must be one of {tuple(SIZES)}, got {size!r}")
    signal = signal or default_signal(size)
    if signal not in SIGNALS:
        raise GenomicsInputError(f"signal must be one of {SIGNALS}, got {signal!r}")
    if signal == "realistic":
        return SimConfig(total_length=SIZES[size])
    # strong: insertions 20 times as dense (about one per 1.5 kbp on the human branch, one per 4.5 kbp on the
    # chimpanzee and bonobo branches), each branch's subfamily 10 % from its parent's instead of 3 %
    return SimConfig(total_length=SIZES[size], lineage_insert_rate=20 * SimConfig.lineage_insert_rate,
                     lineage_family_divergence=0.10)


# ----------------------------------------------------------------------------------------------- helpers
def _segment_positions(lengths: np.ndarray) -> np.ndarray:
    """For pieces of the given lengths laid end to end: each position's offset inside its piece."""
    total = int(lengths.sum())
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total, dtype=np.int64) - starts


def _complement(codes: np.ndarray) -> np.ndarray:
    base = codes & 7
    return np.where(base < N_, 3 - base, base).astype(np.uint8) | (codes & MASKED)


def _insert(seq: np.ndarray, positions: np.ndarray, pieces: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Insert pieces (concatenated in ``pieces``, lengths ``lengths``) before ``positions`` of ``seq``.

    ``positions`` in [0, len(seq)], any order; several pieces at one position keep their given order.
    """
    if len(positions) == 0:
        return seq
    piece_starts = np.cumsum(lengths) - lengths
    order = np.argsort(positions, kind="stable")
    positions, lengths = positions[order], lengths[order]
    pieces = pieces[np.repeat(piece_starts[order], lengths) + _segment_positions(lengths)]
    shift = np.zeros(len(seq) + 1, dtype=np.int64)
    np.add.at(shift, positions, lengths)
    new_index = np.arange(len(seq), dtype=np.int64) + np.cumsum(shift)[: len(seq)]
    out = np.empty(len(seq) + len(pieces), dtype=np.uint8)
    is_old = np.zeros(len(out), dtype=bool)
    is_old[new_index] = True
    out[new_index] = seq
    out[~is_old] = pieces
    return out


def _delete(seq: np.ndarray, positions: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Remove ``lengths[i]`` bases starting at ``positions[i]`` (overlapping deletions merge)."""
    if len(positions) == 0:
        return seq
    change = np.zeros(len(seq) + 1, dtype=np.int64)
    np.add.at(change, positions, 1)
    np.add.at(change, np.minimum(positions + lengths, len(seq)), -1)
    return seq[np.cumsum(change)[: len(seq)] == 0]


def _point_mutations(codes: np.ndarray, probability: np.ndarray | float, rng: np.random.Generator) -> np.ndarray:
    """Replace each base, with the given (per-base) probability, by one of the three others (mask kept)."""
    hit = rng.random(len(codes)) < probability
    hit &= (codes & 7) < N_
    new = ((codes[hit] & 7) + rng.integers(1, 4, size=int(hit.sum()))) % 4
    codes = codes.copy()
    codes[hit] = new.astype(np.uint8) | (codes[hit] & MASKED)
    return codes


def _random_bases(n: int, gc: float, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(4, size=n, p=[(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]).astype(np.uint8)


# --------------------------------------------------------------------------------------- ancestral genome
def markov_table(order: int, gc: float, cpg_depletion: float, rng: np.random.Generator) -> np.ndarray:
    """Transition probabilities (4**order, 4): row = context (oldest base most significant), column = next."""
    composition = np.array([(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])
    table = np.tile(composition, (4 ** order, 1))
    last = np.arange(4 ** order) % 4
    table[last == C_, G_] *= cpg_depletion
    table[np.arange(4 ** order), last] *= 1.15  # homopolymer runs are over-represented in real genomes
    table *= np.exp(0.25 * rng.standard_normal(table.shape))
    return table / table.sum(axis=1, keepdims=True)


def sample_markov(n: int, table: np.ndarray, order: int, rng: np.random.Generator,
                  segment: int = 4096) -> np.ndarray:
    """``n`` bases of the order-``order`` chain, as independent segments of ``segment`` bases sampled in lockstep."""
    count = -(-n // segment)
    cdf = np.cumsum(table, axis=1)[:, :3]
    context = rng.integers(4 ** order, size=count)
    out = np.empty((count, segment), dtype=np.uint8)
    for j in range(segment):
        base = (rng.random(count)[:, None] > cdf[context]).sum(axis=1)
        out[:, j] = base
        context = (context * 4 + base) % (4 ** order)
    return out.reshape(-1)[:n]


def _family_copies(consensus: np.ndarray, count: int, rng: np.random.Generator, divergence: tuple[float, float],
                   truncate_prob: float, mean_truncated: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` diverged copies of a consensus, each in random orientation, soft-masked.

    A truncated copy keeps a 3' part: of exponential length (mean ``mean_truncated``) for LINE-like families,
    else of uniform length. Returns (concatenated codes, lengths).
    """
    full = len(consensus)
    lengths = np.full(count, full, dtype=np.int64)
    truncated = rng.random(count) < truncate_prob
    if mean_truncated is not None:
        cut = 50 + rng.exponential(mean_truncated, size=count).astype(np.int64)
    else:
        cut = rng.integers(50, full + 1, size=count)
    lengths[truncated] = np.minimum(cut[truncated], full)
    within = _segment_positions(lengths)
    reverse = np.repeat(rng.random(count) < 0.5, lengths)
    per_base_len = np.repeat(lengths, lengths)
    index = np.where(reverse, full - 1 - within, full - per_base_len + within)
    codes = consensus[index] | MASKED
    codes[reverse] = _complement(codes[reverse])
    codes = _point_mutations(codes, np.repeat(rng.uniform(*divergence, size=count), lengths), rng)
    return codes, lengths


def _microsatellites(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tandem repeats of 1-6 bp units, 15-100 bp long, 3 % impure, soft-masked."""
    units = rng.integers(4, size=(count, 6)).astype(np.uint8)
    unit_length = rng.integers(1, 7, size=count)
    lengths = rng.integers(15, 101, size=count).astype(np.int64)
    within = _segment_positions(lengths)
    codes = units[np.repeat(np.arange(count), lengths), within % np.repeat(unit_length, lengths)] | MASKED
    return _point_mutations(codes, 0.03, rng), lengths


def _satellite_array(length: int, rng: np.random.Generator) -> np.ndarray:
    """Alpha-satellite-like array: 171 bp monomers (20 % apart) in a higher-order unit repeated 2 % diverged."""
    monomer = _random_bases(171, 0.38, rng)
    hor = np.concatenate([_point_mutations(monomer, 0.2, rng) for _ in range(int(rng.integers(4, 13)))])
    array = np.resize(hor, length) | MASKED
    return _point_mutations(array, 0.02, rng)


def chromosome_sizes(config: SimConfig) -> dict[str, int]:
    """Ancestral chromosome lengths, proportional to the human ones, summing to ``config.total_length``."""
    total_mbp = sum(config.chromosomes.values())
    return {name: max(1000, int(config.total_length * mbp / total_mbp)) for name, mbp in config.chromosomes.items()}


def ancestral_genome(config: SimConfig, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The root genome (chromosome id -> codes) and each chromosome's centromere position (fraction of length)."""
    sizes = chromosome_sizes(config)
    repeat_share = sum(f.coverage for f in config.families) + config.microsatellite_coverage + config.satellite_fraction
    background_sizes = {name: int(size * (1 - repeat_share)) for name, size in sizes.items()}
    table = markov_table(config.markov_order, config.gc, config.cpg_depletion, rng)
    background = sample_markov(sum(background_sizes.values()), table, config.markov_order, rng)
    consensi = {f.name: sample_markov(f.length, table, config.markov_order, rng) for f in config.families}
    genome, centromeres = {}, {}
    offset = 0
    for name, size in sizes.items():
        seq = background[offset: offset + background_sizes[name]]
        offset += background_sizes[name]
        pieces, lengths = [], []
        for family in config.families:
            # truncated LINE copies: 95 % keep 50 + Exp(1000) bases, 5 % are full length
            mean_length = 0.95 * 1050 + 0.05 * family.length if family.truncated else family.length
            count = int(rng.poisson(family.coverage * size / mean_length))
            codes, lens = _family_copies(consensi[family.name], count, rng, family.divergence,
                                         truncate_prob=0.95 if family.truncated else 0.0,
                                         mean_truncated=1000 if family.truncated else None)
            pieces.append(codes)
            lengths.append(lens)
        codes, lens = _microsatellites(int(rng.poisson(config.microsatellite_coverage * size / 57.5)), rng)
        pieces.append(codes)
        lengths.append(lens)
        lengths = np.concatenate(lengths)
        positions = rng.integers(0, len(seq) + 1, size=len(lengths))
        seq = _insert(seq, positions, np.concatenate(pieces), lengths)
        centromere = float(rng.uniform(0.25, 0.6))
        satellite = _satellite_array(max(171, int(config.satellite_fraction * size)), rng)
        seq = _insert(seq, np.array([int(centromere * len(seq))]), satellite, np.array([len(satellite)]))
        genome[name], centromeres[name] = seq, centromere
    return genome, centromeres


# -------------------------------------------------------------------------------------------- evolution
@dataclass(frozen=True)
class BranchSpectrum:
    kappa: float  # transition/transversion ratio on this branch
    gc_bias: float  # weight of C/G as the target base of a mutation


def _substitute(seq: np.ndarray, per_site: float, spectrum: BranchSpectrum, cpg_factor: float,
                rng: np.random.Generator) -> np.ndarray:
    """Point substitutions averaging ``per_site`` per base; CpG sites ``cpg_factor`` times faster."""
    base = seq & 7
    c_then_g = (base[:-1] == C_) & (base[1:] == G_)
    cpg = np.zeros(len(seq), dtype=bool)
    cpg[:-1] |= c_then_g
    cpg[1:] |= c_then_g
    cpg_sites = np.flatnonzero(cpg)
    other_sites = np.flatnonzero(~cpg & (base < N_))
    sites_total = len(cpg_sites) + len(other_sites)
    if sites_total == 0:
        return seq
    rate = per_site * sites_total / (len(other_sites) + cpg_factor * len(cpg_sites))  # keeps the mean at per_site
    n_cpg = int(rng.poisson(rate * cpg_factor * len(cpg_sites))) if len(cpg_sites) else 0
    n_other = int(rng.poisson(rate * len(other_sites))) if len(other_sites) else 0
    sites = np.concatenate([cpg_sites[rng.integers(len(cpg_sites), size=n_cpg)] if n_cpg else cpg_sites[:0],
                            other_sites[rng.integers(len(other_sites), size=n_other)] if n_other else other_sites[:0]])
    old = base[sites]
    targets = np.column_stack([old ^ 2, _TRANSVERSIONS[old]])  # transition, then the two transversions
    weights = np.column_stack([np.full(len(old), spectrum.kappa), np.ones(len(old)), np.ones(len(old))])
    weights[:n_cpg, 0] *= 10.0  # methylated CpG deaminates: C->T / G->A dominates
    weights *= np.where((targets == C_) | (targets == G_), spectrum.gc_bias, 1.0)
    cumulative = np.cumsum(weights, axis=1)
    choice = (rng.random(len(old)) * cumulative[:, -1])[:, None] >= cumulative[:, :2]
    new = targets[np.arange(len(old)), choice.sum(axis=1)]
    out = seq.copy()
    out[sites] = new | (seq[sites] & MASKED)
    return out


def _indels(seq: np.ndarray, per_site: float, rng: np.random.Generator) -> np.ndarray:
    """Small insertions (half tandem duplications, half random bases) and deletions, geometric lengths."""
    n = len(seq)
    k_ins, k_del = rng.poisson(per_site * n / 2, size=2)
    ins_len = np.minimum(rng.geometric(0.4, size=k_ins), 30).astype(np.int64)
    positions = rng.integers(1, n + 1, size=k_ins)
    duplicate = np.repeat(rng.random(k_ins) < 0.5, ins_len)
    source = np.maximum(np.repeat(positions - ins_len, ins_len) + _segment_positions(ins_len), 0)
    pieces = np.where(duplicate, seq[np.minimum(source, n - 1)], rng.integers(4, size=len(source)).astype(np.uint8))
    seq = _insert(seq, positions, pieces.astype(np.uint8), ins_len)
    del_len = np.minimum(rng.geometric(0.4, size=k_del), 30).astype(np.int64)
    return _delete(seq, rng.integers(0, len(seq), size=k_del), del_len)


def _branch_families(config: SimConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each branch's young SINE subfamily: its parent's consensus mutated at 3 % (root: a random one), poly-A tail."""
    families = {"root": _random_bases(config.lineage_family_length, 0.52, rng)}
    for name, parent, _ in config.tree:
        families[name] = _point_mutations(families[parent], config.lineage_family_divergence, rng)
    tail = np.zeros(20, dtype=np.uint8)  # A
    return {name: np.concatenate([consensus, tail]) for name, consensus in families.items()}


def evolve_branch(genome: dict[str, np.ndarray], length: float, family: np.ndarray, spectrum: BranchSpectrum,
                  config: SimConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One branch of the tree: lineage-specific insertions, then substitutions, then small indels."""
    evolved = {}
    for name, seq in genome.items():
        count = int(rng.poisson(config.lineage_insert_rate * length * len(seq)))
        if count:
            codes, lens = _family_copies(family, count, rng, (0.005, 0.02), truncate_prob=0.3)
            seq = _insert(seq, rng.integers(0, len(seq) + 1, size=count), codes, lens)
        seq = _substitute(seq, length, spectrum, config.cpg_factor, rng)
        if config.indel_ratio > 0:
            seq = _indels(seq, length * config.indel_ratio, rng)
        evolved[name] = seq
    return evolved


def _telomeric_fusion(left: np.ndarray, right: np.ndarray, copies: int = 20) -> np.ndarray:
    """Human chromosome 2: the ancestral 2A and 2B joined head to head through (TTAGGG)n(CCCTAA)n."""
    forward = np.tile(np.array([T_, T_, A_, G_, G_, G_], dtype=np.uint8), copies) | MASKED
    backward = np.tile(np.array([C_, C_, C_, T_, A_, A_], dtype=np.uint8), copies) | MASKED
    return np.concatenate([left, forward, backward, right])


def _assembly_gaps(seq: np.ndarray, centromere: float, rng: np.random.Generator, satellite: int) -> np.ndarray:
    """N-runs as in a real assembly: both telomeres, half the centromeric satellite, a few random gaps."""
    seq = seq.copy()
    n = len(seq)
    telomere = int(min(10_000, max(100, 2e-4 * n)))
    seq[:telomere] = N_
    seq[n - telomere:] = N_
    middle = int(centromere * n)
    seq[max(0, middle - satellite // 4): middle + satellite // 4] = N_
    for _ in range(int(rng.poisson(n / 500_000))):
        length = int(min(np.exp(rng.uniform(np.log(50), np.log(5000))), 0.01 * n))
        start = int(rng.integers(0, max(1, n - length)))
        seq[start: start + length] = N_
    return seq


def simulate_genomes(config: SimConfig, seed: int = 0, *, progress: bool = False
                     ) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Yield (species, {record name: codes}) for the five species, one at a time (memory: a few genomes).

    Codes: 0..4 = A C G T N, +8 = soft-masked; see :func:`codes_to_ascii`.
    """
    bar = progress_bar(total=len(config.tree) + 1, desc="simulating", unit="step", disable=not progress)
    root_rng = np.random.default_rng([seed, 0])
    ancestor, centromeres = ancestral_genome(config, root_rng)
    bar.update()
    families = _branch_families(config, root_rng)
    sizes = chromosome_sizes(config)
    genomes = {"root": ancestor}
    pending_children = {}
    for _, parent, _ in config.tree:
        pending_children[parent] = pending_children.get(parent, 0) + 1
    for index, (name, parent, length) in enumerate(config.tree, start=1):
        rng = np.random.default_rng([seed, index])
        spectrum = BranchSpectrum(kappa=config.kappa * float(np.exp(0.15 * rng.standard_normal())),
                                  gc_bias=float(np.exp(0.1 * rng.standard_normal())))
        genomes[name] = evolve_branch(genomes[parent], length, families[name], spectrum, config, rng)
        bar.update()
        pending_children[parent] -= 1
        if pending_children[parent] == 0:
            del genomes[parent]
        if name in SPECIES:
            genome = genomes.pop(name)
            if name == "human":
                genome["2"] = _telomeric_fusion(genome.pop("2A"), genome.pop("2B"))
            records = {}
            for chrom in config.chromosomes:
                key = "2" if name == "human" and chrom in ("2A", "2B") else chrom
                if key in records or key not in genome:
                    continue
                seq = genome[key]
                if config.assembly_gaps:
                    # human chr2 keeps 2A's centromere (2B's is the vestigial one, left ungapped)
                    centromere = centromeres.get(key, centromeres["2A"] * sizes["2A"] / (sizes["2A"] + sizes["2B"]))
                    satellite = int(config.satellite_fraction * sizes.get(key, sizes["2A"]))
                    seq = _assembly_gaps(seq, centromere, rng, satellite)
                records[key] = seq
            yield name, {f"chr{key}": seq for key, seq in records.items()}
    bar.close()


def codes_to_ascii(codes: np.ndarray) -> np.ndarray:
    """Internal codes -> ASCII bytes: ACGTN, lowercase where soft-masked."""
    return _ASCII[codes]


def write_fasta(path: str | Path, records: dict[str, np.ndarray], *, line_width: int = 60,
                description: str = "") -> Path:
    """Write {name: codes} as FASTA with fixed-width lines (vectorised: one reshape per record)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for name, codes in records.items():
            f.write(f">{name}{' ' + description if description else ''}\n".encode())
            text = codes_to_ascii(codes)
            full = len(text) // line_width * line_width
            lines = np.empty((full // line_width, line_width + 1), dtype=np.uint8)
            lines[:, :line_width] = text[:full].reshape(-1, line_width)
            lines[:, line_width] = ord("\n")
            f.write(lines.tobytes())
            if full < len(text):
                f.write(text[full:].tobytes() + b"\n")
    tmp.replace(path)
    return path


def simulate(out: str | Path, size: str = "small", seed: int = 0, *, signal: str | None = None,
             config: SimConfig | None = None, progress: bool = True, overwrite: bool = False) -> list[Path]:
    """Simulate the five species and write ``out/<species>.fa``; returns the paths in :data:`SPECIES` order.

    A FASTA file (or its .fai index) already in ``out`` is replaced only if an earlier simulation wrote it (its
    first line is our header), or with ``overwrite``; otherwise OutputRefusedError, before any work."""
    config = config or config_for_size(size, signal)
    out = Path(out)
    for species in SPECIES:
        ours = first_line_matches(rf">\S+ simulated {species} \(seed -?\d+\)")
        fasta = check_output(out / f"{species}.fa", ours, overwrite=overwrite)
        check_output(out / f"{species}.fa.fai", lambda _: ours(fasta), overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    for species, records in simulate_genomes(config, seed, progress=progress):
        write_fasta(out / f"{species}.fa", records, description=f"simulated {species} (seed {seed})")
        (out / f"{species}.fa.fai").unlink(missing_ok=True)  # an index of an earlier simulation would be wrong
    return [out / f"{species}.fa" for species in SPECIES]
