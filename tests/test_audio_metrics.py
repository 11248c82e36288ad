"""SC09 metrics (closed forms, hand-built predictions, s4's exact procedures), the classifier, the metrics CLI."""
import json
import math
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from audio.classifier import ClassifierConfig, LogMel, ResNeXtClassifier, classifier_loss, load_classifier
from audio.cli import main
from audio.errors import MetricsError
from ssm_core.models import ModelFileError
from ssm_core.models.io import save_model
from audio.metrics import (
    am_score, fid, inception_score, modified_inception_score, read_nll_table, select_likelihood_band,
    select_most_likely,
)

SR = 16000


# ---- FID ---------------------------------------------------------------------------------------------------

def fid_reference(x, y):
    """Closed form of the Frechet distance of the two sample Gaussians, via a symmetric square root."""
    mu_x, mu_y = x.mean(0), y.mean(0)
    s_x, s_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)

    def sqrt_psd(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    root = sqrt_psd(s_x)
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(s_x) + np.trace(s_y) - 2 * np.trace(sqrt_psd(root @ s_y @ root)))


def test_fid_matches_closed_form_on_random_gaussians():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    x = rng.standard_normal((500, 6)) @ a + 1.0
    y = rng.standard_normal((400, 6)) @ b - 0.5
    assert fid(x, y) == pytest.approx(fid_reference(x, y), rel=1e-9)


def test_fid_of_shifted_gaussian_is_the_squared_shift():
    """N(0, I) against N(m, I): the population FID is |m|^2 (covariance terms vanish)."""
    rng = np.random.default_rng(1)
    shift = np.array([3.0, -4.0, 0.0, 1.0])
    x = rng.standard_normal((200_000, 4))
    y = rng.standard_normal((200_000, 4)) + shift
    assert fid(x, y) == pytest.approx(26.0, abs=0.05)
    # diagonal covariances: sum of (s1 + s2 - 2 sqrt(s1 s2)) on top of the mean term
    scale = np.array([1.0, 2.0, 0.5, 3.0])
    z = rng.standard_normal((200_000, 4)) * scale + shift
    expected = 26.0 + np.sum(1 + scale**2 - 2 * scale)
    assert fid(x, z) == pytest.approx(expected, abs=0.1)


def test_fid_of_a_set_against_itself_is_zero():
    x = np.random.default_rng(2).standard_normal((300, 16)) * 5
    assert abs(fid(x, x)) < 1e-6 * np.trace(np.cov(x, rowvar=False))
    few = np.random.default_rng(3).standard_normal((15, 64))  # singular covariances: round-off below zero
    assert 0.0 <= fid(few, few, allow_singular=True) < 1e-4
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid(x, x[:, :3])
    with pytest.raises(ValueError, match="at least 2 clips"):
        fid(x[:1], x)


def test_fid_refuses_fewer_clips_than_a_full_rank_covariance_needs():
    x = np.random.default_rng(4).standard_normal((200, 64))
    with pytest.raises(MetricsError, match=r"FID needs at least 65 generated clips for a full-rank covariance of "
                                           r"64 features; got 64"):
        fid(x, x[:64])
    assert fid(x, x[:65]) >= 0.0 and fid(x, x[:64], allow_singular=True) >= 0.0


@pytest.mark.timeout(60)  # NaN made scipy's sqrtm spin for minutes (over 150 s reported)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_fid_and_scores_refuse_values_that_are_not_finite_at_once(bad):
    x = np.random.default_rng(5).standard_normal((100, 8))
    y = x.copy()
    y[7, 3] = bad
    with pytest.raises(MetricsError, match=r"features_gen: 1 of 100 clips have values that are not finite "
                                           r"\(first: clip 7\)"):
        fid(x, y)
    probs = np.full((20, 10), 0.1)
    probs[2, 0] = bad
    for metric in (inception_score, modified_inception_score):
        with pytest.raises(MetricsError, match=r"probs: 1 of 20 clips .* \(first: clip 2\)"):
            metric(probs)


@pytest.mark.parametrize("failure", ["nan", "raises", "complex"])
def test_a_failed_matrix_square_root_is_a_clear_error(monkeypatch, failure):
    import scipy.linalg

    def broken(matrix, *args, **kwargs):
        if failure == "raises":
            raise np.linalg.LinAlgError("Internal error in scipy.linalg.sqrtm: -102")
        if failure == "nan":
            return np.full_like(matrix, np.nan)
        return np.eye(len(matrix)) * (1 + 1j)

    monkeypatch.setattr(scipy.linalg, "sqrtm", broken)
    x = np.random.default_rng(6).standard_normal((50, 4))
    expected = "is complex" if failure == "complex" else "failed, even with 1e-4 added to their diagonals"
    with pytest.raises(MetricsError, match=rf"FID: the matrix square root .*{expected}"):
        fid(x, x + 1)


