"""analyze on real pipelines (tiny SD3 and FLUX built from config, loaded by path): encoders once per
prompt, entries in place (state dict back, memory flat), entries equal `hpspec.apply`'s model scored
through the pipeline's own prompt path, resume after a kill, two ranks equal one."""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import hpspec.method.analyze as analyze_module  # noqa: E402
from hpspec.lang.parse import parse  # noqa: E402
from hpspec.method.analyze import Settings, analyze, removals  # noqa: E402
from hpspec.method.evaluate import evaluate  # noqa: E402
from hpspec.method.pipeline_subject import PipelineRequest, pipeline_subject  # noqa: E402
from hpspec.method.pipelines import DiffusersPipelineGenerator, Sampling  # noqa: E402
from hpspec.method.scorers import CLIPScorer  # noqa: E402
from hpspec.method.sensitivity import load_table, settings_hash  # noqa: E402
from hpspec.model.graph import graph_from_module  # noqa: E402
from hpspec.plan.check import check  # noqa: E402
from hpspec.plan.compile import compile_plan  # noqa: E402
from hpspec.weights.prune import apply  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.tiny_models import same_tensors, state  # noqa: E402
from tests.tiny_pipelines import SIZE, TEXT_TOKENS  # noqa: E402

PROMPTS = ["a cat", "a dog", "a red bird"]
SAMPLING = Sampling(steps=2, guidance=2.0, size=SIZE, batch_size=2)
FLAGS = ["--steps", "2", "--guidance", "2", "--size", str(SIZE), "--batch-size", "2",
         "--max-sequence-length", str(TEXT_TOKENS)]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip(tiny_clip_dir: Path) -> CLIPScorer:
    return CLIPScorer.from_pretrained(tiny_clip_dir)


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


def _subject(directory: Path, scorer, out: Path):
    request = PipelineRequest(str(directory), SAMPLING, max_sequence_length=TEXT_TOKENS)
    return pipeline_subject(request, scorer, "clip", PROMPTS, out)


