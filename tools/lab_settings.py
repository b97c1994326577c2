"""JupyterLab defaults for this environment, so that saved chapters keep their widgets (`make env` runs this).

1. ipywidgets' JupyterLab extension leaves a saved notebook's widget state as it was loaded unless its
   ``saveState`` setting is on; reopened after the kernel has stopped, the notebook's widgets then point at
   models the file does not hold: "Error displaying widget: model not found". This writes the setting into
   ``<environment>/share/jupyter/lab/settings/overrides.json`` (keeping what else is there); a user's own
   setting still wins.
2. With ``saveState`` on, JupyterLab writes only the widgets connected to a live kernel, so saving a chapter
   whose widgets came from the file drops them (ipywidgets#3270). The Jupyter server's pre-save hook
   ``reprolib.widget_state.keep_widget_state`` keeps them: it is written into
   ``<environment>/etc/jupyter/jupyter_server_config.json`` (keeping what else is there; the server reads
   only extension switches from its ``config.d`` folder).

python tools/lab_settings.py            # write both into the running Python's environment
python tools/lab_settings.py --check    # exit 1 when either is missing
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PLUGIN, KEY = "@jupyter-widgets/jupyterlab-manager:plugin", "saveState"
OVERRIDES = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
SERVER = Path(sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.json"
HOOK = "reprolib.widget_state.keep_widget_state"


def _read(path: Path) -> dict:
    return json.loads(path.read_text() or "{}") if path.exists() else {}


def installed(path: Path = OVERRIDES, server: Path = SERVER) -> bool:
    hook = _read(server).get("ContentsManager", {}).get("pre_save_hook")
    return _read(path).get(PLUGIN, {}).get(KEY) is True and hook == HOOK


def install(path: Path = OVERRIDES, server: Path = SERVER) -> None:
    data, config = _read(path), _read(server)
    data.setdefault(PLUGIN, {})[KEY] = True
    config.setdefault("ContentsManager", {})["pre_save_hook"] = HOOK
    for file, content in ((path, data), (server, config)):
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(content, indent=2) + "\n")


if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        sys.exit(0 if installed() else 1)
    install()
    print(f"{PLUGIN} {KEY} = true in {OVERRIDES}; pre-save hook in {SERVER}")
