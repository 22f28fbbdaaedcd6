"""analyze, eval and demo on the shipped demo model: values checked against diffusers' own skip_layers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpspec.demo import default_prompts
from hpspec.method.analyze import Settings, analyze, demo_subject
from hpspec.method.evaluate import evaluate
from hpspec.method.sensitivity import load_table, settings_hash
from tests.conftest import REPO

PROMPTS = default_prompts()[::4]  # one prompt per digit


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: oversubscribed threads spin
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def subject(one_thread):
    return demo_subject()


@pytest.fixture(scope="module")
def block_table(subject, tmp_path_factory):
    demo, knobs = subject
    out = tmp_path_factory.mktemp("analyze") / "table.json"
    return analyze(demo, Settings(PROMPTS, [0], False, knobs), out, progress=False), out


def test_block_scores_equal_diffusers_skip_layers(subject, block_table) -> None:
    demo, _ = subject
    table, _ = block_table
    assert [(e.block, e.part) for e in table.entries] == [(i, None) for i in range(12)]
    generator = demo.generator_for(demo.transformer)
    for block in (0, 5):
        reference = evaluate(generator.with_skipped([block]), demo.scorer, PROMPTS, [0])
        entry = table.entries[block]
        assert entry.metrics == {m: reference[m] for m in reference["metrics"]}
        assert entry.score == pytest.approx(sum(entry.metrics.values()) / 2)
        assert entry.delta == pytest.approx(table.full_score - entry.score)
    full = evaluate(generator, demo.scorer, PROMPTS, [0])
    assert table.full_metrics == {m: full[m] for m in full["metrics"]}


def _cosines_by_hand(demo, prompts: list[str]) -> list[float]:
    """Each block's input-output cosine on the image stream, measured here with our own hooks over
    the same generation: per token over channels, averaged over tokens and images, then over calls
    (docs/sensitivity.md, `cosine`)."""
    blocks = demo.transformer.transformer_blocks
    per_call: list[list[float]] = [[] for _ in blocks]

    def hook(index: int):
        def record(module, args, kwargs, output) -> None:
            a, b = kwargs["hidden_states"].double(), output[1].double()  # blocks return (text, image)
            per_call[index].append(float(((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).mean()))

        return record

    handles = [block.register_forward_hook(hook(i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        evaluate(demo.generator_for(demo.transformer), demo.scorer, prompts, [0])
    finally:
        for handle in handles:
            handle.remove()
    return [sum(values) / len(values) for values in per_call]


def test_cosines_are_recorded_per_block(subject, block_table) -> None:
    """The table's cosines equal a direct computation; KOALA drops blocks in the order of ours."""
    from hpspec.method.suggest import suggest
    from hpspec.model.graph import graph_from_module

    demo, _ = subject
    table, _ = block_table
    ours = _cosines_by_hand(demo, PROMPTS)
    assert [(c.stack, c.block) for c in table.cosine] == [("blocks", i) for i in range(12)]
    assert [c.value for c in table.cosine] == pytest.approx(ours, abs=1e-5)
    assert len({round(v, 3) for v in ours}) > 1  # blocks differ
    koala = suggest("koala", graph_from_module(demo.transformer, "demo"), table, 0.8)
    ranking = sorted(range(12), key=lambda i: -ours[i])
    assert [c.block for c in koala.chosen] == ranking[: len(koala.chosen)] and koala.chosen


def test_finished_entries_are_not_redone(subject, tmp_path: Path) -> None:
    demo, knobs = subject
    settings = Settings(PROMPTS[:2], [0], False, knobs)
    out = tmp_path / "t.json"
    partial = tmp_path / ".t.json.partial.rank0.jsonl"
    sentinel = {"prompt_accuracy": 0.123, "quality": 0.456}
    record = {"settings_hash": settings_hash(settings.as_dict()), "key": "blocks[3]", "value": {"metrics": sentinel}}
    partial.write_text(json.dumps(record) + "\n" + '{"torn": ')  # and a line torn by a kill
    table = analyze(demo, settings, out, progress=False)
    assert table is not None and table.entries[3].metrics == sentinel
    assert table.entries[4].metrics != sentinel
    assert not partial.exists() and load_table(out) == table


