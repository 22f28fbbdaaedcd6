"""Live surgery (`hpspec.apply`) against references that do not come from hpspec.

Whole-block drops are compared with diffusers' own `forward(skip_layers=...)`; every part drop with
an unmodified diffusers model in which this file swaps the submodule for a stand-in written here,
from METHOD §3's words. Parameter counts are checked against the modules the test removes itself.
"""

from __future__ import annotations

from typing import Callable

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from torch import nn  # noqa: E402

from hpspec.core.errors import HpspecError, PlanError  # noqa: E402
from hpspec.weights.prune import apply  # noqa: E402

from tests.tiny_models import build, forward, inputs, isolated, plan_for, state, swap  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _isolated(tmp_path_factory: pytest.TempPathFactory) -> object:
    with isolated(tmp_path_factory.mktemp("cache")):
        yield

# --------------------------------------------------------------------------------------------
# Stand-ins written from METHOD §3, independent of hpspec.prune


class NormStandIn(nn.Module):
    """An adaptive norm replaced by LN(x) (eps 1e-6), shift = scale = 0, gates = 1.

    `returns` follows the replaced module's signature: "zero" AdaLayerNormZero (x, gate_msa,
    shift_mlp, scale_mlp, gate_mlp); "dual" SD35AdaLayerNormZeroX (the same, then x2, gate_msa2);
    "single" AdaLayerNormZeroSingle (x, gate); "continuous" AdaLayerNormContinuous (x alone).
    """

    def __init__(self, dim: int, returns: str):
        super().__init__()
        self.ln = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.returns = returns

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> object:
        n = self.ln(x)
        one, zero = torch.ones(x.shape[0], x.shape[-1]), torch.zeros(x.shape[0], x.shape[-1])
        return {
            "zero": (n, one, zero, zero, one),
            "dual": (n, one, zero, zero, one, n, one),
            "single": (n, one),
            "continuous": n,
        }[self.returns]


class AttentionStandIn(nn.Module):
    """Attention that hands back its normalised inputs."""

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None, **kwargs: object) -> object:
        return hidden_states if encoder_hidden_states is None else (hidden_states, encoder_hidden_states)


