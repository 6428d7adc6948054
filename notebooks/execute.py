"""Executes notebooks headless, in their own directory, and fails on the first cell that raises.

    python notebooks/execute.py notebooks/*.ipynb

The environment is passed on, so that SECATEUR_RUN, SECATEUR_REPORT, ... choose what the
notebooks open. Every notebook must draw at least one figure (matplotlib's inline backend);
nothing is written back to the notebooks.
"""
import pathlib
import sys

import nbformat
from nbclient import NotebookClient


def main(paths):
    for p in map(pathlib.Path, paths):
        nb = nbformat.read(p, as_version=4)
        client = NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(p.parent)}})
        client.execute()
        figures = sum(1 for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
        print(f"{p}: {len(nb.cells)} cells executed, {figures} figures")
        if figures == 0:
            sys.exit(f"{p} drew no figure")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: execute.py NOTEBOOK...")
    main(sys.argv[1:])
