"""Load a trained run and sample bytes from it, one cached step per byte.

Python::

    from lfbyte import generate_text, load_run             # load_run lives in lfbyte.runs
    run = load_run("outputs/runs/2026-11-27_21-05-09")       # newest checkpoint, cpu or cuda
    print(generate_text(run.model, "Once upon a time", max_length=200, temperature=0.8))

Command line (Hydra overrides, like ``lfbyte.train``)::

    python -m lfbyte.generate run_dir=outputs/runs/<ts> prompt="Once upon a time" max_length=200 temperature=0.8

Decoding feeds each new byte through the model's per-layer decode state (conditioner
window, token-mixing state or KV cache, position) instead of re-running the context.
Model positions must stay below ``seq_len``, so a :class:`Decoder` slides its window:
see :class:`Decoder` for the exact policy.
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .cli import hydra_cli, one_line_errors
from .config import check_threads, is_int, is_number, to_plain
from .distributed import is_sharded
from .errors import ConfigError, LFByteError
from .model.byte_lm import BYTE_VOCAB, SEPARATOR
from .runs import Run, describe_run, latest_run, load_run


class GenerationError(LFByteError, ValueError):
    """Bad generation arguments or a model that cannot be sampled from."""


# ----------------------------------------------------------------------------- decoding


class Decoder:
    """Feeds tokens to a model and returns next-token logits, keeping positions ``< seq_len``.

    **Sliding-window policy.** The model always sees a *window*: a suffix of every token fed so
    far. New tokens are appended while the window stays within ``seq_len``. When appending
    would make it longer, the window restarts as the last ``keep`` tokens (default
    ``seq_len // 2``, counting the new ones) and is re-prefilled in one forward pass; decoding
    then continues incrementally from that state. Keeping half the window amortises the
    prefill over ``seq_len - keep`` cheap steps while always leaving ``keep`` bytes of context.

    With ``use_cache=True`` each step runs only the new tokens through the cached per-layer
    state; with ``use_cache=False`` each step re-runs the whole window (the reference the
    cache must reproduce, and the baseline of ``python -m lfbyte.bench.decode``). Both give,
    at every step, the logits of a full forward pass over :attr:`window`.

    ``compile=True`` runs each cached one-byte step through ``torch.compile(fullgraph=True)`` of the
    model, with the position kept as a device tensor so one graph serves every position; on CUDA the
    step is captured as a CUDA graph (``mode="reduce-overhead"``), which removes the per-kernel launch
    cost that bounds decoding there. Only for models whose decode state has a fixed size
    (``model.fixed_size_state``: LFByteTransformer; a GPT's KV cache grows every byte). The first step
    pays the compilation (tens of seconds on a CPU), once per model and process. On a CPU it does not
    pay off (``python -m lfbyte.bench.decode compile=true``): decoding one byte there is bound by
    streaming the active weights, which compilation leaves to the same matrix-vector kernels.
    """

    def __init__(
        self, model: nn.Module, keep: int | None = None, use_cache: bool = True, compile: bool = False
    ) -> None:
        self.model = model
        self.seq_len = int(model.config.seq_len)
        self.keep = max(1, self.seq_len // 2) if keep is None else keep  # seq_len 1: one byte of context
        if not is_int(self.keep, 1, self.seq_len):
            raise GenerationError(f"keep={keep!r} must be an integer between 1 and the model's seq_len={self.seq_len}")
        self.use_cache = use_cache
        if compile and not (use_cache and getattr(model, "fixed_size_state", False)):
            raise GenerationError(f"compile=True needs use_cache=True and a model with a fixed-size decode state "
                                  f"(LFByteTransformer), not {type(model).__name__} with use_cache={use_cache}")
        self.step = _compiled_step(model) if compile else None
        self.device = next(model.parameters()).device
        self.window: list[int] = []
        self.state: Any = None
        self.prefills = 0  # full-window forward passes (the first prefill and every slide)

    def _forward(self, tokens: Sequence[int], state: Any) -> Any:
        idx = torch.tensor([tokens], dtype=torch.long, device=self.device)
        return self.model(idx, state=state, use_cache=self.use_cache)

    def feed(self, tokens: Sequence[int]) -> Tensor:
        """Append ``tokens`` (ids in ``[0, vocab)``) and return the logits after the last one, shape (vocab,)."""
        # inference_mode is faster, but the buffers an FSDP-sharded model gathers its parameters into would
        # become inference tensors that training can no longer write (seen with torch 2.13)
        with torch.no_grad() if is_sharded(self.model) else torch.inference_mode():
            return self._feed(tokens)

    def _feed(self, tokens: Sequence[int]) -> Tensor:
        tokens = list(tokens)
        if not tokens:
            raise GenerationError("feed() needs at least one token")
        if len(self.window) + len(tokens) > self.seq_len:  # slide: re-prefill the last `keep` tokens
            self.window = (self.window + tokens)[-self.keep :]
            self.prefills += 1
            out = self._forward(self.window, None)
        elif self.step is not None and self.state is not None and len(tokens) == 1:
            if not isinstance(self.state.pos, Tensor):  # after a prefill: one graph for every position
                self.state.pos = torch.tensor(self.state.pos, device=self.device)
            if self.device.type == "cuda":  # the previous step's outputs are this step's inputs
                torch.compiler.cudagraph_mark_step_begin()
            out = self.step(torch.tensor([tokens], dtype=torch.long, device=self.device), state=self.state)
            self.window += tokens
            self.state = out.state
            # a CUDA graph's outputs are overwritten by its next replay: the caller keeps its own logits
            return out.logits[0, -1].clone()
        elif self.use_cache:
            if not self.window:
                self.prefills += 1
            out = self._forward(tokens, self.state)
            self.window += tokens
        else:
            self.window += tokens
            self.prefills += 1
            out = self._forward(self.window, None)
        self.state = out.state
        return out.logits[0, -1]


def _compiled_step(model: nn.Module) -> Callable:
    """One compiled one-byte step per model and process (the compilation is the expensive part), kept on the
    model itself: the compiled wrapper references the model, so a cache keyed by it would never let it go.
    On CUDA, CUDA graphs (one replay per byte) and graph breaks allowed: fla's fused kernels have not been
    traced by torch.compile here (no GPU); on the CPU the whole step is one graph."""
    step = model.__dict__.get("_compiled_decode_step")  # __dict__: not registered as a submodule
    if step is None:
        cuda = next(model.parameters()).device.type == "cuda"
        step = torch.compile(model, fullgraph=not cuda, dynamic=False, mode="reduce-overhead" if cuda else None)
        model.__dict__["_compiled_decode_step"] = step
    return step


def sample_byte(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Sample a byte value 0..255 from next-token logits; the separator and any other
    non-byte tokens are never sampled. ``temperature=0`` is greedy (argmax)."""
    logits = logits[:BYTE_VOCAB].detach().float().cpu()
    if torch.isnan(logits).any():
        raise GenerationError("the model produced NaN logits; the checkpoint is probably diverged (try an earlier one)")
    if temperature == 0:
        return int(logits.argmax())
    # shift so the best byte is 0, then scale in float64: a tiny temperature sends the others to -inf
    # (greedy in the limit) instead of overflowing to inf - inf = NaN
    logits = (logits.double() - logits.max()) / temperature
    if top_k is not None and top_k < BYTE_VOCAB:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # mass before this byte already reaches top_p
        logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, -torch.inf))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def _check_args(
    max_length: int, temperature: float, top_k: int | None, top_p: float | None, seed: int | None = None
) -> None:
    problems = []
    if not is_int(max_length, 0):
        problems.append(f"max_length={max_length!r} must be an integer >= 0")
    if not is_number(temperature) or temperature < 0:
        problems.append(f"temperature={temperature!r} must be a finite number >= 0 (0 = greedy)")
    if top_k is not None and not is_int(top_k):
        problems.append(f"top_k={top_k!r} must be null or an integer >= 1")
    if top_p is not None and (not is_number(top_p) or not 0 < top_p <= 1):
        problems.append(f"top_p={top_p!r} must be null or in (0, 1]")
    if seed is not None:
        try:  # the rule is what torch accepts: 64 bits
            torch.Generator().manual_seed(int(seed))
        except (TypeError, ValueError, OverflowError, RuntimeError):
            problems.append(f"seed={seed!r} must be null or an integer that fits in 64 bits")
    if problems:
        raise GenerationError("; ".join(problems))


