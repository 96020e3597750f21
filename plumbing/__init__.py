"""The ground floor: plumbing that imports nothing of the lesson, so model.py and lora.py may
stand on it. Skip it on a first reading; each module opens with what it is for.

- errors: UserError, the one base class of what a user can cause (one line, exit code 2)
- checkpoint: the official GPT-2 files found, downloaded and checked; safetensors; atomic writes;
  adapter files with their settings and their base's fingerprint
- cli: the command lines' shared parts: flags from a dataclass, one-line errors, Ctrl-C and signals
- hardware: the device, mixed precision (autocast), torch.compile
- rundir: run folders: one owner each (a lock), names that never collide, no half-written leftovers
- distributed, launch: many processes through torchrun, and its quiet launcher

Nothing here imports model.py, lora.py, the paper's package (paper/), the harness (harness/) or
data/ (tests/test_layout.py holds that).
"""
