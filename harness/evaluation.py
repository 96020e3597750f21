"""Decode a task's split (E2E's, or your own: data/task.py) with a fine-tuned model and score it:
what sample.py (one model) and reproduce.py (every kept epoch of every run) share.

Each distinct context (E2E: MR) of the split is decoded once with beam search (decoding.py). The
outputs stream to STEM.tsv.part as they are found, so an interrupted decode resumes there (only
with the same settings: model, adapter, task, split, decoding); then STEM.tsv holds (MR or
context, output) rows, written before anything is scored, and STEM.scores.json the task's scores
(Task.score: E2E's five metrics, on any text; WebNLG's and DART's BLEU, METEOR and TER) with what
was decoded and how. The .part goes only once the scores are written, so a decode stopped while
it is scored is scored by the same command, from the .part, without decoding again.

Under torchrun (world, distributed.py) each rank searches its share of the batches one process
searches, rank 0 gathers the outputs as each round of batches ends and writes every file: the
same predictions, byte for byte, scored once.
"""

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import time

import torch

from data.e2e import metrics
from data.scorers.meteor import meteor_note
from data.task import Task, tokenizer
from paper.decoding import decode, search_bytes
from plumbing import cli, hardware
from plumbing.checkpoint import write_atomic, writing
from plumbing.cli import UserError
from plumbing.distributed import ALONE


@dataclasses.dataclass
class Decoding:
    """How to decode: the paper's settings by default (Table 11: beam 10, length penalty 0.9, no
    repeated 4-grams, at most 64 new tokens), in fp32 as the released code decodes."""
    beam: int = 10
    length_penalty: float = 0.9
    no_repeat_ngram: int = 4
    max_new_tokens: int = 64
    batch_size: int = 32  # MRs searched together
    use_cache: bool = True
    dtype: str = "auto"  # as asked (recorded); amp_dtype: what it means on the device
    amp_dtype: torch.dtype | None = None

    def recorded(self) -> dict:
        """What makes two decodes the same (batching and the cache change no output)."""
        return {k: getattr(self, k) for k in ("beam", "length_penalty", "no_repeat_ngram",
                                              "max_new_tokens", "dtype")}

    def kwargs(self) -> dict:
        """decode()'s keyword arguments."""
        return dict(beam=self.beam, length_penalty=self.length_penalty,
                    no_repeat_ngram=self.no_repeat_ngram, max_new_tokens=self.max_new_tokens,
                    batch_size=self.batch_size, use_cache=self.use_cache,
                    amp_dtype=self.amp_dtype)


def output_text(enc, tokens: list[int], blank_line_ends: bool = True) -> str:
    """A decoded output, post-processed as the released decode script does (src/gpt2_decode.py):
    cut at <|endoftext|> or (where the task says so, as E2E does) a blank line, stripped."""
    text = enc.decode(tokens).split("<|endoftext|>")[0]
    return (text.split("\n\n")[0] if blank_line_ends else text).strip()


