"""Beam search as the paper decodes E2E (Table 11, and its released src/gpt2_beam.py): 10 beams,
length penalty 0.9, no repeated 4-grams, at most 64 new tokens, stopping at <|endoftext|> or a
blank line (token 628), in fp32.

- A hypothesis y scores log p(y | MR) / |y|^0.9, |y| counting its stop token.
- Each step keeps the 10 best candidates. One that ends with a stop token is finished and its slot
  stays empty for that step (the released code's semantics: a finished hypothesis takes one of
  the 10 places), so beam 1 is greedy decoding. After 64 tokens the live ones count as they are.
- A token that would repeat a 4-gram is banned on the logits, before the softmax, so the allowed
  tokens' probabilities renormalise (as released). Only generated tokens count, since the output
  has to copy the MR's phrases.
- A batch of MRs is searched together, all beams at once through the KV cache: the prompt is
  encoded once and each step feeds only the new tokens. MRs are batched by prompt length, so
  nothing is padded.
- An MR leaves the batch as soon as none of its live beams can still beat its best finished
  hypothesis (a bound, not a heuristic: later tokens only lower a score).

tests/test_decoding.py checks it against a line-by-line port of the released loop, an exhaustive
search (every continuation over a 6-token vocabulary), greedy decoding, and itself without the
cache, and on cases built to tell the released semantics from the usual ones.
"""

import sys
import time

import torch
import torch.nn.functional as F

from data.task import EOT
from model import KVCache
from paper import multitask

STOP_TOKENS = (EOT, 628)  # <|endoftext|>, and "\n\n" (a blank line)
CHECK_EVERY = 4  # steps between looks for prompts whose search is over


def ban_repeated_ngrams(logits: torch.Tensor, seqs: torch.Tensor, n: int) -> torch.Tensor:
    """Set to -inf, in place, the logits (..., vocab_size) of the tokens that would repeat an
    n-gram already in seqs (..., t): the n-grams whose first n-1 tokens equal the last n-1 tokens
    ban their last token. Returns logits."""
    windows = seqs.unfold(-1, n, 1)  # (..., t-n+1, n): every n-gram
    last = seqs[..., None, seqs.shape[-1] - (n - 1):]  # (..., 1, n-1); n = 1: empty, bans all seen
    match = (windows[..., :-1] == last).all(-1)
    penalty = torch.zeros(match.shape, dtype=logits.dtype, device=logits.device)
    # adds -inf at each banned token and 0 elsewhere: no (..., vocab_size) mask is built
    return logits.scatter_add_(-1, windows[..., -1], penalty.masked_fill_(match, float("-inf")))


def per_prompt(stop_tokens) -> bool:
    """Whether stop_tokens are given for each prompt (a list of tuples), not for all (ids)."""
    return bool(stop_tokens) and not isinstance(stop_tokens[0], int)


