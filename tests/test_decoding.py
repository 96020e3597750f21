"""paper/decoding.py: beam search checked against exhaustive search, greedy decoding, and itself
without the KV cache."""

import pytest
import torch
import torch.nn.functional as F
from conftest import random_gpt2, tiny_vocab_model

from model import GPT, GPTConfig
from paper.decoding import ban_repeated_ngrams, beam_search, decode


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
@pytest.mark.fast
def test_beam_search_equals_exhaustive_search_when_the_beam_holds_everything(length_penalty):
    model = tiny_vocab_model()
    prompts = torch.tensor([[0, 1, 2], [3, 3, 4], [4, 0, 1]])
    # 6 * 5**3 = 750 candidates at the last step: a beam of 1000 keeps every one
    got = beam_search(model, prompts, beam=1000, length_penalty=length_penalty,
                      no_repeat_ngram=0, max_new_tokens=4, stop_tokens=(5,))
    for prompt, tokens in zip(prompts.tolist(), got):
        assert tokens == exhaustive_best(model, prompt, 5, 4, length_penalty)


@pytest.mark.fast
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


def test_ban_repeated_ngrams():
    seqs = torch.tensor([[1, 2, 3, 4, 1, 2, 3], [1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 1, 2, 3, 1]])
    logits = torch.arange(30.0).view(3, 10)
    banned = ban_repeated_ngrams(logits.clone(), seqs, 4).isinf()
    assert banned[0].nonzero().flatten().tolist() == [4]  # (1, 2, 3) was followed by 4
    assert not banned[1].any()
    assert banned[2].nonzero().flatten().tolist() == [2]  # (2, 3, 1) was followed by 2
    assert torch.equal(ban_repeated_ngrams(logits.clone(), seqs, 4)[~banned], logits[~banned])


def test_no_repeated_1_grams_bans_every_token_already_there():
    seqs = torch.tensor([[1, 2, 3, 4, 1, 2, 3], [7, 7, 7, 7, 7, 7, 7]])
    banned = ban_repeated_ngrams(torch.zeros(2, 10), seqs, 1).isinf()
    assert [row.nonzero().flatten().tolist() for row in banned] == [[1, 2, 3, 4], [7]]


def test_decoding_with_the_cache_equals_decoding_without(hf_dir):
    model = GPT.from_pretrained(str(hf_dir)).eval()
    prompts = torch.randint(0, 50257, (5, 6), generator=torch.Generator().manual_seed(6))
    kwargs = dict(beam=4, length_penalty=0.9, no_repeat_ngram=4, max_new_tokens=24,
                  stop_tokens=(50256, 628))
    assert beam_search(model, prompts, use_cache=True, **kwargs) == \
        beam_search(model, prompts, use_cache=False, **kwargs)


def test_decode_batches_by_length_and_keeps_the_input_order(hf_dir):
    model = GPT.from_pretrained(str(hf_dir)).eval()
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 50257, (n,), generator=g).tolist() for n in (5, 3, 5, 4, 3)]
    kwargs = dict(beam=3, length_penalty=0.9, no_repeat_ngram=4, max_new_tokens=10)
    together = decode(model, prompts, batch_size=2, progress=False, **kwargs)
    alone = [beam_search(model, torch.tensor([p]), **kwargs)[0] for p in prompts]
    assert together == alone


# --- the released code's semantics (src/gpt2_beam.py) ----------------------------------------


