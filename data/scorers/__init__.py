"""The scorer ports the three tasks share, each equal to its official tool: METEOR 1.5 (meteor:
E2E's COCO METEOR, WebNLG's and DART's file mode), NIST mteval-v13a's tokenizer (mteval: E2E's
BLEU and NIST, the released protocol's detokenized BLEU), tercom and pyter (tercom: WebNLG's and
DART's TER), and multi-bleu.perl with the WebNLG and DART protocols around them (mt_metrics).
A learner may skip them: each is tested against the official tool.
"""
