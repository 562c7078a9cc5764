"""Gradio app: a researcher's bench on trained runs.

    python -m lfbyte.app run_dir=outputs/runs/<ts> [server_port=7860] [share=true]

Two runs sampled side by side from one prompt and seed, streamed; their bytes shown as text or as
escapes; the Run menus list the runs under ``runs_root`` (``outputs/``) by name, model and val
bits/byte; the panel compares their records and configs and plots their learning curves. Without
``run_dir`` it serves the newest run and says so. Requests are queued; prompt and output lengths are
capped (``conf/app.yaml``); a bad request gets a message, never a server crash.

- :mod:`~lfbyte.app.server`: options, address, start-up, the upload refusal;
- :mod:`~lfbyte.app.ui`: the page and its endpoints;
- :mod:`~lfbyte.app.sampling`: side-by-side sampling and the byte views;
- :mod:`~lfbyte.app.records`: the Run menu, a run's record on disk, curves and the panel.
"""

from .records import RunCache
from .server import RefuseUploads, check_address, check_config, main, prepare, serve
from .ui import build_app

__all__ = ["RefuseUploads", "RunCache", "build_app", "check_address", "check_config", "main", "prepare", "serve"]
