"""The paper's next read: what the LoRA paper does around Eq. 3, after the five root files.

Each module opens with the section of the paper it serves, and reads top to bottom:

- decoding: the beam search that scores Table 3 (Table 11's settings, the released gpt2_beam.py)
- adapter: Adapter^H and Adapter^L, Table 3's baselines (Sec. 5.1), which cannot be merged
- latency: Table 1, the latency an adapter adds and a merged LoRA does not (Sec. 3, Sec. 4.1)
- multitask: many tasks on one base, switched (Sec. 4.1) or in one mixed batch (Sec. 4.2)
- analysis: Section 7's measurements: subspace similarity (Figures 3, 4), Delta W against W
  (Table 7)
- mfu: what a training step costs: no weight gradient for a frozen W0 (Sec. 4.2's speedup)
- peft_interop: an adapter as Hugging Face PEFT stores it, both ways (Sec. 4.1's small task files)
- qlora: QLoRA's 4-bit NormalFloat W0 under LoRA (the QLoRA paper's Sec. 3), equal to bitsandbytes

They import model.py and lora.py, and the ground floor (plumbing/) below them; nothing of the
harness or the entry scripts.
"""
