"""Hostile specs: generated from the grammar, mutated by token and by byte, and taken through read,
parse, check, plan and fmt to see how far each gets and whether anything broke.

Everything is seeded (`random.Random`), so the tests' sample and `bench/fuzz.py`'s 10,000 are
reproducible and share one generator. A spec is bytes, as it would be on disk: byte-level damage
may make it invalid UTF-8, which the reader must refuse cleanly.
"""

from __future__ import annotations

import signal
import tempfile
import time
import traceback
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Callable, Iterator, Mapping, Sequence, TypeVar

from hpspec.lang import syntax
from hpspec.plan.check import COMPUTE_DTYPES, DISTILL_OPTIONS, SCHEMES, DistillOption, check, load_target
from hpspec.core.errors import HpspecError
from hpspec.lang.fmt import format_source, quote, statement_text
from hpspec.model.graph import ModelGraph
from hpspec.model.targets import resolve_target, target_names
from hpspec.core.io import read_text_input
from hpspec.lang.parse import parse
from hpspec.plan.compile import compile_plan

TARGETS = ("sd3.5-large-turbo", "sd3.5-medium", "flux.1-schnell", "demo")
MODULES = ("context_embedder", "proj_out", "norm_out.linear", "pos_embed", "nonexistent.module", "transformer_blocks.0.attn")
KINDS = ("generated", "token-mutated", "byte-mutated", "hostile", "junk")
WEIGHTS = (35, 25, 25, 10, 5)  # of KINDS, per hundred specs

# Strings that mean something to a shell, HTML, a template engine, Python or a terminal. As spec
# comments, paths and names they must stay inert data everywhere (report, fmt, error messages).
HOSTILE_STRINGS: tuple[str, ...] = (
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "</pre></textarea></style></title><svg onload=alert(3)>",
    "javascript:alert(4)",
    "' onmouseover='alert(5)",
    "{{ 7*7 }}{% include '/etc/passwd' %}",
    "${7*7}#{7*7}",
    "&lt;&amp;&#60;&#x3c;",
    "__import__('os').system('touch hpspec-pwned')",
    "$(touch hpspec-pwned)`touch hpspec-pwned`",
    "../../../../etc/passwd",
    "\u202eevil\u202c\u200b\ufeff",
    "\x1b[31mred\x1b[0m\x07",
    "\\\"\\\\\\",
    "😀 ｄｒｏｐ ［１］",
    "%s%n%x{0}",
)


# --------------------------------------------------------------------------------------------
# What is valid in a target: the generator mostly writes names that check, sometimes not


@dataclass(frozen=True)
class Vocabulary:
    name: str  # the target
    stacks: tuple[tuple[str, str, int], ...]  # (plural, singular, number of blocks)
    parts: tuple[str, ...]

    @classmethod
    def of(cls, graph: ModelGraph) -> "Vocabulary":
        stacks = tuple((st.name, st.singular, len(st)) for st in graph.stacks)
        parts = tuple(sorted({p.word for st in graph.stacks for b in st.blocks for p in b.parts}))
        return cls(graph.name, stacks, parts)


def load_graphs(targets: Sequence[str] = TARGETS) -> dict[str, ModelGraph]:
    """Each target's graph, built once (the demo's from its checkpoint on disk)."""
    return {name: resolve_target(name) for name in targets}


# --------------------------------------------------------------------------------------------
# Grammar-aware generation


