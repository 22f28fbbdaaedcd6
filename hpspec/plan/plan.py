"""plan: the `Plan`, the explicit, deterministic description of what compile will do.

Plan schema v1 is pinned: later versions only add fields. Ops carry resolved indices and module
paths (never the slice a user wrote), so two specs that mean the same compile to the same plan.
The JSON is deterministic: sorted keys, the same bytes for the same spec and graph. Plain frozen
data: `compile` builds it from a checked spec, `schema` reads it back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

SCHEMA_VERSION = 1

OpKind = Literal["drop_block", "drop_part", "convert_last_block"]


@dataclass(frozen=True)
class TargetInfo:
    name: str
    source: str
    fingerprint: str
    family: str


@dataclass(frozen=True)
class DiagnosticInfo:
    severity: str
    message: str
    line: int | None
    column: int | None
    help: str | None


@dataclass(frozen=True)
class SpecInfo:
    path: str
    sha256: str
    source: str
    diagnostics: list[DiagnosticInfo]


@dataclass(frozen=True)
class StackPlan:
    module: str
    before: int
    after: int
    index_map: dict[str, int]  # old index -> new index, kept blocks only
    dropped: list[int]


@dataclass(frozen=True)
class Op:
    """One rewrite. `modules` are module paths in the ORIGINAL model; `params` is what goes."""

    kind: OpKind
    stack: str
    block: int
    part: str | None
    modules: list[str]
    params: int
    reason: str  # "spec", "promoted" (every part dropped), or "last_block_dropped"
    new_index: int | None = None


@dataclass(frozen=True)
class FreezePlan:
    rule: str  # "none", "auto", "explicit", "auto+explicit"
    frozen: list[str]  # module paths AFTER pruning
    trainable: list[str]
    frozen_params: int
    trainable_params: int


@dataclass(frozen=True)
class DistillPlan:
    weight: str
    mode: str
    table: str | None
    threshold: float | None
    steps: int
    lr: float
    batch: int
    output: float
    features: float
    task: float
    seed: int


@dataclass(frozen=True)
class QuantizePlan:
    scheme: str
    backend: str
    compute: str
    except_modules: list[str]  # module paths AFTER pruning, kept in full precision


@dataclass(frozen=True)
class PartCount:
    before: int
    after: int


@dataclass(frozen=True)
class ParamsPlan:
    before: int
    after_prune: int
    outside: int
    by_part_kind: dict[str, PartCount]


@dataclass(frozen=True)
class BytesPlan:
    dtype: str
    before: int
    after_prune: int
    unit: str = "bytes of weights (decimal), not peak memory"
    after_quantize: int | None = None  # added in schema v1: exact bytes the quantize stage writes (header apart)


@dataclass(frozen=True)
class FlopsPlan:
    image_tokens: int
    text_tokens: int
    before: int
    after_prune: int
    unit: str = "FLOPs of one forward at batch 1 (2 per multiply-add): matrices and attention, an estimate"


@dataclass(frozen=True)
class Plan:
    schema_version: int
    hpspec_version: str
    target: TargetInfo
    spec: SpecInfo
    stacks: dict[str, StackPlan]
    config: dict[str, Any]  # config.json keys the prune stage rewrites
    ops: list[Op]
    freeze: FreezePlan
    distill: DistillPlan | None
    quantize: QuantizePlan | None
    params: ParamsPlan
    bytes: BytesPlan
    flops: FlopsPlan | None = None  # added in schema v1 (fields only grow)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    @property
    def kept_fraction(self) -> float:
        return self.params.after_prune / self.params.before if self.params.before else 1.0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()
