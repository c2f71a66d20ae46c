"""Execute the numbered tutorials with papermill: ``python -m lfads_nb._run_notebooks SRC OUT``.

Each ``NN_name.ipynb`` in SRC runs end to end at its own (teaching-sized) defaults, or with
the parameters given, and the executed copy is written to OUT, which is also the working
directory, so whatever a tutorial writes lands beside it.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

NOTEBOOK = re.compile(r"^\d\d_.+\.ipynb$")


def tutorial_paths(folder) -> list[Path]:
    """The numbered tutorials in ``folder``, in order."""
    return sorted(p for p in Path(folder).iterdir() if NOTEBOOK.match(p.name))


def execute(notebook, out_dir, parameters: dict | None = None) -> Path:
    """Run one notebook with papermill; returns the executed copy's path in ``out_dir``."""
    import papermill

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / Path(notebook).name
    papermill.execute_notebook(
        str(notebook), str(target), parameters=parameters or {}, cwd=str(out_dir),
        kernel_name="python3", progress_bar=False,
    )
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="folder with the numbered tutorials")
    parser.add_argument("out", help="folder for the executed notebooks")
    args = parser.parse_args(argv)
    for notebook in tutorial_paths(args.source):
        start = time.perf_counter()
        print(f"running {notebook.name} ...", flush=True)
        target = execute(notebook, args.out)
        print(f"  done in {time.perf_counter() - start:.0f} s -> {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
