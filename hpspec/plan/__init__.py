"""From a spec to a `Plan`. Imports `core`, `lang` and `model`. Never imports torch.

- `front`: spec file -> parse -> target -> check -> plan, the one path every command takes;
- `check/`: syntax tree x model graph -> `CheckedSpec`, an ordered tuple of rules, one per module;
- `plan` (the frozen `Plan` dataclasses, schema v1) and `compile` (`compile_plan`), with `freeze`
  (the PWP freeze set) and `quantize_layout` (the exact tensors a quantized checkpoint holds);
- `schemes`: the one table of quantization schemes and compute dtypes;
- `schema` (plan JSON back in, with pydantic), `diff/` (`hpspec diff`), `summary` (text), `scaffold`
  (`hpspec init`).
"""
