"""quantize: the method's last stage. Every `nn.Linear` of a pruned transformer becomes 4-bit (or
8-bit) weights with 16-bit activations; what the spec's `except` names and every non-Linear module
(patch embedding, norms, biases) stay unquantized at the compute dtype.

The output is a diffusers checkpoint in the layout diffusers writes for pre-quantized models
(`quantization_config` in config.json), so plain `from_pretrained` reads it (bitsandbytes schemes
on a GPU machine; int4 anywhere) when only whole blocks were dropped and the exceptions are ones
diffusers can name; `hpspec.load_pretrained` rebuilds it exactly on any machine. A plain
`load_state_dict` into a quantized model would silently give wrong numbers: loading goes through
each library's own constructors for pre-quantized weights.

What the stage writes is predicted tensor by tensor, without torch, by `quantize_layout`; the plan's
`bytes.after_quantize` is that prediction, and the stage checks every written tensor against it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from hpspec.core.version import __version__
from hpspec.weights.checkpoint import dropped_part_modules, renamed, shard_names
from hpspec.core.errors import CheckpointError, HpspecError, PlanError
from hpspec.core.paths import CARD_NAME, CONFIG_NAME, PLAN_NAME, WEIGHTS_INDEX_SUFFIX, WEIGHTS_NAME
from hpspec.core.io import dumps_json
from hpspec.plan.plan import QUANTIZE_BACKENDS, Plan, QuantizePlan
from hpspec.plan.quantize_layout import COMPUTE_DTYPES, LayoutTensor, SourceTensor, quantized_layout, under, weight_bytes

TORCH_DTYPES: Mapping[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MAX_SHARD_BYTES = 10 * 10**9  # diffusers' default `max_shard_size` ("10GB")
INSTALL = {"bitsandbytes": "hpspec[bnb]", "optimum-quanto": "hpspec[quanto]"}
PRUNE_FIELDS = ("target", "stacks", "config", "ops")  # what a stage directory's plan must share with the one quantizing it


# --------------------------------------------------------------------------------------------
# Backends


def backend(scheme: str) -> ModuleType:
    """The module that quantizes and loads Linears for `scheme` (bitsandbytes or optimum-quanto)."""
    library = QUANTIZE_BACKENDS.get(scheme)
    if library is None:
        raise PlanError(f"unknown quantization scheme {scheme!r}; hpspec knows {', '.join(QUANTIZE_BACKENDS)}")
    try:
        if library == "bitsandbytes":
            from hpspec.weights.backends import bnb as module
        else:
            from hpspec.weights.backends import quanto as module
    except ImportError as error:
        raise HpspecError(f"quantize {scheme} needs {library} ({error}); install {INSTALL[library]}") from None
    return module


def quantized_types() -> tuple[type, ...]:
    """The classes of quantized Linears of every backend that is installed."""
    found: list[type] = []
    for scheme in ("nf4", "int4"):
        try:
            found.extend(backend(scheme).quantized_types())
        except HpspecError:
            continue
    return tuple(found)


def linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """Every plain `nn.Linear` (quantized Linears subclass it, so the type is compared exactly)."""
    for path, module in model.named_modules():
        if type(module) is nn.Linear:
            yield path, module


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, module)


# --------------------------------------------------------------------------------------------
# Quantizing a live model


def quantize_model(model: nn.Module, quantize: QuantizePlan) -> list[str]:
    """Quantize `model` in place: parameters and buffers at the compute dtype, then every Linear
    outside the exceptions replaced. Returns the replaced module paths."""
    module = backend(quantize.scheme)
    compute = TORCH_DTYPES[quantize.compute]
    model.to(compute)
    replaced = []
    for path, linear in list(linears(model)):
        if under(path, quantize.except_modules):
            continue
        _set(model, path, module.quantize_linear(linear, quantize.scheme, compute))
        replaced.append(path)
    model.requires_grad_(False)
    return replaced


def source_tensors(model: nn.Module) -> list[SourceTensor]:
    """The tensors of an unquantized model, as `quantize_layout` reads them."""
    buffers = {name for name, _ in model.named_buffers()}
    return [SourceTensor(name, tuple(t.shape), name in buffers) for name, t in model.state_dict().items()]


def quantized_state(model: nn.Module, scheme: str) -> dict[str, torch.Tensor]:
    """The state dict to write: contiguous CPU tensors, the bitsandbytes quant states padded."""
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        if ".quant_state.bitsandbytes__" in name:
            tensor = _padded_quant_state(tensor, scheme)
        state[name] = tensor
    return state


def _padded_quant_state(tensor: torch.Tensor, scheme: str) -> torch.Tensor:
    """The quant state's JSON with trailing spaces up to its fixed width (`quantize_layout`)."""
    from hpspec.plan.quantize_layout import quant_state_width

    data = json.loads(bytes(tensor.numpy()).decode("utf-8"))
    width = quant_state_width(scheme, data["shape"], data["dtype"])
    raw = bytes(tensor.numpy())
    if len(raw) > width:
        raise HpspecError(f"a quant state of {len(raw)} bytes exceeds its width {width}: {raw!r}")
    return torch.tensor(list(raw + b" " * (width - len(raw))), dtype=torch.uint8)


