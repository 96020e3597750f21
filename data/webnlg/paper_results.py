"""The paper's WebNLG numbers (Hu et al. 2021, Appendix F.1, Table 14), which sample.py and
reproduce.py print beside ours, and the way the paper prints them: BLEU x100 with one digit, METEOR
and TER as fractions with two ('.41'), each on the test set's unseen (U), seen (S) and all (A)
categories; the +- is the spread over 3 seeds (Appendix D.3). The scores are the released code's
protocol (data/webnlg/metrics.py).

Only LoRA's rows: the baselines' rows (Fine-Tune, Adapter^L, FT^Top2, Prefix) are prior work's or
trained with recipes the paper does not give, and their METEOR and TER could not be checked here.
GPT-2 L's BLEU +- are the released README's (microsoft/LoRA), which prints the same means.
"""

from data.task import Column, PaperTable

SUBSETS = {"U": "unseen", "S": "seen", "A": "all"}
COLUMNS = {f"{metric}_{s}": Column(f"{header} {s}", *shape)
           for metric, header, shape in (("BLEU", "BLEU", (100, 1)),
                                         ("METEOR", "MET", (1, 2, True)),
                                         ("TER", "TER", (1, 2, True)))
           for s in SUBSETS}


def _row(name, params, bleu, meteor, ter):
    """bleu: (mean, +-) for U, S, A; meteor, ter: the means for U, S, A (no +- in the paper)."""
    scores = {f"BLEU_{s}": cell for s, cell in zip(SUBSETS, bleu)}
    scores.update({f"METEOR_{s}": (v, None) for s, v in zip(SUBSETS, meteor)})
    scores.update({f"TER_{s}": (v, None) for s, v in zip(SUBSETS, ter)})
    return {"name": name, "params": params, "scores": scores}


# (GPT-2 size, train.py's --method) -> the row of Table 14
TABLE14 = {
    ("gpt2-medium", "lora"): _row("GPT-2 M (LoRA)", "0.35M", ((46.7, .4), (62.1, .2), (55.3, .2)),
                                  (.38, .44, .41), (.46, .33, .39)),
    ("gpt2-large", "lora"): _row("GPT-2 L (LoRA)", "0.77M", ((48.4, .3), (64.0, .3), (57.0, .1)),
                                 (.39, .45, .42), (.45, .32, .38)),
}
TABLE = PaperTable("Table 14", COLUMNS, TABLE14, select_by="BLEU_A")
