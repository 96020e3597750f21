"""An experiment folder, as reproduce.py keeps it: owned by one process, refused when it holds
another experiment, resumed where it stopped; what is left to train and to decode, the time it
takes (projected from the rates measured so far), and the results written whole (results.json,
results.md, plots with matplotlib). Under torchrun, rank 0 keeps the folder; `torchrun` starts
the same command again with --nproc processes.

    EXP/experiment.json                       the settings that must match to resume it
    EXP/runs/NAME/                            each training run, as train.py writes it
    EXP/runs/NAME/decode/epoch{N}-{split}.*   each kept epoch's predictions and scores
    EXP/results.json, results.md, plots/      the rows, the epochs chosen, how they were trained
"""

import contextlib
import json
import math
import os
import sys

import torch

from data.scorers.meteor import meteor_missing, meteor_note
from data.task import tokenizer
from harness import bookkeeping, evaluation
from plumbing import cli, hardware, rundir
from plumbing.checkpoint import load_metadata, write_atomic
from plumbing.errors import UserError

SPLITS = ("test", "dev")  # every kept epoch is decoded and scored on both
# What a stage can raise that the user can mend (a missing file, by now, is a bug of ours).
STAGE_ERRORS = (UserError,)


# --- the folder ----------------------------------------------------------------------------------


def parse_list(text: str, flag: str, kind=int) -> list:
    """'1,2,4' -> [1, 2, 4]; refused when it does not parse or repeats an entry."""
    try:
        values = [kind(v.strip()) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} {text!r}: give a comma-separated list, e.g. 1,2,4") from None
    if twice := sorted({v for v in values if values.count(v) > 1}):
        raise UserError(f"{flag} {text} repeats {', '.join(map(str, twice))}")
    return values


def parse_penalties(text: str | None) -> list[float]:
    """--penalties: length penalties (positive numbers), none without the flag."""
    values = parse_list(text, "--penalties", float) if text else []
    if bad := [v for v in values if not 0 < v < float("inf")]:
        raise UserError(f"--penalties {text}: a length penalty is a positive number, not "
                        f"{bad[0]:g}")
    return values


