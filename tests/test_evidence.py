"""The evidence script's reduced version (one row and its nf4 variant, a few steps), so it cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from hpspec.report.inputs import check_evidence
from tests.conftest import REPO


def load_script():
    spec = importlib.util.spec_from_file_location("evidence", REPO / "bench" / "evidence.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["evidence"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_reduced_evidence_run(tmp_path: Path, capsys) -> None:
    threads = torch.get_num_threads()
    try:
        assert load_script().main(["--out", str(tmp_path), "--quick"]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads((tmp_path / "evidence.json").read_text())
    assert [r["method"] for r in rows] == ["HPP + PWP + SGDistill inverse", "... inverse + nf4"]
    distilled, quantized = rows
    assert distilled["params_kept"] == quantized["params_kept"] and 0.65 < distilled["params_kept"] < 0.7
    assert quantized["weight_bytes"] * 5 < distilled["weight_bytes"]  # 4-bit weights, 16-bit rest
    for row in rows:
        assert 0 <= row["prompt_accuracy"] <= 1 and 0 <= row["quality"] <= 1
    # Degradation is the mean relative drop against the unpruned model on the same prompts and seeds.
    from hpspec.demo import default_prompts
    from hpspec.method.analyze import demo_subject
    from hpspec.method.evaluate import evaluate

    subject, _ = demo_subject()
    full = evaluate(subject.generator_for(subject.transformer), subject.scorer, default_prompts()[::4], [0, 1])
    drops = [(full[m] - distilled[m]) / full[m] for m in ("prompt_accuracy", "quality")]
    assert distilled["degradation"] == pytest.approx(sum(drops) / 2, abs=3e-4)
    assert check_evidence(rows, "evidence.json")  # what `hpspec report --evidence` accepts
    assert "| 30% | HPP + PWP + SGDistill inverse |" in capsys.readouterr().out


def test_reduced_shapes_evidence_run(tmp_path: Path, capsys) -> None:
    """The same on the shapes demo: its rows carry the judge's GenEval categories and their spread."""
    from hpspec.demo.models import SHAPES
    from hpspec.method.analyze import demo_subject
    from hpspec.method.evaluate import evaluate

    threads, script = torch.get_num_threads(), load_script()
    try:
        assert script.main(["--out", str(tmp_path), "--quick", "--model", "shapes"]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads((tmp_path / "evidence.json").read_text())
    assert [r["method"] for r in rows] == ["HPP + PWP + SGDistill inverse", "... inverse + nf4"]
    distilled, quantized = rows
    # HierarchicalPrune's stopping rule keeps under the budget (keep 0.7); how far under depends on the table.
    # The shapes model is stored in fp16: nf4 (4 bits, fp16 scales, unquantized norms) is under a third of that.
    assert 0.5 < distilled["params_kept"] <= 0.7 and quantized["weight_bytes"] * 3 < distilled["weight_bytes"]
    for row in rows:
        assert set(SHAPES.metrics) <= set(row) and all(0 <= row[m] <= 1 for m in SHAPES.metrics)
        assert set(row["std"]) == {*SHAPES.metrics, "degradation"}
    subject, _ = demo_subject(model=SHAPES, steps=script.QUICK_SHAPES_STEPS)
    prompts = SHAPES.analysis_set()[::2]
    full = evaluate(subject.generator_for(subject.transformer), subject.scorer, prompts, [0, 1])
    drops = [(full[m] - distilled[m]) / full[m] for m in SHAPES.metrics if full[m] != 0]
    assert distilled["degradation"] == pytest.approx(sum(drops) / len(drops), abs=3e-4)
    assert "| 30% | HPP + PWP + SGDistill inverse |" in capsys.readouterr().out
