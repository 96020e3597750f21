"""The paper's E2E numbers (Hu et al. 2021, Table 3), which sample.py and reproduce.py print beside
ours, and the way the paper prints them.

Table 3 reports BLEU, METEOR and ROUGE-L x100, with one digit after the point, NIST and CIDEr with
two; the rows the authors ran carry a +- (the spread over 3 seeds, Appendix D.3), the rows marked
* are prior work's numbers.
"""

from data.task import Column, PaperTable

# data/e2e/metrics.py's names, as Table 3 prints them
COLUMNS = {"BLEU": Column("BLEU", 100, 1), "NIST": Column("NIST", 1, 2),
           "METEOR": Column("METEOR", 100, 1), "ROUGE_L": Column("ROUGE-L", 100, 1),
           "CIDEr": Column("CIDEr", 1, 2)}
METRICS = tuple(COLUMNS)


def _row(name, params, *cells):
    """cells: one (mean, +-) pair per metric, +- None where the paper gives none."""
    return {"name": name, "params": params, "scores": dict(zip(METRICS, cells))}


# (GPT-2 size, train.py's --method) -> the row of Table 3
TABLE3 = {
    ("gpt2-medium", "lora"): _row("GPT-2 M (LoRA)", "0.35M", (70.4, .1), (8.85, .02), (46.8, .2),
                                  (71.8, .1), (2.53, .02)),
    ("gpt2-medium", "full"): _row("GPT-2 M (FT)*", "354.92M", (68.2, None), (8.62, None),
                                  (46.2, None), (71.0, None), (2.47, None)),
    ("gpt2-medium", "adapter_h"): _row("GPT-2 M (Adapter^H)", "11.09M", (67.3, .6), (8.50, .07),
                                       (46.0, .2), (70.7, .2), (2.44, .01)),
    ("gpt2-medium", "adapter_l"): _row("GPT-2 M (Adapter^L)*", "0.37M", (66.3, None),
                                       (8.41, None), (45.0, None), (69.8, None), (2.40, None)),
    ("gpt2-large", "lora"): _row("GPT-2 L (LoRA)", "0.77M", (70.4, .1), (8.89, .02), (46.8, .2),
                                 (72.0, .2), (2.47, .02)),
    ("gpt2-large", "full"): _row("GPT-2 L (FT)*", "774.03M", (68.5, None), (8.78, None),
                                 (46.0, None), (69.9, None), (2.45, None)),
    ("gpt2-large", "adapter_l"): _row("GPT-2 L (Adapter^L)", "0.88M", (69.1, .1), (8.68, .03),
                                      (46.3, .0), (71.4, .2), (2.49, .0)),
}
TABLE = PaperTable("Table 3", COLUMNS, TABLE3)
