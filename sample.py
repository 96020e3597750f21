"""Merge a LoRA adapter, beam-search the E2E test set and score it (paper Table 3).

Arrives with the sample.py issue.
"""
