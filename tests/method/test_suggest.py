"""Sensitivity tables and `suggest`: the reference's released table, its selection, the baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import SD3Transformer2DModel

from hpspec.model.arch import builtin_models
from hpspec.plan.check import Item
from hpspec.model.graph import graph_from_builtin
from hpspec.method.sensitivity import Cosine, Entry, ScorerInfo, SensitivityTable, TargetRef, import_reference, table_from_json
from hpspec.method.suggest import suggest

from tests.conftest import REPO

REFERENCE = REPO.parent / "shared" / "data" / "sd3.5-large-turbo.hpsv2-sensitivity.json"
SHIPPED_TABLE = REPO / "specs/sd3.5-large-turbo/hpsv2-sensitivity.json"
GRAPH = graph_from_builtin("sd3.5-large-turbo")


def reference_data() -> dict[str, float]:
    if REFERENCE.is_file():
        return json.loads(REFERENCE.read_text())
    pytest.skip("the reference table lives in shared/data beside the repository")


def test_import_maps_names_and_skips_the_absent_part() -> None:
    report = import_reference(reference_data(), GRAPH, 30.29, str(REFERENCE))
    table = report.table
    assert len(table.entries) == 189
    assert report.skipped == ["'37<tab>ff_context': block 37 (context_pre_only) has no context_mlp"]
    first = table.entries[0]
    assert (first.block, first.part, first.score) == (31, "mlp", 30.79238)
    assert first.delta == pytest.approx(30.29 - 30.79238)
    assert sum(e.delta < 0 for e in table.entries) == 6  # removal helped
    assert {e.part for e in table.entries} == {"norm", "context_norm", "attn", "mlp", "context_mlp"}
    assert table_from_json(json.loads(table.to_json()), "roundtrip") == table


def test_shipped_table_is_the_imported_reference() -> None:
    report = import_reference(reference_data(), GRAPH, 30.29, str(REFERENCE))
    assert SHIPPED_TABLE.read_text() == report.table.to_json()


def test_hierarchical_reproduces_the_reference_selection() -> None:
    data = reference_data()
    # Independent count: walk the released table with diffusers' own parameter counts.
    info = builtin_models()["sd3.5-large-turbo"]
    with torch.device("meta"):
        model = SD3Transformer2DModel(**{k: v for k, v in info.config.items() if not k.startswith("_")})
    numel = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    total = numel(model)
    blocks = [25, 26, 27, 28, 31, 32, 33, 34]
    removed = sum(numel(model.transformer_blocks[i]) for i in blocks)
    modules = {"ff": "ff", "ff_context": "ff_context", "w_norm1": "norm1.linear", "w_norm1_context": "norm1_context.linear"}
    expected = []
    for key, _ in sorted(data.items(), key=lambda kv: -kv[1]):
        block, name = key.split("<tab>")
        if not 13 <= int(block) < 19 or name == "attn":
            continue
        removed += numel(model.transformer_blocks[int(block)].get_submodule(modules[name]))
        expected.append((int(block), name))
        if (total - removed) / total < 0.71:
            break
    table = import_reference(data, GRAPH, 30.29, str(REFERENCE)).table
    words = {"ff": "mlp", "ff_context": "context_mlp", "w_norm1": "norm", "w_norm1_context": "context_norm"}
    result = suggest(
        "hierarchical", GRAPH, table, 0.71,
        blocks=[Item(0, "blocks", i) for i in blocks],
        within=[Item(0, "blocks", i) for i in range(13, 19)],
        exclude=["attn"],
    )  # fmt: skip
    assert [(c.block, c.part) for c in result.chosen] == [(b, words[n]) for b, n in expected]
    assert result.kept_fraction == pytest.approx((total - removed) / total, abs=1e-12)


def test_shipped_aggressive_spec_is_what_suggest_writes(cli, tmp_path: Path) -> None:
    out = tmp_path / "aggressive.hps"
    shipped = REPO / "specs/sd3.5-large-turbo/aggressive.hps"
    command = shipped.read_text().splitlines()[1].removeprefix("# hpspec ").split()
    assert command[:3] == ["suggest", "--method", "hierarchical"]
    args = [a.strip("'") for a in command]
    args[args.index("--sensitivity") + 1] = str(SHIPPED_TABLE)
    assert cli(*args, "-o", out).code == 0
    written = out.read_text().splitlines()
    assert [line for line in written if not line.startswith(("# ", "distill"))] == [
        line for line in shipped.read_text().splitlines() if not line.startswith(("# ", "distill"))
    ]


def synthetic(entries: list[Entry], cosine: list[Cosine] = ()) -> SensitivityTable:
    return SensitivityTable(TargetRef(GRAPH.name, GRAPH.fingerprint), ScorerInfo("t", ["t"]), {}, 1.0, entries, list(cosine))


def test_position_weight_removes_the_later_block_first_at_equal_delta() -> None:
    entries = [Entry("blocks", 5, "mlp", 0.9, 0.1), Entry("blocks", 30, "mlp", 0.9, 0.1)]
    within = [Item(0, "blocks", 5), Item(0, "blocks", 30)]
    plain = suggest("hierarchical", GRAPH, synthetic(entries), 0.995, within=within)
    weighted = suggest("hierarchical", GRAPH, synthetic(entries), 0.995, within=within, position_weight=True)
    assert [c.block for c in plain.chosen][0] == 5  # table order among equal scores
    assert [c.block for c in weighted.chosen][0] == 30


def test_baselines_rank_whole_blocks() -> None:
    rows = [Entry("blocks", i, None, 1.0 - 0.01 * (i % 7), 0.01 * (i % 7)) for i in range(38)]
    cosine = [Cosine("blocks", i, 0.5 + i / 100) for i in range(38)]
    koala = suggest("koala", GRAPH, synthetic(rows, cosine), 0.9)
    assert [c.block for c in koala.chosen] == [37, 36, 35, 34]  # most similar input/output first
    bksdm = suggest("bksdm", GRAPH, synthetic(rows, cosine), 0.9)
    assert [c.block for c in bksdm.chosen] == [0, 7, 14, 21]  # ΔP 0, in table order
    # Hand count: four joint blocks of 212,999,680 parameters each; three would leave 92.1%.
    assert bksdm.kept_fraction == pytest.approx(1 - 4 * 212_999_680 / 8_056_627_520, abs=1e-12)
