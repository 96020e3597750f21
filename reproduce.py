"""Whole experiments as the paper ran them: Table 3's rows over seeds and epochs (13's and 14's
on DART and WebNLG), and rank sweeps.

    python reproduce.py table3                         # GPT-2 M + LoRA: 3 seeds x 5 epochs
    python reproduce.py table3 --rows lora,full,adapter_h,adapter_l --model gpt2-large
    python reproduce.py table14                        # the same on WebNLG (13: DART)
    python reproduce.py sweep --rank 1,2,4,8,16 --targets q,v q,k,v,o --seeds 110

The paper's protocol (Appendix D.3): "we report the mean over 3 random seeds; the result for each
run is taken from the best epoch". So every run keeps every epoch's adapter (train.py
--keep-epochs), each epoch is decoded on test and on dev (beam 10, length penalty 0.9; 0.8 on
WebNLG and DART, Table 11) and scored, and the rows are printed as mean +- std over seeds under
three selections of the epoch (by BLEU; WebNLG's on all categories):

- best epoch on test: the paper's protocol, the one comparable with Table 3. It picks the epoch
  by the very scores it reports, so it is optimistic.
- best epoch on dev: the honest one, the epoch chosen by dev BLEU, its test scores reported.
- last epoch: what the released README does (one seed, the last checkpoint); the numbers users
  published that way (microsoft/LoRA issue #165: BLEU 68.65-68.87, with length penalty 0.8) are
  not Table 3's protocol. `table3 --penalties 0.8,0.9` decodes every kept epoch at both
  penalties and tables penalty x selection: the gap, explained by the runs themselves.

Everything goes into one experiment folder (default runs/<command>-<model>): the runs
(runs/NAME/, as train.py writes them), each epoch's predictions and scores
(runs/NAME/decode/epoch{N}-{split}.*), results.json and results.md (the tables), and plots when
matplotlib is installed. Rerunning the same command skips what is done and resumes what was
interrupted (a run from its last checkpoint, a decode from its .part file): a kill costs at most
one checkpoint interval. With --nproc N the command starts itself again under torchrun with N
processes, each stage data-parallel (plumbing/distributed.py), as `torchrun train.py` and
`torchrun sample.py` run.

Read it top to bottom: the rows and their settings, the plan (rows x seeds), the two stages
(train.train, the very loop train.py runs; each kept epoch merged into the base and decoded),
the selections and the summary over seeds, then run(). The experiment folder's bookkeeping (its
lock, what is left, the projected time, results.md, the plots, --nproc) and the flags every
command shares are harness/experiment.py's.
"""

import contextlib
import dataclasses
import os
import platform
import sys
import time

import numpy as np
import torch

import lora
import train
from data.e2e import paper_results
from data.task import open_task, size_of
from harness import bookkeeping, evaluation, experiment
from harness.evaluation import Decoding
from model import GPT
from paper import adapter, qlora
from plumbing import cli, distributed
from plumbing.errors import UserError

SEEDS = (110, 111, 112)  # the released code's seed, and the two after it
TABLES = {"table3": "e2e", "table13": "dart", "table14": "webnlg"}  # command -> its task
SELECTIONS = {  # name -> (what it is, which split picks the epoch)
    "best_test": ("best epoch on test (the paper's protocol, Appendix D.3: comparable with "
                  "the paper's tables, and optimistic: the epoch is picked by the scores "
                  "reported)", "test"),
    "best_dev": ("best epoch on dev (the honest choice: picked by dev BLEU, test reported)",
                 "dev"),
    "last": ("last epoch (the released README's way; on E2E, microsoft/LoRA #165 reports "
             "BLEU 68.65-68.87 with it, one seed and length penalty 0.8)", None),
}

