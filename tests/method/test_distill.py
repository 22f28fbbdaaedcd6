"""The distill stage: PWP, SGDistill, losses, data, checkpoints and resume, 1 vs 2 processes."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

import hpspec  # noqa: E402
from hpspec.core.errors import DistillStopped  # noqa: E402
from hpspec.method.distill.checkpoints import checkpoint_root  # noqa: E402
from hpspec.method.distill.draws import draws  # noqa: E402
from hpspec.stages.distill import distill_demo, run_distill  # noqa: E402
from hpspec.method.distill.build import pipeline_encoders, write_data_folder  # noqa: E402
from hpspec.method.distill.data import DataError, LatentFolder, check_fits  # noqa: E402
from hpspec.plan.plan import Plan  # noqa: E402
from hpspec.plan.schema import load_plan_file  # noqa: E402
from hpspec.method.sensitivity import Entry, ScorerInfo, SensitivityTable, TargetRef  # noqa: E402
from hpspec.method.sgdistill import EPSILON_FRACTION, GuidanceError, guidance  # noqa: E402
from hpspec.report.html import write_stage_report  # noqa: E402
from hpspec.stages.engine import DistillOptions, StageInput, StageOptions  # noqa: E402

from tests.conftest import REPO, CliResult  # noqa: E402
from tests.tiny_models import FLUX_CONFIG, SD3_CONFIG, build, isolated, save  # noqa: E402

# Blocks 4 and 5 dropped (5 is the context-pre-only last block: 3 becomes the new last), part of 1.
SPEC = "drop blocks[4:6], block[1].mlp\npreserve auto\n"
FLUX_SPEC = "drop single_blocks[3], double_block[1].context_mlp\npreserve auto\n"
LATENT = (4, 8, 8)  # tiny SD3: 4 channels; FLUX packs 4 channels of 8x8 into 16 tokens of 16
TEXT = (5, 32)


@pytest.fixture(autouse=True, scope="module")
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with isolated(tmp_path_factory.mktemp("cache")):
        yield


def fake_encoders(seed: int = 0) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Deterministic stand-ins for a VAE and text encoders: images are latents, captions hash to noise."""

    def encode_images(images: list[Any]) -> torch.Tensor:
        return torch.stack(images)

    def encode_text(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [torch.randn((TEXT[0] + 1) * TEXT[1], generator=torch.Generator().manual_seed(seed + sum(map(ord, c)))) for c in captions]
        stacked = torch.stack(rows).view(len(captions), TEXT[0] + 1, TEXT[1])
        return stacked[:, :-1], stacked[:, -1]

    return encode_images, encode_text


def examples(count: int) -> list[tuple[torch.Tensor, str]]:
    gen = torch.Generator().manual_seed(7)
    return [(torch.randn(LATENT, generator=gen), f"caption {i}") for i in range(count)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "latents"
    write_data_folder(out, examples(24), *fake_encoders(), batch_size=5, shard_size=10)
    return out


def compiled(root: Path, kind: str, spec: str) -> tuple[Path, Path]:
    """A tiny model of `kind` on disk, and its pruned stage directory (compile without --data)."""
    from hpspec.cli.app import main

    model = save(build(kind), root / kind)
    (root / "spec.hps").write_text(spec)
    assert main(["compile", str(root / "spec.hps"), "--model", str(model), "--out", str(root / "out"), "--no-report"]) == 0
    return model, root / "out" / "pruned"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return compiled(tmp_path_factory.mktemp("tiny"), "sd3", SPEC)


def with_distill(pruned: Path, **settings: Any) -> Plan:
    from hpspec.plan.check import DISTILL_OPTIONS
    from hpspec.plan.plan import DistillPlan

    plan = load_plan_file(pruned / "plan.json")
    defaults = DistillPlan(**{k: o.default for k, o in DISTILL_OPTIONS.items()})  # type: ignore[arg-type]
    return replace(plan, distill=replace(defaults, **settings))


def distil(plan: Plan, pruned: Path, teacher: Path, data: Path | str, out: Path, report: bool = False, **options: Any) -> Path:
    own = DistillOptions(teacher=str(teacher), data=str(data), **options)
    given = StageInput(plan, pruned, StageOptions(distill=own, report=write_stage_report if report else None), progress=False)
    run_distill(given, out)
    return out


def tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(directory.glob("*.safetensors")) for k, v in load_file(f).items()}


def table_for(plan: Plan, rows: list[tuple[int, str | None, float]]) -> SensitivityTable:
    entries = [Entry("blocks", block, part, 1.0 - delta, delta) for block, part, delta in rows]
    return SensitivityTable(TargetRef(plan.target.name, plan.target.fingerprint), ScorerInfo("test", ["test"]), {}, 1.0, entries)


# --------------------------------------------------------------------------------------------
# PWP

# PWP's rule applied by hand to SPEC: in registration order, everything before the first removal
# (block 1's MLP) stays frozen: the embedders, block 0, and block 1's norms and attention (its
# norm2 has no parameters). Block 1's context MLP, blocks 2-3, norm_out and proj_out train.
FROZEN_BY_PWP = ("pos_embed.", "time_text_embed.", "context_embedder.", "transformer_blocks.0.",
                 "transformer_blocks.1.norm1.", "transformer_blocks.1.norm1_context.", "transformer_blocks.1.attn.")  # fmt: skip


def test_frozen_parameters_do_not_change_by_a_single_bit(tiny: tuple[Path, Path], data: Path, tmp_path: Path) -> None:
    model, pruned = tiny
    plan = with_distill(pruned, steps=3, batch=4, lr=1e-2, task=1.0)
    out = distil(plan, pruned, model, data, tmp_path / "distilled")
    before, after = tensors(pruned), tensors(out)
    assert before.keys() == after.keys()
    frozen = [n for n in before if n.startswith(FROZEN_BY_PWP)]
    trainable = [n for n in before if not n.startswith(FROZEN_BY_PWP)]
    assert frozen and trainable
    assert all(torch.equal(before[n], after[n]) and before[n].dtype == after[n].dtype for n in frozen)
    assert all(not torch.equal(before[n], after[n]) for n in trainable)  # every trainable tensor learnt
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["trainable_params"] == plan.freeze.trainable_params == sum(before[n].numel() for n in trainable)
    assert [p["student"] for p in provenance["feature_blocks"]] == ["transformer_blocks.1", "transformer_blocks.2", "transformer_blocks.3"]
    loaded = hpspec.load_pretrained(out)  # the same layout as pruned: hpspec loads it back, strictly
    assert all(torch.equal(p, after[n]) for n, p in loaded.state_dict().items())


def test_the_optimiser_holds_only_trainable_parameters(tiny: tuple[Path, Path]) -> None:
    from hpspec.method.distill.loop import optimizer_for
    from hpspec.stages.distill import load_student
    from hpspec.method.sgdistill import Guidance

    _, pruned = tiny
    plan = with_distill(pruned)
    student = load_student(pruned, plan)
    optimizer = optimizer_for(student, Guidance({}, {}), 1e-4)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    by_pwp = {id(p) for n, p in student.named_parameters() if not n.startswith(FROZEN_BY_PWP)}
    trainable = {id(p) for p in student.parameters() if p.requires_grad}
    assert held == by_pwp == trainable and sum(p.numel() for p in student.parameters() if id(p) in held) == plan.freeze.trainable_params


# --------------------------------------------------------------------------------------------
# SGDistill


def test_inverse_scales_follow_one_over_delta_with_mean_one(tiny: tuple[Path, Path]) -> None:
    _, pruned = tiny
    plan = with_distill(pruned, weight="sensitivity", mode="inverse")
    teacher = hpspec_graph(tiny[0])
    parts = [(b, p, d) for b, d in ((1, 0.4), (2, 0.1), (3, -0.2)) for p, d in (("norm", d / 2), ("attn", d / 2))]
    guide = guidance(plan, teacher, table_for(plan, parts), ["transformer_blocks.1.ff_context.net.0.proj.weight",
                     "transformer_blocks.2.attn.to_q.weight", "transformer_blocks.3.attn.to_q.weight", "proj_out.weight"])  # fmt: skip
    scales = guide.scales
    assert set(scales) == {"transformer_blocks.1", "transformer_blocks.2", "transformer_blocks.3"}
    assert statistics.mean(scales.values()) == pytest.approx(1.0)
    epsilon = EPSILON_FRACTION * 0.4
    assert guide.record["epsilon"] == pytest.approx(epsilon) and guide.record["delta_from"] == ["sum of part rows"]
    assert scales["transformer_blocks.1"] / scales["transformer_blocks.2"] == pytest.approx(0.1 / 0.4)
    assert scales["transformer_blocks.3"] / scales["transformer_blocks.1"] == pytest.approx(0.4 / epsilon)  # ΔP <= 0: ε
    assert guide.scale_of("proj_out.weight") == 1.0
    with pytest.raises(GuidanceError, match="no row for blocks\\[2\\]"):
        guidance(plan, teacher, table_for(plan, [(1, None, 0.3)]), ["transformer_blocks.2.attn.to_q.weight"])


def test_inverse_scales_set_each_blocks_update(tiny: tuple[Path, Path], data: Path, tmp_path: Path) -> None:
    """Adam's first step moves each weight by lr · scale (m̂/√v̂ = ±1): the update follows the scale."""
    model, pruned = tiny
    table = tmp_path / "table.json"
    plan = with_distill(pruned, weight="sensitivity", mode="inverse", steps=1, batch=4, lr=1e-3)
    table.write_text(table_for(plan, [(1, None, 0.4), (2, None, 0.1), (3, None, 0.2)]).to_json())
    out = distil(plan, pruned, model, data, tmp_path / "distilled", sensitivity=str(table), report=True)
    before, after = tensors(pruned), tensors(out)
    scales = json.loads((out / "scales.json").read_text())
    assert scales == json.loads((out / "provenance.json").read_text())["scales"]
    assert "update scale" in (out / "report.html").read_text()  # the stage's report shows them
    for block, scale in scales.items():
        moved = torch.cat([(after[n] - before[n]).abs().flatten() for n in before if n.startswith(block + ".") and n.endswith(".weight")])
        moved = moved[moved > 0]
        assert float(moved.median()) == pytest.approx(1e-3 * scale, rel=0.02), block


def test_binary_freezes_parts_above_the_threshold(tiny: tuple[Path, Path], data: Path, tmp_path: Path) -> None:
    model, pruned = tiny
    table = tmp_path / "table.json"
    plan = with_distill(pruned, weight="sensitivity", steps=2, batch=4, lr=1e-2, threshold=0.5, table=str(table))
    rows = [(2, "norm", 0.9), (2, "attn", 0.1), (3, None, 0.7), (1, "context_mlp", 0.2)]
    table.write_text(table_for(plan, rows).to_json())
    out = distil(plan, pruned, model, data, tmp_path / "distilled")
    before, after = tensors(pruned), tensors(out)
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["sgdistill"]["frozen"] == ["block[2].norm", "block[3]"]
    assert provenance["sgdistill"]["threshold_from"] == "spec"
    by_pwp = (*plan.freeze.frozen,)
    by_sensitivity = ("transformer_blocks.2.norm1", "transformer_blocks.3")
    for name in before:
        frozen = any(name.startswith(path + ".") for path in by_pwp + by_sensitivity)
        assert torch.equal(before[name], after[name]) == frozen, name
    median = guidance(replace(plan, distill=replace(plan.distill, threshold=None)), hpspec_graph(model), table_for(plan, rows),
                      [n for n in before if n.startswith("transformer_blocks.")])  # fmt: skip
    assert median.record["threshold"] == pytest.approx(0.45) and "median" in median.record["threshold_from"]


def hpspec_graph(model: Path) -> Any:
    from hpspec.model.targets import graph_from_path

    return graph_from_path(model)


def test_sensitivity_without_a_table_is_a_clear_error(tiny: tuple[Path, Path], data: Path, tmp_path: Path) -> None:
    model, pruned = tiny
    with pytest.raises(GuidanceError, match="needs a sensitivity table"):
        distil(with_distill(pruned, weight="sensitivity", steps=1, batch=4), pruned, model, data, tmp_path / "d")
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------------------------
# Checkpoints, resume, determinism


def test_a_stopped_run_resumes_to_the_uninterrupted_result(tiny: tuple[Path, Path], data: Path, tmp_path: Path) -> None:
    model, pruned = tiny
    plan = with_distill(pruned, steps=5, batch=4, lr=1e-2, task=0.5)
    whole = distil(plan, pruned, model, data, tmp_path / "whole")
    out = tmp_path / "resumed"
    with pytest.raises(DistillStopped, match="stopped at step 2 of 5"):
        distil(plan, pruned, model, data, out, stop_after=2)
    assert not out.exists() and list(checkpoint_root(out).glob("*/step-000000002"))
    distil(plan, pruned, model, data, out)
    a, b = tensors(whole), tensors(out)
    assert all(torch.equal(a[n], b[n]) for n in a)  # bit-identical
    curve_whole = json.loads((whole / "provenance.json").read_text())["curve"]
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["resumed_from_step"] == 2 and provenance["curve"] == curve_whole
    assert not checkpoint_root(out).exists()


def test_draws_depend_on_seed_and_step_only() -> None:
    a, b = draws(0, 3, 8, 20, LATENT, 0.5), draws(0, 3, 8, 20, LATENT, 0.5)
    assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values()))
    assert not torch.equal(a.noise, draws(1, 3, 8, 20, LATENT, 0.5).noise)
    epoch = torch.cat([draws(0, s, 4, 20, LATENT, 0.0).rows for s in range(5)])
    assert sorted(epoch.tolist()) == list(range(20))  # every example once per epoch


