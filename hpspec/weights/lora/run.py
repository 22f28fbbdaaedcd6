"""run: LoRA adapters remapped through a plan into OUT/lora/, with their coverage.

Every adapter is read, placed and remapped before anything is written, so a bad one leaves the
output untouched. Each writes `<file name>` (its tensors, metadata kept, hpspec's provenance
added), `<stem>.json` (its coverage) and, when it holds keys hpspec cannot place on the
transformer, `<stem>.apart.safetensors` with those keys unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpspec.core.errors import LoraError
from hpspec.core.io import atomic_file, dumps_json, write_text_atomic
from hpspec.core.version import __version__
from hpspec.model.formats.lora_rules import lora_rules
from hpspec.model.graph import ModelGraph
from hpspec.model.targets import graph_from_path
from hpspec.plan.plan import Plan
from hpspec.weights.checkpoint.source import check_fingerprint, sha256_file
from hpspec.weights.checkpoint.tensors import OutTensor
from hpspec.weights.formats.convert import write_safetensors
from hpspec.weights.lora.adapter import Adapter, Module, model_shapes, read_adapter
from hpspec.weights.lora.coverage import Coverage, coverage, read_array
from hpspec.weights.lora.metadata import PEFT_METADATA, alpha_metadata, peft_alpha, peft_config, renamed_metadata
from hpspec.weights.lora.remap import remap
from hpspec.weights.lora.write import copied, output_tensors

LORA_DIRECTORY = "lora"  # compile --lora writes OUT/lora/
APART_SUFFIX = ".apart.safetensors"
COVERAGE_SUFFIX = ".json"


@dataclass(frozen=True)
class Remapped:
    """One adapter, remapped: what it will write and how much of it survives."""

    source: Path
    out: Path
    tensors: tuple[OutTensor, ...]
    metadata: Mapping[str, str]
    apart: tuple[OutTensor, ...]
    coverage: Coverage
    modules: int  # LoRA modules written

    @property
    def coverage_path(self) -> Path:
        return self.out.with_name(self.out.stem + COVERAGE_SUFFIX)

    @property
    def apart_path(self) -> Path:
        return self.out.with_name(self.out.stem + APART_SUFFIX)


def pruned_config(plan: Plan, graph: ModelGraph) -> dict[str, Any]:
    """The pruned model's config: the full model's with the plan's rewrites."""
    return {**dict(graph.config), **plan.config}


def prepare(plan: Plan, graph: ModelGraph, path: Path, out_dir: Path, to: str = "same") -> Remapped:
    """Read, place and remap one adapter (nothing written yet)."""
    check_fingerprint(plan, graph, graph.source)
    path = Path(path)
    shapes = model_shapes(graph)
    adapter = read_adapter(path, graph, shapes)
    rows, fates = remap(plan, shapes, adapter.modules)
    output = output_tensors(adapter, rows, pruned_config(plan, graph), graph.family, to)
    metadata = {**renamed_metadata(adapter.header.metadata, plan), **_provenance(plan, path)}
    if output.alphas:
        metadata = _alphas(metadata, adapter, output.tensors, output.alphas)
    covered = coverage(plan, path, adapter.header.metadata, fates, adapter.apart, len(adapter.text_keys))
    apart = _apart(adapter)
    return Remapped(path, Path(out_dir) / path.name, output.tensors, metadata, apart, covered, output.modules)


def _provenance(plan: Plan, path: Path) -> dict[str, str]:
    return {
        "hpspec_version": __version__,
        "hpspec_plan_sha256": plan.sha256,
        "hpspec_plan_spec": plan.spec.path,
        "hpspec_adapter_sha256": sha256_file(path),
    }


def _alphas(
    metadata: Mapping[str, str], adapter: Adapter, tensors: Sequence[OutTensor], alphas: Mapping[str, Module]
) -> dict[str, str]:
    """`--to diffusers` of modules with `.alpha`: every written module's rank and alpha in peft's config."""
    config = peft_config(adapter.header.metadata)
    down = "." + lora_rules().diffusers_pair.down + "." + lora_rules().weight
    prefix = lora_rules().diffusers.written
    found: dict[str, tuple[int, float]] = {}
    for tensor in tensors:
        if tensor.name.startswith(prefix) and tensor.name.endswith(down):
            name = tensor.name[len(prefix) : -len(down)]
            rank = tensor.shape[0]
            if name in alphas:
                source = alphas[name]
                found[name] = (rank, float(read_array(adapter.path, source.alpha).reshape(-1)[0]))  # type: ignore[arg-type]
            else:
                found[name] = (rank, peft_alpha(config, name) or float(rank))
    return alpha_metadata(metadata, found)


