"""Text prompts of the demo: templates for training, the fixed evaluation set, and prompt -> digit.

No torch here: the CLI reads and checks prompt files without loading any model.
"""

from __future__ import annotations

import re
from pathlib import Path

DIGIT_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)

# Words and numerals both, so the text encoder (not a label lookup) has to carry the digit.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "a handwritten {word}",
    "a handwritten {num}",
    "the digit {num}",
    "the digit {word}",
    "{num}",
    "{word}",
    "an image of the number {word}",
    "an image of the number {num}",
    "a picture of the digit {word}",
    "the number {word}, written by hand",
    "a small grayscale {num}",
    "a scanned handwritten digit {word}",
)

# The fixed evaluation set (shipped as prompts.txt): four of the training templates.
EVAL_TEMPLATES: tuple[str, ...] = (
    "a handwritten {word}",
    "the digit {num}",
    "{num}",
    "an image of the number {word}",
)

# Never seen in training: how far the text encoder carries the model beyond its templates.
UNSEEN_TEMPLATES: tuple[str, ...] = (
    "a drawing of the number {word}",
    "number {num}",
    "handwriting that shows a {num}",
)

PROMPTS_FILE: Path = Path(__file__).with_name("prompts.txt")

_NUMERAL = re.compile(r"(?<![0-9])([0-9])(?![0-9])")
_WORD = re.compile(r"\b(" + "|".join(DIGIT_WORDS) + r")\b", re.IGNORECASE)


def fill(template: str, digit: int) -> str:
    """The template with the digit written in, as a word and/or a numeral."""
    return template.format(word=DIGIT_WORDS[digit], num=str(digit))


def prompts_for(digit: int, templates: tuple[str, ...] = TRAIN_TEMPLATES) -> list[str]:
    """Every template filled with one digit."""
    return [fill(t, digit) for t in templates]


def default_prompt_lines(templates: tuple[str, ...] = EVAL_TEMPLATES) -> list[str]:
    """The evaluation set, digit-major: what prompts.txt holds."""
    return [fill(t, d) for d in range(10) for t in templates]


def read_prompts(path: str | Path) -> list[str]:
    """Non-empty, non-comment lines of a prompt file, stripped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def default_prompts() -> list[str]:
    """The shipped evaluation prompts (10 digits x 4 templates)."""
    return read_prompts(PROMPTS_FILE)


def digit_of(prompt: str) -> int:
    """The digit a prompt asks for; ValueError if it names none or several different ones."""
    found = {int(m) for m in _NUMERAL.findall(prompt)}
    found |= {DIGIT_WORDS.index(w.lower()) for w in _WORD.findall(prompt)}
    if len(found) != 1:
        what = "no digit" if not found else f"several digits {sorted(found)}"
        raise ValueError(f"prompt {prompt!r} names {what}; a demo prompt must name exactly one")
    return found.pop()
