"""`hpspec report`: one self-contained, deterministic, escaped HTML page per plan."""

from __future__ import annotations

import base64
import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from hpspec.plan.front import plan_spec
from hpspec.plan.plan import Plan
from hpspec.report.html import build_page, render_report, split_comment
from hpspec.report.inputs import ReportInputs
from hpspec.report.blockmap import spans
from hpspec.core.errors import ImageError
from hpspec.report.images import image_grid_payload, png_bytes
from hpspec.plan.schema import load_plan

from tests.conftest import REPO

SPECS = REPO / "specs"
AGGRESSIVE = SPECS / "sd3.5-large-turbo/aggressive.hps"
MODERATE = SPECS / "sd3.5-large-turbo/moderate.hps"
TABLE = SPECS / "sd3.5-large-turbo/hpsv2-sensitivity.json"
FLUX = SPECS / "flux.1-schnell/example.hps"


@pytest.fixture(scope="module")
def aggressive() -> Plan:
    return plan_spec(AGGRESSIVE)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _blocks(page: dict[str, Any], stack: str = "blocks") -> dict[int, Any]:
    found = next(s for s in page["block_map"]["stacks"] if s.name == stack)
    return {b.index: b for b in found.blocks}


def _states(block: Any) -> dict[str, str]:
    """part word -> the cell's classes after `cell`."""
    return {c.word: " ".join(c.css.split()[1:]) for c in block.cells}


# --------------------------------------------------------------------------------------------
# The page as a whole


