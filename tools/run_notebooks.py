"""The main job: execute the chapters in order on the shapes-world model, in place; they write ``figures/``.

python tools/run_notebooks.py                 # all of notebooks/NN_*.ipynb
python tools/run_notebooks.py 02 04           # only the chapters whose names start with these
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(names: list[str] | None = None, folder: Path = ROOT / "notebooks", timeout: int = 1800) -> None:
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor

    os.environ.setdefault("CI", "true")  # progress bars off, so stored outputs stay short and stable
    books = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if names:
        books = [b for b in books if any(b.name.startswith(n) for n in names)]
        if not books:
            raise SystemExit(f"no notebook in {folder} starts with {names}")
    (ROOT / "figures").mkdir(exist_ok=True)
    for nb_path in books:
        t = time.perf_counter()
        nb = nbformat.read(nb_path, as_version=4)
        # store_widget_state: the widgets' last state goes into the notebook's metadata, so a reader who opens
        # a chapter without running it sees each widget as it was (JupyterLab draws it from that state)
        ep = ExecutePreprocessor(timeout=timeout, kernel_name="python3", store_widget_state=True)
        ep.preprocess(nb, {"metadata": {"path": str(folder)}})
        nbformat.write(nb, nb_path)
        print(f"{nb_path.name}: executed in {time.perf_counter() - t:.0f} s", flush=True)


if __name__ == "__main__":
    run(sys.argv[1:] or None)
