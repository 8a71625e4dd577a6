"""Prompts and the token span of every class in them (``docs/algorithm.md`` §2.2 and §3.2).

The prompt is the class prompts joined by " and ". Class k owns every token of its own prompt
text, so multi-token names ("impervious surfaces" = 3 CLIP tokens) are handled; when the texts
exceed the 75 tokens of one CLIP prompt they continue in further prompts (extra batch entries).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from .classes import ClassListError, ClassSpec

__all__ = ["PromptLayout", "TokenSpan", "layout_prompts", "CONTENT_TOKENS"]

#: CLIP prompts are 77 tokens: <bos>, 75 of content, <eos> (or padding).
CONTENT_TOKENS = 75
SEPARATOR = " and "


@dataclass(frozen=True)
class TokenSpan:
    """Tokens of one prompt text: batch entry ``prompt`` and positions ``start``..``stop`` - 1."""

    prompt: int
    start: int
    stop: int


@dataclass(frozen=True)
class PromptLayout:
    """The prompt strings, their padded token ids, and each class's spans (one per prompt text)."""

    prompts: tuple[str, ...]
    input_ids: tuple[tuple[int, ...], ...]
    spans: tuple[tuple[TokenSpan, ...], ...]

    @property
    def n_prompts(self) -> int:
        return len(self.prompts)


def layout_prompts(classes: Sequence[ClassSpec], tokenizer, max_tokens: int = CONTENT_TOKENS) -> PromptLayout:
    """Pack the classes' prompt texts into as few prompts as fit, recording token spans.

    Checks that tokenizing each joined prompt gives exactly the concatenated per-text tokens,
    so the spans are right for any tokenizer that splits on spaces. Texts are tokenized
    without the tokenizer's warning about sequences longer than one prompt: the packing here
    is what handles them (a text too long for one prompt is a :class:`ClassListError`).
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    tokens = partial(_token_ids, tokenizer)
    sep = tokens(SEPARATOR.strip())
    chunks: list[list[tuple[int, str, list[int]]]] = [[]]
    lengths = [0]
    for k, spec in enumerate(classes):
        for text in spec.prompts:
            ids = tokens(text)
            if not ids:
                raise ClassListError(f"class {spec.name!r}: prompt {text!r} has no tokens")
            if len(ids) > max_tokens:
                raise ClassListError(
                    f"class {spec.name!r}: prompt {text!r} is {len(ids)} tokens, "
                    f"more than the {max_tokens} of one prompt"
                )
            extra = len(ids) + (len(sep) if chunks[-1] else 0)
            if lengths[-1] + extra > max_tokens:
                chunks.append([])
                lengths.append(0)
                extra = len(ids)
            chunks[-1].append((k, text, ids))
            lengths[-1] += extra
    spans: list[list[TokenSpan]] = [[] for _ in classes]
    prompts, all_ids = [], []
    for p, chunk in enumerate(chunks):
        ids = [bos]
        for i, (k, _, tok) in enumerate(chunk):
            if i:
                ids += sep
            spans[k].append(TokenSpan(p, len(ids), len(ids) + len(tok)))
            ids += tok
        text = SEPARATOR.join(t for _, t, _ in chunk)
        check = tokens(text)
        if check != ids[1:]:
            raise RuntimeError(f"tokenizer does not split {text!r} at spaces; token spans would be wrong")
        ids = ids + [eos]
        ids += [pad] * (max_tokens + 2 - len(ids))
        prompts.append(text)
        all_ids.append(tuple(ids))
    return PromptLayout(tuple(prompts), tuple(all_ids), tuple(tuple(s) for s in spans))


def _token_ids(tokenizer, text: str) -> list[int]:
    """The token ids of ``text`` without special tokens (and without a too-long warning)."""
    return tokenizer(text, add_special_tokens=False, verbose=False).input_ids
