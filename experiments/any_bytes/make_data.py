"""Non-text corpora made offline, for ``data=bytes``: audio (WAV), images (PPM), executables (ELF).

    python experiments/any_bytes/make_data.py outputs/any_bytes_data

Each modality gets ``train/`` and ``heldout/`` folders of whole files (a held-out file is never seen in
training); a folder is filled until it holds at least its budget. Audio: speech from Debian's espeak-ng when installed (apt-get install espeak-ng), else synthesised
tones, chords and noise; 8 kHz mono 16-bit PCM. Images: figures rendered locally by matplotlib (plots,
shapes, text), stored as binary PPM (P6, raw RGB). Executables: the system's shared libraries, as they are.
"""

from __future__ import annotations

import io
import math
import random
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

TRAIN_BYTES = 1_500_000
HELDOUT_BYTES = 48_000
RATE = 8_000  # telephone quality: a spoken sentence is ~40 KB

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "A byte level model reads every file as a stream of numbers.",
    "Compression and prediction are two sides of the same coin.", "Rain is expected in the north by evening.",
    "Please leave the package at the front door.", "Seven hundred and forty two people attended the meeting.",
    "The library opens at nine and closes at six on weekdays.", "Turn left at the second traffic light.",
    "Entropy measures how surprised we are on average.", "She sells sea shells by the sea shore.",
    "The train to Edinburgh departs from platform four.", "Numbers like three point one four one five nine.",
    "Water boils at one hundred degrees at sea level.", "Every morning the baker lights the oven before dawn.",
]


def _wav(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.clip(samples, -32767, 32767).astype("<i2").tobytes())
    return buf.getvalue()


def _speech(rng: random.Random) -> bytes | None:
    if shutil.which("espeak-ng") is None:
        return None
    text = rng.choice(SENTENCES)
    voice = rng.choice(["en", "en-us", "en-gb", "en+f3", "en+m3"])
    raw = subprocess.run(["espeak-ng", "-v", voice, "-s", str(rng.randint(130, 190)), "--stdout", text],
                         capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(raw)) as w:  # espeak-ng speaks at 22,050 Hz: resample to 8 kHz
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        rate = w.getframerate()
    t = np.arange(0, len(x) / rate, 1 / RATE)
    return _wav(np.interp(t * rate, np.arange(len(x)), x))


def _tones(rng: random.Random) -> bytes:
    seconds = rng.uniform(1.0, 3.0)
    t = np.arange(int(seconds * RATE)) / RATE
    x = np.zeros_like(t)
    for _ in range(rng.randint(1, 4)):
        f = 110 * 2 ** (rng.randint(0, 36) / 12)
        x += np.sin(2 * math.pi * f * t + rng.random() * 6.28) * rng.uniform(0.1, 0.3)
    x *= np.minimum(1, np.minimum(t, t[-1] - t) * 20)  # fade in and out
    x += np.random.default_rng(rng.randrange(2**32)).normal(0, rng.uniform(0.001, 0.02), len(t))
    return _wav(x * 20000)


def _image(rng: random.Random) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w, h = rng.choice([(96, 72), (100, 75), (80, 80)])
    fig = plt.figure(figsize=(w / 25, h / 25), dpi=25)
    ax = fig.add_axes((0.08, 0.08, 0.9, 0.9))
    kind = rng.choice(["plot", "scatter", "bars", "shapes", "text"])
    nrng = np.random.default_rng(rng.randrange(2**32))
    if kind == "plot":
        x = np.linspace(0, 10, 200)
        for _ in range(rng.randint(1, 3)):
            ax.plot(x, np.sin(x * rng.uniform(0.3, 2)) + nrng.normal(0, 0.05, 200).cumsum() / 5)
    elif kind == "scatter":
        ax.scatter(nrng.normal(size=80), nrng.normal(size=80), c=nrng.random(80), s=12)
    elif kind == "bars":
        ax.bar(range(8), nrng.random(8), color=plt.cm.viridis(nrng.random(8)))
    elif kind == "shapes":
        for _ in range(rng.randint(3, 9)):
            ax.add_patch(plt.Circle((rng.random(), rng.random()), rng.uniform(0.05, 0.2), color=nrng.random(3)))
        ax.set_aspect("equal")
    else:
        ax.axis("off")
        ax.text(0.02, 0.5, "\n".join(rng.sample(SENTENCES, 2)), fontsize=6, wrap=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="raw", dpi=25)
    plt.close(fig)
    rgba = np.frombuffer(buf.getvalue(), dtype=np.uint8).reshape(h, w, 4)
    return f"P6\n{w} {h}\n255\n".encode() + rgba[:, :, :3].tobytes()


def _libraries(rng: random.Random) -> list[bytes]:
    found = sorted(p for p in Path("/usr/lib/x86_64-linux-gnu").glob("*.so*")
                   if p.is_file() and not p.is_symlink() and 8_000 < p.stat().st_size < 60_000)
    rng.shuffle(found)
    return [p.read_bytes() for p in found]


def fill(folder: Path, make, budget: int, suffix: str) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    total, i = 0, 0
    while total < budget:
        data = make()
        if data is None:
            break
        (folder / f"{i:04d}{suffix}").write_bytes(data)
        total, i = total + len(data), i + 1
    return total


def main(out: Path) -> None:
    rng = random.Random(0)
    speech = shutil.which("espeak-ng") is not None
    audio = (lambda: _speech(rng)) if speech else (lambda: _tones(rng))
    libs = iter(_libraries(rng))
    for name, make, suffix in (("audio", audio, ".wav"), ("image", lambda: _image(rng), ".ppm"),
                               ("elf", lambda: next(libs, None), ".so")):
        held = fill(out / name / "heldout", make, HELDOUT_BYTES, suffix)
        train = fill(out / name / "train", make, TRAIN_BYTES, suffix)
        print(f"{name}: {train:,} training bytes, {held:,} held-out bytes"
              + (" (speech: espeak-ng)" if name == "audio" and speech else ""))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/any_bytes_data"))
