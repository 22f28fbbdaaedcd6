"""Issue 15 through the command line: single files and GGUF in, any layout out (`--to`), `hpspec
convert`, Hugging Face cache digests, and bad input. Every output is checked with the real loaders
(diffusers' `from_single_file`, its GGUF path) against the diffusers-folder output of the same plan."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from hpspec.model.formats import detect_file
from hpspec.model.formats.gguf_header import read_gguf
from hpspec.weights.formats.convert import convert
from hpspec.weights.formats.gguf import convert_to_gguf
from tests.conftest import CliResult
from tests.tiny_models import build, forward, inputs, isolated, same_tensors, save
from tests.weights.test_formats import flux_converter, model_class

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
Cli = Callable[..., CliResult]

SPECS = {  # whole-block drops; SD3's includes its last block (the new last block is converted)
    "flux": "drop double_blocks[1]\ndrop single_blocks[0, 2]\n",
    "sd3": "drop blocks[1, 5]\n",
}
LAYOUT = {"flux": "bfl", "sd3": "sai"}


@pytest.fixture(scope="module", autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with isolated(tmp_path_factory.mktemp("cache")):
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A tiny model's diffusers folder (`flux`, `sd3`), its original-layout file (`flux.bfl`) or GGUF (`flux.q8_0`)."""
    root = tmp_path_factory.mktemp("models")
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        kind, _, form = name.partition(".")
        if name not in done:
            if not form:
                done[name] = save(build(kind), root / kind)
            elif form in LAYOUT.values():
                done[name] = convert(get(kind), root / f"{kind}.safetensors", form).out
            else:
                done[name] = convert_to_gguf(get(kind), root / f"{kind}-{form}.gguf", form)
        return done[name]

    return get


@pytest.fixture
def flux_loadable(monkeypatch: pytest.MonkeyPatch) -> None:
    """diffusers' FLUX single-file loader with its converter reading the width from the file (a tiny FLUX)."""
    from diffusers.loaders import single_file_model

    classes = single_file_model.SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"]
    monkeypatch.setitem(classes, "checkpoint_mapping_fn", flux_converter())


def compile_(cli: Cli, tmp_path: Path, model: Path, spec: str, out: str, *extra: str) -> tuple[CliResult, Path]:
    spec_path = tmp_path / "spec.hps"
    spec_path.write_text(spec, encoding="utf-8")
    result = cli("compile", spec_path, "--model", model, "--out", tmp_path / out, "--no-report", *extra)
    return result, tmp_path / out / "pruned"


def folder_output(cli: Cli, tmp_path: Path, models: Callable[[str], Path], kind: str) -> dict[str, torch.Tensor]:
    """Today's route: the diffusers folder in, the pruned diffusers folder out, loaded by diffusers."""
    result, pruned = compile_(cli, tmp_path, models(kind), SPECS[kind], "folder")
    assert result.code == 0, result.err
    loaded = model_class(kind).from_pretrained(pruned, torch_dtype=torch.float32)
    assert same_tensors(loaded.state_dict(), load_file(pruned / "diffusion_pytorch_model.safetensors"))
    return loaded.state_dict()


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_a_pruned_single_file_loads_in_diffusers_and_equals_the_folder_output(
    cli: Cli, tmp_path: Path, models: Callable[[str], Path], flux_loadable: None, kind: str
) -> None:
    reference = folder_output(cli, tmp_path, models, kind)
    layout = LAYOUT[kind]
    result, pruned = compile_(cli, tmp_path, models(f"{kind}.{layout}"), SPECS[kind], "file", "--to", layout)
    assert result.code == 0, result.err
    assert sorted(p.name for p in pruned.glob("*.safetensors")) == ["transformer.safetensors"]
    assert {"plan.json", "README.md", "config.json", "provenance.json"} <= {p.name for p in pruned.iterdir()}
    single = pruned / "transformer.safetensors"
    found = detect_file(single)
    assert found.layout == layout and not found.gaps  # contiguous: what ComfyUI's block counting needs
    loaded = model_class(kind).from_single_file(str(single), config=str(pruned), torch_dtype=torch.float32)
    assert same_tensors(loaded.state_dict(), reference)  # bit for bit
    digest = hashlib.sha256(models(f"{kind}.{layout}").read_bytes()).hexdigest()
    provenance = json.loads((pruned / "provenance.json").read_text())
    assert provenance["source_sha256"] == {f"{kind}.safetensors": digest} and provenance["layout"] == layout
    note = "will not load there as is"
    assert (note in result.err and note in (pruned / "README.md").read_text()) == (kind == "sd3")


