"""DART's scores: BLEU, METEOR and TER, in the two protocols of data/scorers/mt_metrics.py (its
metrics each equal to the official tool):

- released: what the paper's released code computes (gpt2_decode.py --ref_type dart --ref_num 6
  --tokenize --lower, then GenerationEval's eval.py -nr 6 -m bleu,meteor,ter): one score per
  distinct input (the decode script groups the entries by their context, and their texts with
  them), comparable with Table 13.
- challenge: DART's own evaluation (evaluation/run_eval_on_dart.sh): one line per entry, both
  sides lowercased and split at non-word characters (as its reference files and example outputs
  are: the reader gives its reference files line for line), the first 3 references,
  multi-bleu.perl, METEOR -r 8, tercom.

    python -m data.dart.metrics OUTPUTS [--split test] [--protocol released|challenge|both]

OUTPUTS: a text file, one output per line, either per entry of the split (5,097 lines for the
test set, what DART's scripts read) or per distinct input (4,159, what the model decodes), in the
data's order; or the predictions.tsv sample.py writes. An empty output is scored as the official
scripts score it, as an empty text.
"""

import os
import sys

if __name__ == "__main__" and not __package__:  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data.dart import prepare  # noqa: E402
from data.files import read_text  # noqa: E402
from data.scorers import mt_metrics  # noqa: E402
from data.scorers.meteor import meteor_note  # noqa: E402
from data.triples import split_entries  # noqa: E402
from plumbing.cli import plural  # noqa: E402
from plumbing.errors import UserError  # noqa: E402

PROTOCOLS = {**mt_metrics.PROTOCOLS, "challenge": "DART's own scripts: 3 references for BLEU "
             "and TER, 8 for METEOR, multi-bleu.perl, tercom"}


def inputs(entries: list[prepare.Entry]) -> tuple[list[str], list[list[str]], list[int]]:
    """The distinct inputs, as the released decode script groups the entries: (each context, in
    the order it first comes; its texts, those of all its entries, in order; for each entry,
    the row of its context)."""
    return mt_metrics.grouped(entries, prepare.texts)


def protocols(entries: list[prepare.Entry], outputs: list[str]) -> dict:
    """The inputs of both protocols, from one output per distinct input."""
    _, references, of_entry = inputs(entries)
    per_entry = [outputs[row] for row in of_entry]
    return {"released": mt_metrics.Protocol("released", references, outputs,
                                            {"all": list(range(len(outputs)))}),
            "challenge": mt_metrics.Protocol("challenge", [[t for t, _ in e.lexs] for e in entries],
                                             per_entry, {"all": list(range(len(entries)))},
                                             meteor_refs=8, ter_drops_empty=True)}


def score(entries: list[prepare.Entry], outputs: list[str],
          names=tuple(mt_metrics.PROTOCOLS), meteor: bool = True) -> dict:
    """mt_metrics.score of the protocols asked for, from one output per distinct input (for
    fewer outputs: the first inputs')."""
    every = protocols(mt_metrics.first_inputs(entries, prepare.texts, len(outputs)), outputs)
    return mt_metrics.score({name: every[name] for name in names}, meteor)


def per_input(entries: list[prepare.Entry], path: str) -> list[str]:
    """The outputs of a file with one per distinct input, or one per entry (then each input's is
    its first entry's), or of sample.py's predictions (a .tsv, per distinct input)."""
    contexts, references, of_entry = inputs(entries)
    if str(path).lower().endswith(".tsv"):
        return mt_metrics.read_outputs(path, contexts)
    lines = read_text(path).split("\n")
    count = len(lines) - (lines[-1] == "")
    if count == len(entries) and count != len(references):
        outputs = mt_metrics.read_outputs(path, [e.context for e in entries])
        first = {}
        for output, row in zip(outputs, of_entry):
            first.setdefault(row, output)
        return [first[row] for row in range(len(references))]
    if count != len(references):
        raise UserError(f"{path} has {plural(count, 'line')}, but the split has "
                        f"{len(entries):,} entries and {len(references):,} distinct "
                        "inputs: one output per line, for each entry or each distinct input, in "
                        "the data's order")
    return mt_metrics.read_outputs(path, contexts)


def parse_args(argv=None):
    return mt_metrics.parser("data.dart.metrics", "DART", outputs="one output per line: per "
                             "entry or per distinct input of the split, in the data's order",
                             data="DART's folder, as train.py's --data takes it "
                             "(default: dart, its own: $DART_DATA_DIR, else data/dart/, "
                             "downloaded on first use)").parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = mt_metrics.protocol_names(args.protocol)
    try:
        entries = split_entries("dart", args.data, args.split)
        inputs_in_split = len(inputs(entries)[0])
        outputs = per_input(entries, args.outputs)
        entries = mt_metrics.first_inputs(entries, prepare.texts, len(outputs))
        results = score(entries, outputs, names, meteor=not args.no_meteor)
    except UserError as e:
        print(f"data.dart.metrics: {e}", file=sys.stderr)
        return 2
    print(mt_metrics.describe_outputs(outputs, inputs_in_split, args.split))
    count = {"released": f"{len(outputs):,} distinct inputs",
             "challenge": f"{len(entries):,} entries"}
    for name in names:
        print(f"{name} protocol ({PROTOCOLS[name]}): {count[name]}")
        print("\n".join(mt_metrics.format_scores(results[name]["all"], name,
                                                 meteor_note(not args.no_meteor))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