def check_layout(state: Mapping[str, torch.Tensor], layout: Sequence[LayoutTensor]) -> None:
    """Every tensor as `quantize_layout` predicted it (name, dtype, shape), no more, no fewer."""
    from hpspec.model.safetensors_header import TORCH_DTYPES as NAMES

    expected = {t.name: (t.dtype, tuple(t.shape)) for t in layout}
    actual = {name: (NAMES[str(t.dtype).removeprefix("torch.")], tuple(t.shape)) for name, t in state.items()}
    if actual != expected:
        differ = sorted(set(actual.items()) ^ set(expected.items()))[:3]
        raise HpspecError(f"the quantized model differs from its predicted layout (a bug in hpspec): {differ}")


# --------------------------------------------------------------------------------------------
# config.json: what diffusers reads


def quantization_config(quantize: QuantizePlan, skipped: Sequence[str]) -> dict[str, Any]:
    """The `quantization_config` diffusers writes for the same settings (its `to_dict()`)."""
    skip = list(skipped) or None
    if quantize.scheme == "int4":
        return {"quant_method": "quanto", "weights_dtype": "int4", "modules_to_not_convert": skip}
    four_bit = quantize.scheme != "int8"
    return {
        "_load_in_4bit": four_bit,
        "_load_in_8bit": not four_bit,
        "bnb_4bit_compute_dtype": COMPUTE_DTYPES[quantize.compute][1] if four_bit else "float32",
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": quantize.scheme if four_bit else "fp4",
        "bnb_4bit_use_double_quant": four_bit,
        "llm_int8_enable_fp32_cpu_offload": False,
        "llm_int8_has_fp16_weight": False,
        "llm_int8_skip_modules": skip,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": four_bit,
        "load_in_8bit": not four_bit,
        "quant_method": "bitsandbytes",
    }


def diffusers_skips(scheme: str, paths: Sequence[str], skipped: Sequence[str]) -> set[str]:
    """The Linears diffusers leaves unquantized for a skip list: bitsandbytes matches a module's
    own name or a path prefix, quanto only a module's own name."""
    names = set(skipped)
    found = set()
    for path in paths:
        own = path.rpartition(".")[2]
        by_path = scheme != "int4" and any(path == key or key + "." in path for key in names)
        if own in names or by_path:
            found.add(path)
    return found


def diffusers_readable(plan: Plan, paths: Sequence[str], skipped: Sequence[str]) -> bool:
    """Would plain diffusers rebuild exactly this model? Not with dropped parts (their stand-ins
    are hpspec's), nor when its skip rule would leave other Linears unquantized."""
    assert plan.quantize is not None
    no_parts = not any(op.kind == "drop_part" for op in plan.ops)
    return no_parts and diffusers_skips(plan.quantize.scheme, paths, skipped) == set(skipped)


# --------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class Quantized:
    files: tuple[str, ...]
    tensors: int
    nbytes: int  # tensor bytes written (headers apart), buffers included
    weight_bytes: int  # the plan's measure: buffers apart
    linears: int
    full_precision: tuple[str, ...]  # Linears kept unquantized
    diffusers_readable: bool