def test_the_default_output_is_the_inputs_layout_and_diffusers_reads_a_single_file_in(
    cli: Cli, tmp_path: Path, models: Callable[[str], Path]
) -> None:
    reference = folder_output(cli, tmp_path, models, "sd3")
    result, pruned = compile_(cli, tmp_path, models("sd3.sai"), SPECS["sd3"], "default")
    assert result.code == 0 and detect_file(pruned / "transformer.safetensors").layout == "sai"
    result, pruned = compile_(cli, tmp_path, models("sd3.sai"), SPECS["sd3"], "folder2", "--to", "diffusers")
    assert result.code == 0, result.err
    assert same_tensors(load_file(pruned / "diffusion_pytorch_model.safetensors"), reference)


def test_a_gguf_output_loads_in_diffusers_within_its_types_error(
    cli: Cli, tmp_path: Path, models: Callable[[str], Path], flux_loadable: None
) -> None:
    from diffusers import GGUFQuantizationConfig

    folder_output(cli, tmp_path, models, "flux")
    expected = forward(model_class("flux").from_pretrained(tmp_path / "folder" / "pruned"), inputs("flux"))
    result, pruned = compile_(cli, tmp_path, models("flux"), SPECS["flux"], "gguf", "--to", "GGUF:Q8_0")
    assert result.code == 0, result.err
    assert sorted(p.name for p in pruned.iterdir() if p.suffix in (".gguf", ".safetensors")) == ["transformer.gguf"]
    written = read_gguf(pruned / "transformer.gguf")
    assert written.tensors["double_blocks.1.img_attn.qkv.weight"].type == "q8_0"
    assert "double_blocks.2.img_attn.qkv.weight" not in written.tensors
    loaded = model_class("flux").from_single_file(
        str(pruned / "transformer.gguf"),
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        config=str(pruned),
    )
    error = float((forward(loaded, inputs("flux")) - expected).norm() / expected.norm())
    assert error <= 2e-2  # q8_0's output error, relative


def test_a_quantized_gguf_drops_whole_blocks_with_its_bytes_as_they_are(
    cli: Cli, tmp_path: Path, models: Callable[[str], Path]
) -> None:
    source = models("flux.q8_0")
    result, pruned = compile_(cli, tmp_path, source, SPECS["flux"], "out")
    assert result.code == 0, result.err
    before, after = read_gguf(source), read_gguf(pruned / "transformer.gguf")
    moved = {"double_blocks.0.": "double_blocks.0.", "double_blocks.2.": "double_blocks.1.",
             "single_blocks.1.": "single_blocks.0.", "single_blocks.3.": "single_blocks.1."}  # fmt: skip
    expected = {}
    for name in before.tensors:
        head = next((p for p in ("double_blocks.", "single_blocks.") if name.startswith(p)), None)
        old = ".".join(name.split(".")[:2]) + "." if head else None
        if head is None or old in moved:
            expected[moved[old] + name[len(old) :] if old else name] = name
    assert sorted(after.tensors) == sorted(expected)
    with source.open("rb") as a, (pruned / "transformer.gguf").open("rb") as b:
        for new, old in expected.items():
            x, y = before.tensors[old], after.tensors[new]
            assert x.type == y.type and a.seek(x.begin) >= 0 and b.seek(y.begin) >= 0
            assert a.read(x.end - x.begin) == b.read(y.end - y.begin), new
    assert json.loads(after.fields["hpspec.config"])["num_single_layers"] == 2


