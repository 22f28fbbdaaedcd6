"""Model facts: architecture data, the model graph, targets, safetensors headers, FLOPs.

Imports `core` (and the demo's paths). Never imports torch at module level.
"""
