"""Plots a reader can trust: colour bars on colour scales, n and a 95% interval on accuracies, no one-point
panels, counts not drawn as metrics."""
from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.container import ErrorbarContainer


@pytest.fixture
def figures(monkeypatch):
    """The figures the plotting functions save, kept open for inspection."""
    import audio.plots
    import genomics.finetune
    import ssm_core.train.metrics

    kept = []

    def keep(fig, path, *args, **kwargs):
        kept.append(fig)
        return path

    for module in (audio.plots, genomics.finetune, ssm_core.train.metrics):
        monkeypatch.setattr(module, "save_figure", keep)
    yield kept
    for fig in kept:
        plt.close(fig)


def _colour_bar_labels(fig) -> list[str]:
    """The labels of the colour bars of the figure's images, each once."""
    bars = {id(im.colorbar): im.colorbar for ax in fig.axes for im in ax.images if im.colorbar is not None}
    return [bar.ax.get_ylabel() for bar in bars.values()]


def test_the_confusion_matrix_has_a_colour_bar_saying_what_the_colours_are(figures, tmp_path):
    from genomics.finetune import plot_confusion

    plot_confusion(np.array([[8, 2], [3, 7]]), ["a", "b"], "confusion", tmp_path / "cm.png")
    assert _colour_bar_labels(figures[0]) == ["share of the true class (cells: counts)"]


def test_spectrograms_share_one_scale_shown_by_a_colour_bar(figures, tmp_path):
    from audio.plots import plot_spectrograms

    loud, quiet = torch.randn(4000), 1e-3 * torch.randn(4000)
    plot_spectrograms([loud, quiet], tmp_path / "s.png")
    fig = figures[0]
    assert _colour_bar_labels(fig) == ["dB below the clip's peak"]
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2 and all(image.get_clim() == (-80, 0) for image in images)  # one scale for all


def _finetune_run(path, window, accuracy, n):
    path.mkdir()
    (path / "metrics.json").write_text(json.dumps({
        "test_accuracy": accuracy, "test_samples": n, "window": window, "classes": ["a", "b"],
        "config": {"model": {"n_layer": 2, "d_model": 64}}}))
    return path


def test_accuracy_against_length_shows_n_and_a_95_percent_interval(figures, tmp_path):
    from genomics.finetune import plot_lengths

    runs = [_finetune_run(tmp_path / "w1k", 1024, 0.75, 20), _finetune_run(tmp_path / "w4k", 4096, 0.9, 2000)]
    rows = plot_lengths(runs, tmp_path / "acc.png")
    assert [r["n"] for r in rows] == [20, 2000]
    low, high = rows[0]["interval"]
    assert low == pytest.approx(0.531, abs=1e-3) and high == pytest.approx(0.888, abs=1e-3)  # Wilson, 15 of 20
    assert rows[1]["interval"][1] - rows[1]["interval"][0] < 0.03  # 2,000 windows: a narrow interval
    ax = figures[0].axes[0]
    assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)
    assert {t.get_text() for t in ax.texts} == {"n=20", "n=2,000"}


def test_one_point_metrics_are_numbers_not_panels_and_counts_are_not_plotted(figures, tmp_path):
    from ssm_core.train.metrics import plot_metrics

    csv = tmp_path / "metrics.csv"
    rows = ["step,metric,value,time_s"]
    rows += [f"{s},train/loss,{1 / s},0" for s in range(1, 6)]
    rows += ["5,valid/bits_per_sample,1.25,0", "5,valid/samples,4096,0"]
    csv.write_text("\n".join(rows) + "\n")
    plot_metrics(csv, tmp_path / "m.png", title="run", counts={"valid/samples"})
    fig = figures[0]
    panels = [ax.get_title() for ax in fig.axes if ax.axison]
    assert panels == ["train/loss"]
    title = fig._suptitle.get_text()
    assert "valid/bits_per_sample 1.25 (step 5)" in title and "samples" not in title.replace("per_sample", "")