def identity(base: str, adapter: str | None) -> dict:
    """What was decoded, for the decode's settings: the base model and the adapter file (its
    SHA-256: the same path may hold another epoch's adapter tomorrow)."""
    if not adapter:
        return {"model": base, "adapter": None, "adapter_sha256": None}
    with open(adapter, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {"model": base, "adapter": os.path.abspath(adapter), "adapter_sha256": digest}


def decode_settings(what: dict, mrs: int, split: str, format: str, decoding: Decoding) -> dict:
    """What makes two decodes the same: an unfinished one resumes only with equal settings."""
    return {**what, "mrs": mrs, "split": split, "format": format, **decoding.recorded()}


def check_search(model, decoding: Decoding, prompts: list[list[int]], device):
    """Refuse, before decoding, a search that cannot run: longer than the model's positions,
    more beams than tokens to choose from, or more memory than is free here."""
    longest, config, beam = max(map(len, prompts)), model.config, decoding.beam
    if longest + decoding.max_new_tokens > config.block_size:
        raise UserError(f"--max-new-tokens {decoding.max_new_tokens} after a prompt of {longest} "
                        f"tokens is more than the model's {config.block_size} positions")
    if beam > config.vocab_size:
        raise UserError(f"--beam {beam:,} is more than the {config.vocab_size:,} tokens each "
                        "step chooses from")
    rows = min(decoding.batch_size, len(prompts))
    need = search_bytes(config, rows, beam, longest, decoding.max_new_tokens)
    free = hardware.free_memory(device)
    if free is not None and need > free:
        raise UserError(f"--beam {beam:,}" + (f" with --batch-size {rows}" if rows > 1 else "")
                        + f" needs about {need / 1e9:,.1f} GB for the search, more than the "
                        f"{free / 1e9:,.1f} GB free here; lower --beam"
                        + (" or --batch-size" if rows > 1 else ""))


def resumed_part(path: str, settings: dict, force: bool) -> dict[int, str]:
    """The outputs a decode with the same settings already wrote to path (a JSONL file that
    grows as MRs finish); another decode's file is refused, or with force started afresh."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8", errors="replace") as f:  # (a damaged one: refused below)
        lines = f.read().split("\n")
    done = {}
    try:
        same = json.loads(lines[0]) == {"settings": settings}
    except ValueError:
        same = False
    if not same:
        if not force:
            raise UserError(f"{path} holds an unfinished decode with other settings (or is "
                            "damaged); delete it, or pass sample.py --force, to decode afresh")
        os.remove(path)
        return {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
            done[int(record["i"])] = str(record["output"])
        except (ValueError, KeyError, TypeError):  # the last line, cut short by a kill
            continue
    return done


def decoded_so_far(stem: str) -> int | None:
    """How many MRs STEM.tsv.part holds (what a Ctrl-C keeps), or None without one."""
    if not os.path.exists(stem + ".tsv.part"):
        return None
    with open(stem + ".tsv.part", encoding="utf-8") as f:
        return max(0, sum(1 for line in f if line.endswith("\n")) - 1)  # (the settings line)


def scoring_left(stem: str) -> bool:
    """Whether STEM.tsv holds a whole decode that was stopped while it was scored: its .part is
    still there (it goes once STEM.scores.json is written), every input in it. The same command
    then scores it without decoding again."""
    if not os.path.exists(stem + ".tsv") or (done := decoded_so_far(stem)) is None:
        return False
    with open(stem + ".tsv.part", encoding="utf-8", errors="replace") as f:
        try:
            total = json.loads(f.readline())["settings"]["mrs"]
        except (ValueError, KeyError, TypeError):
            return False
    return done >= total


class Job:
    """One split of one task, decoded by one model (or one adapter of several: multitask.py) into
    STEM.tsv and STEM.scores.json: its inputs, what STEM.tsv.part holds already, what is left."""

    def __init__(self, model, *, task: Task, split: str, limit: int, stem: str,
                 decoding: Decoding, what: dict, force: bool, device, world=ALONE,
                 mixed: bool = False):
        self.task, self.split, self.stem, self.decoding = task, split, stem, decoding
        groups, self.source = world.agree(task.eval_groups, split, main_first=True)
        self.groups = groups[:limit] if limit else groups  # (label, context, references)
        self.prompts = [task.prompt(ctx) for _, ctx, _ in self.groups]
        world.agree(check_search, model, decoding, self.prompts, device)
        self.settings = {**decode_settings(what, len(self.groups), split, task.format, decoding),
                         **task.recorded(), **({"mixed": True} if mixed else {})}
        self.part = stem + ".tsv.part"
        self.texts = world.agree(resumed_part, self.part, self.settings, force,
                                 main_only=True) or {}
        self.todo = world.broadcast([i for i in range(len(self.groups)) if i not in self.texts])
        if len(self.texts) == len(self.groups):
            print(f"all {cli.plural(len(self.groups), task.unit)} were decoded already "
                  f"({self.part}): scoring them")
        elif self.texts:
            print(f"resuming: {len(self.texts)} of {cli.plural(len(self.groups), task.unit)} "
                  f"were decoded already ({self.part})")
        self.n_tokens = 0

    def finish(self, seconds: float, meteor: bool) -> dict:
        """Write STEM.tsv, score, write STEM.scores.json (then the .part goes: until then, a stop
        while scoring leaves what the same command scores without decoding: scoring_left);
        the report."""
        table = io.StringIO()
        writer = csv.writer(table, delimiter="\t", lineterminator="\n")
        writer.writerow([self.task.label, "output"])
        writer.writerows((label, self.texts[i]) for i, (label, _, _) in enumerate(self.groups))
        write_atomic(self.stem + ".tsv", table.getvalue())
        print(f"wrote {self.stem}.tsv")
        report = {"split": self.split, "format": self.task.format, "references": self.source,
                  "mrs": len(self.groups), "predictions": self.stem + ".tsv",
                  "decoding": {**self.settings, "seconds": seconds}}
        try:
            score_into(report, self.task, self.groups,
                       [self.texts[i] for i in range(len(self.groups))], meteor)
        except metrics.MeteorError as e:
            raise UserError(f"{e} (the predictions are saved in {self.stem}.tsv)") from None
        write_atomic(self.stem + ".scores.json", json.dumps(report, indent=2))
        os.remove(self.part)
        print(f"wrote {self.stem}.scores.json")
        return report


def rescore(stem: str, task: Task, meteor: bool) -> dict:
    """Score STEM.tsv again (no decoding) and rewrite STEM.scores.json: where a metric could not
    run when it was decoded (METEOR without pycocoevalcap) and can now. The report."""
    with open(stem + ".scores.json", encoding="utf-8") as f:
        report = json.load(f)
    again = f"delete {stem}.scores.json, and the same command decodes it again"
    try:
        with open(stem + ".tsv", encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))[1:]
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {stem}.tsv ({getattr(e, 'strerror', None) or e}): "
                        f"{again}") from None
    groups = task.eval_groups(report["split"])[0][:report["mrs"]]
    if [row[0] if len(row) == 2 else None for row in rows] != [g[0] for g in groups]:
        raise UserError(f"{stem}.tsv does not hold the inputs its scores are of (edited by "
                        f"hand?): {again}")
    score_into(report, task, groups, [out for _, out in rows], meteor)
    write_atomic(stem + ".scores.json", json.dumps(report, indent=2))
    return report


def score_into(report: dict, task: Task, groups: list, outputs: list[str], meteor: bool):
    """The task's metrics (E2E's five, or WebNLG's and DART's BLEU, METEOR and TER) into a
    decode's report, and why a score is missing (only METEOR can be)."""
    report.update(task.score(report["split"], groups, outputs, meteor=meteor))
    report.pop("meteor", None)
    if None in report["scores"].values():
        report["meteor"] = meteor_note(meteor)


