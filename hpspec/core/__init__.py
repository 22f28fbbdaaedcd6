"""The ground floor: errors (every `HpspecError`), diagnostics, file I/O, fault points, names.

Imports nothing of hpspec's other packages.
"""
