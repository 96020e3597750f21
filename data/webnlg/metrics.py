"""WebNLG's scores, BLEU, METEOR and TER on the unseen, seen and all categories, in two protocols
(the metrics themselves are data/mt_metrics.py's, each equal to its official tool):

- released: how the paper's released code scores (gpt2_decode.py --ref_type webnlg --ref_num 6
  --tokenize --lower, then GenerationEval's eval.py -nr 6 -m bleu,meteor,ter): both sides
  lowercased and split at non-word characters; the first 6 references of each input (a missing
  one is the first again); BLEU by multi-bleu-detok.perl; METEOR -r 6 and TER on the words
  nltk.word_tokenize gives; TER the mean over the inputs of pyter3's sentence TER against the
  closest reference. The numbers comparable with Table 14. (eval.py reads a trailing empty line
  as one more input, microsoft/LoRA #138: METEOR then fails and TER scores it 1.0. Not here.)
- challenge: the WebNLG 2017 challenge's evaluation.py and scripts: both sides transliterated to
  ASCII (unidecode), lowercased and split at non-word characters; the first 3 references;
  multi-bleu.perl -lc, METEOR 1.5 -r 3, tercom 0.7.25. Its official scores of a submission are
  in ../shared/data/webnlg-metrics/, and tests/test_webnlg.py gives all nine, every digit.

    python -m data.webnlg.metrics OUTPUTS [--split test] [--subset all|seen|unseen]
        [--protocol released|challenge|both]

OUTPUTS: one line per input of the split, in the data's order (sample.py's predictions.tsv
has them in its output column; a plain text file, one per line).
"""

import argparse
import os
import sys

if __name__ == "__main__" and not __package__:  # run as a file: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from data import mt_metrics, tercom  # noqa: E402
from data.webnlg import prepare  # noqa: E402
from kit.errors import UserError  # noqa: E402

SUBSETS = ("unseen", "seen", "all")  # Table 14's order
PROTOCOLS = {
    "released": "the paper's released code (GenerationEval's eval.py, 6 references): comparable "
                "with Table 14",
    "challenge": "the WebNLG 2017 challenge's evaluation (3 references, multi-bleu.perl -lc, "
                 "tercom)",
}
TER_NAMES = {"released": "pyter3, the mean over sentences", "challenge": "tercom 0.7.25"}


def in_subset(entry: prepare.Entry, subset: str) -> bool:
    return subset == "all" or entry.seen == (subset == "seen")


def prepared(references: list[list[str]], outputs: list[str]) -> dict:
    """Each protocol's texts: {protocol: (references per input, outputs)}, as it scores them
    (the released protocol's METEOR and TER: on nltk's words, "nltk")."""
    lower, split, ascii_ = str.lower, mt_metrics.split_nonword, mt_metrics.ascii
    hyps = [split(lower(out)) for out in outputs]
    refs = [[split(lower(ref.strip())) for ref in group] for group in references]
    refs = [[group[k] if k < len(group) else group[0] for k in range(6)] for group in refs]
    nltk = ([[mt_metrics.nltk_tokens(r) for r in group] for group in refs],
            [mt_metrics.nltk_tokens(h) for h in hyps])
    challenge_hyps = [split(ascii_(lower(ascii_(out.strip())))) for out in outputs]
    challenge_refs = [[ascii_(lower(split(ref))) for ref in group[:3]] for group in references]
    return {"released": (refs, hyps), "nltk": nltk, "challenge": (challenge_refs, challenge_hyps)}