class SpecGenerator:
    """Specs built statement by statement from the grammar, with the target's names most of the time."""

    def __init__(self, rng: Random, vocabulary: Vocabulary):
        self.rng, self.words = rng, vocabulary

    def spec(self) -> str:
        """A body of drops, preserves and comments; a target, distill and quantize at most once, mostly."""
        statements = [self.statement() for _ in range(self.rng.randint(1, 6))]
        for make, chance in ((self.target, 0.3), (self.distill, 0.25), (self.quantize, 0.25)):
            for _ in range(2 if self.rng.random() < 0.05 else 1):  # sometimes twice: an error to report
                if self.rng.random() < chance:
                    statements.insert(self.rng.randint(0, len(statements)), make())
        return self.join(statements)

    def join(self, statements: Sequence[str]) -> str:
        newline = self.rng.choices(["\n", "\r\n", " ; ", ";"], [80, 8, 8, 4])[0]
        text = newline.join(statements)
        return text + ("\n" if self.rng.random() < 0.8 else "")

    def statement(self) -> str:
        makers: list[tuple[Callable[[], str], int]] = [(self.drop, 50), (self.preserve, 12), (self.comment, 10), (lambda: "", 5)]
        make = self.rng.choices([m for m, _ in makers], [w for _, w in makers])[0]
        line = make()
        if line and self.rng.random() < 0.15:
            line += "  " + self.comment()
        return line

    def target(self) -> str:
        chance = self.rng.random()
        if chance < 0.85:
            return f"target {self.words.name}"
        if chance < 0.95:
            return f"target {self.rng.choice([*target_names(), 'flux.1-dvd', 'sd3.5'])}"
        return f"target {quote(self.rng.choice(['model/transformer', '.', '/nonexistent', '/dev/zero', *HOSTILE_STRINGS]))}"

    def comment(self) -> str:
        text = self.rng.choice(["a note", "TODO: check block 3", "ΔP +0.25", *HOSTILE_STRINGS])
        return "# " + text.replace("\n", " ").replace("\r", " ")

    def drop(self) -> str:
        return "drop " + ", ".join(self.selector() for _ in range(self.rng.choices([1, 2, 3], [70, 20, 10])[0]))

    def preserve(self) -> str:
        items = [self.rng.choice(["auto", self.selector(whole=True), quote(self.module())]) for _ in range(self.rng.randint(1, 2))]
        return "preserve " + ", ".join(items)

    def distill(self) -> str:
        return " ".join(["distill", *(self.option(DISTILL_OPTIONS) for _ in range(self.rng.randint(0, 3)))])

    def quantize(self) -> str:
        scheme = self.rng.choice([*SCHEMES, *SCHEMES, *SCHEMES, "q9", "nf8"])
        words = ["quantize", scheme]
        if self.rng.random() < 0.4:
            items = [self.rng.choice([self.selector(), quote(self.module())]) for _ in range(self.rng.randint(1, 2))]
            words.append("except " + ", ".join(items))
        if self.rng.random() < 0.3:
            words.append(f"compute={self.rng.choice([*COMPUTE_DTYPES, 'fp8'])}")
        return " ".join(words)

    def option(self, options: Mapping[str, DistillOption]) -> str:
        """Mostly a known key with a value of its kind; sometimes a misspelt key or a wrong value."""
        if self.rng.random() < 0.1:
            key, value = self.rng.choice([*options, "wieght", "stepz"]), self.rng.choice(["x", "-3", '"t.json"', "1e999", "nan"])
            return f"{key}={value}"
        key = self.rng.choice([k for k, o in options.items() if o.kind != "path"])
        option = options[key]
        if option.kind == "choice":
            return f"{key}={self.rng.choice(option.choices)}"
        if option.kind == "int":
            return f"{key}={self.rng.randint(option.minimum, 100_000)}"
        return f"{key}={self.rng.choice(['1e-4', '0.5', '2', '0', '3.25e-2'])}"

    def module(self) -> str:
        return self.rng.choice(MODULES)

    def selector(self, whole: bool = False) -> str:
        plural, singular, count = self.rng.choice(self.words.stacks)
        if self.rng.random() < 0.02:
            plural, singular = self.rng.choice([("blox", "blok"), ("double_blocks", "single_block"), ("blocks", "block")])
        if self.rng.random() < 0.55:
            part = "" if whole or self.rng.random() < 0.2 else "." + self.part()
            return f"{singular}[{self.index(count)}]{part}"
        indices = ", ".join(self.rng.choice([self.index, self.slice])(count) for _ in range(self.rng.randint(1, 3)))
        return f"{plural}[{indices}]"

    def part(self) -> str:
        return self.rng.choice(self.words.parts) if self.rng.random() < 0.95 else self.rng.choice(["ff", "w_norm", "attn3", "MLP"])

    def index(self, count: int) -> str:
        if self.rng.random() < 0.96:
            return str(self.rng.randint(-count, count - 1))
        return str(self.rng.choice([count, count + 7, -count - 1, 10**12]))

    def slice(self, count: int) -> str:
        start = self.rng.randint(0, count - 1)
        stop = min(count, start + self.rng.randint(1, 4))
        bounds = [str(start), str(stop)]
        if self.rng.random() < 0.2:
            bounds[self.rng.randint(0, 1)] = ""
        if self.rng.random() < 0.15:
            bounds.append(str(self.rng.choice([1, 2, -1, 0])))
        return ":".join(bounds)