def test_prune_writes_the_layout_asked_for(cli: Cli, tmp_path: Path, models: Callable[[str], Path]) -> None:
    spec = tmp_path / "spec.hps"
    spec.write_text(SPECS["flux"], encoding="utf-8")
    result = cli("prune", spec, "--model", models("flux"), "--out", tmp_path / "pruned", "--to", "comfyui")
    assert result.code == 0, result.err
    found = detect_file(tmp_path / "pruned" / "transformer.safetensors")
    assert (found.layout_name, found.config["num_layers"], found.config["num_single_layers"]) == ("comfyui", 2, 2)


def test_convert_writes_exactly_the_file_asked_for(cli: Cli, tmp_path: Path, models: Callable[[str], Path]) -> None:
    out = tmp_path / "flux-Q8_0.gguf"
    result = cli("convert", models("flux.bfl"), "--to", "gguf:q8_0", "-o", out)
    assert result.code == 0, result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flux-Q8_0.gguf"]
    assert read_gguf(out).tensors["single_blocks.0.linear1.weight"].type == "q8_0"
    result = cli("convert", models("flux.bfl"), "--to", "diffusers", "-o", tmp_path / "folder")
    assert result.code == 0, result.err
    assert same_tensors(
        load_file(tmp_path / "folder" / "diffusion_pytorch_model.safetensors"), build("flux").state_dict()
    )


