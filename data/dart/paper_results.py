"""The paper's DART numbers (Hu et al. 2021, Appendix F.1, Table 13), which sample.py and
reproduce.py print beside ours, and the way the paper prints them: BLEU x100 with one digit,
METEOR and TER as fractions with two ('.39'); the +- is the spread over 3 seeds (Appendix D.3).
The scores are the released code's protocol (data/dart/metrics.py).

Only LoRA's rows: the baselines' rows (Fine-Tune, Adapter^L, FT^Top2, Prefix) are prior work's or
trained with recipes the paper does not give, and their METEOR and TER could not be checked here.
"""

from data.task import Column, PaperTable

COLUMNS = {"BLEU": Column("BLEU", 100, 1), "METEOR": Column("MET", 1, 2, True),
           "TER": Column("TER", 1, 2, True)}


def _row(name, params, bleu, meteor, ter):
    return {"name": name, "params": params,
            "scores": {"BLEU": bleu, "METEOR": (meteor, None), "TER": (ter, None)}}


# (GPT-2 size, train.py's --method) -> the row of Table 13
TABLE13 = {
    ("gpt2-medium", "lora"): _row("GPT-2 M (LoRA)", "0.35M", (47.1, .2), .39, .46),
    ("gpt2-large", "lora"): _row("GPT-2 L (LoRA)", "0.77M", (47.5, .1), .39, .45),
}
TABLE = PaperTable("Table 13", COLUMNS, TABLE13)
