"""The tasks: what a model reads and writes, and how its outputs are scored.

Read data/task.py first: one pipeline for every task (GPT-2's tokens, the training sequences,
the loss positions, what is decoded and scored), then a task of your own (jsonl.py, with the
example in toy/). The paper's three tasks each have a folder: e2e/ (Table 3), webnlg/ (Table 14)
and dart/ (Table 13), the last two built alike (triples.py). Their files (found, downloaded,
checked, read, their token arrays cached) are files.py's, which a first reading skips.

About 2,100 of these lines are ports of the official scorers, line for line, so that every score
printed equals the number the paper's tools print: the E2E challenge's BLEU, NIST, ROUGE-L and
CIDEr (e2e/metrics.py, with Stanford's PTB tokenizer, e2e/ptb_tokenizer.py), and in scorers/ what
the three tasks share: METEOR 1.5, mteval's tokenizer, tercom, multi-bleu.perl and the WebNLG /
DART protocols. A learner may skip them: each is tested against the official tool.

Imports: data/ stands on the ground floor (plumbing/) and on nothing of the lesson. The one circle
is the task registry's: task.open_task imports each task when asked for it (inside the function),
and each task's module imports task.py's Task.
"""
