"""JupyterLab defaults for this environment: save the widgets' state with the notebook (`make env` runs this).

ipywidgets' JupyterLab extension leaves a saved notebook's widget state as it was loaded unless its
``saveState`` setting is on; reopened after the kernel has stopped, the notebook's widgets then point at
models the file does not hold: "Error displaying widget: model not found". This writes the setting into
``<environment>/share/jupyter/lab/settings/overrides.json`` (keeping what else is there); a user's own
setting still wins.

python tools/lab_settings.py            # write it into the running Python's environment
python tools/lab_settings.py --check    # exit 1 when it is missing
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PLUGIN, KEY = "@jupyter-widgets/jupyterlab-manager:plugin", "saveState"
OVERRIDES = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"


def installed(path: Path = OVERRIDES) -> bool:
    return path.exists() and json.loads(path.read_text() or "{}").get(PLUGIN, {}).get(KEY) is True


def install(path: Path = OVERRIDES) -> None:
    data = json.loads(path.read_text() or "{}") if path.exists() else {}
    data.setdefault(PLUGIN, {})[KEY] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        sys.exit(0 if installed() else 1)
    install()
    print(f"{PLUGIN} {KEY} = true in {OVERRIDES}")