def read_json(path: str, way_out: str, key: str | None = None, lines: bool = False):
    """A JSON file of the experiment's (lines: JSON Lines, each an object with an "event", as
    metrics.jsonl); with key, its value there. One that does not read so (edited by hand,
    truncated) is a user error naming it and the way out."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if lines:
            *whole, last = text.split("\n")  # last: "", or a line a kill cut short
            data = [json.loads(line) for line in whole if line.strip()]
            with contextlib.suppress(ValueError):
                data += [json.loads(last)] if last.strip() else []
            if not all(isinstance(r, dict) and "event" in r for r in data):
                raise ValueError("a line that is not a record of train.py's")
            return data
        data = json.loads(text)
        if key is None:
            return data
        if not isinstance(data, dict) or not isinstance(data.get(key), dict):
            raise ValueError(f"no {key!r} object in it")
        return data[key]
    except ValueError as e:  # (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        raise UserError(f"{path} is damaged ({e}): {way_out}") from None


# --- reproduce.py's command line: the flags every command takes, and their checks ---------------


def add_flags(q, p, seeds: tuple):
    """The flags of every reproduce.py command (table3, table13, table14, sweep) on its parser q;
    p: the main parser, whose error() reports for them all."""
    q.error = p.error
    q.add_argument("--model", default="gpt2-medium", help="GPT-2 preset or local checkpoint")
    q.add_argument("--seeds", default=",".join(map(str, seeds)), help="comma-separated")
    q.add_argument("--epochs", type=int, default=5, help="epochs per run (each one kept)")
    q.add_argument("--lr", type=float, help="the rows' peak learning rate (default: Table "
                                            "11's, 2e-4; full fine-tuning's own, 5e-5)")
    q.add_argument("--warmup", type=int, help="the rows' warmup steps (default: Table 11's, "
                                              "500): a short run needs fewer")
    q.add_argument("--out", help="the experiment folder (default: runs/<command>-<model>)")
    q.add_argument("--data", help="the task, as train.py's --data: e2e, webnlg, dart, or a "
                                  "folder (their files, or train.jsonl, dev.jsonl and "
                                  "test.jsonl); table13 and table14: DART's and WebNLG's "
                                  "(default: their own folder)")
    q.add_argument("--limit", type=int, default=0,
                   help="train on the first N examples only (quick runs; 0: all)")
    q.add_argument("--mrs", type=int, default=0,
                   help="decode the first N MRs (inputs) of each split only (0: all)")
    q.add_argument("--beam", type=int, default=10, help="beam width")
    q.add_argument("--length-penalty", type=float,
                   help="default: the task's, as Table 11 (E2E 0.9, WebNLG and DART 0.8)")
    q.add_argument("--max-new-tokens", type=int,
                   help="longest output (default: 64; a JSONL task's: its longest target)")
    q.add_argument("--batch-size", type=int, default=32, help="MRs decoded together")
    q.add_argument("--no-meteor", action="store_true",
                   help="skip METEOR (it needs pycocoevalcap's word lists)")
    q.add_argument("--save-every", type=int, default=1000, help="checkpoint every N steps")
    q.add_argument("--device", default="auto",
                   help="auto (cuda, else mps, else cpu), cuda, cuda:N, mps, cpu")
    q.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="training's autocast dtype (auto: bf16 on CUDA, fp32 on the CPU; decoding "
                        "is fp32)")
    q.add_argument("--penalties", help="also decode each kept epoch at these length penalties, "
                   "e.g. 0.8,0.9: results.md's penalty x epoch table (microsoft/LoRA #165); "
                   "they may change on a rerun")
    q.add_argument("--nproc", type=int, default=1,
                   help="processes (GPUs) per stage: N > 1 runs the command under torchrun "
                        "(--standalone, this machine), data-parallel")


def check_task(args, task, tables: dict):
    """Each table's command runs on its task (tables: command -> task): table13 on DART, table14
    on WebNLG, table3 on E2E (or a JSONL task of your own)."""
    from data.triples import TriplesTask
    ours = task.name if isinstance(task, TriplesTask) else "e2e"
    if ours != tables.get(args.command, ours):
        what = {"e2e": "E2E's or your own", "dart": "DART's", "webnlg": "WebNLG's"}[ours]
        right = next(c for c, name in tables.items() if name == ours)
        raise UserError(f"--data {args.data} is {what} data: run {right} on it, not "
                        f"{args.command}")


def check_flags(p, args, batch_size: int):
    """What argparse cannot say of reproduce.py's flags: a count below 1, a negative one, a
    process count the paper's batch (batch_size examples) does not split over."""
    for flag in ("epochs", "beam", "max_new_tokens", "batch_size", "nproc"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.lr is not None and not 0 < args.lr < float("inf") or (args.warmup or 0) < 0:
        p.error("--lr must be a positive number and --warmup not negative")
    if batch_size % args.nproc:
        p.error(f"--nproc {args.nproc}: the paper's batch of {batch_size} examples "
                "does not split over that many processes")
    if min(args.limit, args.mrs, args.save_every) < 0:
        p.error("--limit, --mrs and --save-every must not be negative")


def open_experiment(folder: str, settings: dict) -> rundir.Claim:
    """Own the experiment folder; one that holds another experiment is refused, untouched."""
    cli.check_writable(folder)
    owner = rundir.claim(folder, "reproduce.py", "wait for it to end, or pick another --out")
    path = os.path.join(folder, "experiment.json")
    settings = json.loads(json.dumps(settings))  # as experiment.json holds them (lists, not tuples)
    saved = None
    try:
        if os.path.exists(path):
            saved = read_json(path, "restore it, or start again with another --out (without it "
                              "the runs here cannot be matched to a command)", key="settings")
            differ = sorted(k for k in set(saved) | set(settings)
                            if saved.get(k) != settings.get(k))
            differ = [k for k in differ if k != "penalties"]  # (they only add decodes)
            if differ and started(folder):
                raise UserError(f"{folder} holds an experiment with other settings "
                                f"({', '.join(differ)} differ{'s' if len(differ) == 1 else ''}); "
                                "rerun its own command, or pick "
                                "another --out")
        elif os.listdir(folder) not in ([], [rundir.LOCK]):
            raise UserError(f"{folder} already holds files that are not an experiment; pick "
                            "another --out")
    except UserError:
        owner.abandon()
        owner.release()
        raise
    if saved != settings:  # a new experiment, or one where nothing ran yet: these settings
        write_atomic(path, json.dumps({"settings": settings}, indent=2))
    return owner


def started(folder: str) -> bool:
    """Whether anything of the experiment has run: a run folder (train.py makes one as it
    starts). Until then its settings may change (an attempt that failed before it began)."""
    runs = os.path.join(folder, "runs")
    return os.path.isdir(runs) and bool(os.listdir(runs))


def inputs(args, task, world) -> torch.device:
    """The data, the vocabulary and the device the stages need, found (or downloaded) now:
    missing, they are said before the folder is made, not hours later."""
    if "test" not in task.splits:
        raise UserError(f"{args.data} has no test.jsonl: every epoch is scored on test and dev")
    task.locate()  # (E2E's release: downloaded if need be)
    tokenizer()
    return world.place(hardware.pick_device(args.device))


def torchrun(nproc: int, script: str, argv: list[str]):
    """This same command under torchrun, with nproc processes on this machine: this process
    becomes torchrun (PyTorch's launcher, without its own report: plumbing/launch.py), whose exit
    code is the command's. script: the command's file."""
    sys.stdout.flush()
    launcher = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "plumbing", "launch.py")
    os.execv(sys.executable, [sys.executable, launcher, str(nproc), os.path.abspath(script),
                              *argv])


