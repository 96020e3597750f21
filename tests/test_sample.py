"""sample.py: merged decoding, beam search checked against exhaustive search, the CLI."""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, assert_close, random_gpt2

import lora
from model import GPT, GPTConfig
from sample import banned_tokens, beam_search


def tiny_vocab_model(seed=0):
    """6 tokens (5 is the stop token), weights large enough for peaked distributions."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=16, vocab_size=6, n_layer=2, n_head=2, n_embd=16, dropout=0))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def exhaustive_best(model, prompt, stop, max_new, length_penalty):
    """Every continuation (ended by the stop token, or cut at max_new tokens), each scored by a
    full forward pass: log p / len ** length_penalty, len counting the stop token."""
    best = (float("-inf"), None)

    def walk(seq, logp_so_far):
        nonlocal best
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([prompt + seq]))[0, -1].double(), -1)
        for token in range(model.config.vocab_size):
            s = logp_so_far + logp[token].item()
            if token == stop:
                best = max(best, (s / (len(seq) + 1) ** length_penalty, seq))
            elif len(seq) + 1 == max_new:
                best = max(best, (s / max_new ** length_penalty, seq + [token]))
            else:
                walk(seq + [token], s)
    walk([], 0.0)
    return best[1]


@pytest.mark.parametrize("length_penalty", [0.9, 0.0, 2.0, -0.5])
def test_beam_search_equals_exhaustive_search_when_the_beam_holds_everything(length_penalty):
    model = tiny_vocab_model()
    prompts = torch.tensor([[0, 1, 2], [3, 3, 4], [4, 0, 1]])
    # 6 * 5**3 = 750 candidates at the last step: a beam of 1000 keeps every one
    got = beam_search(model, prompts, beam=1000, length_penalty=length_penalty,
                      no_repeat_ngram=0, max_new_tokens=4, stop_tokens=(5,))
    for prompt, tokens in zip(prompts.tolist(), got):
        assert tokens == exhaustive_best(model, prompt, 5, 4, length_penalty)


def test_beam_1_is_greedy_decoding(hf_dir):
    model = GPT.from_pretrained(str(hf_dir)).eval()
    prompts = torch.randint(0, 50257, (4, 5), generator=torch.Generator().manual_seed(3))
    greedy = model.generate(prompts, 20, stop_token=50256)[:, 5:].tolist()
    beamed = beam_search(model, prompts, beam=1, length_penalty=0.0, no_repeat_ngram=0,
                         max_new_tokens=20, stop_tokens=(50256,))
    for g, b in zip(greedy, beamed):
        assert b == (g[:g.index(50256)] if 50256 in g else g)


def test_a_small_beam_finds_at_least_what_greedy_finds(hf_dir):
    model = GPT.from_pretrained(str(hf_dir)).eval()
    prompts = torch.randint(0, 50257, (6, 5), generator=torch.Generator().manual_seed(4))

    def logp(prompt, tokens):
        with torch.no_grad():
            lp = F.log_softmax(model(torch.tensor([prompt + tokens]))[0].double(), -1)
        return sum(lp[len(prompt) - 1 + i, t].item() for i, t in enumerate(tokens))

    one = beam_search(model, prompts, 1, 0.0, 0, 12, stop_tokens=())
    five = beam_search(model, prompts, 5, 0.0, 0, 12, stop_tokens=())
    for prompt, a, b in zip(prompts.tolist(), one, five):
        assert len(a) == len(b) == 12 and logp(prompt, b) >= logp(prompt, a) - 1e-6


def repeated_ngram(tokens, n=4):
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def test_no_repeated_4_grams(tmp_path):
    random_gpt2(std=0.02).save_pretrained(tmp_path)  # at GPT-2's init it loops on a few tokens
    model = GPT.from_pretrained(str(tmp_path)).eval()
    prompts = torch.randint(0, 50257, (8, 5), generator=torch.Generator().manual_seed(5))
    free = beam_search(model, prompts, 3, 0.9, 0, 40, stop_tokens=())
    assert any(repeated_ngram(t) for t in free)  # this model repeats itself when allowed to
    ruled = beam_search(model, prompts, 3, 0.9, 4, 40, stop_tokens=())
    assert not any(repeated_ngram(t) for t in ruled)


def test_banned_tokens():
    seqs = torch.tensor([[1, 2, 3, 4, 1, 2, 3], [1, 2, 3, 4, 5, 6, 7]])
    banned = banned_tokens(seqs, 4, 10)
    assert banned[0].nonzero().flatten().tolist() == [4]  # (1, 2, 3) was followed by 4
    assert not banned[1].any()


def test_decoding_with_the_cache_equals_decoding_without(hf_dir):
    model = GPT.from_pretrained(str(hf_dir)).eval()
    prompts = torch.randint(0, 50257, (5, 6), generator=torch.Generator().manual_seed(6))
    kwargs = dict(beam=4, length_penalty=0.9, no_repeat_ngram=4, max_new_tokens=24,
                  stop_tokens=(50256, 628))
    assert beam_search(model, prompts, use_cache=True, **kwargs) == \
        beam_search(model, prompts, use_cache=False, **kwargs)


# --- the command line on a tiny random GPT-2 with a LoRA adapter -----------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny GPT-2 (256 positions) and a LoRA adapter for it with non-zero B."""
    root = tmp_path_factory.mktemp("tiny_run")
    random_gpt2(n_positions=256).save_pretrained(root / "base")
    model = lora.apply(GPT.from_pretrained(str(root / "base")), "q,v", r=2, alpha=4)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.B.normal_(0, 0.3)
    lora.save(model, str(root / "run" / "adapter.safetensors"))
    return root