def test_encoders_run_once_per_prompt_not_per_entry(
    cli, tiny_sd3_dir: Path, tiny_clip_dir: Path, prompts_file: Path, tmp_path: Path, monkeypatch
) -> None:
    """Every text encoder's forward wrapped: it sees each prompt (and SD3's empty negative) once, for
    11 entries and 2 seeds; a second analysis in the same folder encodes nothing."""
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    seen: dict[str, int] = {}

    def counting(cls):
        forward = cls.forward

        def counted(self, input_ids=None, *args, **kwargs):
            seen[cls.__name__] = seen.get(cls.__name__, 0) + input_ids.shape[0]
            return forward(self, input_ids, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", counted)

    counting(CLIPTextModelWithProjection)
    counting(T5EncoderModel)
    out = tmp_path / "t.json"
    args = ["analyze", "--model", tiny_sd3_dir, "--scorer", f"clip={tiny_clip_dir}", "--prompts", prompts_file,
            "--seeds", "2", "--parts", *FLAGS, "--output", out]  # fmt: skip
    result = cli(*args)
    assert result.code == 0, result.err
    assert len(load_table(out).entries) == 11
    # Two CLIPs of one class, one T5: each prompt and the empty prompt once per encoder.
    assert seen == {"CLIPTextModelWithProjection": 2 * (len(PROMPTS) + 1), "T5EncoderModel": len(PROMPTS) + 1}
    seen.clear()
    again = tmp_path / "again.json"  # another table in the same folder: the same cached embeddings
    assert cli(*[a for a in args[:-1] if a != "--parts"], again).code == 0
    assert seen == {}
    assert load_table(again).entries == [e for e in load_table(out).entries if e.part is None]


def test_every_entry_puts_the_state_dict_back(
    tiny_sd3_dir: Path, clip: CLIPScorer, tmp_path: Path, monkeypatch
) -> None:
    """`swapped` wrapped: after each entry the transformer's state dict is bit-identical to before the
    analysis, and its modules are the same objects; an entry that raises restores it too."""
    out = tmp_path / "t.json"
    subject, knobs = _subject(tiny_sd3_dir, clip, out)
    before = state(subject.transformer)
    modules = dict(subject.transformer.named_modules())
    parameters = [id(p) for p in subject.transformer.parameters()]
    checked: list[str] = []
    real = analyze_module.swapped

    class checking:
        def __init__(self, transformer, plan) -> None:
            self.inner = real(transformer, plan)

        def __enter__(self):
            return self.inner.__enter__()

        def __exit__(self, *exc):
            self.inner.__exit__(*exc)
            assert same_tensors(state(subject.transformer), before)
            assert dict(subject.transformer.named_modules()) == modules
            checked.append("entry")

    monkeypatch.setattr(analyze_module, "swapped", checking)
    settings = Settings(PROMPTS, [0], True, knobs)
    analyze(subject, settings, out, progress=False)
    assert len(checked) == 11

    class Failing:
        per_image = True
        calls = 0

        def score(self, images, prompts):
            Failing.calls += 1
            if Failing.calls == 3:
                raise RuntimeError("scorer broke mid-entry")
            return {"x": 0.5}

    with pytest.raises(RuntimeError, match="mid-entry"):
        analyze(dataclasses.replace(subject, scorer=Failing()), settings, tmp_path / "f.json", progress=False)
    assert same_tensors(state(subject.transformer), before)
    assert dict(subject.transformer.named_modules()) == modules
    assert [id(p) for p in subject.transformer.parameters()] == parameters


def _live_tensor_bytes() -> int:
    """Bytes of every tensor storage alive now (found through the garbage collector, each once)."""
    storages = {}
    with warnings.catch_warnings():  # isinstance on some of torch's deprecated objects warns
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def test_live_memory_does_not_grow_with_the_number_of_entries(
    tiny_sd3_dir: Path, clip: CLIPScorer, tmp_path: Path
) -> None:
    """Live tensor bytes, counted while each entry's images are scored, over 11 entries: every entry
    holds exactly what the full model's generation did (no copy of the transformer, no images kept
    from earlier entries), except the last block's removal, whose conversion copies one block."""

    class Recording(CLIPScorer):
        log: list[int] = []
        calls = 0

        def score(self, images, prompts):
            if Recording.calls % 2 == 0:  # 2 batches a generation: count during the first of each
                Recording.log.append(_live_tensor_bytes())
            Recording.calls += 1
            return super().score(images, prompts)

    out = tmp_path / "t.json"
    subject, knobs = _subject(tiny_sd3_dir, Recording(clip.model, clip.tokenizer), out)
    analyze(subject, Settings(PROMPTS, [0], True, knobs), out, progress=False)
    full, *entries = Recording.log
    keys = [r.key for r in removals(graph_from_module(subject.transformer), True)]
    assert len(entries) == len(keys) == 11
    blocks = subject.transformer.transformer_blocks
    block = max(sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks)
    for key, live in zip(keys, entries):
        if key == "blocks[1]":  # dropping the last block converts block 0: a copy of that one block
            assert full < live <= full + block, key
        else:
            assert live == full, key


@pytest.mark.parametrize(
    ("kind", "lines"),
    [
        ("sd3", ["drop block[1]", "drop block[0].attn", "drop block[0].context_mlp"]),
        ("flux", ["drop double_block[1].norm", "drop single_block[0].mlp", "drop single_block[1]"]),
    ],
)
def test_a_measured_entry_equals_the_model_compile_builds(
    kind: str, lines: list[str], tiny_sd3_dir: Path, tiny_flux_dir: Path, clip: CLIPScorer, tmp_path: Path
) -> None:
    """The reference: `hpspec.apply` of the one-line spec on a freshly loaded transformer, put into a
    fresh pipeline that encodes its prompts itself, scored by evaluate() on all images at once."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    directory = tiny_sd3_dir if kind == "sd3" else tiny_flux_dir
    out = tmp_path / "t.json"
    subject, knobs = _subject(directory, clip, out)
    settings = Settings(PROMPTS, [0, 1], True, knobs)
    graph = graph_from_module(subject.transformer)
    plans = {line: compile_plan(check(parse(line + "\n"), graph)) for line in lines}
    wanted = {_key(line) for line in lines}
    digest = settings_hash(settings.as_dict())
    filler = [{"settings_hash": digest, "key": r.key, "value": {"metrics": {"clip_score": 0.0}}}
              for r in removals(graph, True) if r.key not in wanted]  # fmt: skip
    out.with_name(f".{out.name}.partial.rank0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in filler))
    table = analyze(subject, settings, out, progress=False)
    entries = {(e.stack, e.block, e.part): e for e in table.entries}
    cls = SD3Transformer2DModel if kind == "sd3" else FluxTransformer2DModel
    for line, plan in plans.items():
        pruned = apply(plan, cls.from_pretrained(directory / "transformer"))
        generator = DiffusersPipelineGenerator.from_pretrained(
            directory, transformer=pruned, steps=2, guidance=2.0, height=SIZE, width=SIZE, batch_size=2,
            call_kwargs={"max_sequence_length": TEXT_TOKENS},
        )  # fmt: skip
        reference = evaluate(generator, clip, PROMPTS, [0, 1])
        stack, block, part = _where(graph, line)
        assert entries[(stack, block, part)].metrics == pytest.approx({"clip_score": reference["clip_score"]}, abs=1e-6)
    full = evaluate(DiffusersPipelineGenerator.from_pretrained(directory, steps=2, guidance=2.0, height=SIZE,
                    width=SIZE, batch_size=2, call_kwargs={"max_sequence_length": TEXT_TOKENS}), clip, PROMPTS, [0, 1])  # fmt: skip
    assert table.full_score == pytest.approx(full["clip_score"], abs=1e-6)
    assert len({round(entries[_where(graph, line)].score, 6) for line in lines} | {round(table.full_score, 6)}) > 1


def _where(graph, line: str) -> tuple[str, int, str | None]:
    (item,) = check(parse(line + "\n"), graph).drops
    return item.stack, item.block, item.part


def _key(line: str) -> str:
    selector = line.removeprefix("drop ")
    stack, _, rest = selector.partition("[")
    return f"{stack}s[{rest}" if not stack.endswith("s") else selector


def test_resume_after_a_kill_equals_an_uninterrupted_run(
    cli, tiny_flux_dir: Path, tiny_clip_dir: Path, prompts_file: Path, tmp_path: Path
) -> None:
    """SIGKILL right after the first entry is synced (a fault point), then the same command again."""
    args = ["analyze", "--model", str(tiny_flux_dir), "--scorer", f"clip={tiny_clip_dir}", "--prompts",
            str(prompts_file), *FLAGS]  # fmt: skip
    whole = tmp_path / "whole.json"
    assert cli(*args, "-o", whole).code == 0
    resumed = tmp_path / "resumed.json"
    env = {**os.environ, "HPSPEC_FAULT_AT": "analyze.after_entry:kill", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-m", "hpspec.cli", *args, "-o", str(resumed)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    partial = resumed.with_name(f".{resumed.name}.partial.rank0.jsonl")
    assert not resumed.exists() and [json.loads(x)["key"] for x in partial.read_text().splitlines()] == [
        "__full__", "double_blocks[0]",
    ]  # fmt: skip
    assert cli(*args, "-o", resumed).code == 0
    assert resumed.read_text() == whole.read_text()
    assert not partial.exists()


def test_two_ranks_give_the_table_of_one(tiny_sd3_dir: Path, clip: CLIPScorer, tmp_path: Path) -> None:
    """Rank 1 of 2 measures its share (every second entry) into its .partial file; rank 0 measures
    the rest and the full model, merges and writes: the table of a single process."""
    one = tmp_path / "one.json"
    subject, knobs = _subject(tiny_sd3_dir, clip, one)
    settings = Settings(PROMPTS, [0], True, knobs)
    single = analyze(subject, settings, one, progress=False)
    two = tmp_path / "two.json"
    assert analyze(subject, settings, two, progress=False, rank=1, world=2) is None
    share = two.with_name(f".{two.name}.partial.rank1.jsonl").read_text().splitlines()
    assert [json.loads(x)["key"] for x in share] == [
        r.key for r in removals(graph_from_module(subject.transformer), True)
    ][1::2]
    merged = analyze(subject, settings, two, progress=False, rank=0, world=2)
    assert merged is not None and copy.copy(merged.entries) == single.entries
    assert two.read_text() == one.read_text()