# --- what is left, and the time it takes ---------------------------------------------------------


def run_folder(exp: str, unit) -> str:
    return os.path.join(exp, "runs", unit.name)


def stem(folder: str, epoch: int, split: str, penalty: float | None = None) -> str:
    """Where an epoch's decode goes: at the experiment's own length penalty (None), or at one of
    --penalties' others (epoch{N}-{split}-lp0.8)."""
    return os.path.join(folder, "decode", f"epoch{epoch}-{split}"
                        + ("" if penalty is None else f"-lp{penalty:g}"))


def penalties(settings: dict) -> list[float | None]:
    """The length penalties each kept epoch is decoded at: None, the experiment's own (its
    decoding's), then those of --penalties it is not (the table of microsoft/LoRA #165)."""
    own = settings["decoding"]["length_penalty"]
    return [None, *(p for p in settings.get("penalties", []) if p != own)]


def steps_done(folder: str) -> int:
    """The step a run's last checkpoint holds (0 without one)."""
    state = os.path.join(folder, "state.safetensors")
    if not os.path.isfile(state):
        return 0
    try:
        return int(json.loads(load_metadata(state)["state"])["step"])
    except UserError as e:  # (the checkpoint's own error names the file)
        raise UserError(f"{e}: {again(folder)}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{state} is damaged ({e!r} in its metadata): {again(folder)}") from None


def trained(folder: str, epochs: int, cfg) -> bool:
    """Whether the run in folder has finished, with every epoch's result kept."""
    log = os.path.join(folder, "metrics.jsonl")
    if not os.path.isfile(log):
        return False
    done = any(r["event"] == "done" for r in read_json(log, again(folder), lines=True))
    return done and all(os.path.exists(bookkeeping.result_path(cfg.method, folder, e))
                        for e in range(1, epochs + 1))


def undecoded(unit, folder: str, settings: dict) -> list[tuple[int, str, float | None]]:
    """The (epoch, split, length penalty) decodes of a run not scored yet (penalties)."""
    return [(e, split, p) for e in range(1, unit.config.epochs + 1) for p in penalties(settings)
            for split in SPLITS if not os.path.exists(stem(folder, e, split, p) + ".scores.json")]