def test_singular_covariances_leak_no_scipy_warning():
    few = np.random.default_rng(7).standard_normal((15, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's "Matrix is singular" LinAlgWarning reached the user's terminal
        assert fid(few, few + 0.5, allow_singular=True) > 0


# ---- IS, mIS, AM -------------------------------------------------------------------------------------------

def balanced_one_hot_after_s4_shuffle(n, classes):
    """One-hot predictions whose first half, after s4's seed-0 shuffle, holds every class equally often."""
    perm = np.random.RandomState(0).permutation(n)
    probs = np.zeros((n, classes))
    probs[perm, np.arange(n) % classes] = 1.0
    return probs


def test_is_of_uniform_one_hot_predictions_is_the_number_of_classes():
    assert inception_score(balanced_one_hot_after_s4_shuffle(200, 10)) == pytest.approx(10.0, rel=1e-12)
    assert inception_score(balanced_one_hot_after_s4_shuffle(60, 3)) == pytest.approx(3.0, rel=1e-12)
    # predictions that do not depend on the clip carry no information: IS = 1
    assert inception_score(np.full((50, 10), 0.1)) == pytest.approx(1.0)


def test_is_takes_the_entropy_over_the_clip_axis_like_s4():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(10, 0.3), size=101)
    shuffled = probs[np.random.RandomState(0).permutation(101)]
    first = shuffled[:50]
    # per class: KL(column of the first half, normalised over clips || uniform over its 50 clips)
    kl = [sum(p * math.log(p * 50) for p in first[:, c] / first[:, c].sum()) for c in range(10)]
    assert inception_score(probs) == pytest.approx(math.exp(np.mean(kl)), rel=1e-12)
    # on unbalanced, soft predictions the quirk departs from the textbook exp E_x KL(p(y|x) || p(y))
    labels = np.where(rng.random(101) < 0.9, 0, 1)
    skewed = 0.98 * np.eye(10)[labels] + 0.02 * rng.dirichlet(np.ones(10), size=101)
    textbook = math.exp(np.mean([sum(p * math.log(p / m) for p, m in zip(row, skewed.mean(0))) for row in skewed]))
    assert abs(inception_score(skewed) - textbook) > 0.2


def test_mis_matches_s4_loop_of_random_pairs():
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(10), size=37)
    s4 = np.random.RandomState(0)  # s4: np.random.seed(0); then np.random.choice(n, 2, replace=True) per pair
    kls = []
    for _ in range(10_000):
        i, j = s4.choice(np.arange(37), size=2, replace=True)
        kls.append(sum(p * math.log(p / q) for p, q in zip(probs[i], probs[j])))
    assert modified_inception_score(probs) == pytest.approx(math.exp(np.mean(kls)), rel=1e-10)


def test_mis_on_hand_built_predictions():
    assert modified_inception_score(np.tile([0.7, 0.2, 0.1], (20, 1))) == pytest.approx(1.0)
    # two kinds of clips, p and q; pairs are (p,p), (p,q), (q,p), (q,q) in the proportions s4's pairs draw
    p, q = np.array([0.9, 0.1]), np.array([0.2, 0.8])
    probs = np.stack([p, q] * 10)
    pairs = np.random.RandomState(0).randint(0, 20, size=(10_000, 2)) % 2
    kl_pq, kl_qp = np.sum(p * np.log(p / q)), np.sum(q * np.log(q / p))
    mean_kl = (np.sum((pairs[:, 0] == 0) & (pairs[:, 1] == 1)) * kl_pq
               + np.sum((pairs[:, 0] == 1) & (pairs[:, 1] == 0)) * kl_qp) / 10_000
    assert modified_inception_score(probs) == pytest.approx(math.exp(mean_kl), rel=1e-12)


