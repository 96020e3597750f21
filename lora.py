"""LoRA (Hu et al. 2021): rank-r updates W0 + (alpha/r) B A on chosen projections of model.GPT.

Arrives with the lora.py issue: the LoRA layer (Sec. 4.1, Eq. 3), apply/freeze, explicit
merge/unmerge, adapter-only checkpoints and PEFT interop.
"""
