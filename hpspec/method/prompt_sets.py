"""Prompt sets for analysis and evaluation: a text file (one prompt a line) or a JSON list of strings.

``--take N --seed S`` keeps N prompts chosen by a seeded shuffle of the file's indices (Python's
``random.Random(S)``), listed in the file's order. The same file, N and S give the same prompts,
and a larger N keeps every prompt a smaller one did (the first N of one permutation).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from hpspec.core.errors import PromptSetError

COMMENT = "#"  # a text file's lines starting with it are skipped, as are blank lines


def read_prompt_set(path: str | Path) -> list[str]:
    """The prompts of `path`: `*.json` a list of strings, anything else one prompt a line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptSetError(f"{path}: no such prompt file (expected one prompt a line, or a JSON list)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PromptSetError(f"{path}: cannot read the prompt file: {error}") from None
    prompts = _json_prompts(path, text) if path.suffix.lower() == ".json" else _text_prompts(text)
    if not prompts:
        raise PromptSetError(f"{path}: no prompts (expected one prompt a line, or a JSON list of strings)")
    return prompts


def _text_prompts(text: str) -> list[str]:
    lines = (line.strip() for line in text.split("\n"))
    return [line for line in lines if line and not line.startswith(COMMENT)]


def _json_prompts(path: Path, text: str) -> list[str]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise PromptSetError(f"{path}: not JSON ({error}); expected a list of prompt strings") from None
    if not isinstance(data, list):
        raise PromptSetError(f"{path}: expected a JSON list of prompt strings, found a {type(data).__name__}")
    for index, item in enumerate(data):
        if not isinstance(item, str) or not item.strip():
            raise PromptSetError(f"{path}: item {index} is {item!r}; expected a non-empty prompt string")
    return [item.strip() for item in data]


def take(prompts: Sequence[str], count: int, seed: int) -> list[str]:
    """`count` prompts chosen by a seeded shuffle, in their original order (all of them when fewer)."""
    if count < 1:
        raise PromptSetError(f"--take {count}: expected a positive number of prompts")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    return [prompts[i] for i in sorted(order[:count])]


def prompt_set(path: str | Path, count: int | None = None, seed: int = 0) -> list[str]:
    """A prompt file read, and subsampled when `count` is given."""
    prompts = read_prompt_set(path)
    return take(prompts, count, seed) if count is not None else prompts
