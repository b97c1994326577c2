"""A CLIP-style byte-level BPE tokenizer whose vocabulary holds each shapes-world word as one token.

It is a real ``CLIPTokenizer`` (same class, same pre-tokenisation, same offsets mapping as SD's);
only its vocabulary and merges are small. Unknown words fall back to byte characters.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

from .world import WORDS

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 20  # BOS + the longest caption (14 tokens) + EOS, with room to spare


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE, in CLIP's vocabulary order.

    Printable bytes stand for themselves and come first; the others are shifted above 255.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    while len(symbols) > 1:
        pairs = [(ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
    return symbols


def vocab_and_merges(words=WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Merges that turn every word into a single token, added so no word breaks an earlier one."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for w in words:
        symbols = _bpe(list(w[:-1]) + [w[-1] + "</w>"], ranks)
        while len(symbols) > 1:  # join what is left, left to right
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            symbols = [pair[0] + pair[1]] + symbols[2:]
    alphabet = byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}, merges


def save_tokenizer(directory: str | Path, words=WORDS, max_length: int = MAX_LENGTH) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json that ``CLIPTokenizer.from_pretrained`` reads."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocab_and_merges(words)
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {
        "model_max_length": max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": EOS,
        "do_lower_case": True,
        "tokenizer_class": "CLIPTokenizer",
    }
    (d / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return d


def load_tokenizer(directory: str | Path):
    return CLIPTokenizer.from_pretrained(str(directory))