def check_sampling(model: nn.Module, max_length: int, prompt: str | bytes = "") -> None:
    """What sampling ``max_length`` bytes after ``prompt`` needs from ``model`` (built on any device,
    ``meta`` included), checked without running it: the trainer's samples fail before training, not after."""
    _check_args(max_length, 0.8, None, None, 0)
    _as_bytes(prompt)
    Decoder(model)


def _as_bytes(start_sequence: str | bytes | bytearray | None) -> bytes:
    if start_sequence is None:
        return b""
    if isinstance(start_sequence, str):
        return start_sequence.encode("utf-8", errors="surrogatepass")
    if isinstance(start_sequence, (bytes, bytearray, memoryview)):
        return bytes(start_sequence)
    raise GenerationError(f"start_sequence must be str or bytes, not {type(start_sequence).__name__}")


def _as_model(model: nn.Module | Run) -> nn.Module:
    return model.model if isinstance(model, Run) else model


def iter_bytes(
    model: nn.Module | Run,
    start_sequence: str | bytes = b"",
    max_length: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    *,
    keep: int | None = None,
    use_cache: bool = True,
    compile: bool = False,
    document_start: bool = True,
) -> Iterator[int]:
    """Yield ``max_length`` sampled byte values continuing ``start_sequence``.

    ``document_start`` puts the separator token before the prompt, as every training
    document begins with it; this also gives an empty prompt something to condition on.
    ``seed`` makes sampling reproducible (same model, same device); ``None`` draws a fresh seed.
    """
    model = _as_model(model)
    _check_args(max_length, temperature, top_k, top_p, seed)
    temperature, top_p = float(temperature), None if top_p is None else float(top_p)  # 10**24 is a number, not a tensor
    prompt = list(_as_bytes(start_sequence))
    tokens = ([SEPARATOR] if document_start else []) + prompt
    if max_length == 0:
        return
    if not tokens:
        raise GenerationError("empty prompt with document_start=False: give at least one byte to continue")
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    was_training = model.training
    model.eval()
    try:
        decoder = Decoder(model, keep=keep, use_cache=use_cache, compile=compile)
        logits = decoder.feed(tokens)
        for i in range(max_length):
            byte = sample_byte(logits, temperature, top_k, top_p, generator)
            yield byte
            if i + 1 < max_length:
                logits = decoder.feed([byte])
    finally:
        model.train(was_training)


