"""`hpspec analyze` on pipelines from the command line: the flags, one-line errors that write nothing,
prompt sets with --take, and a probe table that `suggest --method koala` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from hpspec.cli.subjects import is_pipeline  # noqa: E402
from hpspec.method.prompt_sets import take  # noqa: E402
from hpspec.method.sensitivity import load_table  # noqa: E402
from tests.tiny_pipelines import SIZE, TEXT_TOKENS  # noqa: E402

FLAGS = ["--steps", "2", "--size", str(SIZE), "--max-sequence-length", str(TEXT_TOKENS)]
PROMPTS = [f"a {colour} {thing}" for colour in ("red", "blue", "green") for thing in ("cat", "house", "car")]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(PROMPTS), encoding="utf-8")
    return path


def _one_error(result, text: str, folder: Path, before: set[Path]) -> None:
    assert result.code in (1, 2), result.err
    lines = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and text in lines[0], result.err
    assert set(folder.iterdir()) == before  # nothing written


def test_bad_inputs_are_one_error_and_write_nothing(cli, tiny_sd3_dir: Path, prompts: Path, tmp_path: Path) -> None:
    before = set(tmp_path.iterdir())
    out = tmp_path / "t.json"
    model = ["analyze", "--model", tiny_sd3_dir]
    _one_error(cli(*model, "--prompts", prompts, "-o", out), "give --scorer", tmp_path, before)
    _one_error(cli(*model, "--scorer", "clipp=x", "-o", out), "did you mean 'clip'", tmp_path, before)
    _one_error(cli(*model, "--scorer", "clip=x", "--prompts", tmp_path / "none.txt", "-o", out),
               "no such prompt file", tmp_path, before)  # fmt: skip
    _one_error(cli(*model, "--probe", "cosine", "--take", "3", "-o", out), "give the file", tmp_path, before)
    _one_error(cli(*model, "--probe", "cosine", "-o", tmp_path / "no" / "t.json"), "does not exist", tmp_path, before)
    _one_error(cli("analyze", "--model", "demo", "--dtype", "bf16", "-o", out), "--dtype applies", tmp_path, before)
    if not torch.cuda.is_available():
        _one_error(cli(*model, "--probe", "cosine", "--offload", "-o", out), "--offload needs a GPU", tmp_path, before)
    _one_error(cli("analyze", "--model", tmp_path, "--probe", "cosine", "-o", out), "neither", tmp_path, before)
    _one_error(cli("analyze", "--model", "nobody-hpspec/absent", "--probe", "cosine", "-o", out),
               "HF_HUB_OFFLINE", tmp_path, before)  # fmt: skip


def test_is_pipeline(tiny_sd3_dir: Path, tmp_path: Path) -> None:
    assert is_pipeline(str(tiny_sd3_dir)) and is_pipeline("stabilityai/stable-diffusion-3.5-large-turbo")
    assert not is_pipeline(str(tiny_sd3_dir / "transformer")) and not is_pipeline("demo")
    assert not is_pipeline(str(tmp_path / "a" / "b" / "c"))


def test_take_probes_and_koala(cli, tiny_sd3_dir: Path, prompts: Path, tmp_path: Path) -> None:
    """A probe pass over 4 of the 9 prompts (seeded) fills `cosine`; koala drops the highest cosine."""
    out = tmp_path / "probes.json"
    result = cli("analyze", "--model", tiny_sd3_dir, "--probe", "cosine,mse,cka", "--prompts", prompts,
                 "--take", "4", "--seed", "7", "--parts", *FLAGS, "-o", out)  # fmt: skip
    assert result.code == 0, result.err
    assert "probes of 2 blocks and 9 parts" in result.err
    table = load_table(out)
    assert table.settings["prompts"] == take(PROMPTS, 4, seed=7)
    assert [(c.stack, c.block) for c in table.cosine] == [("blocks", 0), ("blocks", 1)]
    spec = tmp_path / "koala.hps"
    target = tiny_sd3_dir / "transformer"
    result = cli("suggest", "--method", "koala", "--target", target, "--sensitivity", out, "--keep", "0.9", "-o", spec)
    assert result.code == 0, result.err
    best = max(table.cosine, key=lambda c: c.value)
    assert f"drop block[{best.block}]" in spec.read_text()
    # The report shows every probe row, block and part, as the table has it.
    page = tmp_path / "r.html"
    result = cli("report", spec, "--sensitivity", out, "-o", page)
    assert result.code == 0, result.err
    html = page.read_text(encoding="utf-8")
    assert 'id="probes"' in html
    for probe in table.probes:
        cells = [probe.part or "(block: input → output)", f"{probe.cosine:.4g}", f"{probe.mse:.4g}", f"{probe.cka:.4g}"]
        row = "".join(f'<td class="num">{c}</td>' for c in cells[1:])
        assert f'<td>blocks[{probe.block}]</td><td class="num">{cells[0]}</td>{row}' in html, probe


def test_scored_analysis_from_the_cli(
    cli, tiny_flux_dir: Path, tiny_clip_dir: Path, prompts: Path, tmp_path: Path
) -> None:
    out = tmp_path / "t.json"
    result = cli("analyze", "--model", tiny_flux_dir, "--scorer", f"pickscore={tiny_clip_dir}", "--prompts", prompts,
                 "--take", "2", "--guidance", "3.5", "--dtype", "fp32", *FLAGS, "-o", out)  # fmt: skip
    assert result.code == 0, result.err
    table = load_table(out)
    assert table.scorer.name == f"pickscore={tiny_clip_dir}" and table.scorer.metrics == ["pickscore"]
    assert [(e.stack, e.block) for e in table.entries] == [("double_blocks", 0), ("double_blocks", 1),
                                                         ("single_blocks", 0), ("single_blocks", 1)]  # fmt: skip
    knobs = table.settings["generator"]
    assert (knobs["family"], knobs["steps"], knobs["size"], knobs["dtype"]) == ("flux", 2, SIZE, "fp32")
    assert knobs["scorer"] == table.scorer.name  # another scorer: another settings hash, nothing reused
    assert all(0.0 <= e.score <= 1.0 for e in table.entries)


def test_save_images_keeps_each_entrys_first_images(
    cli, tiny_sd3_dir: Path, tiny_clip_dir: Path, prompts: Path, tmp_path: Path
) -> None:
    """`--save-images 2`: two PNGs per entry; the full model's equal the pipeline's own images (8 bits)."""
    import numpy as np
    from PIL import Image

    from hpspec.method.pipelines import DiffusersPipelineGenerator

    out = tmp_path / "t.json"
    result = cli("analyze", "--model", tiny_sd3_dir, "--scorer", f"clip={tiny_clip_dir}", "--prompts", prompts,
                 "--take", "3", "--guidance", "2", "--batch-size", "2", "--save-images", "2", *FLAGS, "-o", out)  # fmt: skip
    assert result.code == 0, result.err
    folder = tmp_path / "t.images"
    index = json.loads((folder / "index.json").read_text())
    assert index["prompts"] == take(PROMPTS, 3, seed=0) and index["seeds"] == [0]
    assert index["entries"] == {key: [f"{key}.0.png", f"{key}.1.png"] for key in ("__full__", "blocks[0]", "blocks[1]")}
    own = DiffusersPipelineGenerator.from_pretrained(
        tiny_sd3_dir, steps=2, guidance=2.0, height=SIZE, width=SIZE, batch_size=2,
        call_kwargs={"max_sequence_length": TEXT_TOKENS},
    ).generate(index["prompts"], 0)[:2]  # fmt: skip
    for i in range(2):
        saved = torch.from_numpy(np.array(Image.open(folder / f"__full__.{i}.png"))).permute(2, 0, 1).float() / 255
        assert (saved - own[i]).abs().max() <= 0.5 / 255 + 1e-6
    assert not torch.equal(
        torch.from_numpy(np.array(Image.open(folder / "blocks[0].0.png"))),
        torch.from_numpy(np.array(Image.open(folder / "__full__.0.png"))),
    )
    # The report's contact sheet embeds every kept file, the unpruned model's first.
    import base64

    spec = tmp_path / "s.hps"
    spec.write_text(f'target "{tiny_sd3_dir / "transformer"}"\ndrop block[1].mlp\n', encoding="utf-8")
    page = tmp_path / "r.html"
    result = cli("report", spec, "--sensitivity", out, "-o", page)
    assert result.code == 0, result.err
    html = page.read_text(encoding="utf-8")
    assert 'id="contact-sheet"' in html and html.index("unpruned model") < html.index("<figcaption>blocks[0]")
    for names in index["entries"].values():
        for name in names:
            assert base64.b64encode((folder / name).read_bytes()).decode() in html
    (folder / "blocks[1].1.png").write_bytes(b"not a png")
    result = cli("report", spec, "--sensitivity", out, "-o", tmp_path / "bad.html")
    assert result.code == 1 and "not a PNG" in result.err and not (tmp_path / "bad.html").exists()