# --------------------------------------------------------------------------------------------
# Data


def test_a_data_folder_reads_back_what_was_encoded(data: Path) -> None:
    folder = LatentFolder.open(data)
    assert len(folder) == 24 and [s.count for s in folder.shards] == [10, 10, 4]
    assert folder.shapes.latent == LATENT and folder.shapes.text == TEXT and folder.unconditional_fraction == 0.1
    rows = torch.tensor([23, 0, 11])
    keep = torch.zeros(3, dtype=torch.bool)
    batch = folder.batch(rows, torch.zeros(3), keep)
    source = examples(24)
    images, text = fake_encoders()
    states, pooled = text([source[i][1] for i in rows.tolist()])
    assert torch.equal(batch.latents, torch.stack([source[i][0] for i in rows.tolist()]))
    assert torch.equal(batch.states, states) and torch.equal(batch.pooled, pooled)
    empty = folder.batch(rows, torch.zeros(3), torch.tensor([False, True, False]))
    assert torch.equal(empty.states[1], text([""])[0][0]) and torch.equal(empty.states[0], states[0])


def test_data_that_does_not_fit_says_why(data: Path, tmp_path: Path) -> None:
    folder = LatentFolder.open(data)
    with pytest.raises(DataError, match="4 channels, the model takes 16.*joint_attention_dim is 4096"):
        check_fits(folder, "sd3", {**SD3_CONFIG, "in_channels": 16, "joint_attention_dim": 4096}, "--data x")
    check_fits(folder, "flux", FLUX_CONFIG, "--data x")  # 4 channels packed 2x2 = FLUX's 16
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps({"format": "hpspec-distill-data", "version": 1, "count": 3,
        "latent_shape": [4, 8, 8], "text_shape": [5, 32], "pooled_dim": 32, "shards": [{"file": "x.safetensors", "count": 3}]}))  # fmt: skip
    with pytest.raises(DataError, match="shard 'x.safetensors' is not a file"):
        LatentFolder.open(broken)
    with pytest.raises(DataError, match="no manifest.json"):
        LatentFolder.open(tmp_path)


