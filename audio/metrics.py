"""SC09 sample-quality metrics: FID, IS, mIS and AM, exactly as the s4 repository's SaShiMi evaluation.

The definitions follow ``sashimi/sc09_classifier/test_speech_commands.py`` of state-spaces/s4, including
its quirks, so that numbers are comparable with the SaShiMi and Mamba papers' SC09 tables:

* **FID** -- Frechet distance between Gaussians fitted to the classifier's penultimate features of the
  reference (the SC09 *training* split in the papers) and of the generated clips:
  ``|mu_g - mu_r|^2 + tr(S_g + S_r - 2 sqrtm(S_r S_g))``, covariances with the unbiased ``N - 1``
  normaliser (``np.cov``); when ``sqrtm`` is not finite both covariances get ``1e-4`` added to the
  diagonal and it is retried. The s4 code keeps a complex ``sqrtm`` result as it is; we take the real part
  (the imaginary part is numerical noise) so the score is a plain number, and clip it at 0 (a set against
  itself comes out as about -1e-6 from round-off, and a distance is never negative). A covariance of ``d``
  features is full-rank only from ``d + 1`` clips (the papers score 2,048 or more clips in 1,024 features); with
  fewer it is singular and the FID is biased upward, so each set needs ``d + 1`` clips unless that is
  explicitly allowed (then 2, for the ``N - 1`` normaliser). Features that are not finite, or a square root
  that stays non-finite or clearly complex after the retry, raise :class:`audio.errors.MetricsError`.
* **IS** -- *quirk*: the clips are shuffled with NumPy seed 0 and split in two halves; s4 then calls
  ``scipy.stats.entropy(half1, mean_of_half2 repeated)`` on ``(clips, classes)`` arrays, and scipy's
  entropy runs over **axis 0, the clip axis**. So for each class ``c`` it is the KL divergence between
  ``p(c|x)`` over the first half's clips (normalised to sum to one over clips) and the uniform
  distribution over those clips (the repeated column normalises to uniform: the second half only matters
  where its mean is zero). The score is ``exp`` of the mean over classes. It is *not* the textbook
  ``exp E_x KL(p(y|x) || p(y))``, though both give the number of classes for confident, balanced predictions.
* **mIS** -- ``exp`` of the mean KL divergence ``KL(p(y|x_i) || p(y|x_j))`` over 10,000 pairs ``(i, j)``
  drawn uniformly *with replacement* from all clips (NumPy seed 0; ``i == j`` is possible). The pairs are
  not restricted to clips of one class.
* **AM** -- ``KL(mean_x p_ref(y|x) || mean_x p_gen(y|x))`` plus the mean entropy of ``p_gen(y|x)`` per
  clip (here scipy's entropy is taken over the class axis).

Selecting which generated clips to score: s4's ``--threshold`` protocol (``select_likelihood_band``) and a
plain "most likely N" filter (``select_most_likely``). Both need each clip's negative log-likelihood
under the generating model.
"""
from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.linalg
import torch
from scipy.stats import entropy
from torch.utils.data import DataLoader, Dataset
from ssm_core.utils.progress import progress_bar

from audio.classifier import ResNeXtClassifier
from audio.datasets import LabelledAudioSet
from audio.errors import MetricsError

MIS_PAIRS = 10_000
MIN_CLIPS = 2  # a covariance with the N - 1 normaliser, and IS's two halves, need two clips at least
SQRTM_MAX_IMAG = 1e-3  # largest imaginary part of sqrtm's diagonal, relative to its real part, taken as round-off


def fid_min_clips(dims: int) -> int:
    """Clips per set for a full-rank covariance of ``dims`` features: ``dims + 1``."""
    return dims + 1


def _as_float64_2d(name: str, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < MIN_CLIPS:
        raise MetricsError(f"{name} must be a (clips, dims) array with at least {MIN_CLIPS} clips, got shape "
                           f"{x.shape}")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):  # NaN made scipy's sqrtm spin for minutes; nothing downstream means anything with it
        raise MetricsError(f"{name}: {len(bad)} of {len(x)} clips have values that are not finite (first: clip "
                           f"{bad[0]})")
    return x