def test_am_on_hand_built_predictions():
    one_hot = np.eye(10)[np.arange(100) % 10]
    uniform = np.full((100, 10), 0.1)
    assert am_score(one_hot, one_hot) == pytest.approx(0.0, abs=1e-12)  # same marginals, confident
    assert am_score(one_hot, uniform) == pytest.approx(math.log(10))  # same marginals, no confidence
    only_zero = np.tile(np.eye(10)[0], (30, 1))
    assert am_score(only_zero, uniform) == pytest.approx(2 * math.log(10))  # KL(e0 || uniform) + log 10
    ref = np.random.default_rng(5).dirichlet(np.ones(4), size=40)
    gen = np.random.default_rng(6).dirichlet(np.ones(4), size=30)
    m_ref, m_gen = ref.mean(0), gen.mean(0)
    expected = np.sum(m_ref * np.log(m_ref / m_gen)) - np.mean(np.sum(gen * np.log(gen), axis=1))
    assert am_score(ref, gen) == pytest.approx(expected, rel=1e-12)


# ---- choosing clips by likelihood -------------------------------------------------------------------------

def test_select_most_likely_and_likelihood_band():
    paths = [f"{i}.wav" for i in range(100)]
    nll = np.random.default_rng(7).permutation(100).astype(float)
    best = select_most_likely(paths, nll, 10)
    assert best == [paths[i] for i in np.argsort(nll)[:10]] and nll[int(best[0][:-4])] == 0
    with pytest.raises(ValueError, match="cannot select"):
        select_most_likely(paths, nll, 101)
    with pytest.raises(ValueError, match="not finite"):
        select_most_likely(paths, np.where(np.arange(100) == 3, np.nan, nll), 5)
    band = select_likelihood_band(paths, nll)
    assert len(band) == int(0.95 * 50) - int(0.4 * 50)  # of the 50 held-out clips
    kept_nll = nll[[int(p[:-4]) for p in band]]
    assert np.all(np.diff(kept_nll) < 0)  # increasing likelihood
    # the 40% least likely and 5% most likely of the held-out half are gone
    held_out_nll = np.sort(nll[np.random.default_rng(0).permutation(100)[50:]])[::-1]
    assert kept_nll[0] == held_out_nll[20] and kept_nll[-1] == held_out_nll[46]


def test_read_nll_table(tmp_path):
    good = tmp_path / "nll.csv"
    good.write_text("file,nll\nout/a.wav,1.5\nb.wav,2\n")
    assert read_nll_table(good) == {"a.wav": 1.5, "b.wav": 2.0}
    bad = tmp_path / "bad.csv"
    bad.write_text("file,nll\na.wav,1.5\nb.wav,oops\n")
    with pytest.raises(ValueError, match=r"bad\.csv:3: not a number"):
        read_nll_table(bad)


# ---- the classifier ----------------------------------------------------------------------------------------

def logmel_reference(wave, sr=SR, n_fft=2048, hop=512, n_mels=32, top_db=80.0):
    """librosa's melspectrogram + power_to_db(ref=np.max), written out in float64 NumPy."""
    x = np.pad(wave.astype(np.float64), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([x[i:i + n_fft] * window for i in range(0, len(x) - n_fft + 1, hop)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (frames, bins)

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f < 1000, 3 * f / 200, 15 + np.log(np.maximum(f, 1e-9) / 1000) / (np.log(6.4) / 27))

    def mel_to_hz(m):
        return np.where(m < 15, 200 * m / 3, 1000 * np.exp((m - 15) * np.log(6.4) / 27))

    edges = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(sr / 2), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    weights = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        tri = np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
        weights[m] = tri * 2 / (hi - lo)
    db = 10 * np.log10(np.maximum(weights @ power.T, 1e-10))
    return np.maximum(db - db.max(), -top_db)


def test_log_mel_features_match_librosa_recipe_in_float64():
    rng = np.random.default_rng(8)
    t = np.arange(SR) / SR
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) * (t > 0.3) + 0.01 * rng.standard_normal(SR)).astype(np.float32)
    got = LogMel(ClassifierConfig())(torch.from_numpy(wave)[None])[0, 0].numpy()
    ref = logmel_reference(wave)
    assert got.shape == ref.shape == (32, 32)
    np.testing.assert_allclose(got, ref, atol=2e-3)


def test_classifier_shapes_and_size():
    full = ResNeXtClassifier().eval()
    assert sum(p.numel() for p in full.parameters()) == pytest.approx(34.4e6, rel=0.01)  # ResNeXt-29 8x64d
    waves = torch.randn(2, 12000) * 0.1  # shorter than 1 s: padded inside
    with torch.no_grad():
        assert full.spectrogram(waves).shape == (2, 1, 32, 32)
        assert full.features(waves).shape == (2, 1024)
        assert full(waves).shape == (2, 10)
    tiny = ResNeXtClassifier(ClassifierConfig.from_preset("tiny")).eval()
    with torch.no_grad():
        assert tiny.features(waves).shape == (2, 64) and tiny(waves).shape == (2, 10)
        torch.testing.assert_close(tiny(waves), tiny.head(tiny.features(waves)))
    with pytest.raises(ValueError, match="depth"):
        ClassifierConfig(depth=30)