def evaluate(model, *, task: Task, split: str, limit: int, stem: str, decoding: Decoding,
             what: dict, force: bool, meteor: bool, device, world=ALONE) -> dict | None:
    """Decode each distinct context of the task's split once (the first `limit`, 0: all),
    resuming from STEM.tsv.part, write STEM.tsv, score, write STEM.scores.json; returns that
    report (None on the ranks of torchrun but 0). what: identity()'s record of the model."""
    job = Job(model, task=task, split=split, limit=limit, stem=stem, decoding=decoding,
              what=what, force=force, device=device, world=world)
    return run_jobs(model, [job], meteor=meteor, world=world)[0]


def close_quietly(f):
    """Close f; what a full disk refused to flush was said already (WriteError)."""
    with contextlib.suppress(OSError):
        f.close()


def run_jobs(model, jobs: list[Job], *, meteor: bool, world=ALONE,
             tasks: list[int] | None = None) -> list[dict | None]:
    """Decode what the jobs have left, in one search, then finish each: their reports (None on
    the ranks of torchrun but 0). tasks: for a model serving mixed batches (multitask.py), the
    adapter of each job; its inputs are interleaved with the others', so each batch holds rows
    of every task, and each keeps its task's decoding (max_new_tokens, stop tokens)."""
    shared = [{k: v for k, v in job.decoding.kwargs().items() if k != "max_new_tokens"}
              for job in jobs]
    if any(s != shared[0] for s in shared):
        raise ValueError("jobs decoded together must share their decoding settings")
    order = [(n, job.todo[k]) for k in range(max(len(job.todo) for job in jobs))
             for n, job in enumerate(jobs) if k < len(job.todo)]  # (job, input), interleaved
    each = dict(max_new_tokens=[jobs[n].decoding.max_new_tokens for n, _ in order],
                stop_tokens=[jobs[n].task.stop_tokens for n, _ in order],
                tasks=None if tasks is None else [tasks[n] for n, _ in order])
    units = {job.task.unit for job in jobs}
    unit = units.pop() if len(units) == 1 else "input"
    enc = tokenizer()
    with contextlib.ExitStack() as files:  # rank 0 writes (a full disk: WriteError, what was
        parts = []                            # decoded kept in the .part, a cut line ignored)
        for job in jobs:
            with writing(job.part):
                parts.append(open(job.part if world.main else os.devnull, "a", encoding="utf-8"))
                files.callback(close_quietly, parts[-1])
                if not job.texts:
                    parts[-1].write(json.dumps({"settings": job.settings}) + "\n")

        def write(chunk, outputs):  # as each batch (under torchrun: each round) finishes
            for j, tokens in world.gather(list(zip(chunk, outputs))):  # (on rank 0: all ranks')
                n, i = order[j]
                jobs[n].texts[i] = output_text(enc, tokens, jobs[n].task.blank_line_ends)
                with writing(jobs[n].part):
                    parts[n].write(json.dumps({"i": i, "output": jobs[n].texts[i]}) + "\n")
                jobs[n].n_tokens += len(tokens)
            for job, f in zip(jobs, parts):
                with writing(job.part):
                    f.flush()

        start = time.time()
        decode(model, [jobs[n].prompts[i] for n, i in order],
               **{**shared[0], **each}, on_batch=write, shard=(world.rank, world.size),
               unit=unit)
        seconds = time.time() - start
    if not world.main:
        return [None] * len(jobs)
    n_tokens, d = sum(job.n_tokens for job in jobs), jobs[0].decoding
    if order:  # (none: every input was decoded before a stop while scoring)
        print(f"decoded {cli.plural(len(order), unit)} ({n_tokens:,} tokens) in {seconds:.1f} s: "
              f"{len(order) / max(seconds, 1e-9):.1f} {unit}s/s, "
              f"{n_tokens / max(seconds, 1e-9):,.0f} tokens/s (beam {d.beam}"
              f"{'' if d.use_cache else ', no KV cache'}"
              f"{'' if tasks is None else f', {len(jobs)} tasks in mixed batches'})")
    return [job.finish(seconds, meteor) for job in jobs]
