"""Decode a task's split (E2E's, or your own: data/task.py) with a fine-tuned model and score it:
what sample.py (one model) and reproduce.py (every kept epoch of every run) share.

Each distinct context (E2E: MR) of the split is decoded once with beam search (decoding.py). The
outputs stream to STEM.tsv.part as they are found, so an interrupted decode resumes there (only
with the same settings: model, adapter, task, split, decoding); then STEM.tsv holds (MR or
context, output) rows, written before anything is scored, and STEM.scores.json the five metrics
(data/e2e/metrics.py, on any text) with what was decoded and how.

Under torchrun (world, distributed.py) each rank searches its share of the batches one process
searches, rank 0 gathers the outputs as each round of batches ends and writes every file: the
same predictions, byte for byte, scored once.
"""

import csv
import dataclasses
import hashlib
import io
import json
import os
import time

import torch

import cli
from checkpoint import write_atomic
from cli import UserError
from data.e2e import metrics
from data.task import Task, tokenizer
from decoding import decode, search_bytes
from distributed import ALONE


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
    free = cli.free_memory(device)
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
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    done = {}
    try:
        same = json.loads(lines[0]) == {"settings": settings}
    except ValueError:
        same = False
    if not same:
        if not force:
            raise UserError(f"{path} holds an unfinished decode with other settings; pass --force "
                            "to discard it")
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


def evaluate(model, *, task: Task, split: str, limit: int, stem: str, decoding: Decoding,
             what: dict, force: bool, meteor: bool, device, world=ALONE) -> dict | None:
    """Decode each distinct context of the task's split once (the first `limit`, 0: all),
    resuming from STEM.tsv.part, write STEM.tsv, score, write STEM.scores.json; returns that
    report (None on the ranks of torchrun but 0). what: identity()'s record of the model."""
    groups, source = world.agree(task.eval_groups, split, main_first=True)
    if limit:
        groups = groups[:limit]
    enc, unit = tokenizer(), task.unit
    prompts = [task.prompt(ctx) for _, ctx, _ in groups]
    world.agree(check_search, model, decoding, prompts, device)
    settings = {**decode_settings(what, len(groups), split, task.format, decoding),
                **task.recorded()}
    part = stem + ".tsv.part"
    texts = world.agree(resumed_part, part, settings, force, main_only=True) or {}
    todo = world.broadcast([i for i in range(len(groups)) if i not in texts])  # (rank 0's)
    if texts:
        print(f"resuming: {len(texts)} of {cli.plural(len(groups), unit)} were decoded already "
              f"({part})")
    n_tokens = 0
    with open(part if world.main else os.devnull, "a", encoding="utf-8") as f:  # rank 0 writes
        if not texts:
            f.write(json.dumps({"settings": settings}) + "\n")

        def write(chunk, outputs):  # as each batch (under torchrun: each round) finishes
            nonlocal n_tokens
            for j, tokens in world.gather(list(zip(chunk, outputs))):  # (on rank 0: all ranks')
                texts[todo[j]] = output_text(enc, tokens, task.blank_line_ends)
                f.write(json.dumps({"i": todo[j], "output": texts[todo[j]]}) + "\n")
                n_tokens += len(tokens)
            f.flush()

        start = time.time()
        decode(model, [prompts[i] for i in todo], **decoding.kwargs(), on_batch=write,
               shard=(world.rank, world.size), stop_tokens=task.stop_tokens, unit=unit)
        seconds = time.time() - start
    if not world.main:
        return None
    print(f"decoded {cli.plural(len(todo), unit)} ({n_tokens:,} tokens) in {seconds:.1f} s: "
          f"{len(todo) / max(seconds, 1e-9):.1f} {unit}s/s, {n_tokens / max(seconds, 1e-9):,.0f} "
          f"tokens/s (beam {decoding.beam}{'' if decoding.use_cache else ', no KV cache'})")
    table = io.StringIO()
    writer = csv.writer(table, delimiter="\t", lineterminator="\n")
    writer.writerow([task.label, "output"])
    writer.writerows((label, texts[i]) for i, (label, _, _) in enumerate(groups))
    write_atomic(stem + ".tsv", table.getvalue())
    os.remove(part)
    print(f"wrote {stem}.tsv")
    report = {"split": split, "format": task.format, "references": source, "mrs": len(groups),
              "predictions": stem + ".tsv", "decoding": {**settings, "seconds": seconds}}
    try:
        report["scores"] = metrics.score([refs for _, _, refs in groups],
                                         [texts[i] for i in range(len(groups))], meteor=meteor)
    except metrics.MeteorError as e:
        raise UserError(f"{e} (the predictions are saved in {stem}.tsv)") from None
    if report["scores"]["METEOR"] is None:
        report["meteor"] = metrics.meteor_note(meteor)
    write_atomic(stem + ".scores.json", json.dumps(report, indent=2))
    print(f"wrote {stem}.scores.json")
    return report