def tone_set(root, n_per_class=6, freqs=(300.0, 900.0, 2500.0), names=("zero", "one", "two"), seed=0):
    """A labelled set of noisy tones, one class per frequency (SC09 layout with split lists)."""
    rng = np.random.default_rng(seed)
    t = np.arange(SR) / SR
    held = []
    for name, f in zip(names, freqs):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(n_per_class):
            wave = 0.4 * np.sin(2 * np.pi * f * (1 + 0.02 * rng.standard_normal()) * t) + 0.02 * rng.standard_normal(SR)
            sf.write(str(root / name / f"{k}.wav"), wave.astype(np.float32), SR, subtype="PCM_16")
        held.append(f"{name}/{n_per_class - 1}.wav")
    (root / "testing_list.txt").write_text("\n".join(held) + "\n")
    return root


def test_classifier_loss_trains_and_save_load_round_trip(tmp_path):
    from audio.datasets import LabelledAudioSet

    torch.manual_seed(0)
    data = LabelledAudioSet(tone_set(tmp_path / "tones"), "train", output="waveform")
    waves = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([c.label for c in data.clips])
    model = ResNeXtClassifier(ClassifierConfig.from_preset("tiny"))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, metrics = classifier_loss(model, (waves, labels))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        first = first if first is not None else loss.item()
    # three tone classes (chance 1/3): the seeded run fits all 15 training clips within 30 steps
    assert float(loss) < 0.5 * first and float(metrics["accuracy"]) >= 0.9
    model.eval()
    save_model(model, tmp_path / "cls")
    loaded = load_classifier(tmp_path / "cls")
    assert loaded.config == model.config and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(waves), model(waves), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="not a classifier directory"):
        load_classifier(tmp_path)
    (tmp_path / "cls" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelFileError):
        load_classifier(tmp_path / "cls")


# ---- the metrics command -----------------------------------------------------------------------------------

@pytest.fixture()
def tiny_classifier(tmp_path):
    torch.manual_seed(0)
    return save_model(ResNeXtClassifier(ClassifierConfig.from_preset("tiny")).eval(), tmp_path / "cls")


def run_metrics(args, capsys):
    status = main(["metrics", "--device", "cpu", *args])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_metrics_cli_on_tiny_folders(tmp_path, tiny_classifier, capsys):
    reference = tone_set(tmp_path / "ref")
    generated = tmp_path / "gen"
    generated.mkdir()
    rng = np.random.default_rng(1)
    for k in range(8):
        sf.write(str(generated / f"{k}.wav"), (0.3 * rng.standard_normal(SR)).astype(np.float32), SR)
    sf.write(str(generated / "silent.wav"), np.zeros(SR, np.float32), SR)  # a silent sample is scored, not refused
    status, out, err = run_metrics(["--generated", str(generated), "--reference", str(reference), "--allow-few-clips",
                                    "--classifier", str(tiny_classifier), "--json", str(tmp_path / "m.json")], capsys)
    assert status == 0, err
    report = json.loads(out)
    assert json.loads((tmp_path / "m.json").read_text()) == report
    assert {"fid", "is", "mis", "am", "n_generated", "n_reference", "reference_accuracy"} <= set(report)
    assert report["n_generated"] == 9 and report["n_reference"] == 15  # reference = its training split
    assert all(math.isfinite(report[k]) for k in ("fid", "is", "mis", "am"))
    assert report["is"] >= 1.0 and report["mis"] >= 1.0 and report["fid"] > 0

    # the reference against itself: FID ~ 0 and both accuracies reported
    status, out, err = run_metrics(["--generated", str(reference), "--generated-split", "train", "--reference",
                                    str(reference), "--classifier", str(tiny_classifier), "--allow-few-clips"], capsys)
    same = json.loads(out)
    # (15 clips in 64 dimensions: singular covariances, so sqrtm is only accurate to ~1e-6 here)
    assert status == 0 and abs(same["fid"]) < 1e-4 and same["generated_accuracy"] == same["reference_accuracy"]

    # keep only the most likely clips named in an NLL table
    (tmp_path / "nll.csv").write_text("file,nll\n" + "".join(f"{k}.wav,{10 - k}\n" for k in range(8)))
    status, out, err = run_metrics(["--generated", str(generated), "--reference", str(reference), "--classifier",
                                    str(tiny_classifier), "--nll", str(tmp_path / "nll.csv"), "--select",
                                    "most-likely", "--n", "4", "--allow-few-clips"], capsys)
    assert status == 0, err
    assert json.loads(out)["n_generated"] == 4


