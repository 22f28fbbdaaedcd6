"""Property tests: random and mutated specs only ever raise hpspec's own error; plans are deterministic."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpspec.plan.check import check
from hpspec.core.errors import HpspecError
from hpspec.model.graph import graph_from_builtin
from hpspec.lang.parse import parse
from hpspec.plan.compile import compile_plan

GRAPHS = {name: graph_from_builtin(name) for name in ("sd3.5-large-turbo", "sd3.5-medium", "flux.1-schnell")}

index = st.integers(-60, 60).map(str)
bound = st.one_of(st.just(""), index)
slice_ = st.builds(lambda a, b: f"{a}:{b}", bound, bound) | st.builds(lambda a, b, c: f"{a}:{b}:{c}", bound, bound, index)
indices = st.lists(index | slice_, min_size=1, max_size=4).map(", ".join)
stack = st.sampled_from(["blocks", "block", "double_blocks", "single_blocks", "single_block", "blox"])
part = st.sampled_from(["", ".norm", ".context_norm", ".attn", ".attn2", ".mlp", ".context_mlp", ".ff", ".w_norm"])
selector = st.builds(lambda s, i, p: f"{s}[{i}]{p}", stack, indices, part)
selectors = st.lists(selector, min_size=1, max_size=3).map(", ".join)
value = st.sampled_from(["uniform", "sensitivity", "binary", "inverse", "1e-4", "100", "-3", '"t.json"', "0.5", "x"])
key = st.sampled_from(["weight", "mode", "table", "threshold", "steps", "lr", "batch", "features", "seed", "wieght"])
options = st.lists(st.builds(lambda k, v: f"{k}={v}", key, value), max_size=3).map(" ".join)
statement = st.one_of(
    st.builds(lambda s: f"drop {s}", selectors),
    st.builds(lambda s: f"preserve {s}", st.one_of(st.just("auto"), selectors, st.just('"context_embedder"'))),
    st.builds(lambda o: f"distill {o}", options),
    st.builds(lambda q, s: f"quantize {q}" + (f" except {s}" if s else ""), st.sampled_from(["nf4", "int4", "q9"]),
              st.one_of(st.just(""), selectors)),  # fmt: skip
    st.sampled_from(["# a comment", "", "target flux.1-dev"]),
)
specs = st.lists(statement, max_size=8).map("\n".join)


def mutate(text: str, data: st.DataObject) -> str:
    """Byte-level damage: insert, delete or replace a few characters."""
    chars = list(text)
    for _ in range(data.draw(st.integers(0, 4))):
        position = data.draw(st.integers(0, len(chars)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        char = data.draw(st.sampled_from(list('[]:;,."#=\n -1x') + [data.draw(st.characters())]))
        if action == "insert" or not chars:
            chars.insert(position, char)
        elif action == "delete":
            del chars[min(position, len(chars) - 1)]
        else:
            chars[min(position, len(chars) - 1)] = char
    return "".join(chars)


def compile_or_error(source: str, target: str) -> str | None:
    try:
        return compile_plan(check(parse(source, "fuzz.hps"), GRAPHS[target])).to_json()
    except HpspecError:
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs, st.sampled_from(sorted(GRAPHS)), st.data())
def test_random_specs_raise_only_hpspec_errors_and_plan_deterministically(source: str, target: str, data) -> None:
    for text in (source, mutate(source, data)):
        first = compile_or_error(text, target)
        assert first == compile_or_error(text, target)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_hpspec_errors(text: str) -> None:
    compile_or_error(text, "sd3.5-large-turbo")
