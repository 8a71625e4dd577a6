"""CLIP's tokenizer built offline from the BPE merge list shipped with the package.

Gives the same ids as Stable Diffusion 1.x's tokenizer; used for the tiny test model and as the
bundled tokenizer of single-file checkpoints.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

__all__ = ["build_clip_tokenizer", "write_clip_tokenizer_files"]

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> list[str]:
    """CLIP's reversible byte → printable-unicode table (256 characters, in CLIP's order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    raw = files("maskdiffusion.model").joinpath("data", BPE_FILE).read_bytes()
    merges = gzip.decompress(raw).decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer_files(folder: str | Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of CLIP's tokenizer (49,408 tokens) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def build_clip_tokenizer(folder: str | Path, pad_token: str = "<|endoftext|>"):
    """A ``transformers.CLIPTokenizer`` saved in ``folder`` (SD 2.x pads with ``"!"``)."""
    from transformers import CLIPTokenizer

    folder = write_clip_tokenizer_files(folder)
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token,
                        model_max_length=77)
    tok.save_pretrained(folder)
    return tok
