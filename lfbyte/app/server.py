"""``python -m lfbyte.app``: check the options and the address, load the first run, serve the page.

Everything here happens before or around the page (:mod:`lfbyte.app.ui`): one ``error:`` line for a bad
option, a taken port or a bad run, and a middleware that refuses uploads.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from ..cli import hydra_cli, one_line_errors
from ..config import check_threads, is_int, to_plain
from ..errors import ConfigError, shown
from ..runs import as_path, describe_run, latest_run, runs_root_of
from .records import RunCache
from .ui import CSS, build_app


def check_config(cfg: dict[str, Any]) -> None:
    """Every problem of conf/app.yaml in one line each, before a model is loaded or a port opened."""
    p = [f"{key}={cfg.get(key)!r} must be an integer >= 1"
         for key in ("max_prompt_bytes", "max_length_cap", "default_max_length", "concurrency_limit", "max_queue",
                     "cache_size")
         if not is_int(cfg.get(key))]
    t = cfg.get("default_temperature")
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 2):
        p.append(f"default_temperature={t!r} must be a number in [0, 2] (the Temperature slider)")
    port = cfg.get("server_port")
    if port is not None and not is_int(port, 1, 65535):
        p.append(f"server_port={port!r} must be null (7860 or the next free port) or an integer in 1..65535")
    if not isinstance(cfg.get("server_name"), str) or not cfg["server_name"]:
        p.append(f"server_name={cfg.get('server_name')!r} must be an address: 127.0.0.1 (this machine) or 0.0.0.0")
    for key in ("share", "run_menu"):
        if not isinstance(cfg.get(key), bool):
            p.append(f"{key}={cfg.get(key)!r} must be true or false")
    if cfg.get("runs_root") is not None:
        try:
            as_path(cfg["runs_root"], "runs_root")
        except ConfigError as e:
            p.append(str(e))
    try:
        check_threads(cfg.get("num_threads"))
    except ConfigError as e:
        p.append(str(e))
    if p:
        raise ConfigError("\n".join(p))


def check_address(host: str, port: int | None) -> None:
    """Fail in one line where Gradio would not: it retries a host name that does not resolve (or is not
    this machine's) on 100 ports before giving up, and words a busy port as 'Cannot find empty port'."""
    try:  # Gradio takes [::1] for ::1
        family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]"), port or 0, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as e:
        raise ConfigError(f"server_name={shown(host)} does not resolve ({getattr(e, 'strerror', None) or e}); "
                          "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Gradio does: a TIME_WAIT port is free
        try:
            s.bind(addr)
        except OSError as e:
            fix = {
                errno.EADDRINUSE: "choose another server_port=, or server_port=null for the next free one from 7860",
                errno.EACCES: "ports below 1024 need root; choose server_port=1024 or above",
            }.get(e.errno, "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
            raise ConfigError(f"cannot listen on {host}:{port or 'any port'} ({e.strerror or e}); {fix}") from None


def serve(cfg: dict[str, Any]) -> None:
    """Check everything, load the run, then serve until interrupted."""
    from starlette.middleware import Middleware  # gradio's web framework

    demo = prepare(cfg)
    demo.launch(
        server_name=cfg["server_name"],
        server_port=cfg.get("server_port"),
        share=bool(cfg.get("share")),
        ssr_mode=False,
        show_error=True,
        footer_links=["api"],
        css=CSS,
        max_file_size=0,  # the app takes no files: a client that posts one anyway stores nothing
        app_kwargs={"middleware": [Middleware(RefuseUploads)]},
    )


def prepare(cfg: dict[str, Any]) -> Any:
    """Everything before the server starts: the options, the address, the run (a bad one fails here)."""
    check_config(cfg)
    check_address(cfg["server_name"], cfg.get("server_port"))
    if cfg.get("num_threads"):
        import torch

        torch.set_num_threads(cfg["num_threads"])
    run_dir, note = cfg.get("run_dir"), ""
    if not run_dir:
        run_dir = latest_run(cfg.get("runs_root") or "outputs")
        note = f" (newest run under `{cfg.get('runs_root') or 'outputs'}/`; choose another with run_dir=)"
        print(f"run_dir not given; serving the newest run: {run_dir}", flush=True)
    run_dir = str(as_path(run_dir, "run_dir"))
    if not cfg.get("runs_root"):  # the Run menus list the runs beside run_dir, wherever the app was started
        cfg["runs_root"] = str(runs_root_of(run_dir)) if cfg.get("run_dir") else "outputs"
    cache = RunCache(cfg.get("checkpoint") or "last", cfg.get("device"), int(cfg["cache_size"]))
    print(f"serving {describe_run(cache.get(run_dir))}", flush=True)  # a bad run fails here, before the server
    return build_app(cfg, cache, run_dir, note)


UPLOAD_ROUTES = ("/upload", "/process_recording")  # Gradio's routes that store what a client posts


class RefuseUploads:
    """ASGI middleware in front of Gradio: its upload routes answer 404 before a byte of the body is read.

    The app has no file input, so nothing it does needs them; without this any client could store files
    of any size on the server (Gradio's ``max_file_size=0`` alone still accepts empty files)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/").endswith(UPLOAD_ROUTES):
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": b"this app takes no uploads"})
            return
        await self.app(scope, receive, send)


def _hydra_entry(cfg: Any) -> None:
    with one_line_errors():
        try:
            serve(to_plain(cfg))
        except OSError as e:  # e.g. the port was taken after check_address
            raise ConfigError(f"cannot start the server: {str(e).split('. You can')[0]}; "
                              "choose another server_port=") from None


def main() -> None:
    """``python -m lfbyte.app [key=value ...]``; see conf/app.yaml."""
    hydra_cli("app", _hydra_entry, flat=True)


if __name__ == "__main__":
    main()