def _apart(adapter: Adapter) -> tuple[OutTensor, ...]:
    return tuple(copied(adapter.path, adapter.header.tensors[name], name) for name in sorted(adapter.apart))


def prepare_all(
    plan: Plan, graph: ModelGraph, paths: Sequence[Path], out_dir: Path, to: str = "same"
) -> list[Remapped]:
    """Every adapter read, placed and remapped (nothing written): a bad one fails before any is."""
    names = [Path(p).name for p in paths]
    repeated = next((n for n in names if names.count(n) > 1), None)
    if repeated is not None:
        raise LoraError(f"two adapters are named {repeated!r}; their outputs would be the same file")
    done = [prepare(plan, graph, Path(p), out_dir, to) for p in paths]
    for item in done:
        if item.out.resolve() == item.source.resolve():
            raise LoraError(f"{item.source}: the output would replace the input; write to another directory (-o)")
    return done


def remap_adapters(
    plan: Plan, graph: ModelGraph, paths: Sequence[Path], out_dir: Path, to: str = "same", force: bool = False
) -> list[Remapped]:
    """Remap every adapter, then write them all into `out_dir`."""
    done = prepare_all(plan, graph, paths, out_dir, to)
    for item in done:
        if not force and any(p.exists() for p in (item.out, item.coverage_path)):
            raise LoraError(f"{item.out}: already exists (use --force to replace it)")
    for item in done:
        write(item, force)
    return done


def prepare_loras(plan: Plan, model: Path, paths: Sequence[str], out: Path) -> list[Remapped]:
    """compile --lora: the adapters for the full model at `model`, remapped for OUT/lora/."""
    graph = graph_from_path(model)
    check_fingerprint(plan, graph, str(model))
    return prepare_all(plan, graph, [Path(p) for p in paths], out / LORA_DIRECTORY)


def write_loras(done: Sequence[Remapped], stream: Any = None) -> None:
    """Write compile's remapped adapters (replacing OUT/lora's earlier ones), a coverage line each."""
    for item in done:
        write(item, force=True)
        (stream or sys.stdout).write(summary(item) + "\n")


def write(item: Remapped, force: bool = False) -> None:
    """The adapter, its side file of keys kept apart, and its coverage JSON, each atomically."""
    with atomic_file(item.out, force) as tmp:
        write_safetensors(tmp, item.tensors, item.metadata)
    if item.apart:
        with atomic_file(item.apart_path, force=True) as tmp:
            write_safetensors(tmp, item.apart, {k: v for k, v in item.metadata.items() if k != PEFT_METADATA})
    report = {
        "adapter": str(item.source),
        "output": str(item.out),
        "apart_file": str(item.apart_path) if item.apart else None,
        "modules_written": item.modules,
        "provenance": {k: v for k, v in item.metadata.items() if k.startswith("hpspec_")},
        **item.coverage.to_dict(),
    }
    write_text_atomic(item.coverage_path, dumps_json(report))


def summary(item: Remapped) -> str:
    """The coverage line the CLI prints."""
    total = item.coverage.total
    dropped = "; ".join(f"{k}s {_ranges(v)} dropped" for k, v in item.coverage.dropped_blocks.items() if v)
    losses = sorted(
        ((k, (s.norm - s.kept_norm) / total.norm) for k, s in item.coverage.blocks.items() if total.norm),
        key=lambda kv: -kv[1],
    )
    largest = ", ".join(f"{k} {share:.1%}" for k, share in losses[:3] if share > 0.0005)
    line = f"{item.source} -> {item.out}: {total.kept_modules} of {total.modules} modules kept"
    line += f" ({dropped})" if dropped else ""
    line += f";\n  {total.norm_kept:.1%} of the adapter's update norm kept"
    line += f"; largest losses: {largest}" if largest else ""
    if item.coverage.apart:
        line += f"\n  {len(item.coverage.apart)} keys hpspec cannot place, kept apart in {item.apart_path}"
    return line


def _ranges(numbers: Sequence[int]) -> str:
    out: list[str] = []
    for n in numbers:
        if out and "-" not in out[-1] and int(out[-1]) == n - 1 or out and out[-1].endswith(f"-{n - 1}"):
            start = out[-1].split("-")[0]
            out[-1] = f"{start}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)
