"""Plans applied to weights: module surgery, loading, the streamed checkpoint rewrite, quantize.

Imports `core`, `lang`, `model` and `plan`; torch only inside functions.
"""
