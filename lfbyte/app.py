"""Gradio app: sample from a trained run in the browser, text streaming in as bytes arrive.

    python -m lfbyte.app run_dir=outputs/runs/<ts> [server_port=7860] [share=true]

Without ``run_dir`` it serves the newest run under ``runs_root`` (``outputs/``) and says so.
The Run menu switches between the runs found there; a run that fails to load shows why in
the panel and the previous one stays in use. Requests are queued; prompt and output lengths
are capped (``conf/app.yaml``); a bad request gets a message, never a server crash.
"""

from __future__ import annotations

import errno
import socket
import threading
import traceback
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import yaml

from .cli import hydra_cli, one_line_errors
from .config import check_threads, is_int, is_number, to_plain
from .errors import ConfigError, LFByteError
from .generate import stream_text
from .runs import Run, as_path, describe_run, find_runs, latest_run, load_run


class RunCache:
    """Loaded runs by directory, the ``size`` most recently used kept in memory; thread-safe."""

    def __init__(self, checkpoint: str, device: str | None, size: int = 2) -> None:
        self.checkpoint, self.device, self.size = checkpoint, device, max(1, size)
        self._runs: OrderedDict[str, Run] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_dir: str) -> Run:
        with self._lock:
            if run_dir in self._runs:
                self._runs.move_to_end(run_dir)
                return self._runs[run_dir]
            run = load_run(run_dir, self.checkpoint, self.device)
            self._runs[run_dir] = run
            while len(self._runs) > self.size:
                self._runs.popitem(last=False)
            return run


def run_panel(run: Run, note: str = "") -> str:
    """Markdown: where the model came from, its size, training step and validation bits/byte."""
    bpb = run.metrics.get("val_bpb")
    bpb_text = f"{bpb:.3f}" if isinstance(bpb, (int, float)) else "n/a"
    model_cfg = yaml.safe_dump(run.config["model"], sort_keys=False).strip()
    lines = [
        f"**Run** `{run.run_dir}`{note}",
        "",
        f"**Checkpoint** `{run.checkpoint.name}` · **step** {run.step if run.step is not None else 'n/a'} · "
        f"**validation bits/byte** {bpb_text} · **parameters** {run.model.num_parameters():,} · "
        f"**device** {run.device}",
        "",
        f"```yaml\n{model_cfg}\n```",
    ]
    return "\n".join(lines)


def _user_error(message: str) -> Exception:
    import gradio as gr

    return gr.Error(message, print_exception=False)


def _whole(value: Any, label: str, default: int) -> int:
    """A slider/number value that must be an integer: 16.0 is 16; 0.5, NaN or 'abc' is the user's error."""
    if value is None:
        return int(default)
    if is_number(value) and float(value).is_integer():
        return int(value)
    raise _user_error(f"{label} must be a whole number, not {value!r}.")


def build_app(cfg: dict[str, Any], cache: RunCache, run_dir: str, note: str = "") -> Any:
    """The Blocks app, first serving ``run_dir`` from ``cache``. ``cfg``: conf/app.yaml as a dict."""
    import gradio as gr

    first = cache.get(run_dir)
    max_prompt, max_len_cap = int(cfg["max_prompt_bytes"]), int(cfg["max_length_cap"])

    def run_choices(current: str) -> list[str]:
        if not cfg["run_menu"]:  # serve this one run and nothing else on the disk
            return [current]
        found = [str(p) for p in find_runs(cfg.get("runs_root") or "outputs")]
        return found if current in found else [current, *found]

    def select_run(choice: str | None, current: str) -> tuple[str, str, str]:
        """Switch this session to ``choice``; on failure say why and keep ``current``."""
        if not choice or choice == current:
            return current, run_panel(cache.get(current)), current
        try:
            run = cache.get(choice)
        except LFByteError as e:
            warning = f"**Could not load** `{choice}`: {e}\n\nStill serving `{current}`.\n\n---\n\n"
            return current, warning + run_panel(cache.get(current)), current
        return choice, run_panel(run), choice

    def refresh(current: str) -> Any:
        return gr.update(choices=run_choices(current), value=current)

    def generate(
        prompt: str | None,
        max_length: float | None,
        temperature: float | None,
        top_k: float | None,
        top_p: float | None,
        seed: float | None,
        current: str,
    ) -> Iterator[str]:
        prompt = prompt or ""
        n_bytes = len(prompt.encode("utf-8", errors="surrogatepass"))
        if n_bytes > max_prompt:
            raise _user_error(f"The prompt is {n_bytes} bytes; this app accepts at most {max_prompt} "
                              "(app config max_prompt_bytes).")
        length = _whole(max_length, "Max Length", cfg["default_max_length"])
        k, seed_ = _whole(top_k, "top-k", 0), _whole(seed, "Seed", -1)
        if not 1 <= length <= max_len_cap:
            raise _user_error(f"Max Length must be between 1 and {max_len_cap} (app config max_length_cap).")
        try:
            run = cache.get(current)
            text = ""
            for piece in stream_text(
                run.model,
                prompt,
                length,
                float(cfg["default_temperature"] if temperature is None else temperature),
                k or None,  # 0 = off
                float(top_p) if top_p is not None and not top_p >= 1 else None,  # 1 = off; NaN is refused below
                seed_ if seed_ >= 0 else None,  # negative = a fresh seed
            ):
                text += piece
                yield text
        except LFByteError as e:
            raise _user_error(str(e)) from None
        except Exception as e:  # keep serving; the operator gets the traceback in the server log
            traceback.print_exc()
            raise _user_error(f"Generation failed ({type(e).__name__}: {e}); see the server log.") from None

    with gr.Blocks(title="lfbyte", analytics_enabled=False) as demo:
        current = gr.State(run_dir)
        gr.Markdown("# lfbyte — sample from a byte-level model")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=4, placeholder="Once upon a time", elem_id="prompt")
                with gr.Row():
                    max_length = gr.Slider(1, max_len_cap, value=min(int(cfg["default_max_length"]), max_len_cap),
                                           step=1, label="Max Length", info="bytes to generate")
                    temperature = gr.Slider(0.0, 2.0, value=float(cfg["default_temperature"]), step=0.05,
                                            label="Temperature", info="0 = greedy")
                with gr.Accordion("Sampling", open=False):
                    with gr.Row():
                        top_k = gr.Slider(0, 256, value=0, step=1, label="Top-k", info="0 = off")
                        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p", info="1 = off")
                        seed = gr.Number(-1, label="Seed", info="-1 = random", precision=0)
                submit = gr.Button("Submit", variant="primary", elem_id="submit")
                output = gr.Textbox(label="Generated text", lines=12, interactive=False, elem_id="output")
            with gr.Column(scale=2):
                with gr.Row():
                    run_menu = gr.Dropdown(run_choices(run_dir), value=run_dir, label="Run", scale=5)
                    rescan = gr.Button("↻", scale=1, min_width=40)
                panel = gr.Markdown(run_panel(first, note), label="Run details", elem_id="run-panel")

        inputs = [prompt, max_length, temperature, top_k, top_p, seed, current]
        submit.click(generate, inputs, output, api_name="generate")
        run_menu.change(select_run, [run_menu, current], [run_menu, panel, current], api_name="select_run")
        rescan.click(refresh, current, run_menu, api_visibility="private")
    demo.queue(default_concurrency_limit=int(cfg["concurrency_limit"]), max_size=int(cfg["max_queue"]))
    return demo


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
        raise ConfigError(f"server_name={host} does not resolve ({getattr(e, 'strerror', None) or e}); "
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
