"""Streamed checkpoint rewrite (`hpspec compile`) against live surgery and plain diffusers.

The pruned directory, loaded back by `hpspec.load_pretrained`, must equal `hpspec.apply` on the
same model bit for bit (weights and outputs); block-only results must load in plain diffusers and
match its `skip_layers`; kept tensors must be byte-identical to the source's; every bad input must
fail with one message naming the file, exit 1, and leave nothing at the output path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import hpspec  # noqa: E402
from hpspec.model.safetensors_header import read_header  # noqa: E402
from hpspec.weights.load import load_pretrained  # noqa: E402
from hpspec.weights.prune import apply  # noqa: E402
from tests.conftest import CliResult  # noqa: E402
from tests.tiny_models import build, forward, isolated, plan_for, same_tensors, save, state  # noqa: E402

SHARD_BYTES = 300_000  # the tiny fp32 models are ~0.5-1 MB: several shards


@pytest.fixture(autouse=True, scope="module")
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> object:
    with isolated(tmp_path_factory.mktemp("cache")):
        yield


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved tiny models: SD3 and FLUX sharded with an index, the SD3.5 Medium layout in one file."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "sd3": save(build("sd3"), root / "sd3", SHARD_BYTES),
        "sd35m": save(build("sd35m"), root / "sd35m"),
        "flux": save(build("flux"), root / "flux", SHARD_BYTES),
    }


def compile_spec(cli: Callable[..., CliResult], tmp_path: Path, model: Path, spec: str, *extra: str) -> tuple[CliResult, Path]:
    spec_path = tmp_path / "spec.hps"
    spec_path.write_text(spec, encoding="utf-8")
    out = tmp_path / "out"
    return cli("compile", spec_path, "--model", model, "--out", out, *extra), out


def tensor_bytes(directory: Path) -> dict[str, tuple[str, bytes]]:
    """Every tensor's shard and raw bytes."""
    found = {}
    for shard in sorted(directory.glob("*.safetensors")):
        data = shard.read_bytes()
        found.update({e.name: (shard.name, data[e.begin : e.end]) for e in read_header(shard).tensors.values()})
    return found


def tree_digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.rglob("*")) if p.is_file()}


CASES = {
    "sd3": {
        "blocks": "drop blocks[1, 3]",
        "parts": "drop block[0].mlp, block[1].attn, block[2].norm, block[3].context_norm, block[4].context_mlp, block[5].attn",
        "mix": "drop blocks[5], block[1].attn, block[2].norm, block[4].context_norm\npreserve auto",
    },
    "sd35m": {
        "blocks": "drop blocks[0, 4]",
        "parts": "drop block[1].attn, block[2].attn2, block[0].norm, block[3].context_mlp",
        "mix": "drop blocks[0, 5], block[1].attn2, block[2].norm, block[4].mlp",
    },
    "flux": {
        "blocks": "drop double_blocks[1], single_blocks[0, 3]",
        "parts": "drop double_block[0].norm, double_block[1].attn, double_block[2].context_mlp, single_block[0].mlp, "
        "single_block[1].attn, single_block[2].norm",
        "mix": "drop double_blocks[0], single_blocks[3], double_block[2].context_norm, single_block[1].mlp\npreserve auto",
    },
}


@pytest.mark.parametrize("kind,case", [(k, c) for k in CASES for c in CASES[k]])
def test_compile_then_load_pretrained_equals_live_apply(
    cli: Callable[..., CliResult], tmp_path: Path, checkpoints: dict[str, Path], kind: str, case: str
) -> None:
    spec = CASES[kind][case]
    result, out = compile_spec(cli, tmp_path, checkpoints[kind], spec)
    assert result.code == 0, result.err

    loaded = hpspec.load_pretrained(out / "pruned")
    live = apply(plan_for(build(kind), spec), build(kind))
    assert same_tensors(state(loaded), state(live))
    assert torch.equal(forward(loaded), forward(live))
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in live.parameters()]
    assert architecture(loaded.config) == architecture(live.config)


def architecture(config: object) -> dict[str, object]:
    """Config values that shape the model (lists and tuples alike, no bookkeeping keys)."""
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in dict(config).items() if not k.startswith("_")}


@pytest.mark.parametrize("kind", ["sd3", "sd35m", "flux"])
def test_block_only_result_loads_in_plain_diffusers(
    cli: Callable[..., CliResult], tmp_path: Path, checkpoints: dict[str, Path], kind: str
) -> None:
    spec = CASES[kind]["blocks"]
    result, out = compile_spec(cli, tmp_path, checkpoints[kind], spec)
    assert result.code == 0, result.err
    cls = type(build(kind))
    plain = cls.from_pretrained(out / "pruned")
    live = apply(plan_for(build(kind), spec), build(kind))
    assert same_tensors(state(plain), state(live))
    assert torch.equal(forward(plain), forward(live))
    if kind != "flux":
        dropped = [int(i) for i in spec.removeprefix("drop blocks[").rstrip("]").split(",")]
        assert torch.equal(forward(plain), forward(build(kind), skip_layers=dropped))