def score(entries: list[prepare.Entry], outputs: list[str], protocols=tuple(PROTOCOLS),
          meteor: bool = True) -> dict:
    """Both protocols (or those asked for) on the entries' outputs: {protocol: {subset:
    {"BLEU", "METEOR", "TER"}}} as fractions (METEOR None without meteor); the challenge's also
    with "bleu" (mt_metrics.Bleu) and "tercom" (tercom's totals); and each protocol's scores of
    each input, {"segments": {"METEOR": [...], "TER": [...]}} (tercom's: (edits, words))."""
    texts = prepared([[text for text, _ in e.lexs] for e in entries], outputs)
    seen = [e.seen for e in entries]
    refs, hyps = texts["released"]
    nltk_refs, nltk_hyps = texts["nltk"]
    c_refs, c_hyps = texts["challenge"]
    padded = [group + [""] * (3 - len(group)) for group in c_refs]  # (the scripts' empty lines)
    jobs = {"released": (nltk_refs, nltk_hyps), "challenge": (padded, c_hyps)}
    meteor_stats = dict(zip(protocols, mt_metrics.meteor_statistics(
        *(jobs[p] for p in protocols)))) if meteor else {}
    results = {}
    if "released" in protocols:
        ter = mt_metrics.pyter_segments(nltk_refs, nltk_hyps)
        stats = meteor_stats.get("released")
        results["released"] = {"segments": {"TER": ter, "METEOR": _segments(stats)}}
        results["released"] |= _subsets(seen, lambda rows: {
            "BLEU": mt_metrics.multi_bleu([refs[i] for i in rows], [hyps[i] for i in rows],
                                          detok=True).score,
            "METEOR": mt_metrics.meteor([stats[i] for i in rows]) if meteor else None,
            "TER": sum(ter[i] for i in rows) / len(rows)})
    if "challenge" in protocols:
        segments = mt_metrics.tercom_segments(c_refs, c_hyps)
        stats = meteor_stats.get("challenge")

        def challenge(rows):
            bleu = mt_metrics.multi_bleu([padded[i] for i in rows], [c_hyps[i] for i in rows],
                                         lowercase=True)
            totals = tercom.total([segments[i] for i in rows])
            return {"BLEU": bleu.score, "TER": totals["score"], "bleu": bleu, "tercom": totals,
                    "METEOR": mt_metrics.meteor([stats[i] for i in rows]) if meteor else None}
        results["challenge"] = {"segments": {"TER": [s[:2] for s in segments],
                                             "METEOR": _segments(stats)}}
        results["challenge"] |= _subsets(seen, challenge)
    return results


def _segments(stats) -> list[float] | None:
    return None if stats is None else [mt_metrics.meteor_port.score_of(s) for s in stats]


def _subsets(seen: list[bool], scores) -> dict:
    """scores(rows) for each subset that has inputs (a dev split has no unseen category)."""
    rows = {"unseen": [i for i, s in enumerate(seen) if not s],
            "seen": [i for i, s in enumerate(seen) if s], "all": list(range(len(seen)))}
    return {subset: scores(r) for subset, r in rows.items() if r}


def format_scores(scores: dict, protocol: str) -> list[str]:
    """'BLEU: 45.13', 'METEOR: 0.3764', 'TER: 0.4744 (tercom 0.7.25)': the rounding of the
    tools' own output (BLEU x100 with 2 digits)."""
    meteor = "n/a" if scores["METEOR"] is None else f"{scores['METEOR']:.4f}"
    return [f"BLEU: {100 * scores['BLEU']:.2f}", f"METEOR: {meteor}",
            f"TER: {scores['TER']:.4f} ({TER_NAMES[protocol]})"]


def read_outputs(path: str, expected: int) -> list[str]:
    """One output per line, UTF-8: as many as the split has inputs, none empty."""
    from data.task import read_text

    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != expected:
        raise UserError(f"{path} has {len(lines):,} lines, but the split has {expected:,} "
                        "inputs: one output per line, in the data's order")
    if empty := [i + 1 for i, line in enumerate(lines) if not line.strip()]:
        raise UserError(f"{path}, line {empty[0]}: empty; every input needs an output "
                        f"({len(empty)} empty lines)")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="data.webnlg.metrics", allow_abbrev=False,
                                description="Score WebNLG outputs: BLEU, METEOR and TER.")
    p.add_argument("outputs", help="one output per line, in the order of the split's inputs")
    p.add_argument("--data", help="WebNLG's folder (default: $WEBNLG_DATA_DIR, else "
                                  "data/webnlg/, downloaded on first use)")
    p.add_argument("--split", default="test", choices=("test", "dev"))
    p.add_argument("--subset", default="all", choices=SUBSETS,
                   help="the test set's unseen categories, the seen ones, or all")
    p.add_argument("--protocol", default="both", choices=(*PROTOCOLS, "both"))
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (seconds)")
    args = p.parse_args(argv)
    try:
        entries = prepare.read_split(prepare.locate(args.data), args.split)
        outputs = read_outputs(args.outputs, len(entries))
        protocols = tuple(PROTOCOLS) if args.protocol == "both" else (args.protocol,)
        results = score(entries, outputs, protocols, meteor=not args.no_meteor)
    except UserError as e:
        print(f"data.webnlg.metrics: {e}", file=sys.stderr)
        return 2
    for protocol in protocols:
        if args.subset not in results[protocol]:
            print(f"data.webnlg.metrics: the {args.split} split has no {args.subset} inputs",
                  file=sys.stderr)
            return 2
        rows = sum(in_subset(e, args.subset) for e in entries)
        print(f"{protocol} protocol ({PROTOCOLS[protocol]}), {args.subset}: {rows:,} inputs")
        print("\n".join(format_scores(results[protocol][args.subset], protocol)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