# --------------------------------------------------------------------------------------------
# Mutation


TOKENS = ("drop", "preserve", "distill", "quantize", "target", "except", "auto", "blocks", "block", "single_block",
          "double_blocks", "[", "]", ",", ".", ":", "=", ";", "#", '"', "\\", "\n", "\r", " ", "\t", "-", "+", "0", "7",
          "1e309", "nan", "inf", "mlp", "attn", "steps", "nf4")  # fmt: skip
ODD_CHARS = ("\x00", "\x0b", "\x0c", "\x85", "\u2028", "\u00a0", "\ufeff", "\u202e", "［", "＃", "é", "😀", "\U0010fffd")


def mutate_tokens(rng: Random, text: str) -> str:
    """Grammar-aware damage: whole tokens inserted, deleted, replaced, duplicated or swapped."""
    words = _split_tokens(text) or [""]
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(words))
        action = rng.choice(["insert", "delete", "replace", "duplicate", "swap"])
        if action == "insert":
            words.insert(at, rng.choice(TOKENS))
        elif action == "delete" and len(words) > 1:
            del words[at]
        elif action == "replace":
            words[at] = rng.choice(TOKENS)
        elif action == "duplicate":
            words[at:at] = words[at : at + rng.randint(1, 6)]
        else:
            other = rng.randrange(len(words))
            words[at], words[other] = words[other], words[at]
    return "".join(words)


def _split_tokens(text: str) -> list[str]:
    """Runs of word characters, and every other character on its own (layout kept)."""
    tokens: list[str] = []
    for char in text:
        if tokens and (char.isalnum() or char == "_") and (tokens[-1][-1].isalnum() or tokens[-1][-1] == "_"):
            tokens[-1] += char
        else:
            tokens.append(char)
    return tokens


def mutate_bytes(rng: Random, data: bytes) -> bytes:
    """Byte-level damage of the file: flipped bits, inserted or deleted bytes, a cut, a splice."""
    buffer = bytearray(data or b"\n")
    for _ in range(rng.randint(1, 5)):
        at = rng.randrange(len(buffer) + 1)
        action = rng.choice(["flip", "insert", "delete", "truncate", "repeat", "odd"])
        if action == "flip" and at < len(buffer):
            buffer[at] ^= 1 << rng.randrange(8)
        elif action == "insert":
            buffer[at:at] = bytes([rng.randrange(256)])
        elif action == "delete":
            del buffer[at : at + rng.randint(1, 3)]
        elif action == "truncate":
            del buffer[at:]
        elif action == "repeat":
            buffer[at:at] = buffer[at : at + rng.randint(1, 40)] * rng.randint(2, 20)
        else:
            buffer[at:at] = rng.choice(ODD_CHARS).encode("utf-8")
    return bytes(buffer)