def test_merged_decoding_model_equals_the_unmerged_one(tiny_run):
    import sample
    args = sample.parse_args(["--adapter", str(tiny_run / "run" / "adapter.safetensors")])
    merged, kind = sample.load_model(args, torch.device("cpu"))
    assert kind == "lora"
    assert not any(isinstance(m, lora.LoRALinear) for m in merged.modules())
    assert type(merged.transformer.h[0].attn.q) is torch.nn.Linear
    unmerged = GPT.from_pretrained(str(tiny_run / "base")).eval()
    lora.load(unmerged, str(tiny_run / "run" / "adapter.safetensors"))
    idx = torch.randint(0, 50257, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(merged(idx), unmerged(idx))


def run(*args, env=None):
    return subprocess.run([sys.executable, str(REPO / "sample.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=env)


def test_limit_5_writes_5_predictions_and_scores(tiny_run, e2e_data, gpt2_vocab):
    adapter = tiny_run / "run" / "adapter.safetensors"
    result = run("--adapter", adapter, "--data", e2e_data, "--limit", "5", "--no-meteor",
                 "--beam", "3", "--max-new-tokens", "16", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "merged LoRA" in result.stdout and "decoded 5 MRs" in result.stdout
    assert "| this run (test, first 5 MRs) |" in result.stdout
    lines = (tiny_run / "run" / "predictions-first5.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "mr\toutput" and len(lines) == 6
    assert lines[1].startswith("name[Blue Spice], eatType[coffee shop], area[city centre]\t")
    report = json.loads((tiny_run / "run" / "predictions-first5.scores.json").read_text())
    assert report["mrs"] == 5 and set(report["scores"]) == {"BLEU", "NIST", "METEOR", "ROUGE_L",
                                                            "CIDEr"}
    assert report["scores"]["METEOR"] is None and report["meteor"] == "skipped (--no-meteor)"
    assert "METEOR: skipped (--no-meteor)" in result.stdout


def test_plain_install_decodes_and_scores_without_meteor(tiny_run, e2e_data, gpt2_vocab, user_env,
                                                         tmp_path):
    # requirements.txt only (no transformers, peft, pycocoevalcap) and no Java: METEOR is n/a,
    # the other four are scored, the predictions are kept
    result = run("--adapter", tiny_run / "run" / "adapter.safetensors", "--data", e2e_data,
                 "--limit", "3", "--beam", "2", "--max-new-tokens", "8", "--device", "cpu",
                 "--out", tmp_path, env=user_env)
    assert result.returncode == 0, result.stderr
    assert "METEOR: n/a (needs Java and the Python package pycocoevalcap)" in result.stdout
    assert len((tmp_path / "predictions-first3.tsv").read_text().splitlines()) == 4
    report = json.loads((tmp_path / "predictions-first3.scores.json").read_text())
    assert report["scores"]["METEOR"] is None and report["scores"]["BLEU"] is not None


def main(capsys, *args):
    """sample.py's main() in this process (the CLI's code path without a new interpreter):
    (exit code, stdout, stderr)."""
    import sample
    capsys.readouterr()  # drop what came before (e.g. transformers' progress bars)
    try:
        code = sample.main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_one_mr_and_free_text(tiny_run, gpt2_vocab, capsys):
    base = tiny_run / "base"
    code, out, err = main(capsys, "--model", base, "--mr", "name[The Eagle], eatType[pub]",
                          "--beam", "2", "--max-new-tokens", "8", "--device", "cpu")
    assert code == 0 and out.count("\n") == 1, err
    code, out, err = main(capsys, "--model", base, "--prompt", "The Eagle is",
                          "--max-new-tokens", "5", "--device", "cpu")
    assert code == 0 and out.startswith("The Eagle is"), err


@pytest.mark.parametrize("args, fragment", [
    (["--adapter", "{tmp}/missing.safetensors"], "no such adapter file"),
    (["--adapter", "{adapter}", "--model", "{tmp}/other", "--device", "cpu"],
     "was trained on base model"),
    (["--adapter", "{adapter}", "--beam", "0"], "--beam must be at least 1, got 0"),
    (["--model", "{base}", "--mr", "name The Eagle", "--device", "cpu"],
     "--mr does not parse as key[value]"),
    (["--device", "cpu"], "give --adapter"),
    (["--adapter", "{adapter}", "--split", "train"], "argument --split: invalid choice"),
])
def test_user_errors_are_one_line(tiny_run, tmp_path, capsys, args, fragment):
    random_gpt2(n_embd=48, n_positions=256).save_pretrained(tmp_path / "other")
    paths = dict(tmp=tmp_path, adapter=tiny_run / "run" / "adapter.safetensors",
                 base=tiny_run / "base")
    code, out, err = main(capsys, *(a.format(**paths) for a in args))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("sample.py: ") and fragment in err, err


def test_latency_table_and_json(tmp_path, capsys):
    code, out, err = main(capsys, "--latency", "--latency-model", "gpt2", "--grid", "1x8,2x4",
                          "--trials", "2", "--warmup-trials", "1", "--device", "cpu",
                          "--latency-out", tmp_path / "l.json")
    assert code == 0, err
    assert "| 1 x 8 | 11M |" in out
    report = json.loads((tmp_path / "l.json").read_text())
    assert [(r["batch"], r["seq"]) for r in report["rows"]] == [(1, 8), (2, 4)]
    names = list(report["rows"][0]["ms"])
    assert names[:3] == ["base (FT)", "LoRA merged", "LoRA unmerged"]
    assert names[3].startswith("Adapter^L r=") and names[4].startswith("Adapter^H r=")
    assert all(math.isfinite(v["mean"]) and v["mean"] > 0 for v in report["rows"][0]["ms"].values())