def write_quantized(model: nn.Module, plan: Plan, out: Path, source_config: Mapping[str, Any], layout: Sequence[LayoutTensor],
                    replaced: Sequence[str], kept: Sequence[str]) -> Quantized:  # fmt: skip
    """Write the quantized model into the (empty) directory `out`: shards, index, config, plan."""
    from safetensors.torch import save_file

    assert plan.quantize is not None
    state = quantized_state(model, plan.quantize.scheme)
    check_layout(state, layout)
    shards = _shards(state)
    names = shard_names(len(shards))
    metadata = {"format": "pt", "hpspec_version": __version__, "hpspec_plan_sha256": plan.sha256, "hpspec_quantize": plan.quantize.scheme}
    for name, shard in zip(names, shards):
        save_file({key: state[key] for key in shard}, str(out / name), metadata=metadata)
    if len(names) > 1:
        weight_map = {key: name for name, shard in zip(names, shards) for key in shard}
        index = {"metadata": {"total_size": sum(t.nbytes for t in layout)}, "weight_map": dict(sorted(weight_map.items()))}
        (out / f"{WEIGHTS_NAME}{WEIGHTS_INDEX_SUFFIX}").write_text(dumps_json(index), encoding="utf-8")
    config = {**source_config, "quantization_config": quantization_config(plan.quantize, kept)}
    (out / CONFIG_NAME).write_text(dumps_json(config), encoding="utf-8")
    (out / PLAN_NAME).write_text(plan.to_json(), encoding="utf-8")
    paths = [*replaced, *kept]
    readable = diffusers_readable(plan, paths, kept)
    return Quantized(tuple(names), len(state), sum(t.nbytes for t in layout), weight_bytes(layout), len(replaced), tuple(kept), readable)


