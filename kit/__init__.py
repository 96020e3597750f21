"""The workshop behind the lesson: everything model.py, lora.py, train.py, sample.py and
reproduce.py call into, and nothing a first reading needs.

Read the five files at the root first. What lives here is what it takes to run them for real:
file formats and downloads (checkpoint), run folders and their locks (rundir), the training
run's checks, checkpoints, signals and log (training), many processes through torchrun
(distributed), beam search and the scoring of a split (decoding, evaluation), the command
lines' shared parts (cli, errors), several adapters on one base (multitask), the Adapter^H /
Adapter^L baselines (adapter), Table 1's timing (latency), Section 7's measurements
(analysis), PEFT's file format (peft_interop) and the benchmarks (bench). Each module opens with
a paragraph on what it is for.
"""
