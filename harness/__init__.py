"""What the three scripts stand on: a training run's bookkeeping (bookkeeping: its checks, its
folder, checkpoints, signals, the log), a split decoded and scored (evaluation), reproduce.py's
experiment folder and flags (experiment), and sample.py's flags, outputs and several adapters
(sample_cli). Skip it on a first reading: train.py, sample.py and reproduce.py each say what they
call here. It may import the lesson, the paper's package and the ground floor; no entry script.
"""