# Table 3's rows that train.py trains: (train.py settings, how they differ from the paper). The
# adapters' bottleneck is sized to the paper's parameter count by its formula (adapter.rank_for).
ROWS = {
    "lora": ({"method": "lora", "rank": 4, "targets": "q,v"},
             "the paper's recipe (Table 11, the released code)"),
    "full": ({"method": "full", "lr": 5e-5},
             "the paper's full fine-tuning rows are prior work's (Li & Liang 2021), with no "
             "recipe given: LoRA's recipe with lr 5e-5 (our choice: 2e-4 is for a few adapted "
             "parameters)"),
    "adapter_h": ({"method": "adapter_h"},
                  "the paper gives its size (Table 3), not its recipe: LoRA's recipe here"),
    "adapter_l": ({"method": "adapter_l"},
                  "its size is Table 3's (GPT-2 M's row prior work's, Lin et al. 2020; GPT-2 "
                  "L's the paper's), with no recipe given: LoRA's recipe here"),
    # LoRA's descendants (lora.py, docs/variants.md): the paper's recipe, one idea changed
    "rslora": ({"method": "lora", "rank": 4, "targets": "q,v", "rslora": True},
               "rsLoRA (arXiv 2312.03732): the paper's recipe, the update scaled by alpha / "
               "sqrt(r)"),
    "lora_plus": ({"method": "lora", "rank": 4, "targets": "q,v", "lora_plus": 16.0},
                  "LoRA+ (arXiv 2402.12354): the paper's recipe, B's learning rate 16 x A's "
                  "(its paper's suggestion)"),
    "dora": ({"method": "lora", "rank": 4, "targets": "q,v", "dora": True},
             "DoRA (arXiv 2402.09353): the paper's recipe, a magnitude per output row trained "
             "too"),
    "pissa": ({"method": "lora", "rank": 4, "targets": "q,v", "init": "pissa"},
              "PiSSA (arXiv 2404.02948): the paper's recipe, A and B from W0's top singular "
              "directions"),
    "qlora": ({"method": "lora", "rank": 4, "targets": "q,v", "quantize": "nf4"},
              "QLoRA (arXiv 2305.14314): the paper's recipe over W0 in 4-bit NormalFloat, each "
              "epoch decoded merged into the dequantized W0 it trained over"),
}
VARIANT_ROWS = ("rslora", "lora_plus", "dora", "pissa", "qlora")  # LoRA's descendants, as rows
# Table 3's adapter rows that the paper ran or quotes: (row, GPT-2 size) -> trainable parameters
ADAPTER_PARAMS = {("adapter_h", "gpt2-medium"): 11.09e6, ("adapter_l", "gpt2-medium"): 0.37e6,
                  ("adapter_l", "gpt2-large"): 0.88e6}


@dataclasses.dataclass
class Unit:
    """One training run of the experiment: its folder name, the row (or sweep cell) it belongs
    to, its seed, its settings (and those the row sets, as if typed: train.train's given) and
    how they differ from the paper's (for results.md)."""
    name: str
    label: str
    seed: int
    config: train.Recipe
    given: tuple = ()
    note: str = ""


# --- the plan: rows x seeds ----------------------------------------------------------------------


def row_settings(row: str, shape) -> tuple[dict, str]:
    """The train.py settings of one row for a model of this shape, and how they were chosen. An
    adapter's bottleneck r is the one whose parameter count is Table 3's for this size; where
    Table 3 has no such row (GPT-2 L Adapter^H, other shapes), GPT-2 M's scaled with the width."""
    settings, note = dict(ROWS[row][0]), ROWS[row][1]
    if row.startswith("adapter"):
        kind = "houlsby" if row == "adapter_h" else "lin"
        if (row, size_of(shape)) in ADAPTER_PARAMS:
            n = ADAPTER_PARAMS[(row, size_of(shape))]
            settings["rank"] = adapter.rank_for(n, shape.n_layer, shape.n_embd, kind)
        else:
            medium = adapter.rank_for(ADAPTER_PARAMS[(row, "gpt2-medium")], 24, 1024, kind)
            settings["rank"] = max(1, round(medium * shape.n_embd / 1024))
            note += ("; Table 3 has no such row for this model: the bottleneck is GPT-2 M's, "
                     "scaled with the width")
    return settings, ", ".join(f"{k} {v}" for k, v in settings.items()) + f"; {note}"


