"""``python -m lfbyte.app`` under load, hostile requests and bad command lines: every request gets
text or one clear message, the server keeps serving, it serves no file from the disk, and a bad
start is one ``error:`` line with exit code 2.

A real server on loopback (``conf/app.yaml`` as shipped unless a test says otherwise), driven by
gradio_client and plain urllib. The run it serves is an untrained tiny model (no training needed).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from lfbyte.checkpoint import save_checkpoint
from lfbyte.config import CONF_DIR
from lfbyte.model import build_model

from .conftest import REPO, run_cli, serve_app

TINY = {"arch": "lfbyte", "seq_len": 32, "embed_dim": 32, "num_layers": 1, "num_heads": 2, "adapt_dim": 8,
        "adapt_rank": 4, "chunk_size": 8, "num_experts": 2, "top_k": 1}
APP_CFG = yaml.safe_load(Path(CONF_DIR, "app.yaml").read_text())
APP_OPTIONS = [k for k in APP_CFG if k not in ("defaults", "hydra")]
SECRET = "lfbyte-secret-token-3141592653"
CLIENTS = 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/runs/tiny``: config.yaml and checkpoints/ as training leaves them; ``<root>/secret.txt``
    is a file the app must never hand out."""
    root = tmp_path_factory.mktemp("app-errors")
    run = root / "runs" / "tiny"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": TINY}))
    save_checkpoint({"model_state_dict": build_model(TINY).state_dict(), "config": {"model": TINY},
                     "trainer_state": {"step": 1}}, run / "checkpoints", step=1, keep_last=1)
    (root / "secret.txt").write_text(SECRET)
    return run


@pytest.fixture(scope="module")
def gradio_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the server's Gradio would store uploaded files (``GRADIO_TEMP_DIR``)."""
    return tmp_path_factory.mktemp("gradio-tmp")


@pytest.fixture(scope="module")
def app_url(run_dir: Path, gradio_tmp: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("app-log") / "server.log"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(gradio_tmp))
        with serve_app(log, f"run_dir={run_dir}", f"runs_root={run_dir.parent}") as url:
            yield url


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def _generate(client, prompt: object = "Once", max_length: object = 16, temperature: object = 0.8,
              top_k: object = 0, top_p: object = 1.0, seed: object = 1) -> str:
    return client.predict(prompt, max_length, temperature, top_k, top_p, seed, api_name="/generate")


# ------------------------------------------------------------------------------ load


def test_twenty_concurrent_clients_all_get_text_and_the_app_keeps_serving(app_url: str) -> None:
    """conf/app.yaml runs one generation at a time and queues up to ``max_queue`` (32) more: 20 users at
    once all wait their turn and get their text, none is turned away (see the overflow test below)."""
    assert APP_CFG["concurrency_limit"] == 1 and APP_CFG["max_queue"] >= CLIENTS
    clients = [_client(app_url) for _ in range(CLIENTS)]  # 20 sessions, connected before the burst
    start = threading.Barrier(CLIENTS, timeout=60)

    def user(i: int) -> tuple[str, float]:
        start.wait()
        t0 = time.monotonic()
        job = clients[i].submit(f"user {i}:", 16, 0.8, 0, 1.0, i, api_name="/generate")
        return job.result(timeout=100), time.monotonic() - t0

    t0 = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(user, i) for i in range(CLIENTS)]
        results = [f.result(timeout=120 - (time.monotonic() - t0)) for f in futures]
    wall = time.monotonic() - t0
    print(f"\n{CLIENTS} concurrent /generate requests (16 bytes each): all done in {wall:.2f} s wall; "
          f"slowest request {max(r[1] for r in results):.2f} s, fastest {min(r[1] for r in results):.2f} s")
    for i, (text, _) in enumerate(results):
        assert isinstance(text, str) and text.startswith(f"user {i}:") and len(text) > len(f"user {i}:")
    assert wall < 120
    assert _generate(_client(app_url), "after the burst", 8).startswith("after the burst")


