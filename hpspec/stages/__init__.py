"""The stage engine: compile = prune -> distill -> quantize, each stage a directory under OUT.
"""