def test_pipeline_encoders_shift_and_scale_into_the_transformers_space() -> None:
    """With a stand-in diffusers pipeline: latents = (VAE mean - shift) · scale; prompts without CFG."""
    calls: list[dict[str, Any]] = []

    def encode_prompt(**kwargs: Any) -> tuple[torch.Tensor, ...]:
        calls.append(kwargs)
        n = len(kwargs["prompt"])
        return torch.ones(n, *TEXT), None, torch.zeros(n, 32), None  # type: ignore[return-value]

    vae = types.SimpleNamespace(
        config=types.SimpleNamespace(scaling_factor=2.0, shift_factor=0.5), dtype=torch.float32,
        encode=lambda x: types.SimpleNamespace(latent_dist=types.SimpleNamespace(mode=lambda: x[:, :1] + 1.0)),
    )  # fmt: skip
    processor = types.SimpleNamespace(preprocess=lambda image, height, width: image.view(1, 3, height, width))
    pipe = types.SimpleNamespace(vae=vae, encode_prompt=encode_prompt, image_processor=processor)
    images, text = pipeline_encoders(pipe, resolution=4)
    latents = images([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
    assert latents.shape == (2, 1, 4, 4) and latents[0].unique().tolist() == [1.0] and latents[1].unique().tolist() == [3.0]
    states, pooled = text(["a", "b"])
    assert states.shape == (2, *TEXT) and calls[0]["do_classifier_free_guidance"] is False and calls[0]["prompt_3"] == ["a", "b"]


# --------------------------------------------------------------------------------------------
# FLUX, the demo, the CLI, several processes


def test_flux_distils_with_packed_latents_and_both_stacks(tmp_path: Path, data: Path) -> None:
    model, pruned = compiled(tmp_path, "flux", FLUX_SPEC)
    plan = with_distill(pruned, steps=2, batch=4, lr=1e-2)
    out = distil(plan, pruned, model, data, tmp_path / "distilled")
    provenance = json.loads((out / "provenance.json").read_text())
    # double block 1 lies wholly before its dropped context MLP (the last part): frozen with block 0
    assert [(p["student"], p["teacher"]) for p in provenance["feature_blocks"]] == [
        ("transformer_blocks.2", "transformer_blocks.2"), ("single_transformer_blocks.0", "single_transformer_blocks.0"),
        ("single_transformer_blocks.1", "single_transformer_blocks.1"), ("single_transformer_blocks.2", "single_transformer_blocks.2"),
    ]  # fmt: skip
    assert all(0 < point["features"] < float("inf") for point in provenance["curve"])
    before, after = tensors(pruned), tensors(out)
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith(("x_embedder", "transformer_blocks.0.", "transformer_blocks.1.")))
    assert not torch.equal(before["proj_out.weight"], after["proj_out.weight"])


@pytest.fixture(scope="module")
def demo_pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hpspec.cli.app import main

    root = tmp_path_factory.mktemp("demo")
    (root / "spec.hps").write_text("target demo\ndrop blocks[9, 11], block[6].mlp\npreserve auto\ndistill steps=6 batch=16\n")
    code = main(["compile", str(root / "spec.hps"), "--model", "demo", "--out", str(root / "out"), "--data", "demo", "--no-report"])
    assert code == 0
    return root / "out"


def test_compile_with_data_demo_distils_the_pruned_demo(demo_pruned: Path) -> None:
    distilled = demo_pruned / "distilled"
    provenance = json.loads((distilled / "provenance.json").read_text())
    assert provenance["stage"] == "distill" and provenance["data"]["source"] == "demo" and provenance["processes"] == 1
    assert [p["step"] for p in provenance["curve"]] == list(range(1, 7))
    assert all(p["loss"] == pytest.approx(p["output"] + 1e-4 * p["features"]) for p in provenance["curve"])
    before, after = tensors(demo_pruned / "pruned"), tensors(distilled)
    assert torch.equal(before["transformer_blocks.5.ff.net.2.weight"], after["transformer_blocks.5.ff.net.2.weight"])
    assert not torch.equal(before["transformer_blocks.7.ff.net.2.weight"], after["transformer_blocks.7.ff.net.2.weight"])
    assert "## Distillation" in (distilled / "README.md").read_text()


def test_compile_without_data_stops_before_distill(cli: Callable[..., CliResult], tiny: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = tiny
    spec = tmp_path / "s.hps"
    spec.write_text(SPEC + "distill steps=2 batch=4\n")
    result = cli("compile", spec, "--model", model, "--out", tmp_path / "out", "--no-report")
    assert result.code == 0 and "distill needs --data" in result.out and "--data DATA" in result.out


def test_distill_command_stops_and_resumes(cli: Callable[..., CliResult], tiny: tuple[Path, Path], data: Path, tmp_path: Path) -> None:
    model, pruned = tiny
    spec = tmp_path / "s.hps"
    spec.write_text(SPEC + "distill steps=3 batch=4\n")
    assert cli("compile", spec, "--model", model, "--out", tmp_path / "out", "--no-report").code == 0
    args = ["distill", tmp_path / "out/pruned", "--teacher", model, "--data", data, "--out", tmp_path / "d", "--no-progress", "--no-report"]
    stopped = cli(*args, "--stop-after", "1")
    assert stopped.code == 3 and "distill: stopped at step 1 of 3" in stopped.err
    done = cli(*args)
    assert done.code == 0 and done.out.startswith(f"distill: wrote {tmp_path / 'd'}")
    assert json.loads((tmp_path / "d/provenance.json").read_text())["resumed_from_step"] == 1
    assert "is up to date" in cli(*args).out


def test_two_processes_end_where_one_does(demo_pruned: Path, tmp_path: Path) -> None:
    """The same global batch on 2 gloo processes: gradients are averaged in another order, nothing more."""
    launcher = Path(sys.executable).parent / "accelerate"
    out = tmp_path / "two"
    command = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_cpu_threads_per_process", "1",
               "-m", "hpspec.cli", "distill", str(demo_pruned / "pruned"), "--teacher", "demo", "--data", "demo",
               "--out", str(out), "--no-progress", "--no-report"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two, start = tensors(demo_pruned / "distilled"), tensors(out), tensors(demo_pruned / "pruned")
    assert json.loads((out / "provenance.json").read_text())["processes"] == 2
    # The stated tolerance: the two runs differ by at most 0.1% of how far training moved the weights
    # (L2 over all of them). Measured here: 1.6e-5 after these 6 steps.
    moved = sum(float(((one[n] - start[n]) ** 2).sum()) for n in one) ** 0.5
    differ = sum(float(((one[n] - two[n]) ** 2).sum()) for n in one) ** 0.5
    assert moved > 1e-3 and differ <= 1e-3 * moved
    curve_one = json.loads((demo_pruned / "distilled/provenance.json").read_text())["curve"]
    curve_two = json.loads((out / "provenance.json").read_text())["curve"]
    assert [p["loss"] for p in curve_two] == pytest.approx([p["loss"] for p in curve_one], rel=1e-5)


def test_distill_demo_runs_the_stage_with_the_given_recipe(demo_pruned: Path, tmp_path: Path) -> None:
    result = distill_demo(demo_pruned / "pruned", tmp_path / "distilled", steps=2, batch=8, lr=1e-3)
    assert result.status == "done" and result.provenance["recipe"]["steps"] == 2 and result.provenance["recipe"]["lr"] == 1e-3
    assert len(result.provenance["curve"]) == 2 and load_plan_file(tmp_path / "distilled/plan.json").distill.batch == 8


def test_example_accelerate_configs_parse() -> None:
    """The configs not run here (no GPU) are at least what accelerate reads."""
    from accelerate.commands.config.config_args import load_config_from_file

    configs = sorted((REPO / "examples" / "accelerate").glob("*.yaml"))
    assert [c.stem for c in configs] == ["cpu-2proc", "ddp-8gpu", "deepspeed-zero2-8gpu", "fsdp-8gpu"]
    kinds = [str(load_config_from_file(str(c)).distributed_type).rsplit(".", 1)[-1] for c in configs]
    assert kinds == ["MULTI_GPU", "MULTI_GPU", "DEEPSPEED", "FSDP"]
