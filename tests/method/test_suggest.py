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
from hpspec.method.sensitivity import Cosine, Entry, ScorerInfo, SensitivityTable, TargetRef, import_reference, load_table, table_from_json
from hpspec.method.suggest import suggest

from tests.conftest import REPO

REFERENCE = REPO.parent / "shared" / "data" / "sd3.5-large-turbo.hpsv2-sensitivity.json"  # beside a checkout, if there
SHIPPED_TABLE = REPO / "specs/sd3.5-large-turbo/hpsv2-sensitivity.json"  # the repository's import of it
REFERENCE_FILE = "sd3.5-large-turbo.hpsv2-sensitivity.json"  # the released table's name (the import records it)
FULL_SCORE = 30.29
GRAPH = graph_from_builtin("sd3.5-large-turbo")
# The reference code's name for each part (its released table's keys), and the module it removes.
REFERENCE_NAMES = {"mlp": "ff", "context_mlp": "ff_context", "norm": "w_norm1", "context_norm": "w_norm1_context", "attn": "attn"}
MODULES = {"mlp": "ff", "context_mlp": "ff_context", "norm": "norm1.linear", "context_norm": "norm1_context.linear"}
ABSENT_KEY = "37<tab>ff_context"  # in the released table, though block 37 (context-pre-only) has no context MLP


def released_table() -> dict[str, float]:
    """The released table in its own format, rebuilt from the repository's copy (which needs nothing
    beside the checkout), with the key the import skips put back."""
    data = {f"{e.block}<tab>{REFERENCE_NAMES[e.part]}": e.score for e in load_table(SHIPPED_TABLE).entries}
    return {**data, ABSENT_KEY: 30.0}


def test_import_maps_names_and_skips_the_absent_part() -> None:
    report = import_reference(released_table(), GRAPH, FULL_SCORE, REFERENCE_FILE)
    table = report.table
    assert len(table.entries) == 189
    assert report.skipped == ["'37<tab>ff_context': block 37 (context_pre_only) has no context_mlp"]
    first = table.entries[0]
    assert (first.block, first.part, first.score) == (31, "mlp", 30.79238)
    assert first.delta == pytest.approx(FULL_SCORE - 30.79238)
    assert sum(e.delta < 0 for e in table.entries) == 6  # removal helped
    assert {e.part for e in table.entries} == {"norm", "context_norm", "attn", "mlp", "context_mlp"}
    assert table_from_json(json.loads(table.to_json()), "roundtrip") == table
    assert table.to_json() == SHIPPED_TABLE.read_text()  # the repository's file, byte for byte


def test_shipped_table_is_the_imported_reference() -> None:
    if not REFERENCE.is_file():
        pytest.skip("no ../shared/data beside this checkout: nothing to compare the shipped table with")
    data = json.loads(REFERENCE.read_text())
    report = import_reference(data, GRAPH, FULL_SCORE, str(REFERENCE))
    assert SHIPPED_TABLE.read_text() == report.table.to_json()
    assert {k: v for k, v in released_table().items() if k != ABSENT_KEY} == {k: v for k, v in data.items() if k != ABSENT_KEY}


def test_hierarchical_reproduces_the_reference_selection() -> None:
    table = load_table(SHIPPED_TABLE)
    # Independent count: walk the table with diffusers' own parameter counts.
    info = builtin_models()["sd3.5-large-turbo"]
    with torch.device("meta"):
        model = SD3Transformer2DModel(**{k: v for k, v in info.config.items() if not k.startswith("_")})
    numel = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    total = numel(model)
    blocks = [25, 26, 27, 28, 31, 32, 33, 34]
    removed = sum(numel(model.transformer_blocks[i]) for i in blocks)
    expected = []
    for entry in sorted(table.entries, key=lambda e: -e.score):  # stable: equal scores in the table's order
        if not 13 <= entry.block < 19 or entry.part == "attn":
            continue
        removed += numel(model.transformer_blocks[entry.block].get_submodule(MODULES[entry.part]))
        expected.append((entry.block, entry.part))
        if (total - removed) / total < 0.71:
            break
    result = suggest(
        "hierarchical", GRAPH, table, 0.71,
        blocks=[Item(0, "blocks", i) for i in blocks],
        within=[Item(0, "blocks", i) for i in range(13, 19)],
        exclude=["attn"],
    )  # fmt: skip
    assert [(c.block, c.part) for c in result.chosen] == expected
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
