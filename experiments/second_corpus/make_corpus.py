"""The second English corpus of the comparison: Vim's user manual, as Debian's vim-runtime package ships it.

    python experiments/second_corpus/make_corpus.py outputs/vim_manual.txt

The user manual's 35 chapters of tutorial prose about a text editor (usr_01.txt ... usr_90.txt, in order):
English written by other authors, on another subject and in another style than the default corpus
(Python's documentation). Needs /usr/share/vim/vim90/doc (apt-get install vim-runtime); prints the
size and SHA-256 of what it wrote so a rerun can be checked against the recorded one.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

DOC = Path("/usr/share/vim/vim90/doc")


def main(out: str) -> None:
    chapters = sorted(DOC.glob("usr_[0-9][0-9].txt"))
    if not chapters:
        sys.exit(f"error: no usr_NN.txt under {DOC}; install Debian's vim-runtime package")
    data = b"".join(p.read_bytes() for p in chapters)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_bytes(data)
    print(f"{out}: {len(chapters)} chapters, {len(data):,} bytes, sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outputs/vim_manual.txt")
