"""The workshop behind the lesson: everything model.py, lora.py, train.py, sample.py and
reproduce.py call into, and nothing a first reading needs.

Read the five files at the root first. What lives here is what it takes to run them for real:
file formats and downloads (checkpoint), run folders and their locks (rundir), a training
run's bookkeeping: its checks, checkpoints, signals and log (bookkeeping), the device, mixed
precision and torch.compile (hardware), many processes through torchrun (distributed, launch),
beam search and the scoring of a split (decoding, evaluation), sample.py's command line: its
flags, outputs and several adapters (sample_cli), the command lines' shared parts (cli,
errors), reproduce.py's experiment folder (experiment), several adapters on one base
(multitask), the Adapter^H /
Adapter^L baselines (adapter), Table 1's timing (latency), Section 7's measurements
(analysis), PEFT's file format (peft_interop) and the benchmarks (bench). Each module opens with
a paragraph on what it is for.
"""
