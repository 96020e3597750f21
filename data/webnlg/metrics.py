"""WebNLG's scores: BLEU, METEOR and TER on the unseen, seen and all categories, in the two
protocols of data/scorers/mt_metrics.py (its metrics each equal to the official tool):

- released: what the paper's released code computes (gpt2_decode.py --ref_type webnlg --ref_num 6
  --tokenize --lower, then GenerationEval's eval.py -nr 6 -m bleu,meteor,ter): the numbers
  comparable with Table 14. (eval.py reads the files' trailing newline as one more input,
  microsoft/LoRA #138: its METEOR then fails and its TER scores that input 1.0. Not here.)
- challenge: the WebNLG 2017 challenge's evaluation.py and scripts (both sides transliterated to
  ASCII, 3 references, multi-bleu.perl -lc, METEOR -r 3, tercom). Its official scores of a
  submission are in ../shared/data/webnlg-metrics/; tests/test_webnlg.py gives all nine.

    python -m data.webnlg.metrics OUTPUTS [--split test] [--subset all|seen|unseen]
        [--protocol released|challenge|both]

OUTPUTS: a text file, one output per distinct input of the split, in the data's order (the test
set's 1,862 entries are all distinct; dev's 872 entries hold 870 with "good" texts), or the
predictions.tsv sample.py writes (for all the inputs, or with --limit N the first N). An empty
output is scored as the official scripts score it, as an empty text.
"""

import os
import sys

if __name__ == "__main__" and not __package__:  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data.scorers import mt_metrics  # noqa: E402
from data.scorers.meteor import meteor_note  # noqa: E402
from data.triples import split_entries  # noqa: E402
from data.webnlg import prepare  # noqa: E402
from plumbing.errors import UserError  # noqa: E402

SUBSETS = ("unseen", "seen", "all")  # Table 14's order
PROTOCOLS = {**mt_metrics.PROTOCOLS, "challenge": "the WebNLG 2017 challenge's scripts: 3 "
             "references, multi-bleu.perl -lc, METEOR -r 3, tercom"}


def inputs(entries: list[prepare.Entry]) -> tuple[list[str], list[list[str]], list[bool]]:
    """The distinct inputs, as the released decode script groups the entries (the test set's
    1,862 are all distinct): each context, its "good" texts, and whether its category is seen
    (its first entry's)."""
    contexts, references, of_entry = mt_metrics.grouped(entries, prepare.texts)
    seen = {}
    for e, row in zip(entries, of_entry):
        if row is not None:
            seen.setdefault(row, e.seen)
    return contexts, references, [seen[row] for row in range(len(contexts))]


def subsets(seen: list[bool]) -> dict[str, list[int]]:
    """The rows of each subset that has inputs (the dev split has no unseen category)."""
    rows = {"unseen": [i for i, s in enumerate(seen) if not s],
            "seen": [i for i, s in enumerate(seen) if s],
            "all": list(range(len(seen)))}
    return {name: r for name, r in rows.items() if r}


def protocols(entries: list[prepare.Entry], outputs: list[str]) -> dict:
    """The inputs of both protocols, from one output per distinct input."""
    _, references, seen = inputs(entries)
    rows = subsets(seen)
    return {"released": mt_metrics.Protocol("released", references, outputs, rows),
            "challenge": mt_metrics.Protocol("challenge", references, outputs, rows,
                                             transliterate=True, bleu_lc=True, meteor_refs=3)}


def score(entries: list[prepare.Entry], outputs: list[str],
          names=tuple(mt_metrics.PROTOCOLS), meteor: bool = True) -> dict:
    """mt_metrics.score of the protocols asked for, {protocol: {subset: scores}}, from one
    output per distinct input (for fewer outputs: the first inputs')."""
    every = protocols(mt_metrics.first_inputs(entries, prepare.texts, len(outputs)), outputs)
    return mt_metrics.score({name: every[name] for name in names}, meteor)


def parse_args(argv=None):
    p = mt_metrics.parser("data.webnlg.metrics", "WebNLG", outputs="one output per line, in "
                          "the order of the split's inputs", data="WebNLG's folder, as train.py's "
                          "--data takes it (default: webnlg, its own: $WEBNLG_DATA_DIR, else "
                          "data/webnlg/, downloaded on first use)")
    p.add_argument("--subset", default="all", choices=SUBSETS,
                   help="the test set's unseen categories, the seen ones, or all")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = mt_metrics.protocol_names(args.protocol)
    try:
        entries = split_entries("webnlg", args.data, args.split)
        contexts, _, seen = inputs(entries)
        if args.subset not in subsets(seen):
            raise UserError(f"the {args.split} split has no {args.subset} inputs")
        outputs = mt_metrics.read_outputs(args.outputs, contexts)
        seen = seen[:len(outputs)]  # (sample.py --limit N: the first N inputs')
        if args.subset not in subsets(seen):
            raise UserError(f"{args.outputs} holds outputs for the first {len(outputs):,} "
                            f"inputs, none of them {args.subset}")
        results = score(entries, outputs, names, meteor=not args.no_meteor)
    except UserError as e:
        print(f"data.webnlg.metrics: {e}", file=sys.stderr)
        return 2
    print(mt_metrics.describe_outputs(outputs, len(contexts), args.split))
    for name in names:
        rows = len(subsets(seen)[args.subset])
        print(f"{name} protocol ({PROTOCOLS[name]}), {args.subset}: {rows:,} inputs")
        print("\n".join(mt_metrics.format_scores(results[name][args.subset], name,
                                                 meteor_note(not args.no_meteor))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