def plan(args, task) -> tuple[dict, list[Unit]]:
    """The experiment's settings (what must match to resume it) and its training runs."""
    seeds = experiment.parse_list(args.seeds, "--seeds")
    shape = bookkeeping.model_shape(args.model, 0.0, "this experiment")  # a preset or a checkpoint
    common = dict(model=args.model, data=args.data, epochs=args.epochs, limit=args.limit,
                  device=args.device, dtype=args.dtype, save_every=args.save_every,
                  keep_epochs=True, **recipe_flags(args))
    cells = []  # (name, label, settings, note)
    if args.command in TABLES:
        rows = experiment.parse_list(args.rows, "--rows", str)
        if unknown := [r for r in rows if r not in ROWS]:
            raise UserError(f"unknown row {', '.join(map(repr, unknown))}: choose from "
                            f"{', '.join(ROWS)}")
        cells = [(row, row, *row_settings(row, shape)) for row in rows]
    else:
        ranks, seen = experiment.parse_list(args.rank, "--rank"), []
        for targets in args.targets:
            try:
                names = lora.check_settings(targets, 1, 1.0, 0.0)
                for r in ranks:
                    lora.check_settings(targets, r, 1.0, 0.0)
            except ValueError as e:
                raise UserError(f"{e} (--targets, --rank)") from None
            if names in seen:  # (q,v and v,q are one set)
                raise UserError(f"--targets gives {','.join(names)} twice: give each set once")
            seen.append(names)
            variant = {k: v for k, v in ROWS[args.variant][0].items()  # (--variant: a row's
                       if k not in ("method", "rank", "targets")}   # settings but r and targets)
            suffix = "" if args.variant == "lora" else f"-{args.variant}"
            for r in ranks:
                cells.append((f"lora-{''.join(names)}-r{r}{suffix}",
                              f"{','.join(names)} r={r}{suffix.replace('-', ' ')}",
                              {"method": "lora", "targets": ",".join(names), "rank": r,
                               **variant}, ""))
    units = [Unit(f"{name}-seed{seed}", label, seed,
                  train.Recipe(**{**common, **settings}, seed=seed),  # (a row's own value wins)
                  tuple(settings) + tuple(recipe_flags(args)), note)
             for name, label, settings, note in cells for seed in seeds]
    settings = {"command": args.command, "model": args.model, **task.recorded(),
                "size": task.paper_size(shape),  # whose paper rows are printed beside
                "cells": [c[0] for c in cells],
                "train": {name: s for name, _, s, _ in cells}, "seeds": seeds,
                "epochs": args.epochs, "limit": args.limit, "mrs": args.mrs,
                **({"recipe": recipe_flags(args)} if recipe_flags(args) else {}),
                "decoding": decoding(args, task).recorded(), "meteor": not args.no_meteor,
                "penalties": experiment.parse_penalties(args.penalties)}
    return settings, units


def recipe_flags(args) -> dict:
    """--lr and --warmup where given: every row's, but a row that sets its own (full's lr)."""
    return {k: getattr(args, k) for k in ("lr", "warmup") if getattr(args, k) is not None}


def decoding(args, task) -> Decoding:
    """The decoding flags; where one is not given, the task's default (Table 11), else the
    paper's E2E settings (Decoding's)."""
    given = {k: getattr(args, k) for k in ("length_penalty", "max_new_tokens")
             if getattr(args, k) is not None}
    return Decoding(**{**task.decoding, **given, "beam": args.beam, "batch_size": args.batch_size})


# --- the stages: train each run, decode each kept epoch ------------------------------------------