def unscored(settings: dict, units: list, exp: str) -> list[str]:
    """The decodes whose scores lack METEOR (scored where it could not run) though it was asked
    for and can run here now: their stems."""
    if not settings["meteor"] or meteor_missing():
        return []
    stems = [stem(run_folder(exp, u), e, split) for u in units
             for e in range(1, u.config.epochs + 1) for split in SPLITS]
    return [s for s in stems if os.path.exists(s + ".scores.json")
            and None in read_json(s + ".scores.json", "delete it, and the same command decodes "
                                  "that epoch again", key="scores").values()]


def rescore(settings: dict, units: list, exp: str, task):
    """Score again, from their saved predictions, the decodes that lack METEOR where it can run
    now (no decoding: a rerun of the same command fills the gap)."""
    if todo := unscored(settings, units, exp):
        print(f"reproduce.py: scoring METEOR of {cli.plural(len(todo), 'decode')} that lacked "
              "it (it can run here now), from their saved predictions", flush=True)
    for s in todo:
        evaluation.rescore(s, task, meteor=True)


def mrs_per_split(settings: dict, task) -> dict:
    """How many MRs (contexts) each split decodes."""
    return {split: min(settings["mrs"] or math.inf, len(task.eval_groups(split)[0]))
            for split in SPLITS}


def steps_per_run(unit, examples: int) -> int:
    n = min(examples, unit.config.limit) if unit.config.limit else examples
    return math.ceil(n / unit.config.batch_size) * unit.config.epochs


def stages(settings: dict, units: list, exp: str, task) -> tuple[list, dict, dict]:
    """What is left: the runs to train (with their steps left) and to decode (their MRs)."""
    mrs = mrs_per_split(settings, task)
    to_train = [u.name for u in units
                if not trained(run_folder(exp, u), u.config.epochs, u.config)]
    examples = len(task.examples("train")) if to_train else 0
    left = {u.name: steps_per_run(u, examples) - steps_done(run_folder(exp, u))
            for u in units if u.name in to_train}
    to_decode = {u.name: sum(mrs[split] for _, split, _ in undecoded(u, run_folder(exp, u),
                                                                      settings))
                 for u in units}
    return to_train, left, {name: n for name, n in to_decode.items() if n}


class Progress:
    """One line per stage, with the whole experiment's projected time from the rates measured
    so far in this process (training steps/s, decoded MRs/s; unit: "MRs", or "contexts")."""

    def __init__(self, stages: int, steps_left: int, mrs_left: int, unit: str = "MRs"):
        self.stages, self.done, self.unit = stages, 0, unit
        self.left = {"steps": steps_left, unit: mrs_left}
        self.work = {"steps": [0, 0.0], unit: [0, 0.0]}  # amount, seconds

    def stage(self, what: str, kind: str, amount: int, seconds: float, planned: int):
        self.done += 1
        self.left[kind] -= planned
        self.work[kind][0] += amount
        self.work[kind][1] += seconds
        rates = {k: n / s for k, (n, s) in self.work.items() if n and s}
        if all(k in rates or not n for k, n in self.left.items()):
            eta = sum(n / rates[k] for k, n in self.left.items() if n)
            rest = (f"about {bookkeeping.duration(eta)} left for the whole experiment"
                    if any(self.left.values()) else "nothing left")
        else:
            rest = "the time left is projected once a stage of each kind has run"
        rate = ", ".join(f"{r:,.2f} {k}/s" for k, r in rates.items())
        done = cli.plural(amount, kind[:-1])
        print(f"reproduce.py [{self.done}/{self.stages}] {what}: {done} in "
              f"{bookkeeping.duration(seconds)}; {rest}" + (f" (at {rate})" if rate else ""),
              flush=True)


# --- the results ---------------------------------------------------------------------------------


def again(folder: str) -> str:
    """The way out of a run whose own files are damaged."""
    return f"delete {folder}, and the same command trains that run again"


