"""What the notebook builders (``notebooks/make_*.py``) share: the quickstarts' set-up cell and writing a notebook.

A builder lists its cells and ends with ``write_notebook(CELLS, "<name>")``, which writes notebooks/<name>.ipynb
without outputs; ``python notebooks/execute.py <name>`` then runs it and commits the outputs in place.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

HERE = Path(__file__).parent


def command_cell(package: str, stdlib: tuple[str, ...] = (), imports: str = "") -> nbformat.NotebookNode:
    """A quickstart's set-up cell: its imports (``stdlib`` modules beside the ones the helper needs, then the
    ``imports`` lines), a function ``<package>(command)`` that runs ``python -m <package> <command>`` in the
    kernel and stops the notebook if it fails, and a working folder ``<package>_quickstart`` to run in."""
    modules = "\n".join(f"import {name}" for name in sorted({"os", "shlex", *stdlib}))
    return new_code_cell(f'''\
{modules}
from pathlib import Path

{imports}

from {package}.cli import main


def {package}(command: str) -> None:
    """Run `python -m {package} <command>` in this process; stop the notebook if it fails."""
    print(f"$ python -m {package} {{command}}")
    status = main(shlex.split(command))
    assert status == 0, f"exit status {{status}}"


WORK = Path("{package}_quickstart")
WORK.mkdir(exist_ok=True)
os.chdir(WORK)
print("working in", Path.cwd())''')


def build(cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    """A Python 3 notebook of ``cells``, not executed."""
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def write_notebook(cells: list[nbformat.NotebookNode], name: str) -> Path:
    """Write notebooks/<name>.ipynb (outputs cleared: execute it with notebooks/execute.py) and say so."""
    target = HERE / f"{name}.ipynb"
    nbformat.write(build(cells), target)
    print(f"wrote {target}")
    return target