@torch.no_grad()
def beam_search(model, prompts: torch.Tensor, beam: int = 10, length_penalty: float = 0.9,
                no_repeat_ngram: int = 4, max_new_tokens: int | list[int] = 64,
                stop_tokens=STOP_TOKENS, use_cache: bool = True,
                tasks: torch.Tensor | None = None) -> list[list[int]]:
    """Beam search for prompts of one length (n, T); returns each prompt's best continuation
    (without its stop token), with the released code's semantics (src/gpt2_beam.py). Each step
    keeps the `beam` best candidates; one that ends with a stop token is finished, scored
    log p(y | prompt) / len(y) ** length_penalty (len counting the stop token), and its slot stays
    empty for the next step. Beam 1 is greedy decoding. After max_new_tokens the live hypotheses
    count as they are. A prompt's search stops early when no live beam can beat its best finished
    hypothesis any more (the result is the same: later tokens only lower a score).

    A batch that mixes tasks (multitask.py) gives max_new_tokens and stop_tokens per prompt (a
    list of n each), and tasks: the adapter of each prompt, which all its beams keep."""
    n, T = prompts.shape
    limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * n
    each = stop_tokens if per_prompt(stop_tokens) else [stop_tokens] * n
    K, M, device = beam, max(limits), prompts.device
    width = max(map(len, each))
    stops = torch.tensor([[*s] + [-1] * (width - len(s)) for s in each],  # -1: no token
                         dtype=torch.long, device=device).view(n, width)
    limit = torch.tensor(limits, device=device)
    # the largest len ** length_penalty each prompt's hypotheses can reach (a bound, below)
    longest = torch.tensor([max(m ** length_penalty, 1 ** length_penalty) for m in limits],
                           device=device)

    def forward(idx, prompt_of_row, check=False):  # each row with its prompt's adapter
        if tasks is not None:
            multitask.route(model, tasks[prompt_of_row], check)
        return model(idx, cache=cache)[:, -1].float()

    cache = KVCache(model.config.n_layer, capacity=T + M) if use_cache else None
    logits = forward(prompts, torch.arange(n, device=device), check=True)  # (once: a host sync)
    rows = torch.arange(n, device=device).repeat_interleave(K)  # K beams per prompt
    if cache is not None:
        cache.reorder(rows)
    logits = logits[rows]
    scores = torch.full((n, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam at first, so the K beams do not start as copies
    seqs = torch.zeros(n, K, M, dtype=torch.long, device=device)
    best = torch.full((n,), float("-inf"), device=device)  # best ended hypothesis of each prompt
    best_seq = torch.zeros(n, M, dtype=torch.long, device=device)
    best_len = torch.zeros(n, dtype=torch.long, device=device)
    active = torch.arange(n, device=device)  # prompts still searched, as rows of the above

    def record(value, beam, length):  # keep value/beam's sequence where it beats the best
        better = value > best[active]  # strictly: on a tie the earlier hypothesis stays
        best[active] = torch.where(better, value, best[active])
        chosen = seqs[torch.arange(len(active), device=device), beam]
        best_seq[active] = torch.where(better[:, None], chosen, best_seq[active])
        best_len[active] = torch.where(better, length, best_len[active])

    for t in range(M):
        logits = logits.view(len(active), K, -1)
        vocab_size = logits.size(-1)
        if no_repeat_ngram and t >= no_repeat_ngram:  # banned before the softmax, as released:
            ban_repeated_ngrams(logits, seqs[:, :, :t], no_repeat_ngram)  # the rest renormalise
        logp = F.log_softmax(logits, dim=-1).nan_to_num(nan=float("-inf"))  # (all banned: none)
        # the K best candidates, whether they stop here or go on
        top, index = (scores[..., None] + logp).flatten(1).topk(K)
        parent, token = index // vocab_size, index % vocab_size
        seqs = seqs.gather(1, parent[..., None].expand(-1, -1, M)).clone()
        seqs[:, :, t] = token
        # a candidate that stops is finished: scored at its length (t + 1, the stop token
        # included), then its slot stays empty until the next step refills all K
        ends = (token[..., None] == stops[active, None]).any(-1)
        value, j = (torch.where(ends, top, float("-inf")) / (t + 1) ** length_penalty).max(1)
        record(value, j, t)
        scores = top.masked_fill(ends, float("-inf"))
        goes_on = None  # which prompts go on, where some are done here
        if t + 1 in limits:  # out of room: an unfinished hypothesis counts as it is
            out = limit[active] == t + 1
            value, j = (scores / (t + 1) ** length_penalty).max(1)
            record(value.masked_fill(~out, float("-inf")), j, t + 1)
            goes_on = ~out
        # stop where no live beam can beat the best ended one: later tokens only lower a score,
        # and the most favourable length normalisation is `longest`. Looking costs a wait for
        # the GPU (a host sync), so it is done every CHECK_EVERY steps; a prompt searched a few
        # steps longer has the same result.
        rows = (torch.arange(len(active), device=device)[:, None] * K + parent)
        if t % CHECK_EVERY == CHECK_EVERY - 1:
            still_open = scores.max(1).values / longest[active] > best[active]
            goes_on = still_open if goes_on is None else goes_on & still_open
        if goes_on is not None and not bool(goes_on.all()):
            keep = goes_on.nonzero().squeeze(1)
            active, scores, seqs, token, rows = (active[keep], scores[keep], seqs[keep],
                                                 token[keep], rows[keep])
            if len(active) == 0:
                break
        prompt_of_row = active.repeat_interleave(K)  # of the rows fed next
        if cache is not None:  # follow the chosen beams, then feed only the new tokens
            cache.reorder(rows.flatten())
            logits = forward(token.view(-1, 1), prompt_of_row)
        else:  # the whole sequence again (to check the cache, and to measure what it saves)
            full = torch.cat([prompts[active].repeat_interleave(K, 0),
                              seqs[:, :, :t + 1].flatten(0, 1)], dim=1)
            logits = forward(full, prompt_of_row)
    return [best_seq[i, :best_len[i]].tolist() for i in range(n)]


def search_bytes(config, rows: int, beam: int, prompt_length: int, max_new_tokens: int) -> int:
    """About how much memory beam_search takes for `rows` prompts at once, in fp32: the KV cache
    (keys and values of every layer for rows x beam sequences) and the few (rows x beam x vocab)
    tensors of one step's scores."""
    sequences = rows * beam
    cache = 2 * config.n_layer * sequences * (prompt_length + max_new_tokens) * config.n_embd
    return 4 * (cache + 4 * sequences * config.vocab_size)


def batches(prompts: list[list[int]], batch_size: int) -> list[list[int]]:
    """The indices of the prompts searched together: of one length each (no padding), at most
    batch_size, in the input order within a length."""
    by_length = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    return [indices[s:s + batch_size] for indices in by_length.values()
            for s in range(0, len(indices), batch_size)]


def decode(model, prompts: list[list[int]], *, beam: int = 10, length_penalty: float = 0.9,
           no_repeat_ngram: int = 4, max_new_tokens: int | list[int] = 64, batch_size: int = 32,
           use_cache: bool = True, amp_dtype: torch.dtype | None = None,
           stop_tokens=STOP_TOKENS, progress: bool = True, on_batch=None,
           shard: tuple[int, int] = (0, 1), unit: str = "MR",
           tasks: list[int] | None = None) -> list[list[int]]:
    """Beam-search many prompts: batched by prompt length (no padding), in the input order,
    under autocast to amp_dtype (None: fp32). on_batch(indices, outputs), if given, sees each
    batch's outputs as soon as they are found (sample.py writes them to disk). unit: what the
    progress lines call a prompt (E2E's are MRs).

    For a model serving mixed batches (multitask.py): tasks, the adapter of each prompt, and
    max_new_tokens and stop_tokens either for all or per prompt (lists), as beam_search takes them.

    shard (rank, size): search only every size-th batch, from the rank-th on (the others' are
    None in the result); the batches are the ones one process searches, so each output is the
    same. on_batch is then called once per round of `size` batches, on every rank, with an
    empty batch where this rank has none in the round."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    rank, size = shard
    outputs = [None] * len(prompts)
    bar = tqdm(total=len(prompts), unit=unit, disable=not (progress and sys.stderr.isatty()))
    done, every, start = 0, max(1, len(prompts) // 10), time.time()  # no terminal: a line a tenth
    todo = batches(prompts, batch_size)

    def each(value, chunk, given_per_prompt):  # a setting, for the prompts in chunk
        return [value[i] for i in chunk] if given_per_prompt else value

    for first in range(0, len(todo), size):
        chunk = todo[first + rank] if first + rank < len(todo) else []
        results = []
        if chunk:
            batch = torch.tensor([prompts[i] for i in chunk], device=device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                results = beam_search(
                    model, batch, beam, length_penalty, no_repeat_ngram,
                    each(max_new_tokens, chunk, isinstance(max_new_tokens, list)),
                    each(stop_tokens, chunk, per_prompt(stop_tokens)), use_cache=use_cache,
                    tasks=None if tasks is None else torch.tensor(each(tasks, chunk, True),
                                                                  device=device))
        for i, tokens in zip(chunk, results):
            outputs[i] = tokens
        if on_batch is not None:
            on_batch(chunk, results)
        n = sum(map(len, todo[first:first + size]))  # (the round's, on every rank)
        bar.update(n)
        done += n
        if progress and bar.disable and done // every > (done - n) // every \
                and done < len(prompts):
            seconds = time.time() - start
            print(f"decoded {done}/{len(prompts)} {unit}s in {seconds:.0f} s, about "
                  f"{seconds / done * (len(prompts) - done):.0f} s to go", flush=True)
    bar.close()
    return outputs
