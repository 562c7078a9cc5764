"""The second English corpus of the comparison: Vim's user manual, as Debian's vim-runtime package ships it.

    python experiments/second_corpus/make_corpus.py outputs/vim_manual.txt
    python experiments/second_corpus/make_corpus.py outputs/vim_docs.txt --all   # all of Vim's documentation
    python experiments/second_corpus/make_corpus.py outputs/vim_docs_1.6M.txt --all --train-bytes 1590560
    python experiments/second_corpus/make_corpus.py outputs/vim_docs_1.6M_spread.txt --all --train-bytes 1590560 --spread

The user manual's 35 chapters of tutorial prose about a text editor (usr_01.txt ... usr_90.txt, in order):
English written by other authors, on another subject and in another style than the default corpus
(Python's documentation). Needs /usr/share/vim/vim90/doc (apt-get install vim-runtime); prints the
size and SHA-256 of what it wrote so a rerun can be checked against the recorded one.

``--all``: every ``*.txt`` of that folder in name order (the reference manual, the user manual, the release notes;
151 files, ~9.5 MB): a corpus about as large as the bytes either side trains on in 10 minutes here, so nothing
is seen twice (the user manual is seen ~13 times, the default corpus ~5), to test whether data repetition is
what limits LFByteTransformer at 10 minutes. Its validation split (the last 5 %) is the end of the 9.0 release
notes and the files after them (vi_diff.txt … workshop.txt).

``--train-bytes N``: only the first N bytes of that training part, followed by the same validation part, so a run
with the printed ``data.val_fraction`` is scored on the same bytes but trains on a corpus N bytes long (1,590,560:
the default corpus's training split) — the same text, seen more often. With ``--spread`` those N bytes are 16 KiB
blocks taken evenly across the whole training part instead of its first N bytes (whose files, in name order, hold
none of the release notes the validation part is drawn from).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

DOC = Path("/usr/share/vim/vim90/doc")
BLOCK = 16384  # --spread: the training part is sampled in blocks of this many bytes


def main(out: str, everything: bool = False, train_bytes: int | None = None, spread: bool = False) -> None:
    chapters = sorted(DOC.glob("*.txt" if everything else "usr_[0-9][0-9].txt"))
    if not chapters:
        sys.exit(f"error: no {'*' if everything else 'usr_NN'}.txt under {DOC}; install Debian's vim-runtime package")
    data = b"".join(p.read_bytes() for p in chapters)
    if train_bytes is not None:  # the split's rule (lfbyte.data.split_corpus): the last round(5 %) is validation
        n_val = int(round(len(data) * 0.05))
        train = data[: len(data) - n_val]
        if spread:  # 16 KiB blocks taken evenly across the training part: its mix of files, only less of it
            blocks = [train[i : i + BLOCK] for i in range(0, len(train), BLOCK)]
            keep = min(len(blocks), -(-train_bytes // BLOCK))
            train = b"".join(blocks[i * len(blocks) // keep] for i in range(keep))
        data = train[:train_bytes] + data[len(data) - n_val :]
        print(f"train on it with data.val_fraction={n_val / len(data)!r} (validation: the same {n_val:,} bytes)")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_bytes(data)
    print(f"{out}: {len(chapters)} {'files' if everything else 'chapters'}, {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Write the comparison's second corpus from Vim's documentation.")
    ap.add_argument("out", nargs="?", default="outputs/vim_manual.txt", help="file to write (default: %(default)s)")
    ap.add_argument("--all", action="store_true", help="every *.txt of the doc folder, not only the user manual")
    ap.add_argument("--train-bytes", type=int, metavar="N", help="keep only N bytes of the training part")
    ap.add_argument("--spread", action="store_true", help="with --train-bytes: 16 KiB blocks spread across it")
    a = ap.parse_args()
    if a.train_bytes is not None and a.train_bytes <= 0:
        ap.error(f"--train-bytes must be a positive number of bytes, got {a.train_bytes}")
    if a.spread and a.train_bytes is None:
        ap.error("--spread picks the blocks --train-bytes keeps; pass --train-bytes N with it")
    main(a.out, a.all, a.train_bytes, a.spread)
