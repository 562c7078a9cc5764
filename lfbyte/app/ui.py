"""The page: two runs sampled side by side, byte-honest views, the Run menus, the panel and the curves.

Endpoints (``gradio_client``: ``Client(url).predict(..., api_name="/sample")``):

- ``/sample(prompt, max_length, temperature, top_k, top_p, seed)`` -> (text A, escaped A, stats A, text B,
  escaped B, stats B): the Submit button; runs A and B continue the prompt with the same seed (-1: one fresh
  seed for both, shown in the stats), streamed. ``job.cancel()`` is the Stop button.
- ``/generate(prompt, max_length, temperature, top_k, top_p, seed)`` -> text of run A (API only).
- ``/select_run(run)``, ``/select_run_b(run)`` -> (menu value, panel): a run from the menu by its name
  relative to ``runs_root``; ``""`` for B is none.
- ``/curves()`` -> (bits/byte against step, against wall-clock) of the selected runs.

Both generation endpoints share one concurrency group, so ``concurrency_limit`` counts generations.
"""

from __future__ import annotations

import secrets
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import is_number
from ..errors import LFByteError
from ..generate import stream_text
from .records import COLORS, RunCache, curves, menu_entries, model_name, panel, read_record, run_name, run_paths
from .sampling import ESCAPES_LEGEND, Pane, take_turns

NONE = ""  # Run B's menu value for "no second run"
NO_B = "**B** — choose Run B to sample it beside A, from the same prompt and seed"
GENERATION = "generation"  # the concurrency group of every endpoint that samples

CSS = """
.mono textarea { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace !important; }
body:not(.lfbyte-escapes) .escaped-view, body.lfbyte-escapes .plain-view { display: none !important; }
#run-panel td:first-child { white-space: nowrap; }
"""
# Client-side only: no request, so it answers at once even while the queue is busy.
ESCAPES_JS = "(on) => { document.body.classList.toggle('lfbyte-escapes', !!on); return []; }"


def limits_js(max_prompt: int, cap: int) -> str:
    """The byte counter under the prompt, with both caps, updated as the user types (no request)."""
    return f"""(prompt, n) => {{
  const fmt = (x) => x.toLocaleString('en-US');
  const bytes = new TextEncoder().encode(prompt || '').length;
  const p = bytes > {max_prompt}
    ? `⚠ **${{fmt(bytes)}} / {max_prompt:,} bytes** in the prompt: over the limit, Submit will be refused`
    : `**${{fmt(bytes)}}** / {max_prompt:,} bytes in the prompt`;
  const ok = typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= {cap};
  const m = ok ? `up to **${{fmt(n)}}** / {cap:,} bytes to generate`
    : `⚠ Max Length **${{n}}**: a whole number from 1 to {cap:,} (the cap), or Submit will be refused`;
  return p + ' · ' + m;
}}"""


def user_error(message: str) -> Exception:
    import gradio as gr

    return gr.Error(message, print_exception=False)


def _whole(value: Any, label: str, default: int) -> int:
    """A number input that must be an integer: 16.0 is 16; 0.5, NaN or 'abc' is the user's error."""
    if value is None:
        return int(default)
    if is_number(value) and float(value).is_integer():
        return int(value)
    raise user_error(f"{label} must be a whole number, not {value!r}.")


