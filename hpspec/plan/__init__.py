"""From a checked spec to a `Plan`: the checker, the plan dataclasses, compile, diff, schema.

Imports `core`, `lang` and `model`. Never imports torch.
"""
