"""`hpspec eval` on real pipelines, by path: stage directories that `hpspec compile` wrote from the tiny
SD3 pipeline's transformer, dropped into `--pipeline`, against the pipeline as diffusers runs it by
hand (the same seeds and knobs) and scored by the same CLIP scorer; the degradation from those two
numbers; the JSON's columns; bad inputs as one error line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from hpspec.cli.app import main  # noqa: E402
from tests.tiny_models import isolated  # noqa: E402

PROMPTS = ["a red cat", "a blue dog", "a green bird"]
STEPS, GUIDANCE, SIZE = 2, 2.0, 16
KNOBS = ["--steps", str(STEPS), "--guidance", str(GUIDANCE), "--size", str(SIZE)]
SPECS = {"block": "drop blocks[0]\n", "part": "drop block[0].mlp\n", "int4": "drop blocks[0]\nquantize int4\n"}


@pytest.fixture(scope="module", autouse=True)
def quiet(tmp_path_factory: pytest.TempPathFactory):
    with isolated(tmp_path_factory.mktemp("cache")), pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def out(tiny_sd3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT directories compiled from the tiny pipeline's transformer, one per spec in SPECS."""
    root = tmp_path_factory.mktemp("eval-out")
    transformer = tiny_sd3_dir / "transformer"
    for name, body in SPECS.items():
        spec = root / f"{name}.hps"
        spec.write_text(f'target "{transformer}"\n{body}')
        assert main(["compile", str(spec), "--model", str(transformer), "--out", str(root / name), "--no-report"]) == 0
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


def by_hand(
    pipeline_dir: Path,
    clip_dir: Path,
    seeds: list[int],
    transformer: torch.nn.Module | None = None,
    guidance: float | None = GUIDANCE,
    **parts: object,
) -> float:
    """The pipeline as diffusers runs it (the transformer put in through from_pretrained), CLIP-scored;
    `guidance` None: the pipeline's own default."""
    from diffusers import DiffusionPipeline

    from hpspec.method.scorers import CLIPScorer

    call = parts.pop("call", {})
    assert isinstance(call, dict)
    if transformer is not None:
        parts["transformer"] = transformer
    pipe = DiffusionPipeline.from_pretrained(pipeline_dir, local_files_only=True, **parts)
    pipe.set_progress_bar_config(disable=True)
    images = []
    for seed in seeds:
        generator = torch.Generator("cpu").manual_seed(seed)
        images.append(
            pipe(
                prompt=PROMPTS, num_inference_steps=STEPS, height=SIZE, width=SIZE, generator=generator,
                output_type="pt", **({} if guidance is None else {"guidance_scale": guidance}), **call,
            ).images
        )  # fmt: skip
    scorer = CLIPScorer.from_pretrained(clip_dir)
    return scorer.score(torch.cat(images).float().clamp(0, 1), PROMPTS * len(seeds))["clip_score"]


def file_bytes(directory: Path) -> int:
    """Every tensor's bytes in a directory's safetensors files, from their headers."""
    from safetensors import safe_open

    total = 0
    for shard in directory.glob("*.safetensors"):
        with safe_open(shard, "pt") as handle:
            for name in handle.keys():
                info = handle.get_slice(name)
                dtype = getattr(torch, {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "I8": "int8",
                                        "U8": "uint8", "I32": "int32", "I64": "int64"}[info.get_dtype()])  # fmt: skip
                count = 1
                for n in info.get_shape():
                    count *= n
                total += count * torch.empty((), dtype=dtype).element_size()
    return total