def test_cli_writes_one_self_contained_page(cli, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    assert cli("plan", "--format", "json", "-o", plan, AGGRESSIVE).code == 0
    out = tmp_path / "report.html"
    assert cli("report", plan, "--sensitivity", TABLE, "-o", out).code == 0
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert len(re.findall(r'data-block="\d+"', html)) == 38
    # Nothing outside the file: no scripts, no external sources, only in-page links.
    assert "<script" not in html.lower() and "@import" not in html and "url(" not in html
    assert all(v.startswith("data:") for v in re.findall(r'\ssrc="([^"]*)"', html))
    assert all(v.startswith("#") for v in re.findall(r'\shref="([^"]*)"', html))
    assert "default-src 'none'" in html  # and a policy that would refuse them anyway
    for needle in ("sha256:9926e90a0dfe1846ce7bc3d9f84d7e62", "70.5%", "Sensitivity", "<svg", "@media print"):
        assert needle in html
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json", "report.html"]


def test_same_inputs_same_bytes_from_plan_or_spec(cli, tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    cli("plan", "--format", "json", "-o", plan, AGGRESSIVE)
    first = cli("report", plan, "--sensitivity", TABLE, "--against", MODERATE).out
    assert cli("report", plan, "--sensitivity", TABLE, "--against", MODERATE).out == first
    # A plan written to disk and the spec compiled in place give the same page.
    assert cli("report", plan).out == cli("report", AGGRESSIVE).out


def test_report_does_not_import_torch(tmp_path: Path) -> None:
    program = f"""
import sys
from hpspec.cli import main
code = main(["report", {str(AGGRESSIVE)!r}, "--sensitivity", {str(TABLE)!r}, "-o", {str(tmp_path / "r.html")!r}])
print(code, sorted(m for m in ("torch", "diffusers", "transformers", "safetensors") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip().splitlines()[-1] == "0 []"


def test_hostile_strings_are_text(cli, tmp_path: Path) -> None:
    spec = _write(
        tmp_path / "<img src=x onerror=alert(2)>.hps",
        "# <script>alert(1)</script>\ntarget sd3.5-large-turbo\ndrop block[30]  # </td><b>x</b>\npreserve auto\n",
    )
    plan_file = tmp_path / "plan.json"
    assert cli("plan", "--format", "json", "-o", plan_file, spec).code == 0
    data = json.loads(plan_file.read_text())
    data["target"]["name"] = "<script>alert(3)</script>"  # a target that resolves nowhere
    data["target"]["source"] = "config:/nonexistent/<svg onload=alert(4)>"
    _write(plan_file, json.dumps(data))
    evidence = _write(tmp_path / "evidence.json", json.dumps([{"method": "<script>alert(5)</script>", "x": 1}]))
    html = cli("report", plan_file, "--evidence", evidence).out
    assert "<script" not in html and "<img" not in html and "<svg onload" not in html and "<b>x" not in html
    for n in range(1, 6):
        assert f"alert({n})" in html  # shown, as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "could not be loaded here" in html  # the fallback layout, from the family's data
    assert len(re.findall(r'data-block="\d+"', html)) == 38


# --------------------------------------------------------------------------------------------
# The block map


def test_block_map_shows_the_hierarchy(aggressive: Plan) -> None:
    page = build_page(ReportInputs(aggressive))
    blocks = _blocks(page)
    assert len(blocks) == 38
    assert set(_states(blocks[0]).values()) == {"frozen"}
    assert _states(blocks[13]) == {"norm": "frozen", "context_norm": "frozen", "attn": "frozen",
                                   "mlp": "part-dropped", "context_mlp": "part-dropped"}  # fmt: skip
    assert _states(blocks[14])["context_norm"] == "part-dropped" and _states(blocks[14])["attn"] == "trainable"
    assert "dropped" in blocks[25].css and set(_states(blocks[25]).values()) == {"dropped"}
    assert blocks[29].new_index == "25" and blocks[25].new_index == "–"
    assert _states(blocks[37])["context_mlp"] == "absent"  # the context-pre-only last block
    outline = next(s for s in page["block_map"]["stacks"]).outline
    assert outline == ["frozen blocks[0–13]", "trainable blocks[14–24, 29–30, 35–37]",
                       "parts dropped blocks[13–18]", "dropped blocks[25–28, 31–34]"]  # fmt: skip
    assert "goes with" not in blocks[13].title and "47.33M" in blocks[13].cells[3].title


def test_flux_shows_both_stacks_quantized(tmp_path: Path) -> None:
    page = build_page(ReportInputs(plan_spec(FLUX)))
    assert [(s.name, s.columns) for s in page["block_map"]["stacks"]] == [("double_blocks", 19), ("single_blocks", 38)]
    double, single = _blocks(page, "double_blocks"), _blocks(page, "single_blocks")
    assert _states(double[15])["context_mlp"] == "part-dropped"
    assert _states(double[0])["norm"] == "frozen q" and _states(single[0])["attn"] == "trainable q"
    assert list(_states(single[0])) == ["norm", "mlp", "attn"] and "dropped" in single[28].css
    assert page["summary"]["stages"][2][:4] == ["after quantize (nf4)", "10,607,418,432", "89.2%", "5.48 GB"]


def test_last_block_conversion_and_full_precision_exceptions(tmp_path: Path) -> None:
    spec = _write(tmp_path / "s.hps", 'target sd3.5-large-turbo\ndrop block[37]\nquantize nf4 except block[36].attn, "proj_out"\n')
    blocks = _blocks(build_page(ReportInputs(plan_spec(spec))))
    states = _states(blocks[36])
    assert states["context_mlp"] == "converted"  # nothing reads it once block 36 is last
    assert states["attn"] == "kept trimmed fp" and states["context_norm"] == "kept trimmed q"
    assert "converted" in blocks[36].css and "context-pre-only" in blocks[36].title


def test_update_scales_show_in_trainable_cells(aggressive: Plan) -> None:
    scales = {"transformer_blocks.20": 0.25, "transformer_blocks.21.ff": 0.0}  # a distill stage's scales.json
    page = build_page(ReportInputs(aggressive, scales=scales))
    blocks = _blocks(page)
    assert {c.text for c in blocks[20].cells} == {"0.25"} and "update scale 0.25" in blocks[20].cells[0].title
    assert [c.text for c in blocks[21].cells] == ["", "", "", "0", ""]
    assert page["block_map"]["scales"] is True


def test_against_an_older_plan(cli, aggressive: Plan) -> None:
    page = build_page(ReportInputs(aggressive, against=plan_spec(MODERATE), labels=("moderate", "aggressive")))
    diff = page["diff"]
    assert diff["headline"] == "15 parts newly dropped; parameters -674,456,832 (-8.37% of the model)."
    assert [s["title"] for s in diff["sections"]][:2] == ["Newly dropped", "Freeze"]
    assert diff["sections"][0]["lines"][0] == [{"text": "block[13].context_mlp", "code": True}, {"text": ": 47,329,152 parameters", "code": False}]
    assert "new" in _states(_blocks(page)[13])["mlp"] and "new" not in _states(_blocks(page)[25])["norm"]
    restored = build_page(ReportInputs(plan_spec(MODERATE), against=aggressive))
    assert "restored" in _states(_blocks(restored)[13])["mlp"]
    same = build_page(ReportInputs(aggressive, against=aggressive))
    assert same["diff"]["headline"] == "No semantic change: both compile to the same plan."


# --------------------------------------------------------------------------------------------
# Sensitivity, evaluation, evidence, spec


def test_sensitivity_heatmap_marks_dropped_cells(aggressive: Plan) -> None:
    from hpspec.method.sensitivity import load_table

    section = build_page(ReportInputs(aggressive, sensitivity=load_table(TABLE)))["sensitivity"]
    svg = str(section["maps"][0]["svg"])
    assert svg.count("<path") == 8 * 5 + 15  # a cross per dropped cell: 8 blocks x 5 parts, 15 parts
    assert "block[31].mlp: score 30.79, ΔP -0.5024 · dropped by the plan" in svg
    assert "6 entries score above the full model" in json.dumps(section["facts"], ensure_ascii=False)


def test_sensitivity_of_another_model_is_refused(cli, tmp_path: Path) -> None:
    result = cli("report", FLUX, "--sensitivity", TABLE)
    assert result.code == 1 and "not on the plan's flux.1-schnell" in result.err


def _decode_png(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """(width, height, colour type, rows) of an unfiltered 8-bit PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind] = body
        pos += 12 + length
    width, height, _, colour, *_ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    raw = zlib.decompress(chunks[b"IDAT"])
    stride = 1 + width * (1 if colour == 0 else 3)
    return width, height, colour, [raw[i * stride + 1 : (i + 1) * stride] for i in range(height)]


def test_png_and_image_grid_payload() -> None:
    width, height, colour, rows = _decode_png(png_bytes([[[0], [255]], [[128], [7]]]))
    assert (width, height, colour, rows) == (2, 2, 0, [bytes([0, 255]), bytes([128, 7])])
    grey = [[[[((i + y + x) % 8) / 7 for x in range(8)] for y in range(8)]] for i in range(4)]  # (4, 1, 8, 8)
    rgb = [[[[c / 2, 1.5, -1.0]] for c in range(3)] for _ in range(4)]  # (4, 3, 1, 3), clamped
    payload = image_grid_payload(["zero", "one"], grey, rgb)
    assert payload["prompts"] == ["zero", "one"] and [len(r) for r in payload["original"]] == [2, 2]
    # Image k belongs to prompt k % P (every prompt once per seed): original[1] holds images 1 and 3.
    assert _decode_png(base64.b64decode(payload["original"][1][1]))[3][0] == bytes(round(255 * ((3 + x) % 8) / 7) for x in range(8))
    assert _decode_png(base64.b64decode(payload["pruned"][0][0]))[3] == [bytes([0, 128, 255, 255, 255, 255, 0, 0, 0])]
    with pytest.raises(ImageError, match="multiple"):
        image_grid_payload(["a", "b", "c"], grey, grey)


def test_evaluation_and_evidence(cli, tmp_path: Path) -> None:
    images = image_grid_payload(["a <b>digit</b> 3"], [[[[0.0, 1.0]]]], [[[[1.0, 0.0]]]])
    result = {"prompt_accuracy": 0.9, "quality": 0.75, "metrics": ["prompt_accuracy", "quality"], "num_images": 1,
              "latency_s_per_image": 0.0125, "degradation": 0.05, "relative_drop": {"prompt_accuracy": 0.1, "quality": 0.0},
              "reference": {"prompt_accuracy": 1.0, "quality": 0.75, "latency_s_per_image": 0.02}, "images": images}  # fmt: skip
    evaluation = _write(tmp_path / "eval.json", json.dumps(result))
    evidence = _write(tmp_path / "evidence.json", json.dumps({"rows": [{"method": "HPP", "params_kept": 0.705, "ok": True}]}))
    html = cli("report", AGGRESSIVE, "--eval", evaluation, "--evidence", evidence).out
    assert "<td class=\"num\">0.9</td><td class=\"num\">1</td><td class=\"num\">10.00%</td>" in html
    assert "12.50 ms (reference 20.00 ms)" in html and "5.00%" in html
    assert html.count('src="data:image/png;base64,') == 2 and "a &lt;b&gt;digit&lt;/b&gt; 3" in html
    assert '<td class="">HPP</td><td class="num">0.705</td><td class="">yes</td>' in html


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"quality": 1}, "`metrics` list"),
        ({"metrics": ["quality"], "quality": "high"}, "no numeric value"),
        ({"metrics": [], "images": {"prompts": ["a"], "original": [["bm90IGEgcG5n"]], "pruned": [[]]}}, "not a PNG"),
        ({"metrics": [], "images": {"prompts": ["a"], "original": [], "pruned": []}}, "one list of images per prompt"),
    ],
)
def test_malformed_evaluation_is_an_error(cli, tmp_path: Path, bad: dict[str, Any], message: str) -> None:
    result = cli("report", AGGRESSIVE, "--eval", _write(tmp_path / "e.json", json.dumps(bad)))
    assert result.code == 1 and message in result.err and result.out == ""


def test_spec_source_with_diagnostics_at_their_lines(cli, tmp_path: Path) -> None:
    spec = _write(tmp_path / "w.hps", 'target sd3.5-large-turbo\n# all parts\ndrop block[30].norm, block[30].context_norm, block[30].attn, block[30].mlp, block[30].context_mlp\n')
    page = build_page(ReportInputs(plan_spec(spec)))
    lines = page["spec"]["lines"]
    assert [line.number for line in lines if line.notes] == [3] and lines[1].comment == "# all parts"
    assert lines[2].notes[0]["severity"] == "warning" and lines[2].notes[0]["where"].startswith("line 3")
    assert split_comment('distill table="a#b.json"  # c') == ('distill table="a#b.json"  ', "# c")
    assert spans([3, 1, 2, 7, 9, 10]) == "1–3, 7, 9–10"


def test_plan_read_back_renders_like_the_compiled_plan(aggressive: Plan) -> None:
    assert render_report(ReportInputs(load_plan(aggressive.to_json()))) == render_report(ReportInputs(aggressive))