def test_a_full_queue_turns_requests_away_with_a_message_and_keeps_serving(run_dir: Path, tmp_path: Path) -> None:
    """With ``max_queue=2``, while one long generation runs, 2 of 6 new requests wait and 4 are told
    the queue is full; then the server serves again."""
    from gradio_client.utils import QueueError

    with serve_app(tmp_path / "server.log", f"run_dir={run_dir}", f"runs_root={run_dir.parent}", "max_queue=2") as url:
        clients = [_client(url) for _ in range(7)]
        long = clients[0].submit("long", int(APP_CFG["max_length_cap"]), 0.8, 0, 1.0, 1, api_name="/generate")
        deadline = time.monotonic() + 60
        while long.status().code.name not in ("PROCESSING", "ITERATING"):
            assert time.monotonic() < deadline, long.status()
            time.sleep(0.02)
        jobs = [c.submit(f"short {i}", 8, 0.8, 0, 1.0, i, api_name="/generate") for i, c in enumerate(clients[1:])]
        served, refused = [], []
        for job in jobs:
            try:
                served.append(job.result(timeout=100))
            except QueueError as e:
                refused.append(str(e))
        assert len(served) == 2 and all(s.startswith("short ") for s in served)
        assert refused == ["Queue is full! Please try again."] * 4
        assert long.result(timeout=100).startswith("long")
        assert _generate(_client(url), "again", 4).startswith("again")


# ------------------------------------------------------------------------------ files


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", errors="replace")


def test_the_app_serves_no_file_from_the_disk(app_url: str, run_dir: Path) -> None:
    base = app_url.rstrip("/")
    passwd = Path("/etc/passwd").read_text() if Path("/etc/passwd").is_file() else "root:"
    readme = (REPO / "README.md").read_text()
    secret = run_dir.parent.parent / "secret.txt"
    cases = {
        "/gradio_api/file=/etc/passwd": passwd,
        "/file=/etc/passwd": passwd,
        "/gradio_api/file//etc/passwd": passwd,
        "/gradio_api/file=%2Fetc%2Fpasswd": passwd,
        "/gradio_api/file=../../../../../../../../etc/passwd": passwd,
        f"/gradio_api/file={REPO / 'README.md'}": readme,
        f"/gradio_api/file={run_dir}/../../secret.txt": SECRET,
        f"/gradio_api/file={urllib.parse.quote(str(run_dir) + '/../../secret.txt', safe='')}": SECRET,
        f"/gradio_api/file={secret}": SECRET,
        # not even the run itself: the app needs no file route at all
        f"/gradio_api/file={run_dir}/config.yaml": "embed_dim",
        f"/gradio_api/file={run_dir}/checkpoints/last.pth": "model_state_dict",
        # nor a fetch of a loopback URL on the server's behalf
        f"/gradio_api/file={base}/config": '"components"',
    }
    assert SECRET in secret.read_text() and "embed_dim" in (run_dir / "config.yaml").read_text()
    for path, content in cases.items():
        status, body = _get(base + path)
        assert status in (403, 404), (path, status)
        assert content[:200] not in body and SECRET not in body, path


def _post_file(url: str, payload: bytes, field: str) -> int | str:
    boundary = "lfbyte-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (ConnectionResetError, BrokenPipeError, urllib.error.URLError) as e:
        # the server answered 404 and closed the connection without reading the 4 MB it did not want
        if isinstance(e, urllib.error.URLError) and not isinstance(e.reason, (ConnectionResetError, BrokenPipeError)):
            raise
        return "reset"  # the server answered and closed the connection without reading a body it did not want


def test_the_app_stores_no_upload(app_url: str, gradio_tmp: Path) -> None:
    """Gradio's upload routes would store any file a client posts, of any size; the app needs none."""
    marker = b"lfbyte-upload-marker-2718281828"
    payload = marker + bytes(4 << 20)  # 4 MB
    base = app_url.rstrip("/")
    for path, field in (("/gradio_api/upload", "files"), ("/gradio_api/process_recording", "video"),
                        ("/gradio_api/upload?upload_id=x", "files"), ("/upload", "files")):
        assert _post_file(base + path, marker + b"small", field) in (404, 405), path  # a clean "no such route"
        assert _post_file(base + path, payload, field) in (404, 405, "reset"), path
    stored = [p for p in gradio_tmp.rglob("*") if p.is_file() and marker in p.read_bytes()[: len(marker)]]
    assert stored == []
    assert _get(base + "/config")[0] == 200  # and the app still serves