def read_run(unit, folder: str, penalty: float | None = None) -> dict:
    """One run's record: its settings, trainable parameters, dev loss and scores by epoch (at a
    length penalty of --penalties, if given)."""
    records = read_json(os.path.join(folder, "metrics.jsonl"), again(folder), lines=True)
    start = next(r for r in records if r["event"] == "start")
    dev_loss = {r["epoch"]: r["dev_loss"] for r in records
                if r["event"] == "eval" and "epoch" in r}
    epochs = {}
    for e in range(1, unit.config.epochs + 1):
        epochs[e] = {}
        for split in SPLITS:
            epochs[e][split] = read_json(stem(folder, e, split, penalty) + ".scores.json",
                                         "delete it, "
                                         "and the same command decodes that epoch again",
                                         key="scores")
    return {"label": unit.label, "seed": unit.seed, "config": unit.config.recorded(),
            "trainable": start["trainable"], "dev_loss": dev_loss, "epochs": epochs}


def table(result: dict, selection: str, paper) -> str:
    """One selection's rows as the paper's table lays them out (paper: data/task.py's
    PaperTable, the task's), each beside the paper's where it has one."""
    lines = ["| Model & Method | # Trainable Parameters | "
             + " | ".join("MET" if c.header == "METEOR" else c.header  # (as Table 3 heads it)
                          for c in paper.columns.values()) + " |",
             "|---" * (len(paper.columns) + 2) + "|"]
    for label, row in result["rows"].items():
        s = row["selections"][selection]
        cells = ["n/a" if s.get(m, {}).get("mean") is None else
                 paper.cell(m, s[m]["mean"], s[m]["std"]) for m in paper.columns]
        n = row["trainable"]
        lines.append(f"| ours: {label} | {f'{n / 1e6:.2f}M' if n >= 1e4 else f'{n:,}'} | "
                     + " | ".join(cells) + " |")
        cells = paper.paper_row(result["settings"]["size"], label)
        if cells and result["settings"]["command"] != "sweep":
            ours = paper.rows[result["settings"]["size"], label]
            lines.append(f"| paper: {ours['name']} | {ours['params']} | {cells} |")
    return "\n".join(lines)