def test_a_hugging_face_snapshot_gives_its_blob_names_as_digests_without_hashing(
    cli: Cli, tmp_path: Path, models: Callable[[str], Path]
) -> None:
    repo = tmp_path / "hub" / "models--org--tiny-sd3"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / ("a" * 40) / "transformer"
    snapshot.mkdir(parents=True)
    named = "0123456789abcdef" * 4  # not the file's sha256: only taking the name gives it
    for blob, file in [(named, "diffusion_pytorch_model.safetensors"), ("b" * 40, "config.json")]:
        (repo / "blobs" / blob).write_bytes((models("sd3") / file).read_bytes())
        os.symlink(Path("..", "..", "..", "blobs", blob), snapshot / file)
    assert hashlib.sha256((snapshot / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest() != named
    result, pruned = compile_(cli, tmp_path, snapshot.parent, SPECS["sd3"], "out")
    assert result.code == 0, result.err
    digests = json.loads((pruned / "provenance.json").read_text())["source_sha256"]
    assert digests == {"diffusion_pytorch_model.safetensors": named}


def test_check_and_plan_read_a_single_file_or_gguf_with_no_config_and_no_torch(
    tmp_path: Path, models: Callable[[str], Path]
) -> None:
    spec = tmp_path / "spec.hps"
    spec.write_text(SPECS["flux"], encoding="utf-8")
    code = (
        "import sys; from hpspec.cli.app import main\n"
        "for target in sys.argv[2:]:\n"
        "    assert main(['check', sys.argv[1], '--target', target]) == 0\n"
        "    assert main(['plan', sys.argv[1], '--target', target, '--format', 'json']) == 0\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('hpspec.weights', 'hpspec.stages'))))"
    )
    targets = [models("flux.bfl"), models("flux.q8_0")]
    assert not (targets[0].parent / "config.json").exists()
    done = subprocess.run([sys.executable, "-c", code, spec, *targets], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    plans = [json.loads(chunk) for chunk in _json_documents(done.stdout)]  # the same plan from the file and the GGUF
    assert (
        len(plans) == 2
        and plans[0]["params"] == plans[1]["params"]
        and plans[0]["target"]["fingerprint"] == plans[1]["target"]["fingerprint"]
    )


def _json_documents(text: str) -> list[str]:
    """The JSON objects printed one after another (plan --format json), each starting at a line `{`."""
    starts = [i for i, line in enumerate(text.splitlines()) if line == "{"]
    lines = text.splitlines()
    ends = [i for i, line in enumerate(lines) if line == "}"]
    return ["\n".join(lines[a : b + 1]) for a, b in zip(starts, ends)]


def _unknown(tmp_path: Path, models: Callable[[str], Path]) -> list[str]:
    save_file({"foo.weight": torch.ones(2, 2)}, tmp_path / "unknown.safetensors")
    return ["compile", "SPEC", "--model", tmp_path / "unknown.safetensors"]


def _mixed(tmp_path: Path, models: Callable[[str], Path]) -> list[str]:
    save_file(
        {"double_blocks.0.a.weight": torch.ones(2), "joint_blocks.0.b.weight": torch.ones(2)},
        tmp_path / "mixed.safetensors",
    )
    return ["compile", "SPEC", "--model", tmp_path / "mixed.safetensors"]


def _llama(tmp_path: Path, models: Callable[[str], Path]) -> list[str]:
    import gguf

    writer = gguf.GGUFWriter(path=None, arch="llama")
    writer.write_header_to_file(path=tmp_path / "llama.gguf")
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return ["compile", "SPEC", "--model", tmp_path / "llama.gguf"]


def _k_quant(tmp_path: Path, models: Callable[[str], Path]) -> list[str]:
    return ["convert", models("flux.bfl"), "--to", "gguf:Q3_K", "-o", tmp_path / "OUT"]


def _parts(tmp_path: Path, models: Callable[[str], Path]) -> list[str]:
    return ["compile", "SPEC:drop double_block[1].context_mlp", "--model", models("flux.bfl"), "--to", "bfl"]


def _pickle(tmp_path: Path, models: Callable[[str], Path]) -> list[str]:
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04K\x01.")
    return ["compile", "SPEC", "--model", tmp_path / "model.ckpt"]


def _layout(tmp_path: Path, models: Callable[[str], Path]) -> list[str]:
    return ["compile", "SPEC", "--model", models("flux.bfl"), "--to", "ckpt"]


def _sd3_gguf_last_block(tmp_path: Path, models: Callable[[str], Path]) -> list[str]:
    return ["compile", "SPEC:drop blocks[5]", "--model", models("sd3.q8_0")]


BAD: dict[str, tuple[Callable[[Path, Callable[[str], Path]], list[Any]], str]] = {
    "unknown layout": (_unknown, "unknown single-file layout: tensor name prefixes found: foo.* (1); layouts known"),
    "mixed layouts": (_mixed, "mixed key layouts in one file: bfl ('double_blocks.0.a.weight') and sai"),
    "gguf of an unknown arch": (_llama, "a GGUF of architecture 'llama'; hpspec knows flux, sd3"),
    "a type the gguf package cannot quantize": (
        _k_quant,
        "the gguf package can read the other K-quants but not write them",
    ),
    "part drops to a foreign layout": (_parts, "drops parts of blocks (double_blocks[1].context_mlp)"),
    "a pickle file": (_pickle, "pickle"),
    "sd3's last block from a gguf": (_sd3_gguf_last_block, "that is not done on a GGUF: keep the last block"),
    "an unknown --to": (_layout, "unknown layout 'ckpt' for --to; known: diffusers, bfl, sai, comfyui, gguf[:TYPE]"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_1_and_nothing_written(
    cli: Cli, tmp_path: Path, models: Callable[[str], Path], case: str
) -> None:
    make, message = BAD[case]
    inputs_dir = tmp_path / "in"
    inputs_dir.mkdir()
    args = [str(a) for a in make(inputs_dir, models)]
    if args[0] == "compile":
        spec = tmp_path / "spec.hps"
        spec.write_text(args[1].partition(":")[2] + "\n" if ":" in args[1] else "drop single_blocks[0]\n")
        args[1:2] = [str(spec)]
        args += ["--out", str(tmp_path / "out")]
    before = sorted(p.name for p in inputs_dir.iterdir())
    result = cli(*args)
    assert result.code == 1 and result.err.count("\n") == 1 and result.err.startswith("error:"), result.err
    assert message in result.err
    assert not (tmp_path / "out").exists() and not (inputs_dir / "OUT").exists()
    assert sorted(p.name for p in inputs_dir.iterdir()) == before