class Cut(nn.Module):
    """FLUX single block proj_out without the MLP: keep the first `dim` channels (the attention's)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : self.dim]


def norm(returns: str) -> Callable[[nn.Module], nn.Module]:
    return lambda old: NormStandIn(old.linear.in_features, returns)


def attention(old: nn.Module) -> nn.Module:
    return AttentionStandIn()


def identity(old: nn.Module) -> nn.Module:
    return nn.Identity()


def cut(old: nn.Module) -> nn.Module:
    return Cut(old.out_features)


SD3 = "transformer_blocks"
SINGLE = "single_transformer_blocks"

# (model kind, spec, {module path: stand-in}) for every part kind, including the special blocks.
PART_CASES = [
    ("sd3", "drop block[2].norm", {f"{SD3}.2.norm1": norm("zero")}),
    ("sd3", "drop block[2].context_norm", {f"{SD3}.2.norm1_context": norm("zero")}),
    ("sd3", "drop block[5].context_norm", {f"{SD3}.5.norm1_context": norm("continuous")}),  # context-pre-only
    ("sd3", "drop block[2].attn", {f"{SD3}.2.attn": attention}),
    ("sd3", "drop block[5].attn", {f"{SD3}.5.attn": attention}),
    ("sd3", "drop block[2].mlp", {f"{SD3}.2.ff": identity}),
    ("sd3", "drop block[2].context_mlp", {f"{SD3}.2.ff_context": identity}),
    ("sd35m", "drop block[1].norm", {f"{SD3}.1.norm1": norm("dual")}),
    ("sd35m", "drop block[1].attn", {f"{SD3}.1.attn": attention, f"{SD3}.1.attn2": attention}),
    ("sd35m", "drop block[1].attn2", {f"{SD3}.1.attn2": attention}),
    ("sd35m", "drop block[4].norm", {f"{SD3}.4.norm1": norm("zero")}),
    ("flux", "drop double_block[1].norm", {f"{SD3}.1.norm1": norm("zero")}),
    ("flux", "drop double_block[1].context_norm", {f"{SD3}.1.norm1_context": norm("zero")}),
    ("flux", "drop double_block[1].attn", {f"{SD3}.1.attn": attention}),
    ("flux", "drop double_block[1].mlp", {f"{SD3}.1.ff": identity}),
    ("flux", "drop double_block[1].context_mlp", {f"{SD3}.1.ff_context": identity}),
    ("flux", "drop single_block[2].norm", {f"{SINGLE}.2.norm": norm("single")}),
    ("flux", "drop single_block[2].attn", {f"{SINGLE}.2.attn": attention}),
    ("flux", "drop single_block[2].mlp", {f"{SINGLE}.2.proj_mlp": identity, f"{SINGLE}.2.proj_out": cut}),
]


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind,spec,swaps", PART_CASES, ids=[f"{k}:{s.removeprefix('drop ')}" for k, s, _ in PART_CASES])
def test_part_drop_equals_diffusers_with_stand_in(kind: str, spec: str, swaps: dict) -> None:
    reference = build(kind)
    removed = sum(params(reference.get_submodule(path)) for path in swaps)
    for path, make in swaps.items():
        swap(reference, path, make)
    pruned = build(kind)
    before = params(pruned)
    plan = plan_for(pruned, spec)
    assert apply(plan, pruned) is pruned

    out = forward(pruned)
    assert torch.equal(out, forward(reference))
    assert not torch.equal(out, forward(build(kind)))  # the drop changed the function
    assert params(pruned) == before - removed == plan.params.after_prune


@pytest.mark.parametrize("kind", ["sd3", "sd35m", "flux"])
def test_empty_plan_leaves_outputs_bit_identical(kind: str) -> None:
    model = build(kind)
    expected, expected_state = forward(model), state(model)
    apply(plan_for(model, "preserve auto\n"), model)
    assert torch.equal(forward(model), expected)
    assert state(model).keys() == expected_state.keys()
    assert all(torch.equal(state(model)[k], v) for k, v in expected_state.items())


@pytest.mark.parametrize("kind,dropped", [("sd3", [1, 3]), ("sd3", [0, 2, 4]), ("sd35m", [0, 3])])
def test_block_drops_equal_diffusers_skip_layers(kind: str, dropped: list[int]) -> None:
    model = build(kind)
    expected = forward(model, skip_layers=dropped)
    removed = sum(params(model.transformer_blocks[i]) for i in dropped)
    before = params(model)
    apply(plan_for(model, f"drop blocks[{', '.join(map(str, dropped))}]"), model)
    assert torch.equal(forward(model), expected)
    assert len(model.transformer_blocks) == 6 - len(dropped)
    assert model.config.num_layers == 6 - len(dropped)
    assert params(model) == before - removed


def test_last_block_conversion_is_exact() -> None:
    from diffusers.models.normalization import AdaLayerNormContinuous

    model = build("sd3")
    expected = forward(model, skip_layers=[4, 5])
    old = model.transformer_blocks[3]
    weight, bias = old.norm1_context.linear.weight.detach().clone(), old.norm1_context.linear.bias.detach().clone()
    dim = weight.shape[1]
    dead = params(old.ff_context) + params(old.attn.to_add_out) + 4 * dim * (dim + 1)  # 4 of 6 modulation chunks
    before = params(model) - params(model.transformer_blocks[4]) - params(model.transformer_blocks[5])

    apply(plan_for(model, "drop blocks[4:6]"), model)
    last = model.transformer_blocks[-1]
    assert torch.equal(forward(model), expected)
    assert last.context_pre_only and last.ff_context is None and last.attn.to_add_out is None
    assert isinstance(last.norm1_context, AdaLayerNormContinuous)
    # AdaLayerNormZero chunks: shift_msa, scale_msa, ...; AdaLayerNormContinuous: scale, shift.
    assert torch.equal(last.norm1_context.linear.weight, torch.cat([weight[dim : 2 * dim], weight[:dim]]))
    assert torch.equal(last.norm1_context.linear.bias, torch.cat([bias[dim : 2 * dim], bias[:dim]]))
    assert params(model) == before - dead


def test_last_block_conversion_with_its_context_norm_dropped() -> None:
    reference = build("sd3")
    swap(reference, f"{SD3}.4.norm1_context", norm("zero"))  # its context outputs are dead after the cut
    model = build("sd3")
    apply(plan_for(model, "drop blocks[5], block[4].context_norm"), model)
    assert torch.equal(forward(model), forward(reference, skip_layers=[5]))


def test_mixed_drops_on_sd35_renumber_dual_attention() -> None:
    reference = build("sd35m")
    swap(reference, f"{SD3}.2.ff", identity)
    swap(reference, f"{SD3}.4.attn", attention)
    model = build("sd35m")
    apply(plan_for(model, "drop blocks[0], block[2].mlp, block[4].attn"), model)
    assert torch.equal(forward(model), forward(reference, skip_layers=[0]))
    assert list(model.config.dual_attention_layers) == [0, 1]  # old 1, 2
    assert [b.attn2 is not None for b in model.transformer_blocks] == [True, True, False, False, False]


def test_freeze_set_follows_pwp_and_gradients_respect_it() -> None:
    model = build("sd3")
    apply(plan_for(model, "drop block[2].mlp\npreserve auto\n"), model)
    # PWP: frozen = everything registered before the first removed part (block 2's MLP).
    frozen_prefixes = ("pos_embed.", "time_text_embed.", "context_embedder.", f"{SD3}.0.", f"{SD3}.1.",
                       f"{SD3}.2.norm1.", f"{SD3}.2.norm1_context.", f"{SD3}.2.attn.")  # fmt: skip
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (not name.startswith(frozen_prefixes)), name
    model.train()
    forward_args = inputs("sd3")
    model(**forward_args, return_dict=False)[0].square().mean().backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is None) == name.startswith(frozen_prefixes), name


def test_fingerprint_mismatch_is_refused_before_cutting() -> None:
    plan = plan_for(build("sd3"), "drop blocks[1]")
    other = build("sd35m")
    before = state(other)
    with pytest.raises(PlanError, match=plan.target.fingerprint):
        apply(plan, other)
    assert state(other).keys() == before.keys() and len(other.transformer_blocks) == 6


def test_applying_twice_is_refused() -> None:
    model = build("sd3")
    plan = plan_for(model, "drop blocks[1]")
    apply(plan, model)
    with pytest.raises(HpspecError):
        apply(plan, model)
    assert len(model.transformer_blocks) == 5