def penalty_table(result: dict, paper, selections: dict) -> str:
    """Each row at each length penalty decoded x each way to pick the epoch, mean +- std over
    seeds: what separates the released README's numbers (lp 0.8, the last checkpoint) from the
    paper's (lp 0.9, each seed's best epoch), microsoft/LoRA #165."""
    own = result["settings"]["decoding"]["length_penalty"]
    lines = ["## Length penalty x the epoch chosen (microsoft/LoRA #165)", "",
             "| row | length penalty | epoch | " + " | ".join(
                 c.header for c in paper.columns.values()) + " |",
             "|---" * (len(paper.columns) + 3) + "|"]
    for label, row in result["rows"].items():
        by_penalty = {own: row["selections"], **{lp: rows[label] for lp, rows in
                                                 result["penalties"].items()}}
        for lp, chosen in sorted(by_penalty.items()):
            for sel, s in chosen.items():
                cells = ["n/a" if s[m]["mean"] is None else paper.cell(m, s[m]["mean"],
                                                                       s[m]["std"])
                         for m in paper.columns]
                lines.append(f"| {label} | {lp:g} | {selections[sel][0].split(' (')[0]} | "
                             + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(result: dict, model: str, unit: str, selections: dict, paper) -> str:
    """results.md: each selection's table (selections: name -> (what it is, ...); paper: the
    task's PaperTable), the epochs it chose, and how the rows were trained."""
    s = result["settings"]
    out = [f"# {s['command']} on {model}: seeds {', '.join(map(str, s['seeds']))}, "
           f"{cli.plural(s['epochs'], 'epoch')}, test set"
           + (f" (first {cli.plural(s['mrs'], unit)})"
              if s["mrs"] else ""),
           "", f"Mean +- std over seeds (sample std), rounded as {paper.name}."]
    if s.get("recipe"):  # reproduce.py --lr, --warmup
        out += ["", "Every row trained with " + ", ".join(f"{k} {v:g}" for k, v in
                                                          s["recipe"].items())
                + " (given), where it sets no value of its own."]
    for sel, (what, _) in selections.items():
        chosen = ", ".join(f"{name} {e}" for row in result["rows"].values()
                           for name, e in row["selections"][sel]["epochs"].items())
        out += ["", f"## {what}", "", table(result, sel, paper), "", f"Epochs: {chosen}."]
    if result.get("penalties"):
        out += ["", penalty_table(result, paper, selections)]
    if s["command"] != "sweep":
        out += ["", "## How the rows were trained", ""]
        out += [f"- {label}: {row['trained']}" for label, row in result["rows"].items()]
    scores = [split for r in result["runs"].values() for e in r["epochs"].values()
              for split in e.values()]
    if lacking := sum(None in split.values() for split in scores):
        here = f", as here ({why})" if (why := meteor_missing()) else ""
        out += ["", f"METEOR: {meteor_note(s['meteor'])}." if lacking == len(scores) else
                f"METEOR: n/a: {lacking} of the {len(scores)} decodes were scored where it "
                f"could not run{here}; the same command, rerun where it can (pip install "
                "pycocoevalcap), scores their saved predictions."]
    return "\n".join(out) + "\n"


def plots(result: dict, exp: str, paper) -> list[str]:
    """PNGs when matplotlib is installed (an optional extra), one per row: each seed's training
    and dev loss by step, and each test metric (paper: the task's PaperTable) by epoch with the
    selected epochs marked."""
    try:
        import matplotlib
        import matplotlib.ticker
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib for them)")
        return []
    os.makedirs(os.path.join(exp, "plots"), exist_ok=True)
    written = []
    for label, row in result["rows"].items():
        runs = {n: r for n, r in result["runs"].items() if r["label"] == label}
        metrics = [m for m in paper.columns
                   if any(e["test"].get(m) is not None for r in runs.values()
                          for e in r["epochs"].values())]
        columns = -(-(1 + len(metrics)) // 2)  # (the loss, then the metrics: E2E's 2 x 3)
        fig, axes = plt.subplots(2, columns, figsize=(5 * columns, 8), squeeze=False)
        axes = axes.ravel()
        for name, r in runs.items():
            folder = os.path.join(exp, "runs", name)
            log = read_json(os.path.join(folder, "metrics.jsonl"), again(folder), lines=True)
            losses = [(x["step"], x["loss"]) for x in log if x["event"] == "train"]
            dev = [(x["step"], x["dev_loss"]) for x in log if x["event"] == "eval"]
            color = axes[0].plot(*zip(*losses), lw=0.8, label=f"seed {r['seed']}")[0].get_color()
            axes[0].plot(*zip(*dev), "o--", color=color)
            epochs = sorted(r["epochs"], key=int)
            for ax, m in zip(axes[1:], metrics):
                ax.plot([int(e) for e in epochs], [r["epochs"][e]["test"][m] for e in epochs],
                        "-", color=color)
                for sel, marker in (("best_test", "*"), ("best_dev", "s")):
                    e = row["selections"][sel]["epochs"][name]
                    ax.plot([int(e)], [r["epochs"][e]["test"][m]], marker, color=color, ms=10,
                            mfc="none" if marker == "s" else color)
                ax.set(title=f"test {paper.columns[m].header}", xlabel="epoch")
                ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes[0].set(title="loss (line: training, o: dev)", xlabel="step")
        axes[0].legend(fontsize=8)
        for ax in axes[1 + len(metrics):]:
            ax.axis("off")
        fig.suptitle(f"{label}: * the best epoch on test, square the best on dev")
        fig.tight_layout()
        path = os.path.join(exp, "plots", f"{label.replace(' ', '').replace(',', '')}.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def write_results(result: dict, exp: str, text: str, paper):
    """results.json (every run x epoch x split x metric, with the settings and versions),
    results.md (text, printed too) and the plots, each written whole."""
    write_atomic(os.path.join(exp, "results.json"), json.dumps(result, indent=2,
                                                               sort_keys=True))
    write_atomic(os.path.join(exp, "results.md"), text)
    print("\n" + text)
    for path in [os.path.join(exp, "results.json"), os.path.join(exp, "results.md"),
                 *plots(result, exp, paper)]:
        print(f"wrote {path}")