def train_run(unit: Unit, folder: str, world) -> tuple[int, int]:
    """Start or resume the run, train.train: (its exit code, the steps it ran)."""
    config = os.path.join(folder, "config.json")
    if os.path.isfile(config):  # resumed where it stopped, on this command's device
        saved = experiment.read_json(config, experiment.again(folder), key="args")
        changed = tuple(k for k in ("device", "dtype") if saved.get(k) != getattr(unit.config, k))
        cfg = train.Recipe(resume=folder, device=unit.config.device, dtype=unit.config.dtype)
        given = ("resume", *changed)
    else:
        cfg, given = dataclasses.replace(unit.config, out=folder), unit.given
    first = experiment.steps_done(folder)
    # go_on "": a stop is this command's to go on from (run, below, says so), not train.py's
    code = train.train(cfg, world, given, go_on="")
    return code, experiment.steps_done(folder) - first


def decode_run(unit: Unit, folder: str, settings: dict, search: Decoding, device, task,
               world) -> int:
    """Decode and score every kept epoch of one run on test and dev (what is done is skipped);
    returns the MRs decoded. The base model is loaded once and the epochs' adapters switched on
    it: unmerge, load, merge (the paper's task switching, Sec. 4.1)."""
    todo = world.broadcast(experiment.undecoded(unit, folder, settings))  # (rank 0's view)
    cfg, model, merged, decoded = unit.config, None, False, 0
    for epoch in sorted({e for e, _, _ in todo}):
        path = bookkeeping.result_path(cfg.method, folder, epoch)
        if cfg.method == "full":  # each epoch is a whole model
            model, what = GPT.from_pretrained(path).to(device).eval(), (path, None)
        elif cfg.quantize:  # QLoRA: W0 quantized as it trained, then dequantized (paper/qlora.py)
            qlora.load(model := GPT.from_pretrained(cfg.model), path, "dequantized")
            model = lora.merge(model).to(device).eval()  # W = deq(NF4(W0)) + (alpha/r) B A
            what = (cfg.model, path)
        else:  # one base, the epochs' adapters switched on it
            if model is None:
                model = GPT.from_pretrained(cfg.model).to(device).eval()
            if merged:
                lora.unmerge(model)  # W0 again
            if cfg.method == "lora":
                lora.load(model, path)
                lora.merge(model)  # W = W0 + (alpha/r) B A
                merged = True
            else:
                adapter.load(model, path)
            model.to(device).eval()
            what = (cfg.model, path)
        for split, penalty in [(s, p) for e, s, p in todo if e == epoch]:
            stem = experiment.stem(folder, epoch, split, penalty)  # (penalty: --penalties')
            before = evaluation.decoded_so_far(stem) or 0
            report = evaluation.evaluate(
                model, task=task, split=split, limit=settings["mrs"], stem=stem,
                decoding=search if penalty is None else dataclasses.replace(
                    search, length_penalty=penalty),
                what=evaluation.identity(*what), force=False, meteor=settings["meteor"],
                device=device, world=world)
            decoded += report["mrs"] - before if report else 0
    return decoded


# --- the results: the epoch each selection picks, mean +- std over seeds -------------------------


def select(epochs: dict, by: str = "BLEU") -> dict:
    """The epoch each selection picks from {epoch: {"test": scores, "dev": scores}}: the best
    test BLEU, the best dev BLEU (the earliest epoch on a tie), and the last epoch. by: the
    score that is BLEU (the task's table's select_by: WebNLG's on all categories)."""
    order = sorted(epochs)
    return {name: max(order, key=lambda e: epochs[e][split][by]) if split else order[-1]
            for name, (_, split) in SELECTIONS.items()}


