"""Put OpenAI CLIP's BPE vocabulary where ``reprolib.tiny.clip_bpe_tokenizer`` reads it (a developer tool).

    python tools/fetch_clip_vocab.py

The vocabulary ships inside the ``open_clip_torch`` wheel (MIT). The wheel is only downloaded
(``pip download --no-deps``), never installed: installing it would pull torchvision and replace torch.
From its ``bpe_simple_vocab_16e6.txt.gz``, OpenAI's byte-level rules give vocab.json (49,408 tokens)
and merges.txt, which a transformers ``CLIPTokenizer`` reads.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zipfile

from reprolib.shapes.tokenizer import byte_alphabet
from reprolib.tiny import CACHE, CLIP_BPE_DIR

N_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges of the file


def main() -> int:
    if (CLIP_BPE_DIR / "vocab.json").exists() and (CLIP_BPE_DIR / "merges.txt").exists():
        print(f"CLIP BPE vocabulary already in {CLIP_BPE_DIR}")
        return 0
    wheels = CACHE / "wheels"
    found = sorted(wheels.glob("open_clip_torch-*.whl"))
    if not found:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-q",
                "-d",
                str(wheels),
                "open_clip_torch",
            ],
            capture_output=True,
            text=True,
        )
        found = sorted(wheels.glob("open_clip_torch-*.whl"))
        if not found:
            print(f"could not download the open_clip_torch wheel: {r.stderr.strip()[-300:]}", file=sys.stderr)
            return 1
    with zipfile.ZipFile(found[-1]) as z:
        lines = gzip.decompress(z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")).decode().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : N_MERGES + 1]]
    alphabet = byte_alphabet()
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    CLIP_BPE_DIR.mkdir(parents=True, exist_ok=True)
    (CLIP_BPE_DIR / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (CLIP_BPE_DIR / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    print(f"wrote {CLIP_BPE_DIR}/vocab.json ({len(vocab)} tokens) and merges.txt ({len(merges)} merges)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
