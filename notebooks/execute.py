"""Execute the notebooks in place, at their CPU size, so they are committed with their outputs.

    python notebooks/make_genomics_quickstart.py && python notebooks/execute.py genomics_quickstart
    python notebooks/execute.py            # all of them

Each runs in a fresh temporary directory (its files never land in the repository). Progress bars are kept at
their last state only ('\\r' rewrites dropped) so the committed files stay small. tests/test_notebooks.py
re-executes them and compares the numbers their "results" cells print with these outputs.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).parent


def last_rewrites(text: str) -> str:
    """Each line as a terminal would show it: the text after its last carriage return."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def execute(path: Path) -> float:
    """Run ``path`` top to bottom and write it back with its outputs; returns the seconds it took."""
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": work}}).execute()
    seconds = time.perf_counter() - started
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                output["text"] = last_rewrites(output["text"])
    nbformat.write(nb, path)
    return seconds


def main(names: list[str]) -> int:
    paths = [HERE / f"{name}.ipynb" for name in names] if names else sorted(HERE.glob("*.ipynb"))
    for path in paths:
        if not path.is_file():
            print(f"error: {path}: no such notebook", file=sys.stderr)
            return 1
        print(f"{path.name}: executed in {execute(path):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