def released_beam(model, prompt, beam, length_penalty, no_repeat_ngram, max_new_tokens, stops):
    """The released beam loop for one prompt, written plainly from src/gpt2_beam.py: the K best
    candidates each step (step 0 from the first beam only), n-grams banned on the logits, a
    candidate ending in a stop token scored at its length and its beam set to -inf, and at the
    end every beam scored at max_new_tokens. A full forward pass per beam, no cache."""
    K, V = beam, model.config.vocab_size
    history, scores = [[] for _ in range(K)], torch.full((K,), float("-inf"))
    scores[0] = 0.0
    best, best_seq = float("-inf"), []
    for i in range(max_new_tokens):
        logp = torch.full((K, V), float("-inf"))
        for b in range(K):
            with torch.no_grad():
                logits = model(torch.tensor([prompt + history[b]]))[0, -1].float()
            if no_repeat_ngram and i + 1 >= no_repeat_ngram:  # fairseq's _calc_banned_ngram_tokens
                h, n = history[b], no_repeat_ngram
                banned = [g[-1] for g in zip(*(h[j:] for j in range(n))) if list(g[:-1]) == h[i + 1 - n:i]]
                logits[banned] = float("-inf")
            logp[b] = F.log_softmax(logits, -1)
        top, index = (scores[:, None] + logp).flatten().topk(K)
        history = [history[int(x) // V] + [int(x) % V] for x in index]
        scores = top.clone()
        for b in range(K):  # _add_beam_candidate with the stop tokens
            if history[b][-1] in stops:
                score = scores[b].item() / len(history[b]) ** length_penalty
                if score > best:
                    best, best_seq = score, history[b][:-1]
                scores[b] = float("-inf")
    for b in range(K):  # _add_beam_candidate after the loop: every beam as it is
        score = scores[b].item() / len(history[b]) ** length_penalty
        if score > best:
            best, best_seq = score, history[b]
    return best_seq


@pytest.mark.parametrize("seed, no_repeat", [(0, 2), (1, 3), (2, 2), (3, 4), (4, 1)])
@pytest.mark.fast
def test_beam_search_equals_the_released_loop(seed, no_repeat):
    model = tiny_vocab_model(seed)
    prompts = torch.randint(0, 5, (6, 3), generator=torch.Generator().manual_seed(seed))
    kwargs = dict(beam=3, length_penalty=0.9, no_repeat_ngram=no_repeat, max_new_tokens=8)
    got = beam_search(model, prompts, stop_tokens=(5,), **kwargs)
    for prompt, tokens in zip(prompts.tolist(), got):
        assert tokens == released_beam(model, prompt, stops=(5,), **kwargs)


class ScriptedModel(torch.nn.Module):
    """A 'model' whose next-token probabilities are set by hand for each generated prefix (the
    tokens after a 1-token prompt); anything not scripted is uniform. With a KVCache it keeps
    the tokens it has seen in the cache, so beams are reordered as beam_search reorders them."""

    def __init__(self, script: dict, vocab_size: int = 6):
        super().__init__()
        self.script, self.config = script, GPTConfig(n_layer=1, vocab_size=vocab_size)

    def forward(self, idx, cache=None):
        if cache is not None:
            seen = idx[:, None, :, None].float()
            idx = cache.update(0, seen, seen)[0][:, 0, :, 0].long()
        V = self.config.vocab_size
        rows = []
        for seq in idx.tolist():
            probs = torch.tensor(self.script.get(tuple(seq[1:]), [1.0] * V), dtype=torch.float)
            rows.append(torch.log(probs / probs.sum()).clamp_min(-1e4))
        return torch.stack(rows)[:, None, :].expand(-1, idx.size(1), -1)


def test_a_finished_hypothesis_takes_a_place_in_the_beam():
    # step 0: 1 and the stop token (5) are the 2 best. The stop ends at once and keeps its place,
    # so only 1 goes on, and 2 (third best, whose continuation 2 0 0 0 0 0 would score best) is
    # dropped. Keeping 2 live beams instead would return [2, 0, 0, 0, 0, 0].
    script = {(): [0, .45, .1, 0, 0, .45], (2,): [1, 0, 0, 0, 0, 0], (2, 0): [1, 0, 0, 0, 0, 0],
              (2, 0, 0): [1, 0, 0, 0, 0, 0], (2, 0, 0, 0): [1, 0, 0, 0, 0, 0],
              (2, 0, 0, 0, 0): [1, 0, 0, 0, 0, 0], (2, 0, 0, 0, 0, 0): [0, 0, 0, 0, 0, 1]}
    model = ScriptedModel(script)
    kwargs = dict(beam=2, length_penalty=0.9, no_repeat_ngram=0, max_new_tokens=8)
    assert beam_search(model, torch.tensor([[0]]), stop_tokens=(5,), **kwargs) == [[]]
    assert released_beam(model, [0], stops=(5,), **kwargs) == []
    # with a beam of 3, the 2 0 0 ... path survives step 0 and wins: log(.1) / 7^0.9 > log(.45)
    assert beam_search(model, torch.tensor([[0]]), stop_tokens=(5,), **{**kwargs, "beam": 3}) \
        == [[2, 0, 0, 0, 0, 0]]


def test_a_banned_token_is_removed_before_the_softmax():
    # after 1 2 1, the bigram 1 2 would repeat: 2 (p .9) is banned and the stop token's .1
    # renormalises to 1, so 1 2 1 <stop> scores log(.5). Banned after the softmax it would keep
    # log(.5 * .1) and lose to 3 4 <stop>, log(.5 * .2).
    script = {(): [0, .5, 0, .5, 0, 0], (1,): [0, 0, 1, 0, 0, 0], (1, 2): [0, 1, 0, 0, 0, 0],
              (1, 2, 1): [0, 0, .9, 0, 0, .1], (3,): [0, 0, 0, 0, 1, 0],
              (3, 4): [.8, 0, 0, 0, 0, .2]}
    model = ScriptedModel(script)
    kwargs = dict(beam=6, length_penalty=0.0, no_repeat_ngram=2, max_new_tokens=4)
    assert beam_search(model, torch.tensor([[0]]), stop_tokens=(5,), **kwargs) == [[1, 2, 1]]
    assert released_beam(model, [0], stops=(5,), **kwargs) == [1, 2, 1]