def summarize(scores: list[dict], metrics=paper_results.METRICS) -> dict:
    """Mean and standard deviation (numpy, ddof=1: the sample std; None for one seed) of each
    metric (the task's table's columns) over the seeds' test scores. A metric some seeds lack
    (METEOR, scored where it could not run) has none: never a mean over fewer seeds."""
    out = {}
    for m in metrics:
        values = [s.get(m) for s in scores]
        whole = None not in values
        out[m] = {"mean": float(np.mean(values)) if whole else None,
                  "std": float(np.std(values, ddof=1)) if whole and len(values) > 1 else None}
    return out


def selected(runs: dict, table) -> dict:
    """Each row's selections from its runs' records: the epoch each picks in each run, and the
    test scores there summarized over seeds (table: the task's PaperTable, its columns and the
    score that picks the epoch)."""
    rows = {}
    for label in dict.fromkeys(r["label"] for r in runs.values()):
        mine = {name: r for name, r in runs.items() if r["label"] == label}
        chosen = {name: select(r["epochs"], table.select_by) for name, r in mine.items()}
        rows[label] = {sel: {"epochs": {name: c[sel] for name, c in chosen.items()}, **summarize(
            [mine[name]["epochs"][c[sel]]["test"] for name, c in chosen.items()],
            tuple(table.columns))} for sel in SELECTIONS}
    return rows


def results(settings: dict, units: list[Unit], exp: str, table) -> dict:
    """Every run x epoch x split x metric, each row's selections summarized over seeds, and the
    same at each other length penalty of --penalties."""
    runs = {u.name: experiment.read_run(u, experiment.run_folder(exp, u)) for u in units}
    rows = {label: {"trainable": next(r["trainable"] for r in runs.values() if r["label"] == label),
                    "trained": next(u.note for u in units if u.label == label), "selections": s}
            for label, s in selected(runs, table).items()}
    penalties = {lp: selected({u.name: experiment.read_run(u, experiment.run_folder(exp, u), lp)
                               for u in units}, table)
                 for lp in experiment.penalties(settings)[1:]}
    versions = {"torch": torch.__version__, "python": platform.python_version(),
                "numpy": np.__version__}
    return {"settings": settings, "versions": versions, "runs": runs, "rows": rows,
            **({"penalties": penalties} if penalties else {})}


# --- the experiment ------------------------------------------------------------------------------


def run(settings: dict, units: list[Unit], exp: str, args, device, task,
        world=distributed.ALONE) -> int:
    """Train what is not trained, decode what is not decoded, then the results."""
    # what is left, as rank 0 finds it (rank 0 writes the folder)
    to_train, left, to_decode = world.broadcast(experiment.stages(settings, units, exp, task)
                                                if world.main else None)
    progress = experiment.Progress(len(to_train) + len(to_decode), sum(left.values()),
                                   sum(to_decode.values()), f"{task.unit}s")
    for u in [u for u in units if u.name in to_train]:
        start = time.time()
        code, ran = train_run(u, experiment.run_folder(exp, u), world)
        if code:
            what = ("diverged (its loss or weights became NaN): the experiment cannot go on "
                    "without it" if code == 1 and not world.broken
                    else "stopped: rerun the same command to go on")
            if cli.speaks():
                print(f"reproduce.py: {u.name} {what}", file=sys.stderr)
            return code
        progress.stage(f"trained {u.name}", "steps", ran, time.time() - start, left[u.name])
    for u in units:
        if u.name in to_decode:
            start, folder = time.time(), experiment.run_folder(exp, u)
            n = decode_run(u, folder, settings, decoding(args, task), device, task, world)
            progress.stage(f"decoded {u.name}", progress.unit, n, time.time() - start,
                           to_decode[u.name])
    if not world.main:  # rank 0 writes the results
        return 0
    experiment.rescore(settings, units, exp, task)  # METEOR, where it can run now and could not
    result = results(settings, units, exp, task.table)
    experiment.write_results(result, exp, experiment.report(result, args.model, task.unit,
                                                            SELECTIONS, task.table), task.table)
    return 0