def hostile_spec(rng: Random, generator: SpecGenerator) -> str:
    """A mostly valid spec carrying hostile strings, odd layout or sizes near the 10 KB line."""
    base = generator.spec()
    quoted = quote(rng.choice(HOSTILE_STRINGS))
    choices: list[Callable[[], str]] = [
        lambda: base + "# " + rng.choice(HOSTILE_STRINGS).replace("\n", " ") + "\n",
        lambda: f"target {quoted}\n" + base,
        lambda: base + f"preserve {quoted}\nquantize nf4 except {quoted}\n",
        lambda: base + f"distill table={quoted} weight=sensitivity\n",
        lambda: base.replace("\n", rng.choice(["\r", "\x0b", "\x0c", "\u2028", "\x85", "\r\r\n"])),
        lambda: "\ufeff" + base,
        lambda: "drop " + ", ".join(generator.selector() for _ in range(rng.randint(100, 700))) + "\n",
        lambda: "drop blocks[" + ", ".join(str(rng.randint(0, 5)) for _ in range(rng.randint(500, 2400))) + "]\n",
        lambda: "# " + "x" * rng.randint(1000, 9500) + "\n" + base,
        lambda: (base + "\n") * rng.randint(5, 40),
        lambda: "drop blocks[" + rng.choice(["9", "-", "1:"]) * rng.randint(50, 3000) + "]",
        lambda: "\n" * rng.randint(100, 5000) + base + " " * rng.randint(0, 3000),
        lambda: f"target {'e' * rng.randint(250, 5000)}\n" + base,  # longer than a file name may be
        lambda: f"target {quote('x/' * rng.randint(100, 2500))}\n" + base,
    ]
    return rng.choice(choices)()


def junk(rng: Random) -> bytes:
    """No spec at all: random bytes, or random printable text."""
    if rng.random() < 0.5:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 400)))
    alphabet = "".join(TOKENS) + "abcxyz0123456789 \n"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400))).encode()


@dataclass(frozen=True)
class Case:
    number: int
    kind: str
    target: str
    data: bytes  # the spec file's bytes


def corpus(count: int, seed: int, vocabularies: Mapping[str, Vocabulary], seeds: Sequence[str] = ()) -> Iterator[Case]:
    """`count` specs, kinds in the proportions of WEIGHTS, targets in turn. `seeds` (real specs)
    are mutated alongside generated ones."""
    rng = Random(seed)
    targets = sorted(vocabularies)
    for number in range(count):
        target = targets[number % len(targets)]
        generator = SpecGenerator(rng, vocabularies[target])
        kind = rng.choices(KINDS, WEIGHTS)[0]
        yield Case(number, kind, target, _make(kind, rng, generator, seeds))


def _make(kind: str, rng: Random, generator: SpecGenerator, seeds: Sequence[str]) -> bytes:
    def base() -> str:
        return rng.choice(seeds) if seeds and rng.random() < 0.25 else generator.spec()

    if kind == "generated":
        return generator.spec().encode()
    if kind == "token-mutated":
        return mutate_tokens(rng, base()).encode()
    if kind == "byte-mutated":
        return mutate_bytes(rng, base().encode())
    if kind == "hostile":
        return hostile_spec(rng, generator).encode()
    return junk(rng)


# --------------------------------------------------------------------------------------------
# Running one spec through every stage


STAGES = ("read", "parse", "check", "plan")
T = TypeVar("T")


class Hang(BaseException):
    """Raised by the watchdog: a BaseException, so no `except Exception` in hpspec can swallow it."""


@contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Raise Hang in the main thread after `seconds` (a generous limit: timing is for the bench)."""

    def expire(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    reached: list[str] = field(default_factory=list)  # the stages of STAGES passed
    formatted: bool = False
    crash: str | None = None  # an exception other than HpspecError: where and what
    fmt_problem: str | None = None  # fmt not idempotent, or it changed the statements
    hang: bool = False
    seconds: float = 0.0


def run_case(case: Case, graph: ModelGraph, directory: Path, limit: float = 30.0) -> Outcome:
    """Read the spec from a file (as hpspec does), then parse, check, plan, and format it."""
    path = directory / f"fuzz-{case.number}.hps"
    path.write_bytes(case.data)
    outcome = Outcome()
    started = time.perf_counter()
    try:
        with watchdog(limit):
            text = _stage(outcome, "read", lambda: read_text_input(path, what="spec"))
            if text is not None:
                _pipeline(outcome, text, str(path), graph)
                _fmt(outcome, text, str(path))
    except Hang:
        outcome.hang = True
    finally:
        path.unlink()
    outcome.seconds = time.perf_counter() - started
    return outcome


def _pipeline(outcome: Outcome, text: str, path: str, graph: ModelGraph) -> None:
    spec = _stage(outcome, "parse", lambda: parse(text, path))
    if spec is None:
        return
    # As `hpspec check` does: the spec's own target when it names one (a path is resolved on disk).
    checked = _stage(outcome, "check", lambda: check(spec, load_target(spec) if spec.of_type(syntax.Target) else graph))
    if checked is not None:
        _stage(outcome, "plan", lambda: compile_plan(checked).to_json())


def _stage(outcome: Outcome, name: str, run: Callable[[], T]) -> T | None:
    try:
        result = run()
    except HpspecError:
        return None
    except Exception as error:  # a crash: recorded, and the spec goes no further
        outcome.crash = outcome.crash or f"{name}: {describe(error)}"
        return None
    outcome.reached.append(name)
    return result


def _fmt(outcome: Outcome, text: str, path: str) -> None:
    """fmt must give a fixed point that means what the original meant."""
    try:
        first = format_source(text, path)
        if first.text is None:
            return
        outcome.formatted = True
        second = format_source(first.text, path)
        if second.text != first.text:
            outcome.fmt_problem = "not idempotent"
        elif _statements(first.text) != _statements(text):
            outcome.fmt_problem = "changed the statements"
    except HpspecError:
        outcome.fmt_problem = "formatted text does not parse"
    except Exception as error:
        outcome.crash = outcome.crash or f"fmt: {describe(error)}"


def _statements(text: str) -> list[str]:
    return [statement_text(statement) for statement in parse(text).statements]


def describe(error: BaseException) -> str:
    """`Type: message at file:line` of the innermost frame, for a crash report."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}: {str(error)[:160]}{where}"


# --------------------------------------------------------------------------------------------
# Tallies


@dataclass
class Tally:
    tried: int = 0
    reached: Counter = field(default_factory=Counter)  # stage -> specs that passed it
    kinds: Counter = field(default_factory=Counter)
    by_kind: dict[str, Counter] = field(default_factory=dict)  # kind -> stage (and "fmt") -> specs
    formatted: int = 0
    crashes: list[tuple[Case, str]] = field(default_factory=list)
    fmt_problems: list[tuple[Case, str]] = field(default_factory=list)
    hangs: list[tuple[Case, float]] = field(default_factory=list)
    slowest: float = 0.0

    def add(self, case: Case, outcome: Outcome, hang_seconds: float = 1.0, hang_bytes: int = 10_000) -> None:
        self.tried += 1
        self.kinds[case.kind] += 1
        self.reached.update(outcome.reached)
        self.formatted += outcome.formatted
        self.by_kind.setdefault(case.kind, Counter()).update([*outcome.reached, *["fmt"] * outcome.formatted])
        if outcome.crash:
            self.crashes.append((case, outcome.crash))
        if outcome.fmt_problem:
            self.fmt_problems.append((case, outcome.fmt_problem))
        if outcome.hang or (outcome.seconds > hang_seconds and len(case.data) < hang_bytes):
            self.hangs.append((case, outcome.seconds))
        self.slowest = max(self.slowest, outcome.seconds)


def run_corpus(cases: Iterator[Case], graphs: Mapping[str, ModelGraph], limit: float = 30.0, hang_seconds: float = 1.0) -> Tally:
    """Every case through every stage; a case over `hang_seconds` (under 10 KB) counts as a hang, and
    the watchdog stops any case at `limit`."""
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="hpspec-fuzz-") as directory:
        for case in cases:
            tally.add(case, run_case(case, graphs[case.target], Path(directory), limit), hang_seconds)
    return tally


def seed_specs(repo: Path) -> list[str]:
    """The repository's own specs, mutated alongside generated ones."""
    return [p.read_text(encoding="utf-8") for p in sorted((repo / "specs").glob("*/*.hps"))]
