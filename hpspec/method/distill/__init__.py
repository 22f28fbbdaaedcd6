"""The distill stage's training: PWP and SGDistill on accelerate, and its data.
"""
