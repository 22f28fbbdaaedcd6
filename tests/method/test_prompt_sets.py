"""Prompt sets: text and JSON files, one-line errors, and the seeded subsample."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from hpspec.core.errors import PromptSetError
from hpspec.method.prompt_sets import prompt_set, read_prompt_set, take

PROMPTS = [f"prompt number {i}" for i in range(40)]


def test_text_and_json_files_read_the_same(tmp_path: Path) -> None:
    text = tmp_path / "p.txt"
    text.write_text("# a comment\n" + "\n".join(f"  {p} " for p in PROMPTS) + "\n\n", encoding="utf-8")
    listed = tmp_path / "p.json"
    listed.write_text(json.dumps(PROMPTS), encoding="utf-8")
    assert read_prompt_set(text) == PROMPTS == read_prompt_set(listed)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.json", "{not json", "not JSON"),
        ("p.json", '{"a": 1}', "found a dict"),
        ("p.json", '["ok", 3]', "item 1 is 3"),
        ("p.json", '["ok", "  "]', "item 1"),
        ("p.json", "[]", "no prompts"),
        ("p.txt", "# only a comment\n\n", "no prompts"),
    ],
)
def test_bad_files_are_one_error(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PromptSetError, match=message) as raised:
        read_prompt_set(path)
    assert "\n" not in str(raised.value)


def test_a_missing_file_says_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(PromptSetError, match="no such prompt file"):
        read_prompt_set(tmp_path / "absent.txt")


def test_take_is_a_seeded_sample_in_file_order() -> None:
    first = take(PROMPTS, 10, seed=3)
    assert first == take(PROMPTS, 10, seed=3)  # same N and seed: same prompts
    assert len(first) == 10 == len(set(first))
    assert first == sorted(first, key=PROMPTS.index)  # listed in the file's order
    # An independent count: the first 10 of random.Random(3)'s shuffle of the indices.
    order = list(range(40))
    random.Random(3).shuffle(order)
    assert first == [PROMPTS[i] for i in sorted(order[:10])]
    assert take(PROMPTS, 10, seed=4) != first
    assert set(first) <= set(take(PROMPTS, 20, seed=3))  # a larger N keeps the smaller one's prompts
    assert take(PROMPTS, 100, seed=0) == PROMPTS
    with pytest.raises(PromptSetError, match="positive"):
        take(PROMPTS, 0, seed=0)


def test_prompt_set_reads_and_takes(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("\n".join(PROMPTS), encoding="utf-8")
    assert prompt_set(path) == PROMPTS
    assert prompt_set(path, 5, seed=1) == take(PROMPTS, 5, seed=1)
