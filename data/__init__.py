"""The tasks: what a model reads and writes, and how its outputs are scored.

Read data/task.py first: one pipeline for every task (GPT-2's tokens, the training sequences,
the loss positions, what is decoded and scored), then a task of your own (jsonl.py, with the
example in toy/). The paper's three tasks each have a folder: e2e/ (Table 3), webnlg/ (Table 14)
and dart/ (Table 13), the last two built alike (triples.py).

About 2,100 of these lines are ports of the official scorers, line for line, so that every score
printed equals the number the paper's tools print: METEOR 1.5 (e2e/meteor.py), the E2E
challenge's BLEU, NIST, ROUGE-L and CIDEr (e2e/metrics.py), Stanford's PTB tokenizer
(e2e/ptb_tokenizer.py), multi-bleu.perl and the WebNLG / DART protocols (mt_metrics.py) and
tercom (tercom.py). A learner may skip them: each is tested against the official tool.
"""