def generate_bytes(model: nn.Module | Run, start_sequence: str | bytes = b"", max_length: int = 100, **kwargs: Any) -> bytes:
    """The ``max_length`` bytes that follow ``start_sequence`` (raw: any data, not only text)."""
    return bytes(iter_bytes(model, start_sequence, max_length, **kwargs))


def stream_text(
    model: nn.Module | Run,
    start_sequence: str | bytes = "",
    max_length: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    *,
    include_prompt: bool = True,
    **kwargs: Any,
) -> Iterator[str]:
    """Yield text as bytes arrive: the prompt first (when ``include_prompt``), then each piece
    of the continuation as soon as it forms complete UTF-8 characters.

    Decoding never raises: invalid bytes become U+FFFD, and a character still incomplete
    when generation stops becomes one U+FFFD. The pieces joined equal
    ``(prompt + continuation).decode("utf-8", errors="replace")`` (minus the prompt's text
    when ``include_prompt=False``).
    """
    prompt = _as_bytes(start_sequence)
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    head = utf8.decode(prompt)  # primes the decoder: the continuation may finish a split character
    if include_prompt and head:
        yield head
    for byte in iter_bytes(model, prompt, max_length, temperature, top_k, top_p, seed, **kwargs):
        if piece := utf8.decode(bytes((byte,))):
            yield piece
    if tail := utf8.decode(b"", final=True):
        yield tail


def generate_text(
    model: nn.Module | Run,
    start_sequence: str | bytes = "",
    max_length: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> str:
    """The prompt followed by ``max_length`` generated bytes, decoded as UTF-8 (never raises on
    bad bytes). ``temperature=0`` is greedy; ``top_k``/``top_p`` truncate the distribution;
    ``seed`` makes it reproducible. Keyword options: ``include_prompt``, ``keep`` (sliding
    window), ``use_cache``, ``compile``, ``document_start``; see :func:`stream_text` and :class:`Decoder`."""
    return "".join(stream_text(model, start_sequence, max_length, temperature, top_k, top_p, seed, **kwargs))


# ----------------------------------------------------------------------------- CLI


def _prompt_text(value: Any) -> str:
    # Hydra parses unquoted values: prompt=42 arrives as an int, prompt= (empty) as None.
    return "" if value is None else str(value)


def run_cli(cfg: dict[str, Any]) -> None:
    # every argument is checked before the (slow) load
    check_threads(cfg.get("num_threads"))
    if cfg.get("num_threads"):
        torch.set_num_threads(cfg["num_threads"])
    _check_args(cfg["max_length"], cfg["temperature"], cfg.get("top_k"), cfg.get("top_p"), cfg.get("seed"))
    if cfg.get("keep") is not None and not is_int(cfg["keep"]):
        raise GenerationError(f"keep={cfg['keep']!r} must be null (seq_len // 2) or an integer >= 1")
    if not isinstance(cfg["include_prompt"], bool):
        raise ConfigError(f"include_prompt={cfg['include_prompt']!r} must be true or false")
    run_dir = cfg.get("run_dir")
    if not run_dir:
        run_dir = latest_run(cfg.get("runs_root") or "outputs")
        print(f"run_dir not given; using the newest run: {run_dir}", file=sys.stderr, flush=True)
    run = load_run(run_dir, cfg.get("checkpoint") or "last", cfg.get("device"))
    print(describe_run(run), file=sys.stderr, flush=True)
    pieces = stream_text(
        run.model,
        _prompt_text(cfg.get("prompt")),
        cfg["max_length"],
        cfg["temperature"],
        cfg.get("top_k"),
        cfg.get("top_p"),
        cfg.get("seed"),
        keep=cfg.get("keep"),
        include_prompt=cfg["include_prompt"],
    )
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def _hydra_entry(cfg: Any) -> None:
    with one_line_errors():
        run_cli(to_plain(cfg))


def main() -> None:
    """``python -m lfbyte.generate [key=value ...]``; Hydra is imported only for the CLI."""
    hydra_cli("generate", _hydra_entry, flat=True)


if __name__ == "__main__":
    main()
