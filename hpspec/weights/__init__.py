"""Plans applied to weights.

Torch-free: `checkpoint/` (the streamed rewrite of a checkpoint on disk: `source`, `layout`,
`writer`) and `verify` (NaN/inf scan). With torch: `surgery` (stand-ins, the last-block
conversion, the freeze set), `prune` (`apply`, a live model), `load` (`load_pretrained`, pruned and
quantized directories), `quantize` (a live model's Linears, and the tensors the quantize stage
writes) and its `backends/` (bitsandbytes, optimum-quanto). Imports `core`, `model` and `plan`.
"""