def test_load_pretrained_takes_every_parameter_from_the_files(
    cli: Callable[..., CliResult], tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    from safetensors.torch import load_file

    result, out = compile_spec(cli, tmp_path, checkpoints["sd3"], CASES["sd3"]["mix"])
    assert result.code == 0, result.err
    files = {}
    for shard in sorted((out / "pruned").glob("*.safetensors")):
        files.update(load_file(shard))
    loaded = load_pretrained(out / "pruned")
    assert set(loaded.state_dict()) == set(files)
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in files.items())
    half = load_pretrained(out / "pruned", torch_dtype=torch.bfloat16)
    assert all(torch.equal(half.state_dict()[name], tensor.to(torch.bfloat16)) for name, tensor in files.items())

    # A file that lacks one tensor is refused, not filled in with random weights.
    shutil.copytree(out / "pruned", tmp_path / "broken")
    shard = next(iter(sorted((tmp_path / "broken").glob("*.safetensors"))))
    from safetensors.torch import save_file

    tensors = load_file(shard)
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, shard)
    with pytest.raises(hpspec.core.errors.CheckpointError, match="lack"):
        load_pretrained(tmp_path / "broken")


def test_last_block_conversion_on_bytes(cli: Callable[..., CliResult], tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    from diffusers import SD3Transformer2DModel
    from safetensors.torch import load_file

    result, out = compile_spec(cli, tmp_path, checkpoints["sd3"], "drop blocks[5]")
    assert result.code == 0, result.err
    tensors = {}
    for shard in (out / "pruned").glob("*.safetensors"):
        tensors.update(load_file(shard))
    original = build("sd3").transformer_blocks[4].norm1_context.linear
    dim = original.in_features
    for field in ("weight", "bias"):
        old = getattr(original, field).detach()
        assert torch.equal(tensors[f"transformer_blocks.4.norm1_context.linear.{field}"], torch.cat([old[dim : 2 * dim], old[:dim]]))
    assert not any(n.startswith(("transformer_blocks.4.ff_context.", "transformer_blocks.4.attn.to_add_out.")) for n in tensors)
    assert not any(n.startswith("transformer_blocks.5.") for n in tensors)
    plain = SD3Transformer2DModel.from_pretrained(out / "pruned")
    assert torch.equal(forward(plain), forward(build("sd3"), skip_layers=[5]))


def test_dual_attention_layers_renumbered(cli: Callable[..., CliResult], tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    from diffusers import SD3Transformer2DModel

    result, out = compile_spec(cli, tmp_path, checkpoints["sd35m"], "drop blocks[0, 2]")
    assert result.code == 0, result.err
    config = json.loads((out / "pruned" / "config.json").read_text())
    assert config["dual_attention_layers"] == [0] and config["num_layers"] == 4  # old block 1 is block 0
    plain = SD3Transformer2DModel.from_pretrained(out / "pruned")
    assert [b.attn2 is not None for b in plain.transformer_blocks] == [True, False, False, False]
    assert torch.equal(forward(plain), forward(build("sd35m"), skip_layers=[0, 2]))


def test_kept_tensors_are_byte_identical_and_provenance_recorded(
    cli: Callable[..., CliResult], tmp_path: Path, checkpoints: dict[str, Path]
) -> None:
    source = checkpoints["flux"]
    result, out = compile_spec(cli, tmp_path, source, "drop double_blocks[1], single_blocks[0], single_block[2].mlp")
    assert result.code == 0, result.err
    pruned = out / "pruned"
    sources = {e.name: (h.path, e) for p in source.glob("*.safetensors") for h in [read_header(p)] for e in h.tensors.values()}
    renumber = {"transformer_blocks": {0: 0, 2: 1}, "single_transformer_blocks": {1: 0, 2: 1, 3: 2}}
    expected = {}
    for name in sources:
        stack, _, rest = name.partition(".")
        if stack in renumber:
            index, _, tail = rest.partition(".")
            if int(index) not in renumber[stack] or (stack.startswith("single") and index == "2" and tail.startswith(("proj_mlp.", "proj_out."))):
                continue
            expected[f"{stack}.{renumber[stack][int(index)]}.{tail}"] = name
        else:
            expected[name] = name
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in source.glob("*.safetensors")}
    plan_sha = hashlib.sha256((pruned / "plan.json").read_bytes()).hexdigest()
    seen = {}
    for shard in sorted(pruned.glob("*.safetensors")):
        header = read_header(shard)
        data = shard.read_bytes()
        assert header.metadata["hpspec_version"] == hpspec.__version__
        assert header.metadata["hpspec_plan_sha256"] == plan_sha
        assert json.loads(header.metadata["hpspec_source_sha256"]) == digests
        for entry in header.tensors.values():
            path, old = sources[expected[entry.name]]
            assert data[entry.begin : entry.end] == path.read_bytes()[old.begin : old.end], entry.name
            seen[entry.name] = shard.name
    assert set(seen) == set(expected)
    index = json.loads((pruned / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert index["weight_map"] == seen


def test_pipeline_root_and_hugging_face_snapshot(cli: Callable[..., CliResult], tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    source = checkpoints["sd3"]
    spec = CASES["sd3"]["mix"]
    root = tmp_path / "pipeline"
    shutil.copytree(source, root / "transformer")
    (root / "model_index.json").write_text('{"_class_name": "StableDiffusion3Pipeline"}')
    # A hub cache: snapshot files are symlinks to content-addressed blobs.
    snapshot = tmp_path / "hub" / "models--x--y" / "snapshots" / "abc123" / "transformer"
    blobs = tmp_path / "hub" / "models--x--y" / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir(parents=True)
    for file in source.iterdir():
        blob = blobs / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)

    outputs = []
    for name, model in (("plain", source), ("root", root), ("snapshot", snapshot.parent)):
        (tmp_path / name).mkdir()
        result, out = compile_spec(cli, tmp_path / name, model, spec)
        assert result.code == 0, result.err
        outputs.append(tensor_bytes(out / "pruned"))
        assert not any(p.is_symlink() for p in (out / "pruned").iterdir())
    assert outputs[0] == outputs[1] == outputs[2]
    assert all(p.is_symlink() for p in snapshot.iterdir())  # the cache is untouched


def test_source_digests_are_remembered_per_file_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hpspec.weights.checkpoint.source as checkpoint

    monkeypatch.setenv("HPSPEC_CACHE_DIR", str(tmp_path / "cache"))
    shard = tmp_path / "a.safetensors"
    shard.write_bytes(b"a" * 1000)
    assert checkpoint.source_sha256(shard) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert not (checkpoint.hash_cache_dir() / "sha256").exists()  # just written: too recent to remember

    monkeypatch.setattr(checkpoint, "RACY_NS", 0)
    checkpoint.source_sha256(shard)
    (entry,) = (checkpoint.hash_cache_dir() / "sha256").iterdir()
    entry.write_text("f" * 64)  # proves the remembered digest is what is used while the file is unchanged
    assert checkpoint.source_sha256(shard) == "f" * 64
    shard.write_bytes(b"b" * 1000)  # same size, new content: a new state, hashed again
    assert checkpoint.source_sha256(shard) == hashlib.sha256(b"b" * 1000).hexdigest()
    monkeypatch.setenv("HPSPEC_CACHE_DIR", "")
    assert checkpoint.hash_cache_dir() is None and checkpoint.source_sha256(shard) == hashlib.sha256(b"b" * 1000).hexdigest()


# --------------------------------------------------------------------------------------------
# Atomic output


def test_output_is_atomic_and_inputs_are_never_modified(
    cli: Callable[..., CliResult], tmp_path: Path, checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hpspec.weights.checkpoint.writer as checkpoint

    source = checkpoints["sd3"]
    before = tree_digest(source)
    out = tmp_path / "out"

    # A run killed half-way leaves a temporary sibling; the next run sweeps it.
    (out).mkdir()
    stale = out / ".pruned.hpspec-tmp-dead"
    stale.mkdir()
    (stale / "diffusion_pytorch_model.safetensors").write_bytes(b"partial")

    calls = []

    def failing_copy(*args: object) -> None:
        calls.append(args)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "copy_ranges", failing_copy)
    result, _ = compile_spec(cli, tmp_path, source, "drop blocks[1]")
    assert result.code == 1 and calls
    assert "No space left on device" in result.err and result.err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == []  # nothing at the output path, stale sibling swept
    monkeypatch.undo()

    result, _ = compile_spec(cli, tmp_path, source, "drop blocks[1]")
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == ["pruned"]
    assert tree_digest(source) == before


# --------------------------------------------------------------------------------------------
# Bad input: one message naming the file and the problem, exit 1, nothing at the output path


def _corrupt_header(edit: Callable[[dict], None]) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        shard = sorted(directory.glob("*.safetensors"))[0]
        data = shard.read_bytes()
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
        edit(header)
        raw = json.dumps(header).encode()
        shard.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])
        return shard

    return make


def _overlap(header: dict) -> None:
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    first, second = header[names[0]]["data_offsets"], header[names[1]]["data_offsets"]
    header[names[1]]["data_offsets"] = [first[0], first[0] + second[1] - second[0]]


def _bad_dtype(header: dict) -> None:
    header[next(k for k in header if k != "__metadata__")]["dtype"] = "F12"


def _truncate(directory: Path) -> Path:
    shard = sorted(directory.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    return shard


def _header_past_end(directory: Path) -> Path:
    shard = sorted(directory.glob("*.safetensors"))[0]
    shard.write_bytes(struct.pack("<Q", 1 << 24) + shard.read_bytes()[8:1000])
    return shard


def _missing_shard(directory: Path) -> Path:
    shard = sorted(directory.glob("*.safetensors"))[1]
    shard.unlink()
    return directory / "diffusion_pytorch_model.safetensors.index.json"


def _index_names_absent_tensor(directory: Path) -> Path:
    index = directory / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["transformer_blocks.0.attn.to_q.lora_magnitude"] = next(iter(data["weight_map"].values()))
    index.write_text(json.dumps(data))
    return index


def _config_mismatch(directory: Path) -> Path:
    config = directory / "config.json"
    data = json.loads(config.read_text())
    data["joint_attention_dim"] = 48
    config.write_text(json.dumps(data))
    return config


def _pickle(suffix: str) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        for shard in directory.glob("*.safetensors*"):
            shard.unlink()
        file = directory / f"diffusion_pytorch_model{suffix}"
        file.write_bytes(b"\x80\x04K\x01.")
        return file

    return make


def _single_file(keys: list[str], name: str = "model.safetensors") -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        from safetensors.torch import save_file

        target = directory.parent / name
        save_file({k: torch.zeros(2, 2) for k in keys}, target)
        return target

    return make


BAD_INPUTS = {
    "truncated": (_truncate, "truncated"),
    "header-length-past-end": (_header_past_end, "past the end"),
    "overlapping-offsets": (_corrupt_header(_overlap), "overlaps"),
    "bad-dtype": (_corrupt_header(_bad_dtype), "unknown dtype"),
    "missing-shard": (_missing_shard, "missing"),
    "index-names-absent-tensor": (_index_names_absent_tensor, "no shard holds it"),
    "config-does-not-match": (_config_mismatch, "does not match the weights"),
    "pickle-bin": (_pickle(".bin"), "pickle checkpoints are refused"),
    "pickle-ckpt": (_pickle(".ckpt"), "pickle checkpoints are refused"),
    # single files are read (issue 15): an incomplete one says its layout and what it lacks
    "sai-single-file": (_single_file(["joint_blocks.0.x_block.attn.qkv.weight", "x_embedder.proj.weight"]), "(sai layout): cannot infer"),
    "comfyui-single-file": (_single_file(["model.diffusion_model.joint_blocks.0.x_block.mlp.fc1.weight"]), "(comfyui layout): cannot infer"),
    "bfl-flux-single-file": (_single_file(["double_blocks.0.img_attn.qkv.weight", "img_in.weight"]), "(bfl layout): cannot infer"),
    "lora": (_single_file(["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"], "lora.safetensors"), "LoRA"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_cleanly(cli: Callable[..., CliResult], tmp_path: Path, checkpoints: dict[str, Path], case: str) -> None:
    make, problem = BAD_INPUTS[case]
    model = tmp_path / "model"
    shutil.copytree(checkpoints["sd3"], model)
    named = make(model)
    target = named if named.suffix in (".safetensors", ".ckpt", ".bin") and named.parent != model else model
    out = tmp_path / "out"
    result, _ = compile_spec(cli, tmp_path, target, "drop blocks[1]")
    assert result.code == 1
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    assert str(named) in result.err and problem in result.err, result.err
    if case == "lora":
        assert "not supported yet" in result.err
    assert not out.exists()


def test_spec_for_another_model_is_refused(cli: Callable[..., CliResult], tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    result, out = compile_spec(cli, tmp_path, checkpoints["sd3"], "target sd3-medium\ndrop blocks[23]\n")
    assert result.code == 1 and result.err.count("\n") == 1
    assert str(checkpoints["sd3"]) in result.err and "spec.hps" in result.err and "sd3-medium" in result.err
    assert not out.exists()


def test_pickle_file_named_directly_is_refused(cli: Callable[..., CliResult], tmp_path: Path) -> None:
    weights = tmp_path / "transformer.pt"
    weights.write_bytes(b"\x80\x04K\x01.")
    result, out = compile_spec(cli, tmp_path, weights, "drop blocks[1]")
    assert result.code == 1 and str(weights) in result.err and "pickle" in result.err
    assert not out.exists()
