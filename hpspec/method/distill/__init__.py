"""The distill stage's training (METHOD §6): PWP and SGDistill on accelerate.

`objective` (the loss, how a family's transformer is called), `draws` (every random draw of a
step), `loop` (the training loop), `checkpoints` (save and resume), `data` (the data sources) and
`build` (writing a data folder). The stage around it is `hpspec.stages.distill`; nothing here
imports the stages.
"""