def _shards(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Tensor names per shard, in order, each shard under diffusers' default size."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


# --------------------------------------------------------------------------------------------
# The stage


@dataclass(frozen=True)
class Prepared:
    """A validated quantize job: the model loaded at the compute dtype, its predicted output."""

    plan: Plan
    source: Path
    model: nn.Module
    config: Mapping[str, Any]
    layout: list[LayoutTensor]


def prepare(plan: Plan, source: Path) -> Prepared:
    """Check everything before anything is written: the plan, the input directory, its weights."""
    from hpspec.model.graph import read_config
    from hpspec.weights.prune import load_pretrained
    from hpspec.plan.schema import load_plan_file

    if plan.quantize is None:
        raise PlanError(f"the plan of {plan.spec.path} has no `quantize` statement")
    backend(plan.quantize.scheme)
    source = Path(source)
    if not (source / PLAN_NAME).is_file():
        raise CheckpointError(f"{source}: no {PLAN_NAME}; quantize reads a stage directory hpspec wrote (run `hpspec prune` first)")
    config = read_config(source / CONFIG_NAME)
    if "quantization_config" in config:
        raise CheckpointError(f"{source}: is already quantized ({config['quantization_config'].get('quant_method')})")
    _check_same_pruning(plan, load_plan_file(source / PLAN_NAME), source)
    model = load_pretrained(source, torch_dtype=TORCH_DTYPES[plan.quantize.compute])
    layout = quantized_layout(source_tensors(model), plan.quantize.scheme, plan.quantize.compute, plan.quantize.except_modules)
    if plan.bytes.after_quantize is not None and plan.bytes.after_quantize != weight_bytes(layout):
        raise PlanError(
            f"{source}: would quantize to {weight_bytes(layout)} bytes of weights, the plan says "
            f"{plan.bytes.after_quantize}; the plan does not fit this model"
        )
    return Prepared(plan, source, model, config, layout)


def _check_same_pruning(plan: Plan, source_plan: Plan, source: Path) -> None:
    for name in PRUNE_FIELDS:
        if getattr(plan, name) != getattr(source_plan, name):
            raise PlanError(
                f"{source}: was pruned by another plan ({source_plan.spec.path}; its `{name}` differs from "
                f"{plan.spec.path}'s); quantize the output of the same spec's prune stage"
            )


def run(prepared: Prepared, out: Path) -> Quantized:
    """Quantize the prepared model and write it into the (empty) directory `out`."""
    plan = prepared.plan
    assert plan.quantize is not None
    kept = [path for path, _ in linears(prepared.model) if under(path, plan.quantize.except_modules)]
    replaced = quantize_model(prepared.model, plan.quantize)
    written = write_quantized(prepared.model, plan, Path(out), prepared.config, prepared.layout, replaced, kept)
    (Path(out) / CARD_NAME).write_text(model_card(plan, prepared.source, written), encoding="utf-8")
    return written


def prepare_stage(given: Any) -> Callable[[Path], dict[str, Any]]:
    """The quantize Stage's `prepare` (hpspec.stages): validate now, return the writer."""
    prepared = prepare(given.plan, given.source)

    def write(tmp: Path) -> dict[str, Any]:
        written = run(prepared, tmp)
        return {
            "source_model": str(prepared.source),
            "scheme": prepared.plan.quantize.scheme if prepared.plan.quantize else None,
            "files": list(written.files),
            "tensors": written.tensors,
            "params": prepared.plan.params.after_prune,
            "bytes": written.weight_bytes,
            "quantized_linears": written.linears,
            "full_precision_linears": list(written.full_precision),
            "diffusers_readable": written.diffusers_readable,
        }

    return write


def quantize_dir(source: str | Path, out: str | Path, plan: Plan, scheme: str | None = None, compute: str = "bf16") -> Quantized:
    """Quantize a stage directory (`OUT/pruned`, `OUT/distilled`) into `out` (which must not exist).

    `scheme` quantizes with that scheme (no exceptions) when the plan has no `quantize` of its own;
    `out/plan.json` is then the plan with that quantization and its byte count.
    """
    from hpspec.core.io import atomic_directory

    if scheme is not None:
        plan = with_quantize(plan, scheme, compute)
    prepared = prepare(plan, Path(source))
    if plan.bytes.after_quantize is None:
        plan = replace(plan, bytes=replace(plan.bytes, after_quantize=weight_bytes(prepared.layout)))
        prepared = replace(prepared, plan=plan)
    if Path(out).exists():
        raise HpspecError(f"{out}: already exists")
    with atomic_directory(Path(out)) as tmp:
        return run(prepared, tmp)


def with_quantize(plan: Plan, scheme: str, compute: str = "bf16") -> Plan:
    """The plan with `quantize SCHEME` (nothing excepted); its byte count is left to the stage."""
    if scheme not in QUANTIZE_BACKENDS or compute not in TORCH_DTYPES:
        raise PlanError(f"quantize {scheme} compute={compute}: schemes are {', '.join(QUANTIZE_BACKENDS)}, compute {', '.join(TORCH_DTYPES)}")
    quantize = QuantizePlan(scheme, QUANTIZE_BACKENDS[scheme], compute, [])
    return replace(plan, quantize=quantize, bytes=replace(plan.bytes, after_quantize=None))


def model_card(plan: Plan, source: Path, written: Quantized) -> str:
    from hpspec.plan.summary import human_bytes, plan_text

    assert plan.quantize is not None
    q = plan.quantize
    family = {"sd3": "SD3Transformer2DModel", "flux": "FluxTransformer2DModel"}.get(plan.target.family, "transformer")
    if written.diffusers_readable and q.scheme == "int4":
        plain = f"Plain diffusers reads it too (`{family}.from_pretrained(DIR)`, optimum-quanto installed)."
    elif written.diffusers_readable:
        plain = f"On a GPU machine plain diffusers reads it too (`{family}.from_pretrained(DIR)`, bitsandbytes installed)."
    else:
        plain = ("Plain diffusers `from_pretrained` does not rebuild it (parts of blocks were replaced by stand-ins, "
                 "or an exception is one diffusers cannot name): load it with hpspec.")  # fmt: skip
    kept = ", ".join(written.full_precision) or "none"
    return "\n".join([
        f"# {plan.target.name}, pruned and quantized ({q.scheme}) by hpspec",
        "",
        f"Every Linear of the transformer in `{source}` as {q.scheme} weights ({q.backend}), activations and every "
        f"other module at {q.compute}: {written.linears} Linears quantized, kept in full precision: {kept}. "
        f"Weights: {human_bytes(written.weight_bytes)} (`plan.json`: bytes.after_quantize).",
        "",
        "```", plan_text(plan).rstrip(), "```",
        "",
        plain,
        "",
        "```python", "import hpspec", "", 'transformer = hpspec.load_pretrained("DIR")  # DIR: this directory', "```",
        "",
    ])  # fmt: skip


# --------------------------------------------------------------------------------------------
# Loading


def load_quantized(directory: Path, plan: Plan, config: Mapping[str, Any], torch_dtype: torch.dtype | None = None) -> nn.Module:
    """A quantized transformer from a directory the quantize stage wrote, every tensor from its files.

    The pruned architecture is rebuilt as `load_pretrained` does; the Linears the plan quantizes
    become empty quantized modules filled through each library's own loader for pre-quantized
    weights; every other tensor is assigned strictly (a missing or unexpected tensor is an error).
    """
    from hpspec.weights.prune import _empty_model, _replace_part

    quantize = plan.quantize
    if quantize is None:
        raise CheckpointError(f"{directory}: config.json says quantized, but its {PLAN_NAME} has no `quantize`")
    compute = TORCH_DTYPES[quantize.compute]
    if torch_dtype is not None and torch_dtype != compute:
        raise CheckpointError(f"{directory}: is quantized with compute {quantize.compute}; it loads at that dtype only")
    module = backend(quantize.scheme)
    model = _empty_model({k: v for k, v in config.items() if k != "quantization_config"}, directory)
    for old in dropped_part_modules(plan):
        new = renamed(plan, old)
        if new is not None:
            _replace_part(model, new)
    quantized = {}
    for path, linear in list(linears(model)):
        if not under(path, quantize.except_modules):
            empty = module.empty_linear(linear.in_features, linear.out_features, linear.bias is not None, quantize.scheme, compute)
            _set(model, path, empty)
            quantized[path] = empty
    _load_tensors(model, quantized, module, directory)
    _check_count(model, quantized, plan, directory)
    return model.requires_grad_(False).eval()


def _load_tensors(model: nn.Module, quantized: Mapping[str, nn.Module], module: ModuleType, directory: Path) -> None:
    from safetensors.torch import load_file

    from hpspec.model.graph import find_transformer

    _, shards = find_transformer(directory)
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(shard))
    for path, empty in quantized.items():
        prefix = path + "."
        own = {name[len(prefix) :]: state.pop(name) for name in [n for n in state if n.startswith(prefix)]}
        missing = sorted(module.linear_names(empty) - set(own))
        if missing:
            raise CheckpointError(f"{directory}: the files lack {prefix}{missing[0]} of the quantized {path}")
        try:
            module.load_linear(empty, own)
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"{directory}: {path} does not load as {type(empty).__name__}: {error}") from None
    expected = {n for n in model.state_dict() if not any(n.startswith(p + ".") for p in quantized)}
    unexpected = sorted(set(state) - expected)
    if unexpected:
        raise CheckpointError(f"{directory}: holds {unexpected[0]!r}, which the quantized model has no place for")
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"{directory}: does not fit the quantized model: {str(error).splitlines()[-1].strip()}") from None
    from hpspec.weights.prune import require_loaded

    require_loaded(model, directory)


def _check_count(model: nn.Module, quantized: Mapping[str, nn.Module], plan: Plan, directory: Path) -> None:
    """The weights the quantized Linears stand for, plus every other parameter: the plan's count."""
    inside = {id(p) for m in quantized.values() for p in m.parameters()}
    count = sum(p.numel() for p in model.parameters() if id(p) not in inside)
    count += sum(m.in_features * m.out_features + (m.bias.numel() if m.bias is not None else 0) for m in quantized.values())  # type: ignore[operator]
    if count != plan.params.after_prune:
        raise PlanError(f"{directory}: the quantized model stands for {count} parameters, the plan says {plan.params.after_prune}")