def test_two_processes_give_the_same_table_as_one(block_table, tmp_path: Path) -> None:
    table, _ = block_table
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "two.json"
    launcher = Path(sys.executable).parent / "accelerate"
    # On CPUs `--multi_gpu` is what makes accelerate (torchrun) start N gloo processes.
    command = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_cpu_threads_per_process", "1",
               "-m", "hpspec.cli", "analyze", "--model", "demo", "--prompts", str(prompts), "-o", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "analyze (rank 1)" in done.stderr  # the second process measured its share
    two = load_table(out)
    assert [(e.block, e.part) for e in two.entries] == [(e.block, e.part) for e in table.entries]
    for a, b in zip(two.entries, table.entries):
        assert a.metrics == pytest.approx(b.metrics, abs=1e-6)
    assert two.full_score == pytest.approx(table.full_score, abs=1e-6)


def test_eval_of_a_compiled_model_against_the_original(cli, tmp_path: Path, one_thread) -> None:
    spec = tmp_path / "s.hps"
    spec.write_text("target demo\ndrop blocks[9]\ndrop block[4].mlp\n")
    assert cli("compile", spec, "--model", "demo", "--out", tmp_path / "out").code == 0
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    result = cli(
        "eval",
        "--model",
        tmp_path / "out/pruned",
        "--reference",
        "demo",
        "--prompts",
        prompts,
        "--seeds",
        "1",
        "--json",
    )
    assert result.code == 0, result.err
    data = json.loads(result.out)
    plan = json.loads((tmp_path / "out/pruned/plan.json").read_text())
    assert data["parameters"] == plan["params"]["after_prune"]
    drops = [(data["reference"][m] - data[m]) / data["reference"][m] for m in data["metrics"]]
    assert data["degradation"] == pytest.approx(sum(drops) / len(drops))


def test_demo_runs_every_method_at_the_same_budget(tmp_path: Path, one_thread) -> None:
    from hpspec.cli.demo import run_demo, table_text

    rows = run_demo(tmp_path, keep=0.8, seeds=(0,), prompts=PROMPTS, say=lambda _: None, distill_steps=3)
    names = ["original", "hierarchical", "+ distill", "+ distill + nf4", "+ distill + int4", "koala", "bksdm"]
    assert [r.method for r in rows] == names
    for row in rows[1:]:
        assert row.params_kept < 0.8 and row.degradation is not None
    for method in ("hierarchical", "koala", "bksdm"):
        assert (tmp_path / f"{method}.hps").is_file() and (tmp_path / method / "pruned" / "plan.json").is_file()
    by_name = {r.method: r for r in rows}
    assert by_name["+ distill"].weight_bytes == by_name["hierarchical"].weight_bytes
    assert by_name["+ distill + nf4"].weight_bytes * 5 < by_name["+ distill"].weight_bytes
    assert (tmp_path / "hierarchical" / "distilled" / "scales.json").is_file()  # SGDistill ran
    text = table_text(rows)
    assert text.splitlines()[0].split() == [
        "method",
        "params",
        "kept",
        "weights",
        "prompt",
        "accuracy",
        "quality",
        "degradation",
    ]


# --------------------------------------------------------------------------------------------
# In-place swap: no copy of the transformer, every module back after every entry


def _modules(transformer) -> list[tuple[str, int]]:
    return [(name, id(module)) for name, module in transformer.named_modules()]