def test_metrics_of_a_labelled_set_against_itself_by_default(tmp_path, tiny_classifier, capsys):
    reference = tone_set(tmp_path / "ref", n_per_class=4)
    status, out, err = run_metrics(["--generated", str(reference), "--reference", str(reference),
                                    "--classifier", str(tiny_classifier), "--allow-few-clips"], capsys)
    assert status == 0, err
    report = json.loads(out)  # stdout is the JSON object alone; the notice is on stderr
    assert report["n_generated"] == report["n_reference"] == 9 and report["fid"] == pytest.approx(0.0, abs=1e-4)
    assert report["fid"] >= 0.0 and "notice: --generated and --reference are the same set" in err


def test_metrics_refuse_one_clip_or_another_rate_on_request(tmp_path, tiny_classifier, capsys):
    reference = tone_set(tmp_path / "ref", n_per_class=3)
    one = tmp_path / "one"
    one.mkdir()
    sf.write(str(one / "a.wav"), np.full(SR, 0.1, np.float32), SR)
    status, out, err = run_metrics(["--generated", str(one), "--reference", str(reference),
                                    "--classifier", str(tiny_classifier), "--allow-few-clips"], capsys)
    assert status == 1 and out == "" and f"error: {one}: 1 generated clip; the metrics need at least 2" in err
    sf.write(str(one / "b.wav"), np.full(SR // 2, 0.1, np.float32), SR // 2)
    args = ["--generated", str(one), "--reference", str(reference), "--classifier", str(tiny_classifier),
            "--allow-few-clips"]
    with pytest.warns(UserWarning, match=r"b\.wav: resampled from 8000 Hz to 16000 Hz"):
        status, out, err = run_metrics(args, capsys)
    assert status == 0, err
    assert json.loads(out)["n_generated"] == 2
    status, out, err = run_metrics(args + ["--on-rate-mismatch", "error"], capsys)
    assert status == 1 and f"error: {one / 'b.wav'}: sample rate is 8000 Hz, 16000 Hz is required" in err


def test_metrics_refuse_fewer_clips_than_features_saying_how_many(tmp_path, tiny_classifier, capsys):
    reference = tone_set(tmp_path / "ref", n_per_class=30)  # 87 training clips: enough for 64 features
    generated = tmp_path / "gen"
    generated.mkdir()
    for k in range(9):
        sf.write(str(generated / f"{k}.wav"), np.full(SR, 0.1 * (k + 1), np.float32), SR)
    args = ["--generated", str(generated), "--reference", str(reference), "--classifier", str(tiny_classifier)]
    status, out, err = run_metrics(args, capsys)
    assert status == 1 and out == ""
    assert (f"error: {generated}: 9 generated clips; FID needs at least 65 for a full-rank covariance of the "
            "classifier's 64 features (--allow-few-clips: from 2, biased upward)") in err
    status, out, err = run_metrics(args + ["--allow-few-clips"], capsys)
    assert status == 0, err
    assert json.loads(out)["n_generated"] == 9


@pytest.mark.timeout(120)
def test_metrics_of_clips_with_nan_samples_stop_at_once_naming_the_clip(tmp_path, tiny_classifier, capsys):
    reference = tone_set(tmp_path / "ref", n_per_class=3)
    generated = tmp_path / "gen"
    generated.mkdir()
    for k in range(3):
        wave = np.full(SR, 0.2, np.float32)
        if k == 1:
            wave[100] = np.nan
        sf.write(str(generated / f"{k}.wav"), wave, SR, subtype="FLOAT")
    status, out, err = run_metrics(["--generated", str(generated), "--reference", str(reference), "--classifier",
                                    str(tiny_classifier), "--allow-few-clips"], capsys)
    assert status == 1 and out == ""
    assert f"error: {generated / '1.wav'}: sample 100 (0.0063 s) is nan; audio samples must be finite" in err


def test_metrics_name_the_clip_whose_classifier_output_is_not_finite(tmp_path):
    from audio.metrics import evaluate

    reference = tone_set(tmp_path / "ref", n_per_class=3)
    torch.manual_seed(0)
    classifier = ResNeXtClassifier(ClassifierConfig.from_preset("tiny")).eval()
    with torch.no_grad():
        classifier.head.weight[0, 0] = float("nan")  # a corrupt checkpoint
    with pytest.raises(MetricsError, match=r"zero/0\.wav: the classifier's output for this reference clip is not "
                                           r"finite \(6 clip\(s\) in all\)"):
        evaluate(reference, reference, classifier, progress=False, allow_few_clips=True)


@pytest.mark.parametrize("problem", ["no_classifier", "no_generated", "select_without_nll", "nll_names_missing_clip"])
def test_metrics_cli_bad_input(tmp_path, tiny_classifier, capsys, problem):
    reference = tone_set(tmp_path / "ref", n_per_class=3)
    args = {"--generated": str(reference), "--reference": str(reference), "--classifier": str(tiny_classifier)}
    extra = []
    expected = {"no_classifier": "not a classifier directory", "no_generated": "no such directory",
                "select_without_nll": "needs --nll", "nll_names_missing_clip": "has no file"}[problem]
    if problem == "no_classifier":
        args["--classifier"] = str(tmp_path)
    elif problem == "no_generated":
        args["--generated"] = str(tmp_path / "nothing")
    elif problem == "select_without_nll":
        extra = ["--select", "band"]
    else:
        flat = tmp_path / "flat"
        flat.mkdir()
        sf.write(str(flat / "a.wav"), np.full(100, 0.1, np.float32), SR)
        (tmp_path / "nll.csv").write_text("file,nll\na.wav,1\nb.wav,2\n")
        args["--generated"] = str(flat)
        extra = ["--nll", str(tmp_path / "nll.csv")]
    status, out, err = run_metrics([x for kv in args.items() for x in kv] + extra, capsys)
    assert status == 1 and err.startswith("error: ") and expected in err and "Traceback" not in err


def test_metrics_and_plot_never_write_over_an_input_or_a_file_they_did_not_write(tmp_path, tiny_classifier, capsys):
    reference = tone_set(tmp_path / "ref", n_per_class=3)
    nll = tmp_path / "nll.csv"
    nll.write_text("file,nll\n")
    args = ["--generated", str(reference), "--reference", str(reference), "--classifier", str(tiny_classifier),
            "--allow-few-clips"]
    for target, extra in ((tiny_classifier / "model.json", []), (nll, ["--nll", str(nll)])):  # in an input folder;
        before = target.read_bytes()                                                         # an input
        status, out, err = run_metrics([*args, *extra, "--json", str(target)], capsys)
        assert status == 1 and out == "" and err.startswith("error: --json ") and target.read_bytes() == before
    report = tmp_path / "report.json"
    report.write_text('{"my": "own report"}\n')
    status, out, err = run_metrics([*args, "--json", str(report)], capsys)
    assert status == 1 and "did not write" in err and report.read_text() == '{"my": "own report"}\n'
    status, out, err = run_metrics([*args, "--json", str(report), "--overwrite"], capsys)
    assert status == 0 and json.loads(report.read_text()) == json.loads(out)
    status, out, err = run_metrics([*args, "--json", str(report)], capsys)  # its own report, written again
    assert status == 0, err

    wav = next(reference.rglob("*.wav"))
    wav_bytes = wav.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main(["plot", "--clips", str(wav.parent), "--out", str(wav), *extra]) == 1
        assert "error: " in capsys.readouterr().err and wav.read_bytes() == wav_bytes
    png = tmp_path / "grid.png"
    assert main(["plot", "--clips", str(reference), "--n", "2", "--out", str(png)]) == 0
    assert main(["plot", "--clips", str(reference), "--n", "3", "--out", str(png)]) == 0  # its own plot


def test_plot_cli_writes_grids(tmp_path, capsys):
    from PIL import Image

    data = tone_set(tmp_path / "tones", n_per_class=2)
    for kind in ("spectrogram", "waveform"):
        out = tmp_path / f"{kind}.png"
        assert main(["plot", "--clips", str(data), "--kind", kind, "--n", "5", "--columns", "3", "--out", str(out)]) == 0
        width, height = Image.open(out).size
        assert width > height > 200  # 2 rows of 3 panels
    assert main(["plot", "--clips", str(tmp_path / "none"), "--out", str(tmp_path / "x.png")]) == 1
    assert "error: " in capsys.readouterr().err
