"""The stages: compile = prune -> distill -> quantize, each stage a directory under OUT.

`engine` runs one stage (typed options, resumable, atomic); `prune`, `distill` and `quantize` each
export their stage; `cards` writes every model card; `pipeline` holds the ordered `STAGES`
registry, `compile_model` and `load_stage_plan`. Imports `weights` and `method` (torch only when a
stage that needs it runs), never `report` or `cli`: the report is a hook the caller passes.
"""
