"""Cheap probes (`hpspec analyze --probe cosine,mse,cka`) against a direct computation here.

The test captures every block's input and output image stream with its own hooks over the same
generation, and computes cosine, mean squared change and linear CKA from their formulas
(CKA: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), columns centred, rows = tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hpspec.core.errors import UsageError  # noqa: E402
from hpspec.demo import default_prompts  # noqa: E402
from hpspec.method.analyze import Settings, demo_subject, probe_analysis  # noqa: E402
from hpspec.method.probes import parse_probes  # noqa: E402
from hpspec.method.sensitivity import load_table  # noqa: E402
from hpspec.model.graph import graph_from_module  # noqa: E402

PROMPTS = default_prompts()[::8][:3]


@pytest.fixture(scope="module")
def subject():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield demo_subject()
    finally:
        torch.set_num_threads(threads)


def _captured(demo) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Every block's (input, output) image stream per call, over one generation of PROMPTS."""
    blocks = demo.transformer.transformer_blocks
    calls: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in blocks]

    def hook(index: int):
        def record(module, args, kwargs, output) -> None:
            calls[index].append((kwargs["hidden_states"].detach().clone(), output[1].detach().clone()))

        return record

    handles = [block.register_forward_hook(hook(i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        with torch.no_grad():
            demo.generator_for(demo.transformer).generate(PROMPTS, 0)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _cka(a: torch.Tensor, b: torch.Tensor) -> float:
    x = a.double().flatten(0, -2)
    y = b.double().flatten(0, -2)
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    return float(
        torch.linalg.matrix_norm(y.T @ x) ** 2 / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y))
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_probes_equal_a_direct_computation(subject, tmp_path: Path) -> None:
    demo, knobs = subject
    out = tmp_path / "probes.json"
    table = probe_analysis(demo, Settings(PROMPTS, [0], False, knobs), ("cosine", "mse", "cka"), out)
    calls = _captured(demo)
    assert [(p.stack, p.block) for p in table.probes] == [("blocks", i) for i in range(12)]
    for probe, block_calls in zip(table.probes, calls):
        assert probe.calls == len(block_calls) > 1
        cosines = [float(((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).mean()) for a, b in block_calls]
        squares = [float(((b.double() - a.double()) ** 2).sum() / a.numel()) for a, b in block_calls]
        ckas = [_cka(a, b) for a, b in block_calls]
        assert probe.cosine == pytest.approx(_mean(cosines), abs=1e-5)
        assert probe.mse == pytest.approx(_mean(squares), rel=1e-9)
        assert probe.cka == pytest.approx(_mean(ckas), rel=1e-9)
        assert 0.0 < probe.cka <= 1.0 + 1e-12
    assert [c.value for c in table.cosine] == [p.cosine for p in table.probes]
    assert len({round(p.mse, 6) for p in table.probes}) > 1  # blocks differ
    assert load_table(out) == table  # the added fields round-trip
    data = json.loads(out.read_text())
    assert set(data["probes"][0]) == {"stack", "block", "part", "cosine", "mse", "cka", "calls"}


def test_only_the_probes_asked_for(subject, tmp_path: Path) -> None:
    demo, knobs = subject
    table = probe_analysis(demo, Settings(PROMPTS[:2], [0], False, knobs), ("mse",), tmp_path / "m.json")
    assert table.cosine == [] and all(p.cosine is None and p.cka is None and p.mse for p in table.probes)


def test_probe_names() -> None:
    assert parse_probes("cka, cosine") == ("cosine", "cka")
    with pytest.raises(UsageError, match="did you mean 'cosine'"):
        parse_probes("cosin")


def test_cli_probe_pass_feeds_koala(cli, tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n")
    out = tmp_path / "probes.json"
    result = cli("analyze", "--model", "demo", "--probe", "cosine,mse,cka", "--prompts", prompts, "-o", out)
    assert result.code == 0, result.err
    table = load_table(out)
    assert len(table.probes) == 12 and table.entries == []
    spec = tmp_path / "koala.hps"
    result = cli("suggest", "--method", "koala", "--target", "demo", "--sensitivity", out, "--keep", "0.8", "-o", spec)
    assert result.code == 0, result.err
    best = max(table.probes, key=lambda p: p.cosine or 0.0)
    assert f"drop block[{best.block}]" in spec.read_text()
    assert cli("analyze", "--model", "demo", "--probe", "cosin", "-o", tmp_path / "x.json").code == 2


# --------------------------------------------------------------------------------------------
# Real pipelines: block rows and per-part residual contributions


def _joined(output) -> torch.Tensor:
    streams = [t for t in (output if isinstance(output, tuple) else (output,)) if t is not None]
    return torch.cat(streams, dim=-2)


def test_pipeline_probes_equal_a_direct_computation(tiny_flux_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """FLUX from the CLI (`--probe --parts`): the test captures every block's call (its arguments and
    outputs) over the pipeline's OWN generation (prompts encoded inside __call__), computes block
    rows from input and output, and part rows by running that block of `hpspec.apply`'s pruned model
    (the one-line spec, on a freshly loaded transformer) on the captured arguments."""
    from diffusers import FluxTransformer2DModel

    from hpspec.cli.app import main
    from hpspec.lang.parse import parse
    from hpspec.method.pipelines import DiffusersPipelineGenerator
    from hpspec.plan.check import check
    from hpspec.plan.compile import compile_plan
    from hpspec.weights.prune import apply
    from tests.tiny_pipelines import SIZE, TEXT_TOKENS

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na red bird\n")
    out = tmp_path / "probes.json"
    flags = ["--steps", "2", "--guidance", "3.5", "--size", str(SIZE), "--max-sequence-length", str(TEXT_TOKENS)]
    assert main(["analyze", "--model", str(tiny_flux_dir), "--probe", "cosine,mse,cka", "--parts",
                 "--prompts", str(prompts), *flags, "-o", str(out)]) == 0  # fmt: skip
    table = load_table(out)

    generator = DiffusersPipelineGenerator.from_pretrained(
        tiny_flux_dir, steps=2, guidance=3.5, height=SIZE, width=SIZE, call_kwargs={"max_sequence_length": TEXT_TOKENS}
    )
    transformer = generator.pipeline.transformer
    stacks = {"double_blocks": transformer.transformer_blocks, "single_blocks": transformer.single_transformer_blocks}
    calls: dict[tuple[str, int], list] = {}

    def hook(key):
        def record(module, args, kwargs, output) -> None:
            calls.setdefault(key, []).append((args, dict(kwargs), output))

        return record

    handles = [
        b.register_forward_hook(hook((s, i)), with_kwargs=True) for s, bs in stacks.items() for i, b in enumerate(bs)
    ]
    with torch.no_grad():
        generator.generate(["a cat", "a red bird"], 0)
    for handle in handles:
        handle.remove()

    rows = {(p.stack, p.block, p.part): p for p in table.probes}
    assert len(rows) == 4 + 2 * 5 + 2 * 3  # 4 blocks; double blocks have 5 parts, single blocks 3
    for (stack, block), block_calls in calls.items():
        probe = rows[(stack, block, None)]
        pairs = [(kw["hidden_states"], out[1]) for _, kw, out in block_calls]
        assert probe.calls == len(pairs) == 2
        assert probe.cosine == pytest.approx(
            _mean([float(torch.cosine_similarity(a, b, dim=-1).mean()) for a, b in pairs]), abs=1e-5
        )
        assert probe.mse == pytest.approx(
            _mean([float(((b.double() - a.double()) ** 2).mean()) for a, b in pairs]), rel=1e-4
        )
        assert probe.cka == pytest.approx(_mean([_cka(a, b) for a, b in pairs]), rel=1e-4)
    graph = graph_from_module(transformer)
    for line, key in (("drop double_block[0].norm", ("double_blocks", 0, "norm")),
                      ("drop double_block[1].context_mlp", ("double_blocks", 1, "context_mlp")),
                      ("drop single_block[1].mlp", ("single_blocks", 1, "mlp"))):  # fmt: skip
        pruned = apply(
            compile_plan(check(parse(line + "\n"), graph)),
            FluxTransformer2DModel.from_pretrained(tiny_flux_dir / "transformer"),
        )
        blocks = pruned.transformer_blocks if key[0] == "double_blocks" else pruned.single_transformer_blocks
        pairs = []
        with torch.no_grad():
            for args, kwargs, output in calls[key[:2]]:
                pairs.append((_joined(output), _joined(blocks[key[1]](*args, **kwargs))))
        probe = rows[key]
        assert probe.calls == 2
        assert probe.cosine == pytest.approx(
            _mean([float(torch.cosine_similarity(a, b, dim=-1).mean()) for a, b in pairs]), abs=1e-5
        )
        assert probe.mse == pytest.approx(
            _mean([float(((b.double() - a.double()) ** 2).mean()) for a, b in pairs]), rel=1e-4
        )
        assert probe.cka == pytest.approx(_mean([_cka(a, b) for a, b in pairs]), rel=1e-4)
        assert probe.mse > 0 and probe.cosine < 1
    assert [c.value for c in table.cosine] == [rows[(s, b, None)].cosine for s, b in calls]