def test_swap_puts_every_module_back_after_every_entry(subject) -> None:
    from hpspec.method.analyze import removal_plan, removals, swapped
    from hpspec.model.graph import graph_from_module
    from tests.tiny_models import same_tensors, state

    demo, _ = subject
    transformer = demo.transformer
    graph = graph_from_module(transformer, "demo")
    before, modules, config = state(transformer), _modules(transformer), dict(transformer.config)
    full = sum(p.numel() for p in transformer.parameters())
    todo = removals(graph, parts=True)
    assert len(todo) == 12 + sum(len(b.words) for b in graph.stacks[0].blocks)
    for removal in todo:
        plan = removal_plan(graph, removal)
        with swapped(transformer, plan) as pruned:
            assert pruned is transformer  # no copy
            assert sum(p.numel() for p in pruned.parameters()) == plan.params.after_prune < full
        assert _modules(transformer) == modules, removal.key
        assert same_tensors(state(transformer), before), removal.key
    assert dict(transformer.config) == config
    last = removal_plan(graph, todo[-5])  # blocks[11]: the new last block is converted (on a copy of it)
    assert any(op.kind == "convert_last_block" for op in last.ops)
    with pytest.raises(RuntimeError, match="inside"):
        with swapped(transformer, last):
            raise RuntimeError("inside")
    assert _modules(transformer) == modules and same_tensors(state(transformer), before)
    assert dict(transformer.config) == config


def test_an_entry_that_raises_restores_the_transformer(subject, tmp_path: Path) -> None:
    from tests.tiny_models import same_tensors, state

    demo, knobs = subject
    before, modules = state(demo.transformer), _modules(demo.transformer)
    calls: list[object] = []

    def generator_for(module):
        calls.append(module)
        if len(calls) == 3:  # the second removal
            raise RuntimeError("generation failed")
        return demo.generator_for(module)

    broken = type(demo)(demo.name, demo.transformer, generator_for, demo.scorer, demo.scorer_name)
    with pytest.raises(RuntimeError, match="generation failed"):
        analyze(broken, Settings(PROMPTS[:2], [0], False, knobs), tmp_path / "t.json", progress=False)
    assert all(module is demo.transformer for module in calls)
    assert _modules(demo.transformer) == modules and same_tensors(state(demo.transformer), before)


def test_a_measured_part_equals_the_model_compile_builds(subject, tmp_path: Path) -> None:
    """Entries measured in place equal `hpspec.apply` of the same one-line spec on a copy (same seeds)."""
    import copy

    from hpspec.lang.parse import parse
    from hpspec.method.analyze import removals
    from hpspec.model.graph import graph_from_module
    from hpspec.plan.check import check
    from hpspec.plan.compile import compile_plan
    from hpspec.weights.prune import apply

    demo, knobs = subject
    prompts = PROMPTS[:3]
    settings = Settings(prompts, [0], True, knobs)
    graph = graph_from_module(demo.transformer, "demo")
    measured = {"blocks[4].mlp": "drop block[4].mlp", "blocks[11]": "drop block[11]",
                "blocks[2].context_norm": "drop block[2].context_norm"}  # fmt: skip
    out = tmp_path / "t.json"
    digest = settings_hash(settings.as_dict())
    sentinel = {"metrics": {"prompt_accuracy": 0.5, "quality": 0.5}}
    lines = [{"settings_hash": digest, "key": "__full__", "value": {**sentinel, "cosine": []}}]
    lines += [{"settings_hash": digest, "key": r.key, "value": sentinel} for r in removals(graph, True)]
    lines = [line for line in lines if line["key"] not in measured]
    out.with_name(f".{out.name}.partial.rank0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    table = analyze(demo, settings, out, progress=False)
    assert table is not None
    by_key = {(e.block, e.part): e for e in table.entries}
    for key, line in measured.items():
        pruned = apply(compile_plan(check(parse(line + "\n"), graph)), copy.deepcopy(demo.transformer))
        reference = evaluate(demo.generator_for(pruned), demo.scorer, prompts, [0])
        block, _, part = key.removeprefix("blocks[").partition("]")
        entry = by_key[(int(block), part.removeprefix(".") or None)]
        assert entry.metrics == {m: reference[m] for m in reference["metrics"]}, key
