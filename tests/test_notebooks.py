"""Every walk-through in notebooks/ runs top to bottom (at its default, CPU-sized settings), and the numbers its
cells tagged "results" print stay where the committed, executed copy shows them.

Notebooks are committed with their outputs (so tables and plots show on GitHub) by
``python notebooks/execute.py``; a change that moves a checked number beyond its tolerance below fails here
until the notebook is executed and committed again, so the committed outputs never drift from the code.
"""
import json
import math
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))

# What "materially" means per notebook, by key prefix: ("abs", d) allows |new - committed| <= d; ("rel", r)
# allows |new - committed| <= r * |committed|; ("orders", k) allows a round-off size to grow by at most k orders
# of magnitude (anything under 1e-12 passes). The DNA accuracies are on 200 test windows (2 standard errors:
# about 6 points), the audio classifier's on 10 clips; FID of six noise-like clips moves a lot with small changes.
TOLERANCES = {
    "genomics_quickstart": {"pretrain_bits_per_base": ("abs", 0.03), "accuracy_": ("abs", 0.10),
                            "classified_right": ("abs", 3)},
    "audio_quickstart": {"valid_bits_per_sample": ("abs", 0.1), "classifier_test_accuracy": ("abs", 0.2),
                         "fid": ("rel", 0.5), "is": ("abs", 0.5), "mis": ("abs", 0.5), "am": ("abs", 0.5)},
    "ssm_core_tour": {"": ("orders", 2)},
}


def results_of(nb) -> list[dict]:
    """The JSON object each "results"-tagged cell prints last, in cell order."""
    found = []
    for cell in nb.cells:
        if "results" in cell.get("metadata", {}).get("tags", []):
            text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
                           and o.get("name") == "stdout")
            assert text.strip(), f"results cell has no printed output:\n{cell.source}"
            found.append(json.loads(text.strip().splitlines()[-1]))
    return found


def within(new: float, committed: float, rule: tuple[str, float]) -> bool:
    kind, amount = rule
    if kind == "abs":
        return abs(new - committed) <= amount
    if kind == "rel":
        return abs(new - committed) <= amount * abs(committed)
    floor = 1e-12
    return new <= floor or new <= max(committed, floor) * 10 ** amount


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_reproduces_its_committed_results(path, tmp_path):
    committed = results_of(nbformat.read(path, as_version=4))
    assert committed, f"{path.name}: no executed 'results' cell committed; run python notebooks/execute.py"
    nb = nbformat.read(path, as_version=4)
    # a temporary working directory: the notebook's outputs never land in the repository
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    rules = TOLERANCES[path.stem]
    for old, new in zip(committed, results_of(nb), strict=True):
        assert new.keys() == old.keys(), f"{path.name}: results keys changed: {sorted(old)} -> {sorted(new)}"
        for key, value in new.items():
            rule = next(r for prefix, r in rules.items() if key.startswith(prefix))
            assert math.isfinite(value) and within(value, old[key], rule), (
                f"{path.name}: {key} = {value} against {old[key]} committed (allowed: {rule}); if the change is "
                f"meant, re-execute the notebooks (python notebooks/execute.py) and commit them")


def test_tolerances():
    assert within(0.62, 0.55, ("abs", 0.1)) and not within(0.70, 0.55, ("abs", 0.1))
    assert within(140.0, 100.0, ("rel", 0.5)) and not within(160.0, 100.0, ("rel", 0.5))
    assert within(3e-15, 1e-16, ("orders", 2)) and not within(3e-6, 1e-9, ("orders", 2))
