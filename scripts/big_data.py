"""Your own data at a million examples: the time and the memory it takes to read it, for
BENCHMARKS.md. Writes a JSONL task folder whose train.jsonl holds N examples (short contexts and
~20-word targets, like E2E's), then measures on it, in fresh processes:

- load:   JsonlTask(FOLDER).examples("train") alone (tokenizing, or the cache): its own time,
          and the peak memory (RSS) of the process that runs it (Python and torch included);
- train:  train.py --data FOLDER --max-steps 2 on a tiny random GPT-2, wall time and peak RSS
          (what a user's run costs before its steps);

each twice, a first time with an empty token cache (one for the loads, one for the runs) and
again with the cache the first wrote.
--before DIR runs the same on another checkout of the project (e.g. a git worktree of an earlier
commit) in the same run, side by side.

    TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache .venv/bin/python scripts/big_data.py --examples 1000000
    git worktree add /tmp/before COMMIT && ... scripts/big_data.py --before /tmp/before
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the a restaurant pub coffee shop near river city centre family friendly price range "
         "cheap moderate high rating customer food Italian French English Chinese Indian Japanese "
         "serves offers located area riverside offers good average low with and is it its").split()
LOAD = ("import sys, time; sys.path.insert(0, sys.argv[1]); from data.jsonl import JsonlTask; "
        "t = time.time(); n = len(JsonlTask(sys.argv[2]).examples('train')); "
        "print(n, time.time() - t)")


def write_folder(folder: str, n: int):
    """train.jsonl with n examples, dev.jsonl with 100; the same files for the same n."""
    rng = random.Random(0)
    os.makedirs(folder, exist_ok=True)

    def line():
        context = " | ".join(f"{k} : {rng.choice(WORDS)}" for k in ("name", "food", "area"))
        target = " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 25))) + "."
        return json.dumps({"context": context, "target": target}) + "\n"
    for name, count in (("train.jsonl", n), ("dev.jsonl", 100)):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.writelines(line() for _ in range(count))


def measured(command: list[str], env: dict, cwd: str) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of a command, by GNU time."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", *command], env=env, cwd=cwd,
                          capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"big_data.py: {' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    wall, rss = proc.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss) / 1024, proc.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=1_000_000)
    p.add_argument("--before", help="another checkout of the project to measure beside this one")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="big-data-")
    folder = os.path.join(work, "task")
    write_folder(folder, args.examples)
    size = os.path.getsize(os.path.join(folder, "train.jsonl")) / 1e6
    tiny = os.path.join(work, "tiny")
    subprocess.run([sys.executable, "-c", "import sys, torch; sys.path.insert(0, sys.argv[2]); "
                    "from model import GPT, GPTConfig; torch.manual_seed(0); GPT(GPTConfig("
                    "n_layer=2, n_head=4, n_embd=32, block_size=256)).save_pretrained(sys.argv[1])",
                    tiny, REPO], check=True)
    print(f"| {args.examples:,} examples ({size:.0f} MB) | load | load: peak RSS | "
          "train.py --max-steps 2: wall | peak RSS |\n|---|---|---|---|---|", flush=True)
    for label, repo in (("before", args.before), ("this checkout", REPO)):
        if repo is None:
            continue
        env = {**os.environ, "OMP_NUM_THREADS": "2"}  # ($GPT2_CACHE_DIR/tokens: the cache)
        for when in ("first", "again"):
            load = measured([sys.executable, "-c", LOAD, repo, folder],
                            {**env, "GPT2_CACHE_DIR": os.path.join(work, f"{label}-load")}, repo)
            run = os.path.join(work, f"run-{label}-{when}")
            train = measured([sys.executable, "train.py", "--data", folder, "--model", tiny,
                              "--max-steps", "2", "--device", "cpu", "--out", run],
                             {**env, "GPT2_CACHE_DIR": os.path.join(work, f"{label}-train")},
                             repo)
            seconds = float(load[2].split()[1])  # (the load's own, without starting Python)
            print(f"| {label}, {when} | {seconds:.1f} s | {load[1]:,.0f} MB | {train[0]:.1f} s | "
                  f"{train[1]:,.0f} MB |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