def parse_args(argv=None):
    p = cli.parser("reproduce.py", description="Whole experiments as the paper ran them: "
                   "seeds x epochs, the best epoch, mean +- std (see the module's docstring).")
    sub = p.add_subparsers(dest="command", required=True)
    tables = []
    for command, what in (("table3", "Table 3's rows (E2E)"), ("table13", "Table 13's (DART)"),
                          ("table14", "Table 14's (WebNLG)")):
        t = sub.add_parser(command, formatter_class=cli.HelpFormatter, allow_abbrev=False,
                           help=f"{what}: each row over seeds and epochs")
        t.add_argument("--rows", default="lora", help=f"comma-separated, of {', '.join(ROWS)}")
        tables.append(t)
    w = sub.add_parser("sweep", formatter_class=cli.HelpFormatter, allow_abbrev=False,
                       help="LoRA over ranks and target sets (Tables 5 and 6, Appendix H.2)")
    w.add_argument("--rank", default="1,2,4,8,16", help="comma-separated ranks r")
    w.add_argument("--targets", nargs="+", default=["q,v"], help="target sets, e.g. q,v q,k,v,o")
    w.add_argument("--variant", default="lora", choices=("lora", *VARIANT_ROWS),
                   help="LoRA, or one of its descendants (table3's row of that name)")
    for q in (*tables, w):  # what every command takes: the model, seeds, epochs, decoding, ...
        experiment.add_flags(q, p, SEEDS)
    args = p.parse_args(argv)
    experiment.check_flags(p, args, train.Recipe().batch_size)
    if args.data is None and args.command in ("table13", "table14"):
        args.data = TABLES[args.command]  # (its own folder, or its environment variable's)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    relaunch = args.nproc > 1 and not distributed.launched()
    try:
        world = distributed.ALONE if relaunch else distributed.start()  # torchrun's ranks join
        task = world.agree(open_task, args.data)  # E2E, WebNLG, DART, or a JSONL folder
        experiment.check_task(args, task, TABLES)  # (table13 on DART, ...)
        settings, units = world.agree(plan, args, task)
        device = world.agree(experiment.inputs, args, task, world, main_first=True)
        if relaunch:  # everything checked: now the same command over --nproc processes
            experiment.torchrun(args.nproc, __file__,
                                sys.argv[1:] if argv is None else [str(a) for a in argv])
        exp = os.path.abspath(args.out or os.path.join(
            "runs", f"{args.command}-{os.path.basename(args.model.rstrip('/'))}"))
        owner = world.agree(experiment.open_experiment, exp, settings, main_only=True)
    except cli.USER_ERRORS as e:
        cli.fail("reproduce.py", e)
    except KeyboardInterrupt:
        cli.interrupted("reproduce.py", "stopped before anything was started")
    except cli.WriteError as e:
        e.kept = "nothing was started"
        cli.cannot_write("reproduce.py", e)
    except distributed.LostRank as e:
        return e.say("reproduce.py", "nothing was started")
    with owner or contextlib.nullcontext():
        try:
            with cli.stopping_on_signals():  # SIGTERM and SIGHUP stop as Ctrl-C does
                code = run(settings, units, exp, args, device, task, world)
        except KeyboardInterrupt as e:
            cli.interrupted("reproduce.py", f"stopped; what was done is kept in {exp}: rerun the "
                            "same command to go on from there", e)
        except experiment.STAGE_ERRORS as e:  # a download that fails, METEOR that breaks, ...
            cli.fail("reproduce.py", e)
        except cli.WriteError as e:  # a full disk, a folder no longer writable
            e.kept = (f"stopped; what was done is kept in {exp}: make room (or make it "
                      "writable again), then rerun the same command to go on from there")
            cli.cannot_write("reproduce.py", e)
        except distributed.LostRank as e:  # under torchrun: another rank died or hung
            return e.say("reproduce.py", f"what was done is kept in {exp}: rerun the same "
                         "command to go on from there")
    world.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