def _sqrtm(matrix: np.ndarray) -> np.ndarray | None:
    """scipy's matrix square root, None where it fails or is not finite; its warnings (a singular matrix, the
    deprecated error estimate) stay here, since the caller checks the result."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            root = scipy.linalg.sqrtm(matrix)
        except (np.linalg.LinAlgError, ValueError):
            return None
    return root if np.isfinite(root).all() else None


def fid(features_ref, features_gen, allow_singular: bool = False) -> float:
    """Frechet distance between Gaussians fitted to ``(clips, dims)`` feature arrays (see module docstring).

    Each set needs ``fid_min_clips(dims)`` clips (full-rank covariances) unless ``allow_singular``; raises
    MetricsError for fewer clips, values that are not finite, or a failed matrix square root."""
    ref, gen = _as_float64_2d("features_ref", features_ref), _as_float64_2d("features_gen", features_gen)
    if ref.shape[1] != gen.shape[1]:
        raise ValueError(f"feature sizes differ: {ref.shape[1]} (reference) vs {gen.shape[1]} (generated)")
    needed = fid_min_clips(ref.shape[1])
    for name, x in (("reference", ref), ("generated", gen)):
        if len(x) < needed and not allow_singular:
            raise MetricsError(f"FID needs at least {needed} {name} clips for a full-rank covariance of "
                               f"{ref.shape[1]} features; got {len(x)}")
    mu_ref, mu_gen = ref.mean(axis=0), gen.mean(axis=0)
    sigma_ref, sigma_gen = np.atleast_2d(np.cov(ref, rowvar=False)), np.atleast_2d(np.cov(gen, rowvar=False))
    if not (np.isfinite(sigma_ref).all() and np.isfinite(sigma_gen).all()):
        largest = max(np.abs(ref).max(), np.abs(gen).max())
        raise MetricsError(f"FID: the feature covariances overflow (features up to {largest:.3g})")
    covmean = _sqrtm(sigma_ref @ sigma_gen)
    if covmean is None:
        offset = np.eye(len(sigma_ref)) * 1e-4
        covmean = _sqrtm((sigma_ref + offset) @ (sigma_gen + offset))
    if covmean is None:
        raise MetricsError(f"FID: the matrix square root of the product of the two {len(sigma_ref)}x"
                           f"{len(sigma_ref)} feature covariances failed, even with 1e-4 added to their diagonals")
    diagonal = np.diagonal(covmean)
    if np.abs(diagonal.imag).max() > SQRTM_MAX_IMAG * max(np.abs(diagonal.real).max(), np.finfo(float).tiny):
        raise MetricsError(f"FID: the matrix square root of the covariance product is complex (imaginary part up "
                           f"to {np.abs(diagonal.imag).max():.3g} on its diagonal), not round-off")
    value = np.sum((mu_gen - mu_ref) ** 2) + np.trace(sigma_gen + sigma_ref - 2 * np.real(covmean))
    return max(float(value), 0.0)


def inception_score(probs) -> float:
    """s4's IS of class probabilities ``(clips, classes)``; entropy over the clip axis (see module docstring)."""
    probs = _as_float64_2d("probs", probs)
    shuffled = probs[np.random.RandomState(0).permutation(len(probs))]
    first, second = shuffled[: len(probs) // 2], shuffled[len(probs) // 2:]
    reference = np.broadcast_to(second.mean(axis=0), first.shape)
    return float(np.exp(entropy(first, reference, axis=0).mean()))


def modified_inception_score(probs, n_pairs: int = MIS_PAIRS) -> float:
    """s4's mIS of ``(clips, classes)`` probabilities: exp of the mean KL over random pairs of clips.

    ``RandomState(0).randint(0, n, (n_pairs, 2))`` draws the same pairs as s4's loop of
    ``np.random.choice(n, size=2, replace=True)`` after ``np.random.seed(0)``.
    """
    probs = _as_float64_2d("probs", probs)
    pairs = np.random.RandomState(0).randint(0, len(probs), size=(n_pairs, 2))
    return float(np.exp(entropy(probs[pairs[:, 0]], probs[pairs[:, 1]], axis=1).mean()))


def am_score(probs_ref, probs_gen) -> float:
    """s4's AM: KL(mean reference prediction || mean generated prediction) + mean per-clip entropy of generated."""
    ref, gen = _as_float64_2d("probs_ref", probs_ref), _as_float64_2d("probs_gen", probs_gen)
    return float(entropy(ref.mean(axis=0), gen.mean(axis=0)) + entropy(gen, axis=1).mean())


# ---- choosing the generated clips to score -----------------------------------------------------------------

def _check_nll(paths: Sequence, nll) -> np.ndarray:
    nll = np.asarray(nll, dtype=np.float64)
    if nll.shape != (len(paths),):
        raise ValueError(f"need one NLL per clip: {len(paths)} clips, NLL shape {nll.shape}")
    if not np.isfinite(nll).all():
        bad = [str(paths[i]) for i in np.flatnonzero(~np.isfinite(nll))[:5]]
        raise ValueError(f"NLL is not finite for {', '.join(bad)}")
    return nll


def select_most_likely(paths: Sequence, nll, n: int) -> list:
    """The ``n`` clips with the lowest negative log-likelihood, most likely first (ties keep input order)."""
    nll = _check_nll(paths, nll)
    if not 0 < n <= len(paths):
        raise ValueError(f"cannot select {n} of {len(paths)} clips")
    return [paths[i] for i in np.argsort(nll, kind="stable")[:n]]


def select_likelihood_band(paths: Sequence, nll, drop_least_likely: float = 0.4, keep_up_to: float = 0.95,
                           seed: int = 0) -> list:
    """s4's ``--threshold`` protocol for autoregressive models, as it effectively runs.

    s4 sorts the clips (10,240 in the papers) by increasing log-likelihood, draws a random half to tune
    a (lower, upper) band of that order by IS, and scores the other half's clips between the two
    quantiles. Its tuning loop never updates its running best, so it always returns the last band tried,
    (0.4, 0.95): the least likely 40% and the most likely 5% of the held-out half are dropped (2,816 of
    10,240 clips scored). This function applies that band to a random half drawn with ``seed`` (s4's
    half depends on NumPy's global state, which cannot be reproduced bit for bit). Returns the kept clips
    in increasing order of likelihood.
    """
    nll = _check_nll(paths, nll)
    if not 0 <= drop_least_likely < keep_up_to <= 1:
        raise ValueError(f"need 0 <= drop_least_likely < keep_up_to <= 1, got {drop_least_likely}, {keep_up_to}")
    order = np.argsort(-nll, kind="stable")  # increasing likelihood, as s4's sorted sample files
    held_out = np.sort(np.random.default_rng(seed).permutation(len(paths))[len(paths) - len(paths) // 2:])
    ranked = order[np.isin(order, held_out)]
    n = len(ranked)
    return [paths[i] for i in ranked[int(drop_least_likely * n):int(keep_up_to * n)]]


def read_nll_table(path: str | os.PathLike) -> dict[str, float]:
    """File name -> NLL from a CSV with a header ``file,nll`` (one row per generated clip)."""
    path = Path(path)
    table: dict[str, float] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"file", "nll"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a CSV with columns 'file' and 'nll', got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                table[Path(row["file"]).name] = float(row["nll"])
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: not a number in the nll column: {row['nll']!r}") from None
    if not table:
        raise ValueError(f"{path}: no rows")
    return table


# ---- running the classifier over a set ---------------------------------------------------------------------

@dataclass
class Classified:
    """Classifier outputs over a set: probabilities ``(clips, classes)``, features ``(clips, dims)``, labels."""

    probs: np.ndarray
    features: np.ndarray
    labels: np.ndarray  # (clips,), -1 where unlabelled


@torch.no_grad()
def classify(model: ResNeXtClassifier, dataset: Dataset, batch_size: int = 64, device: str | torch.device = "cpu",
             progress: bool = True, desc: str = "classifying") -> Classified:
    """Run ``model`` over a dataset of ``(waveform (samples,), label)`` items, in order."""
    model = model.to(device).eval()
    probs, features, labels = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for waves, label in progress_bar(loader, desc=desc, unit="batch", disable=not progress):
        feats = model.features(waves.to(device))
        # softmax in float64: s4's float32 softmax can underflow to exact zeros, which make mIS infinite
        probs.append(torch.softmax(model.head(feats).double(), dim=-1).cpu())
        features.append(feats.double().cpu())
        labels.append(label)
    return Classified(torch.cat(probs).numpy(), torch.cat(features).numpy(), torch.cat(labels).numpy())


def class_accuracy(model: ResNeXtClassifier, dataset: Dataset, result: Classified) -> float | None:
    """Accuracy against a labelled set's labels (mapped by class name); None for an unlabelled set."""
    if not isinstance(dataset, LabelledAudioSet):
        return None
    names = model.config.classes
    unknown = [c for c in dataset.classes if c not in names]
    if unknown:
        raise ValueError(f"{dataset.root}: classes {unknown} are not among the classifier's {list(names)}")
    to_model = np.array([names.index(c) for c in dataset.classes])
    return float((result.probs.argmax(axis=1) == to_model[result.labels]).mean())


def score(reference: Classified, generated: Classified, allow_few_clips: bool = False) -> dict[str, float]:
    """FID, IS, mIS and AM of generated clips against reference clips (``allow_few_clips``: FID from singular
    covariances, see :func:`fid`)."""
    return {
        "fid": fid(reference.features, generated.features, allow_singular=allow_few_clips),
        "is": inception_score(generated.probs),
        "mis": modified_inception_score(generated.probs),
        "am": am_score(reference.probs, generated.probs),
    }


def evaluate(generated: str | os.PathLike, reference: str | os.PathLike, classifier: ResNeXtClassifier, *,
             generated_split: str = "all", reference_split: str = "train", generated_files: Sequence[str] | None = None,
             batch_size: int = 64, device: str | torch.device = "cpu", progress: bool = True,
             on_rate_mismatch: str = "resample", allow_few_clips: bool = False) -> dict:
    """The metrics report for two directories (flat folders of WAVs or labelled sets).

    ``*_split`` choose a split of a labelled set (ignored for flat folders); ``generated_files`` restricts a
    flat generated folder to the named clips (e.g. from :func:`select_most_likely`); ``on_rate_mismatch``
    ("resample" or "error") handles files not at the classifier's sample rate. Each set needs more clips than
    the classifier has features (:func:`fid_min_clips`), or 2 with ``allow_few_clips``; checked before any clip
    is classified. Returns a dict with ``fid``, ``is``, ``mis``, ``am``, ``n_generated``, ``n_reference``, and
    ``reference_accuracy`` / ``generated_accuracy`` for labelled sets.
    """
    from audio.datasets import FlatAudioFolder, is_labelled_set, open_audio_set

    config = classifier.config
    common = dict(output="waveform", sample_rate=config.sample_rate, clip_seconds=config.clip_samples / config.sample_rate,
                  on_rate_mismatch=on_rate_mismatch)
    ref_set = open_audio_set(reference, split=reference_split, **common)
    if generated_files is not None:
        if is_labelled_set(generated):
            raise ValueError(f"{generated}: selecting clips by likelihood needs a flat folder of generated WAVs")
        gen_set = FlatAudioFolder(generated, allow_silence=True, files=generated_files, **common)
    else:
        gen_set = open_audio_set(generated, split=generated_split, allow_silence=True, **common)
    needed = MIN_CLIPS if allow_few_clips else fid_min_clips(config.feature_dim)
    for name, directory, dataset in (("reference", reference, ref_set), ("generated", generated, gen_set)):
        if len(dataset) < needed:
            why = (f"the metrics need at least {needed}" if allow_few_clips else
                   f"FID needs at least {needed} for a full-rank covariance of the classifier's "
                   f"{config.feature_dim} features (--allow-few-clips: from {MIN_CLIPS}, biased upward)")
            raise MetricsError(f"{directory}: {len(dataset)} {name} clip{'s' if len(dataset) != 1 else ''}; {why}")
    ref = classify(classifier, ref_set, batch_size, device, progress, desc="reference clips")
    gen = classify(classifier, gen_set, batch_size, device, progress, desc="generated clips")
    for name, dataset, result in (("reference", ref_set, ref), ("generated", gen_set, gen)):
        bad = np.flatnonzero(~(np.isfinite(result.features).all(1) & np.isfinite(result.probs).all(1)))
        if len(bad):
            raise MetricsError(f"{_clip_path(dataset, bad[0])}: the classifier's output for this {name} clip is not "
                               f"finite ({len(bad)} clip(s) in all); is the classifier's checkpoint intact?")
    report: dict = score(ref, gen, allow_few_clips)
    report.update(n_generated=len(gen_set), n_reference=len(ref_set))
    for key, dataset, result in (("reference_accuracy", ref_set, ref), ("generated_accuracy", gen_set, gen)):
        accuracy = class_accuracy(classifier, dataset, result)
        if accuracy is not None:
            report[key] = accuracy
    return report


def _clip_path(dataset: Dataset, index: int) -> Path:
    """The file behind item ``index`` of a labelled set or a flat folder."""
    return dataset.clips[index].path if isinstance(dataset, LabelledAudioSet) else dataset.paths[index]