# ------------------------------------------------------------------------------ bad requests


def test_hostile_and_malformed_requests_get_a_message_and_the_server_keeps_serving(app_url: str) -> None:
    """Beyond test_app.py's over-long prompt and max_length: every other input's limits, by value."""
    from gradio_client.exceptions import AppError

    client = _client(app_url)
    cap = int(APP_CFG["max_prompt_bytes"])
    # the cap counts bytes, not characters: 2,049 two-byte characters are over it, 4,096 ASCII bytes are not
    with pytest.raises(AppError) as info:
        _generate(client, "é" * (cap // 2 + 1))
    assert str(info.value) == (f"The prompt is {cap + 2} bytes; this app accepts at most {cap} "
                               "(app config max_prompt_bytes).")
    assert _generate(client, "x" * cap, 4).startswith("x" * cap)
    # an empty prompt is not an error: the model starts a document, as after every training separator
    assert isinstance(_generate(client, "", 8), str)
    expected = [
        ("max_length", 0, "Value 0 is less than minimum value 1."),
        ("max_length", -5, "Value -5 is less than minimum value 1."),
        ("temperature", -1, "Value -1 is less than minimum value 0.0."),
        ("temperature", 2.5, "Value 2.5 is greater than maximum value 2.0."),
        ("top_k", 257, "Value 257 is greater than maximum value 256."),
        ("top_p", 0.0, "Value 0.0 is less than minimum value 0.05."),
        ("seed", 10**30, f"seed={10**30} must be null or an integer that fits in 64 bits"),  # was a server traceback
        ("top_k", 0.5, "top-k must be a whole number, not 0.5."),  # was silently top_k=0 (off)
        ("max_length", 16.5, "Max Length must be a whole number, not 16.5."),
    ]
    for name, value, message in expected:
        with pytest.raises(AppError) as info:
            _generate(client, **{name: value})
        assert str(info.value) == message, (name, value)
    for name in ("max_length", "temperature"):  # not a number: Gradio's own message names the input
        # (Max Length is a number box, whose type Gradio words `float | None`; Temperature a slider: `float`)
        with pytest.raises(AppError, match=r"Expected a `float( \| None)?`, but the value passed .* was: 'abc'"):
            _generate(client, **{name: "abc"})
    # the run menu loads only the runs it lists: no directory of the caller's choosing
    for choice in ("/etc", "/tmp", "../.."):
        with pytest.raises(AppError, match=rf"Value: {choice} is not in the list of choices"):
            client.predict(choice, api_name="/select_run")
    assert _generate(client, "still serving", 8, temperature=0.0).startswith("still serving")


def _call_generate(app_url: str, data: list) -> str:
    """``POST /gradio_api/call/generate`` (Gradio's REST API, no client library): the final text."""
    base = app_url.rstrip("/") + "/gradio_api/call/generate"
    request = urllib.request.Request(base, data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        event_id = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{base}/{event_id}", timeout=60) as response:
        events = response.read().decode()
    assert "event: complete" in events and "event: error" not in events, events
    return json.loads(events.split("event: complete\ndata: ", 1)[1].splitlines()[0])[0]


def test_the_run_is_server_state_a_client_cannot_set(app_url: str, tmp_path: Path) -> None:
    """The REST API ignores a value sent for the hidden run state: a client cannot point the app at a
    folder of its choosing (here one that does not exist, which would be an error if it were used)."""
    text = _call_generate(app_url, ["state", 4, 0.0, 0, 1.0, 1, str(tmp_path / "elsewhere")])
    assert text.startswith("state") and len(text) > len("state")


def test_a_prompt_no_client_library_would_send_is_still_text(app_url: str) -> None:
    """Raw JSON can carry a lone surrogate (not encodable as UTF-8): it becomes U+FFFD, not a crash."""
    text = _call_generate(app_url, ["\ud800 lone \x00 nul", 4, 0.0, 0, 1.0, 1])
    assert text.startswith("\ufffd\ufffd\ufffd lone \x00 nul") and len(text) > len("x lone x nul")


# ------------------------------------------------------------------------------ start-up


def test_the_app_listens_on_loopback_only_by_default(app_url: str) -> None:
    assert APP_CFG["server_name"] == "127.0.0.1" and APP_CFG["share"] is False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # UDP: picks the outgoing interface, sends nothing
            ip = probe.getsockname()[0]
        except OSError:
            ip = "127.0.0.1"
    if ip.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    port = urllib.parse.urlsplit(app_url).port
    with pytest.raises(OSError):
        socket.create_connection((ip, port), timeout=5).close()


def _assert_error_lines(proc: subprocess.CompletedProcess, expected: list[str]) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == expected


def test_a_taken_port_is_one_line_before_the_model_loads(run_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("lfbyte.app", f"run_dir={run_dir}", f"server_port={port}", timeout=120)
    _assert_error_lines(proc, [f"error: cannot listen on 127.0.0.1:{port} (Address already in use); choose another "
                               "server_port=, or server_port=null for the next free one from 7860"])
    assert proc.stdout == ""  # no "serving run ..." line: it stopped before loading anything


def test_bad_start_up_values_are_one_line_each(run_dir: Path) -> None:
    proc = run_cli("lfbyte.app", f"run_dir={run_dir}", "server_port=99999", "max_queue=abc", "concurrency_limit=0",
                   "share=maybe", timeout=120)
    _assert_error_lines(proc, [
        "error: concurrency_limit=0 must be an integer >= 1",
        "error: max_queue='abc' must be an integer >= 1",
        "error: server_port=99999 must be null (7860 or the next free port) or an integer in 1..65535",
        "error: share='maybe' must be true or false",
    ])


def test_an_address_that_is_not_this_machine_fails_at_once_not_after_100_ports(run_dir: Path) -> None:
    t0 = time.monotonic()
    proc = run_cli("lfbyte.app", f"run_dir={run_dir}", "server_name=192.0.2.1", timeout=120)  # TEST-NET-1
    _assert_error_lines(proc, ["error: cannot listen on 192.0.2.1:any port (Cannot assign requested address); "
                               "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"])
    proc = run_cli("lfbyte.app", f"run_dir={run_dir}", "server_name=no-such-host.invalid", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("error: server_name=no-such-host.invalid does not resolve (")
    assert proc.stderr.rstrip().endswith("); use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
    assert time.monotonic() - t0 < 60  # Gradio alone retried it on 100 ports: minutes


def test_unknown_options_and_bad_runs_are_one_line(run_dir: Path, tmp_path: Path) -> None:
    proc = run_cli("lfbyte.app", f"run_dir={run_dir}", "max_lenght_cap=10", timeout=120)
    _assert_error_lines(proc, ["error: max_lenght_cap is not a known option (did you mean max_length_cap?); "
                               f"the options are {', '.join(APP_OPTIONS)} (conf/app.yaml)"])
    proc = run_cli("lfbyte.app", f"run_dir={tmp_path / 'no' / 'such'}", timeout=120)
    _assert_error_lines(proc, [f"error: run directory {tmp_path / 'no' / 'such'} does not exist; "
                               "pass run_dir=<a folder under outputs/>"])
    proc = run_cli("lfbyte.app", f"run_dir={run_dir}", "device=tpu", timeout=120)
    _assert_error_lines(proc, ["error: device='tpu' is not a device; use auto, cpu, cuda or cuda:N"])


def test_with_the_run_menu_off_no_other_run_can_be_reached(run_dir: Path, tmp_path: Path) -> None:
    from gradio_client.exceptions import AppError

    other = run_dir.parent / "other"
    if not other.exists():
        shutil.copytree(run_dir, other)
    with serve_app(tmp_path / "server.log", f"run_dir={run_dir}", f"runs_root={run_dir.parent}",
                   "run_menu=false") as url:
        client = _client(url)
        with pytest.raises(AppError, match=r"is not in the list of choices"):
            client.predict(str(other), api_name="/select_run")
        for name in ("other", "tiny"):  # nor beside it, as run B: not even the run it serves
            with pytest.raises(AppError, match=r"is not in the list of choices"):
                client.predict(name, api_name="/select_run_b")
        assert _generate(client, "still here", 4).startswith("still here")