def test_a_pruned_stage_in_a_pipeline_scores_what_diffusers_makes_by_hand(
    cli, out: Path, tiny_sd3_dir: Path, tiny_clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`drop blocks[0]` leaves a model diffusers loads by itself (num_layers 1, blocks renumbered).
    The reference is --pipeline itself: its components load once, the stage put in its transformer's place."""
    from diffusers import SD3Transformer2DModel

    import hpspec.method.eval_models as eval_models

    loads: list[str] = []
    real = eval_models.load_pipeline
    monkeypatch.setattr(eval_models, "load_pipeline", lambda where, **kw: loads.append(str(where)) or real(where, **kw))
    pruned = out / "block" / "pruned"
    result = cli(
        "eval", "--model", pruned, "--pipeline", tiny_sd3_dir, "--reference", tiny_sd3_dir,
        "--scorer", f"clip={tiny_clip_dir}", "--prompts", out / "prompts.txt", "--seeds", "2", *KNOBS,
        "-o", tmp_path / "eval.json",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = json.loads((tmp_path / "eval.json").read_text())
    assert loads == [str(tiny_sd3_dir)]

    model = SD3Transformer2DModel.from_pretrained(pruned)
    mine = by_hand(tiny_sd3_dir, tiny_clip_dir, [0, 1], model)
    ref = by_hand(tiny_sd3_dir, tiny_clip_dir, [0, 1])
    assert mine != ref  # the removal changes the images
    assert data["clip_score"] == pytest.approx(mine, abs=1e-6)
    assert data["reference"]["clip_score"] == pytest.approx(ref, abs=1e-6)
    assert data["relative_drop"] == {"clip_score": pytest.approx((ref - mine) / ref, abs=1e-5)}
    assert data["degradation"] == pytest.approx((ref - mine) / ref, abs=1e-5)
    words = " ".join(result.out.split())
    assert f"degradation {100 * data['degradation']:.2f}%" in words

    # The paper's other columns: counted here from the live models and the files' headers.
    original = SD3Transformer2DModel.from_pretrained(tiny_sd3_dir / "transformer")
    assert data["parameters"] == sum(p.numel() for p in model.parameters())
    assert data["reference"]["parameters"] == sum(p.numel() for p in original.parameters())
    assert data["weight_bytes"] == file_bytes(pruned)
    assert data["reference"]["weight_bytes"] == file_bytes(tiny_sd3_dir / "transformer")
    assert data["num_images"] == data["reference"]["num_images"] == 2 * len(PROMPTS)
    for side in (data, data["reference"]):
        assert side["latency_s_per_image"] > 0
        assert side["peak_memory_bytes"] >= 0 and side["peak_memory_measure"].startswith("cpu peak RSS")
    assert data["scorer"] == f"clip={tiny_clip_dir}"
    assert data["settings"]["steps"] == STEPS and data["settings"]["dtype"] == "fp32"
    for label in ("latency per image", "peak memory", "parameters", "weight bytes"):
        assert label in result.out


def test_a_part_drop_stage_equals_hpspec_apply_in_the_pipeline_by_hand(
    cli, out: Path, tiny_sd3_dir: Path, tiny_clip_dir: Path
) -> None:
    """A part drop loads through load_pretrained's stand-ins; by hand: the live surgery of hpspec.apply."""
    from diffusers import SD3Transformer2DModel

    import hpspec

    pruned = out / "part" / "pruned"
    result = cli(
        "eval", "--model", pruned, "--pipeline", tiny_sd3_dir, "--scorer", f"clip={tiny_clip_dir}",
        "--prompts", out / "prompts.txt", "--seeds", "1", *KNOBS, "--format", "json",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = json.loads(result.out)
    plan = hpspec.plan_spec(out / "part.hps")
    live = hpspec.apply(plan, SD3Transformer2DModel.from_pretrained(tiny_sd3_dir / "transformer"))
    assert data["clip_score"] == pytest.approx(by_hand(tiny_sd3_dir, tiny_clip_dir, [0], live), abs=1e-6)
    assert data["parameters"] == plan.params.after_prune
    assert "degradation" not in data and "reference" not in data  # no --reference: nothing to compare


def test_a_flux_pipeline_as_the_model(cli, out: Path, tiny_flux_dir: Path, tiny_clip_dir: Path) -> None:
    """A pipeline directory is a model by itself (no --pipeline); FLUX, with --max-sequence-length."""
    result = cli(
        "eval", "--model", tiny_flux_dir, "--scorer", f"clip={tiny_clip_dir}", "--prompts", out / "prompts.txt",
        "--seeds", "1", *KNOBS, "--max-sequence-length", "16", "--format", "json",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["kind"] == "pipeline" and "pipeline" not in data
    expected = by_hand(tiny_flux_dir, tiny_clip_dir, [0], call={"max_sequence_length": 16})
    assert data["clip_score"] == pytest.approx(expected, abs=1e-6)


def test_a_quantized_stage_against_a_transformer_directory(
    cli, out: Path, tiny_sd3_dir: Path, tiny_clip_dir: Path
) -> None:
    """OUT/quantized loads through its back end (quanto int4 here); the reference is a bare transformer
    directory run inside the same --pipeline, which is the pipeline itself by hand."""
    plan = json.loads((out / "int4" / "quantized" / "plan.json").read_text())
    result = cli(
        "eval", "--model", out / "int4" / "quantized", "--pipeline", tiny_sd3_dir,
        "--reference", tiny_sd3_dir / "transformer", "--scorer", f"clip={tiny_clip_dir}",
        "--prompts", out / "prompts.txt", "--seeds", "1", "--steps", str(STEPS), "--size", str(SIZE), "--json",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["parameters"] == plan["params"]["after_prune"]  # the weights the packed Linears stand for
    assert data["weight_bytes"] < file_bytes(out / "int4" / "pruned") / 2
    assert data["settings"]["dtype"] == plan["quantize"]["compute"] == "bf16"
    assert 0.0 <= data["clip_score"] <= 1.0
    # Without --dtype, the reference runs at the quantized stage's compute dtype too.
    assert data["reference"]["kind"] == "transformer" and data["reference"]["settings"]["dtype"] == "bf16"
    # No --guidance: the pipeline's own default (SD3's 7.0, classifier-free guidance), by hand too.
    ref = by_hand(tiny_sd3_dir, tiny_clip_dir, [0], guidance=None, torch_dtype=torch.bfloat16)
    assert data["reference"]["clip_score"] == pytest.approx(ref, abs=1e-6)
    assert data["settings"]["guidance"] == 7.0


def test_a_quantized_stage_without_its_backend_is_one_error_line(
    cli, out: Path, tiny_sd3_dir: Path, tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """optimum-quanto missing (its hpspec back end unimportable): one line naming the extra to install."""
    monkeypatch.setitem(sys.modules, "hpspec.weights.backends.quanto", None)
    result = cli(
        "eval", "--model", out / "int4" / "quantized", "--pipeline", tiny_sd3_dir,
        "--scorer", f"clip={tiny_clip_dir}", "--prompts", out / "prompts.txt", "--seeds", "1", *KNOBS,
    )  # fmt: skip
    assert result.code == 1 and result.out == ""
    errors = [line for line in result.err.splitlines() if "error:" in line]  # after the scorer's loading bar
    assert len(errors) == 1 and errors[0].split("error:")[1].strip().startswith("quantize int4 needs optimum-quanto")
    assert "hpspec[quanto]" in errors[0] and result.err.rstrip().endswith(errors[0].split("error:")[1].strip())


USAGE, INPUT = 2, 1  # a wrong command line (UsageError), a wrong thing on disk (TargetError)


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["--model", "{out}/block/pruned", "--scorer", "clip={clip}"], USAGE, "--pipeline DIR_OR_ID"),
        (["--model", "{sd3}/transformer", "--scorer", "clip={clip}"], USAGE, "a transformer directory"),
        (
            ["--model", "{out}/block/pruned", "--pipeline", "{sd3}", "--scorer", "clipp={clip}"],
            USAGE,
            "did you mean 'clip'",
        ),
        (["--model", "{sd3}"], USAGE, "--scorer"),
        (["--model", "{sd3}", "--reference", "{out}/int4/pruned", "--scorer", "clip={clip}"], USAGE, "--pipeline"),
        (["--model", "{sd3}", "--scorer", "clip={clip}", "--offload"], USAGE, "needs --device cuda"),
        (["--model", "demo", "--scorer", "clip={clip}"], USAGE, "scored by --scorer demo"),
        (["--model", "{out}/block", "--pipeline", "{sd3}", "--scorer", "clip={clip}"], INPUT, "did you mean"),
        (
            ["--model", "{out}/int4/quantized", "--pipeline", "{sd3}", "--scorer", "clip={clip}", "--dtype", "fp32"],
            USAGE,
            "quantized with compute bf16",
        ),
        (
            ["--model", "{sd3}", "--pipeline", "{out}/block/pruned", "--scorer", "clip={clip}"],
            INPUT,
            "expected a pipeline",
        ),
        (["--model", "nobody/nothing", "--scorer", "clip={clip}"], INPUT, "not in the local Hugging Face cache"),
        (["--model", "{out}/prompts.txt", "--scorer", "clip={clip}"], INPUT, "a file; expected"),
        (["--model", "demo", "--reference", "{out}/missing"], USAGE, "--reference {out}/missing: no such directory"),
        (["--model", "demo", "--reference", "{out}"], USAGE, "--reference {out}: neither a demo-shaped"),
    ],
)
def test_bad_inputs_are_one_error_line(
    cli, out: Path, tiny_sd3_dir: Path, tiny_clip_dir: Path, tmp_path: Path, args: list[str], code: int, says: str
) -> None:
    filled = [a.format(out=out, sd3=tiny_sd3_dir, clip=tiny_clip_dir) for a in args]
    says = says.format(out=out)
    written = tmp_path / "eval.json"
    result = cli("eval", *filled, "--prompts", out / "prompts.txt", "-o", written)
    assert result.code == code, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], result.err
    assert result.out == "" and not written.exists()


def test_json_is_an_alias_of_format_json() -> None:
    from hpspec.cli.app import build_parser

    argv = ["eval", "--model", "demo", "--json"]
    assert build_parser(argv).parse_args(argv).format == "json"
    argv = ["eval", "--model", "demo"]
    assert build_parser(argv).parse_args(argv).format == "text"


def test_the_shapes_demo_is_evaluated_with_its_own_judge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A shapes-shaped directory takes the shapes route: GenEval's categories, not the digits' metrics,
    equal to generating with the demo's sampler and judging with ShapesScorer by hand."""
    import torch

    from hpspec.demo.sampler import DemoGenerator
    from hpspec.demo.shapes import SHAPES_TRANSFORMER_DIR, ShapesScorer, load_shapes_transformer
    from hpspec.demo.shapes.prompts import CATEGORIES, analysis_prompts

    prompts = analysis_prompts()[::4]
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    code = main(["eval", "--model", str(SHAPES_TRANSFORMER_DIR), "--prompts", str(prompt_file), "--seeds", "1",
                 "--steps", "3", "--format", "json"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert "overall" in result["metrics"] and set(result["metrics"]) <= set(CATEGORIES) | {"overall"}
    with torch.no_grad():
        images = DemoGenerator(load_shapes_transformer(), steps=3, guidance=3.0).generate(prompts, seed=0)
    by_hand = ShapesScorer().score(images, prompts)
    assert {name: result[name] for name in result["metrics"]} == pytest.approx(by_hand, abs=1e-9)
    assert result["num_images"] == len(prompts)