def build_app(cfg: dict[str, Any], cache: RunCache, run_dir: str, note: str = "") -> Any:
    """The Blocks app, first serving ``run_dir`` from ``cache``. ``cfg``: conf/app.yaml as a dict."""
    import gradio as gr

    max_prompt, cap = int(cfg["max_prompt_bytes"]), int(cfg["max_length_cap"])
    root = Path(cfg.get("runs_root") or "outputs")

    menu = bool(cfg["run_menu"])  # false: serve this one run and nothing else on the disk

    def entries(current: str) -> list[tuple[str, str]]:
        """The Run menu's (label, name) choices."""
        return [(e.label, e.value) for e in menu_entries(root, current, menu)]

    def value_of(path: str | None) -> str:
        return run_name(path, root) if path else NONE

    first = cache.get(run_dir)

    def shown(current: str, current_b: str | None) -> list[tuple[str, str, Any, Any]]:
        """(pane, menu value, run, record) of the selected runs."""
        out = []
        for name, path in (("A", current), ("B", current_b)):
            if path:
                run = cache.get(path)
                out.append((name, value_of(path), run, read_record(path, run.config)))
        return out

    def head(name: str, path: str) -> str:
        run = cache.get(path)
        bpb = run.metrics.get("val_bpb")
        return (f"**{name}** `{value_of(path)}` · {model_name(run.config)} · val "
                f"{f'{bpb:.3f}' if is_number(bpb) else 'n/a'} bits/byte")

    def select(choice: str | None, current: str | None, other: str | None, pane: str) -> tuple[str, str, str | None]:
        """Switch pane ``pane`` of this session to ``choice``; on failure say why and keep ``current``."""
        a, b = (current, other) if pane == "A" else (other, current)
        keep = value_of(current) if current else NONE
        if (choice or NONE) == keep:
            return keep, panel(shown(a, b)), current
        if pane == "B" and not choice:
            return NONE, panel(shown(a, None)), None
        path = run_paths(root, run_dir, menu).get(str(choice))  # only a run the menu lists, never any folder
        try:
            if path is None:  # listed when the page loaded, gone since
                raise LFByteError(f"{choice} is no longer a run under {root}; press Rescan runs")
            cache.get(path)
        except LFByteError as e:
            warning = f"**Could not load** `{choice}`: {e}\n\nStill showing `{keep or 'no run'}`.\n\n---\n\n"
            return keep, warning + panel(shown(a, b)), current
        a, b = (path, b) if pane == "A" else (a, path)
        return str(choice), panel(shown(a, b)), path

    def select_a(choice: str | None, current: str, current_b: str | None) -> tuple[str, str, str]:
        return select(choice, current, current_b, "A")

    def select_b(choice: str | None, current_b: str | None, current: str) -> tuple[str, str, str | None]:
        return select(choice, current_b, current, "B")

    def b_choices(choices: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [("none", NONE), *(choices if menu else [])]  # run_menu=false: no second run

    def menus(current: str, current_b: str | None) -> tuple[Any, Any]:
        choices = entries(current)
        return (gr.update(choices=choices, value=value_of(current)),
                gr.update(choices=b_choices(choices), value=value_of(current_b) if current_b else NONE))

    def plots(current: str, current_b: str | None) -> tuple[Any, Any]:
        return curves([(name, rec) for name, _, _, rec in shown(current, current_b)])

    def reset_pane(name: str, path: str | None, shown_run: str | None) -> tuple[Any, Any, Any, str | None]:
        """After a switch, clear the pane that held another run's sample (a failed switch clears nothing)."""
        if path == shown_run:
            return gr.update(), gr.update(), gr.update(), shown_run
        return "", "", head(name, path) if path else NO_B, path

    def request(prompt: str | None, max_length: Any, top_k: Any, seed: Any) -> tuple[bytes, int, int, int]:
        """The request's limits, checked before anything runs: (prompt bytes, length, top-k, seed)."""
        data = (prompt or "").encode("utf-8", errors="surrogatepass")
        if len(data) > max_prompt:
            raise user_error(f"The prompt is {len(data)} bytes; this app accepts at most {max_prompt} "
                             "(app config max_prompt_bytes).")
        length = _whole(max_length, "Max Length", cfg["default_max_length"])
        k, seed_ = _whole(top_k, "top-k", 0), _whole(seed, "Seed", -1)
        if not 1 <= length <= cap:
            raise user_error(f"Max Length must be between 1 and {cap} (app config max_length_cap); "
                             f"{length} was asked for.")
        return data, length, k, seed_

    def temperature_of(value: Any) -> float:
        return float(cfg["default_temperature"] if value is None else value)

    def top_p_of(value: Any) -> float | None:
        return float(value) if value is not None and not value >= 1 else None  # 1 = off; NaN is refused later

    def generate(prompt: str | None, max_length: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any,
                 current: str) -> Iterator[str]:
        """Run A alone, streamed as text (the API of earlier versions, kept for scripts)."""
        data, length, k, seed_ = request(prompt, max_length, top_k, seed)
        try:
            text = ""
            for piece in stream_text(cache.get(current).model, data, length, temperature_of(temperature), k or None,
                                     top_p_of(top_p), seed_ if seed_ >= 0 else None):
                text += piece
                yield text
        except LFByteError as e:
            raise user_error(str(e)) from None
        except Exception as e:  # keep serving; the operator gets the traceback in the server log
            traceback.print_exc()
            raise user_error(f"Generation failed ({type(e).__name__}: {e}); see the server log.") from None

    def sample(prompt: str | None, max_length: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any,
               current: str, current_b: str | None) -> Iterator[tuple[str, ...]]:
        """Runs A and B (when chosen) continue the prompt with one seed, streamed into their panes."""
        data, length, k, seed_ = request(prompt, max_length, top_k, seed)
        if seed_ < 0:  # one fresh seed for both, shown, so the pair can be sampled again
            seed_ = secrets.randbelow(2**31)
        try:
            panes = [Pane.start(name, head(name, path), cache.get(path).model, data, length,
                                temperature_of(temperature), k or None, top_p_of(top_p), seed_)
                     for name, path in (("A", current), ("B", current_b)) if path]
        except LFByteError as e:
            raise user_error(str(e)) from None
        empty_b = ("", "", NO_B) if len(panes) == 1 else ()
        for _ in take_turns(panes):
            a = panes[0]
            if a.error and not a.generated:  # nothing sampled at all: the request, or run A, is at fault
                raise user_error(a.error)
            yield tuple(v for p in panes for v in p.views()) + empty_b

    with gr.Blocks(title="lfbyte", analytics_enabled=False) as demo:
        current = gr.State(run_dir)
        current_b = gr.State(None)
        in_a, in_b = gr.State(run_dir), gr.State(None)  # the run whose sample each pane holds
        gr.Markdown("# lfbyte — a bench for byte-level models\nSample two runs side by side from one prompt and "
                    "seed; read their bytes as they are; compare their training.")
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Once upon a time", elem_id="prompt",
                                    info=f"UTF-8 text, at most {max_prompt:,} bytes")
                limits = gr.Markdown(elem_id="limits")
                with gr.Row():
                    # a number box, not a slider: a slider silently clamps a typed 5000 to the cap
                    max_length = gr.Number(min(int(cfg["default_max_length"]), cap), minimum=1, label="Max Length",
                                           info=f"bytes to generate, 1 to {cap:,}", elem_id="max-length")
                    temperature = gr.Slider(0.0, 2.0, value=float(cfg["default_temperature"]), step=0.05,
                                            label="Temperature", info="0 = greedy")
                    seed = gr.Number(-1, label="Seed", info="-1 = a fresh one, shown after sampling", precision=0,
                                     elem_id="seed")
                with gr.Accordion("Truncation", open=False):
                    with gr.Row():
                        top_k = gr.Slider(0, 256, value=0, step=1, label="Top-k", info="0 = off")
                        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p", info="1 = off")
                with gr.Row():
                    submit = gr.Button("Submit", variant="primary", elem_id="submit")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Column(scale=2):
                choices = entries(run_dir)
                run_a = gr.Dropdown(choices, value=value_of(run_dir),
                                    label="Run A", info=f"runs under {root}/, newest first; sweeps together",
                                    elem_id="run-a")
                run_b = gr.Dropdown(b_choices(choices), value=NONE,
                                    label="Run B", info="sampled beside A from the same prompt and seed",
                                    elem_id="run-b", visible=menu)
                rescan = gr.Button("↻ Rescan runs", size="sm", elem_id="rescan", visible=menu)
        escapes = gr.Checkbox(False, label="Show bytes as escapes", info=ESCAPES_LEGEND, elem_id="escapes")
        with gr.Row(equal_height=True):
            outputs = []
            for name, path in (("A", run_dir), ("B", None)):
                suffix = name.lower()
                with gr.Column(visible=name == "A" or menu):
                    stats = gr.Markdown(head(name, path) if path else NO_B, label=f"{name}: stats",
                                        elem_id=f"stats-{suffix}")
                    plain = gr.Textbox(label=f"{name}: text", lines=12, max_lines=30, interactive=False,
                                       elem_id=f"output-{suffix}", elem_classes=["mono", "plain-view"],
                                       buttons=["copy"])
                    escaped = gr.Textbox(label=f"{name}: bytes, escaped", lines=12, max_lines=30, interactive=False,
                                         elem_id=f"escaped-{suffix}", elem_classes=["mono", "escaped-view"],
                                         buttons=["copy"])
                outputs += [plain, escaped, stats]
        with gr.Row():
            with gr.Column(scale=1):
                details = gr.Markdown(panel(shown(run_dir, None), note), label="Run details", elem_id="run-panel")
            with gr.Column(scale=1):
                by_step, by_time = curves([("A", read_record(run_dir, first.config))])
                plot_kw = dict(y="bits_per_byte", color="series", y_title="bits/byte", color_map=COLORS, height=320)
                plot_step = gr.LinePlot(by_step, x="step", title="Learning curves", label="bits/byte by step",
                                        elem_id="curve-step", **plot_kw)
                plot_time = gr.LinePlot(by_time, x="seconds", x_title="wall-clock (s)", label="bits/byte by wall-clock",
                                        elem_id="curve-time", **plot_kw)

        inputs = [prompt, max_length, temperature, top_k, top_p, seed]
        run = submit.click(sample, [*inputs, current, current_b], outputs, api_name="sample",
                           concurrency_id=GENERATION)
        # cancelled from the browser at once, queued or streaming; the panes keep what arrived, and their
        # stats say how far each got ("n of N bytes")
        stop.click(None, cancels=[run])
        # API only (no button): a hidden trigger, so Gradio still checks each input against its component
        gr.Button(visible=False).click(generate, [*inputs, current], gr.Textbox(label="text", visible=False),
                                       api_name="generate", concurrency_id=GENERATION)
        escapes.change(None, escapes, None, js=ESCAPES_JS)
        limits_script = limits_js(max_prompt, cap)
        for box in (prompt, max_length):
            box.change(None, [prompt, max_length], limits, js=limits_script)
        demo.load(None, [prompt, max_length], limits, js=limits_script)

        for name, box, state, other, fn, pane, held in (
            ("A", run_a, current, current_b, select_a, outputs[:3], in_a),
            ("B", run_b, current_b, current, select_b, outputs[3:], in_b),
        ):
            # .input, not .change: a menu set back by a failed switch, a rescan or a page load selects nothing
            api = "select_run" if name == "A" else "select_run_b"
            switched = box.input(fn, [box, state, other], [box, details, state], api_name=api)
            switched.then(plots, [current, current_b], [plot_step, plot_time],
                          **({"api_name": "curves"} if name == "A" else {"api_visibility": "private"}))
            switched.then(lambda path, was, n=name: reset_pane(n, path, was), [state, held], [*pane, held],
                          api_visibility="private")
        rescan.click(menus, [current, current_b], [run_a, run_b], api_visibility="private")
        demo.load(menus, [current, current_b], [run_a, run_b], api_visibility="private")  # runs trained since start
    demo.queue(default_concurrency_limit=int(cfg["concurrency_limit"]), max_size=int(cfg["max_queue"]))
    return demo
