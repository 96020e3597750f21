"""paper/multitask.py: several LoRA adapters on one base, by switching (merge / unmerge) and in
mixed batches (each row its own adapter), against each adapter loaded alone by lora.py; and
sample.py serving them, against sample.py with one adapter."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, assert_close, random_gpt2, run_main, shared_folder, tiny_vocab_model

import lora
import sample
from model import GPT
from paper import multitask
from paper.decoding import beam_search, decode

# three adapters that differ in everything they may differ in: targets, rank, alpha
SHAPES = [("q,v", 4, 32), ("q,k,o,fc", 2, 4), ("v,proj", 8, 8)]


def small_base():
    """Our GPT with 60 tokens and weights large enough for peaked distributions."""
    return tiny_vocab_model(vocab_size=60, block_size=64)


@pytest.fixture
def three(tmp_path):
    """The base's weights, and three adapter files with random non-zero A and B."""
    base = small_base()
    paths = []
    for i, (targets, r, alpha) in enumerate(SHAPES):
        model = lora.apply(small_base(), targets, r=r, alpha=alpha)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for layer in lora.lora_layers(model).values():
                layer.A.copy_(torch.randn(layer.A.shape, generator=g) * 0.5)
                layer.B.copy_(torch.randn(layer.B.shape, generator=g) * 0.5)
        paths.append(str(tmp_path / f"task{i}.safetensors"))
        lora.save(model, paths[-1])
    return base, paths


def alone(path, merge=True):
    """The base with one adapter, loaded by lora.py (merged, or not)."""
    model = small_base()
    lora.load(model, path)
    return lora.merge(model) if merge else model


def test_switching_is_lora_merge_and_unmerge(three):
    base, paths = three
    model = small_base()
    tasks = multitask.Adapters(model, paths)
    tasks.switch(1)  # from W0: bit for bit what lora.merge computes
    for (name, p), (_, q) in zip(model.state_dict().items(), alone(paths[1]).state_dict().items()):
        assert torch.equal(p, q), name
    tasks.switch(2)  # task 1's update out, task 2's in: W0 comes back only up to rounding
    assert_close(model.state_dict()["transformer.h.1.mlp.proj.weight"],
                 alone(paths[2]).state_dict()["transformer.h.1.mlp.proj.weight"])
    tasks.switch(None)
    for name, p in base.state_dict().items():
        assert_close(model.state_dict()[name], p)
    with tasks.merged_into(0):
        assert tasks.merged == 0
    assert tasks.merged is None


def test_a_mixed_batch_gives_each_row_its_own_adapters_logits(three):
    _, paths = three
    model = small_base()
    multitask.Adapters(model, paths).mix()
    idx = torch.randint(0, 60, (5, 9), generator=torch.Generator().manual_seed(3))
    tasks = torch.tensor([2, 0, 1, 1, 0])
    multitask.route(model, tasks)
    with torch.no_grad():
        mixed = model(idx)
        for row, t in enumerate(tasks.tolist()):
            assert_close(mixed[row], alone(paths[t])(idx[row:row + 1])[0])  # merged
            assert_close(mixed[row], alone(paths[t], merge=False)(idx[row:row + 1])[0])


@pytest.mark.parametrize("beam", [1, 4])
def test_mixed_beam_search_equals_each_task_decoded_alone(three, beam):
    """Greedy and beam search over a batch whose rows use different adapters, with each task's
    own stop tokens and length limit: each prompt's output is what its adapter gives alone."""
    _, paths = three
    prompts = torch.randint(0, 60, (4, 5), generator=torch.Generator().manual_seed(5))
    limits, stops = [12, 5, 9], [(7,), (7, 3), ()]
    kwargs = dict(beam=beam, length_penalty=0.9, no_repeat_ngram=3)
    expected = [beam_search(alone(path), prompts, max_new_tokens=m, stop_tokens=s, **kwargs)
                for path, m, s in zip(paths, limits, stops)]
    model = small_base()
    multitask.Adapters(model, paths).mix()
    tasks = torch.arange(3).repeat_interleave(4)
    got = beam_search(model, prompts.repeat(3, 1), tasks=tasks, **kwargs,
                      max_new_tokens=[m for m in limits for _ in range(4)],
                      stop_tokens=[s for s in stops for _ in range(4)])
    assert got == sum(expected, [])
    assert len({tuple(map(tuple, e)) for e in expected}) == 3  # three different behaviours
    # decode(): batches by prompt length, tasks interleaved, each batch mixed
    mixed_lengths = [p[:n] for p, n in zip(prompts.tolist() * 3, [5, 4, 5, 3] * 3)]
    order = [(t, i) for i in range(4) for t in range(3)]
    outputs = decode(model, [mixed_lengths[4 * t + i] for t, i in order], batch_size=5,
                     tasks=[t for t, _ in order], max_new_tokens=[limits[t] for t, _ in order],
                     stop_tokens=[stops[t] for t, _ in order], progress=False, **kwargs)
    for (t, i), out in zip(order, outputs):
        ref = beam_search(alone(paths[t]), torch.tensor([mixed_lengths[4 * t + i]]),
                          max_new_tokens=limits[t], stop_tokens=stops[t], **kwargs)[0]
        assert out == ref, (t, i)


def test_misuse_is_refused_with_what_to_do(three, tmp_path):
    _, paths = three
    model = small_base()
    tasks = multitask.Adapters(model, paths)
    with pytest.raises(ValueError, match="call Adapters.*mix"):
        multitask.route(model, torch.tensor([0]))
    with pytest.raises(IndexError, match="task 3: there are 3 adapters"):
        tasks.switch(3)
    tasks.mix()
    with pytest.raises(ValueError, match="call unmix"):
        tasks.switch(0)
    with pytest.raises(IndexError, match="task 3: there are 3 adapters"):
        multitask.route(model, torch.tensor([0, 3]), check=True)
    multitask.route(model, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="a mixed batch of 3 rows needs the task of each row"):
        model(torch.zeros(3, 4, dtype=torch.long))
    tasks.unmix()
    assert type(model.transformer.h[0].attn.q) is torch.nn.Linear
    with pytest.raises(ValueError, match="has LoRA layers already"):
        multitask.Adapters(alone(paths[0], merge=False), paths)
    with pytest.raises(ValueError, match="no adapters given"):
        multitask.Adapters(small_base(), [])


# --- sample.py: two adapters trained for different behaviours on one tiny base ----------------

CITIES = ["Oslo", "Rome", "Lima", "Kyiv", "Doha", "Bern", "Riga", "Baku", "Sofia", "Quito"]
BEHAVIOURS = {"yes": lambda c: f"Yes, {c} is open.", "no": lambda c: "No."}


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory, gpt2_vocab):
    """A tiny random GPT-2 (GPT-2's init) and two LoRA adapters trained on it by train.py for
    two tasks with different answers: "yes" (r=8 on every matrix) and "no" (r=4 on q,v,fc)."""
    import train

    root = tmp_path_factory.mktemp("two_tasks")
    random_gpt2(std=0.02, n_positions=256).save_pretrained(root / "base")
    for name, answer in BEHAVIOURS.items():
        (root / name).mkdir()
        for split, cities in (("train", CITIES * 4), ("dev", CITIES[:3]), ("test", CITIES[3:8])):
            (root / name / f"{split}.jsonl").write_text("".join(
                json.dumps({"context": f"city : {c}", "target": answer(c)}) + "\n" for c in cities))
    shapes = {"yes": ["--rank", "8", "--targets", "q,k,v,o,fc,proj"],
              "no": ["--rank", "4", "--targets", "q,v,fc"]}
    for name in BEHAVIOURS:
        code = train.main(["--data", root / name, "--model", root / "base", "--device", "cpu",
                           "--out", root / f"run-{name}", "--lr", "0.01", "--warmup", "0",
                           "--epochs", "10", "--lora-dropout", "0", *shapes[name]])
        assert code == 0
    return root


def adapters(root):
    return [root / "run-yes" / "adapter.safetensors", root / "run-no" / "adapter.safetensors"]


@pytest.mark.parametrize("mix", [[], ["--mix"]])
def test_one_context_answered_by_each_adapter(two_tasks, capsys, mix):
    a, b = adapters(two_tasks)
    code, out, err = run_main(sample.main, capsys, "--adapter", a, "--adapter", b, "--context",
                              "city : Paris", *mix)
    assert code == 0, err
    lines = out.splitlines()[-2:]
    assert lines[0].startswith("run-yes  Yes,") and lines[0].endswith(".")  # learned
    assert lines[1] == "run-no   No."
    for path, line in zip((a, b), lines):  # each as sample.py decodes it with one adapter
        code, alone_out, _ = run_main(sample.main, capsys, "--adapter", path, "--context",
                                      "city : Paris")
        assert line.split("  ", 1)[1].strip() == alone_out.splitlines()[-1]


def test_test_sets_served_switched_and_mixed_equal_each_adapter_alone(two_tasks, tmp_path, capsys):
    a, b = adapters(two_tasks)
    for path, name in ((a, "yes"), (b, "no")):
        code, _, err = run_main(sample.main, capsys, "--adapter", path, "--out", tmp_path / name,
                                "--no-meteor")  # (the jar takes seconds to start; not the point)
        assert code == 0, err
    for how in ([], ["--mix"]):
        out_dir = tmp_path / ("mixed" if how else "switched")
        code, out, err = run_main(sample.main, capsys, "--adapter", a, "--adapter", b, "--out",
                                  out_dir, "--no-meteor", *how)
        assert code == 0, err
        assert out.count("| this run (test) |") == 2
        for name in ("yes", "no"):
            expected = (tmp_path / name / "predictions.tsv").read_text()
            assert (out_dir / f"run-{name}" / "predictions.tsv").read_text() == expected
            scores = json.loads((out_dir / f"run-{name}" / "predictions.scores.json").read_text())
            assert scores["decoding"].get("mixed", False) == bool(how)
    # one search over both tasks' 5 test contexts (not "decoded 5 contexts" twice; the rate on
    # the same line may read "11.5 contexts/s")
    assert "decoded 5 contexts" not in out and "decoded 10 contexts" in out
    assert (tmp_path / "yes" / "predictions.tsv").read_text().count("\tYes") == 5  # learned
    assert (tmp_path / "no" / "predictions.tsv").read_text().count("\tNo.\n") == 5


def test_a_folder_of_adapters_is_served_and_the_user_flow_needs_no_test_package(
        two_tasks, tmp_path, user_env):
    folder = tmp_path / "adapters"
    folder.mkdir()
    for path, name in zip(adapters(two_tasks), ("yes", "no")):
        (folder / f"{name}.safetensors").write_bytes(path.read_bytes())
    proc = subprocess.run([sys.executable, str(REPO / "sample.py"), "--adapter", str(folder),
                           "--mix", "--data", str(two_tasks / "no"), "--limit", "2"],
                          cwd=REPO, capture_output=True, text=True, env=user_env)
    assert proc.returncode == 0, proc.stderr
    assert (folder / "no" / "predictions-first2.tsv").read_text() == \
        "context\toutput\ncity : Kyiv\tNo.\ncity : Doha\tNo.\n"
    assert (folder / "yes" / "predictions-first2.tsv").read_text().count("\tYes") == 2


@pytest.mark.parametrize("case, message", [
    ("adapter_h", "is an Adapter^H file: only LoRA adapters can share one base here"),
    ("other base", "was trained on base model"),
    ("other shape", "but this model is"),
    ("twice", "an adapter is given twice: give each once"),
    ("empty folder", "is a folder without adapters"),
    ("prompt", "--prompt continues text with one model: give one --adapter"),
    ("mix alone", "--mix serves LoRA adapters: give them with --adapter"),
    ("more adapters than rows", "--mix with 2 adapters needs --batch-size 2 or more, so that a "
                                "batch can hold a row of each task (it is 1)"),
    ("two length penalties", "--mix decodes every task in one beam search, with one length "
                             "penalty; these tasks' defaults differ (yes 0.9, webnlg 0.8): give "
                             "--length-penalty, or drop --mix"),
])
def test_bad_adapters_are_one_line_and_exit_2(two_tasks, tmp_path, capsys, case, message):
    from paper import adapter
    a, b = adapters(two_tasks)
    argv = ["--adapter", a, "--adapter", b, "--context", "city : Paris"]
    if case == "adapter_h":
        model = adapter.apply(GPT.from_pretrained(str(two_tasks / "base")), "houlsby", r=2)
        adapter.save(model, str(tmp_path / "h.safetensors"))
        argv[3] = tmp_path / "h.safetensors"
    elif case in ("other base", "other shape"):
        shape = {} if case == "other base" else {"n_embd": 64}
        random_gpt2(seed=1, std=0.02, n_positions=256, **shape).save_pretrained(tmp_path / "b")
        model = lora.apply(GPT.from_pretrained(str(tmp_path / "b")), "q,v", r=2)
        lora.save(model, str(tmp_path / "other.safetensors"))
        argv[3] = tmp_path / "other.safetensors"
    elif case == "twice":
        argv[3] = a
    elif case == "empty folder":
        (tmp_path / "none").mkdir()
        argv[3] = tmp_path / "none"
    elif case == "prompt":
        argv[4:] = ["--prompt", "hello"]
    elif case == "more adapters than rows":
        argv[4:] = ["--mix", "--batch-size", "1"]
    elif case == "mix alone":
        argv = ["--model", two_tasks / "base", "--mix", "--context", "x"]
    elif case == "two length penalties":  # a WebNLG run's adapter (Table 11: 0.8) beside it
        (tmp_path / "webnlg-run").mkdir()
        (tmp_path / "webnlg-run" / "adapter.safetensors").write_bytes(b.read_bytes())
        (tmp_path / "webnlg-run" / "config.json").write_text(json.dumps(
            {"args": {"data": str(shared_folder("webnlg-lora")), "format": "webnlg"}}))
        argv = ["--adapter", a, "--adapter", tmp_path / "webnlg-run" / "adapter.safetensors",
                "--mix"]
    code, out, err = run_main(sample.main, capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert err.startswith("sample.py: ")



def test_the_docs_serve_two_tasks_in_three_lines(two_tasks):
    """The three lines docs/decoding.md shows, run with this test's base and adapters: each row
    its task's."""
    import re
    page = (REPO / "docs" / "decoding.md").read_text()
    section = page[page.index("## Many tasks on one base\n"):]
    code = re.search(r"```py\n(.*?)```", section, flags=re.S)[1]
    assert len(code.strip().splitlines()) == 3
    a, b = adapters(two_tasks)
    code = (code.replace('"gpt2-medium"', repr(str(two_tasks / "base")))
            .replace('"e2e/adapter.safetensors"', repr(str(a)))
            .replace('"toy/adapter.safetensors"', repr(str(b))))
    prompts = [sample.tokenizer().encode(f"city : {c}") + [50256] for c in ("Pisa", "Nice")] * 2
    scope = {"prompts": prompts}
    exec("from paper import decoding, multitask\nfrom model import GPT\n" + code, scope)
    texts = [sample.tokenizer().decode(out).split("<|endoftext|>")[0].strip()
             for out in scope["outputs"]]
    assert texts[0].startswith("Yes") and texts[3].startswith("Yes")  # tasks 0, 1, 1, 0
    assert texts[1] == texts[2] == "No."


def test_ctrl_c_in_a_mixed_decode_keeps_each_tasks_outputs_and_resumes(two_tasks, tmp_path,
                                                                        capsys, monkeypatch):
    from harness import evaluation
    a, b = adapters(two_tasks)
    flags = ["--adapter", a, "--adapter", b, "--mix", "--no-meteor", "--out", tmp_path / "mixed"]
    code, _, err = run_main(sample.main, capsys, *flags[:-1], tmp_path / "whole")
    assert code == 0, err
    real = evaluation.decode

    def three_then_ctrl_c(model, prompts, **kwargs):  # (the tasks' inputs alternate: a b a)
        kwargs = {k: v[:3] if isinstance(v, list) else v for k, v in kwargs.items()}
        real(model, prompts[:3], **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluation, "decode", three_then_ctrl_c)
    code, out, err = run_main(sample.main, capsys, *flags)
    parts = [tmp_path / "mixed" / name / "predictions.tsv.part" for name in ("run-yes", "run-no")]
    assert code == 130 and err == (
        f"sample.py: Ctrl-C: stopped; what was decoded so far is kept (2 contexts in {parts[0]}, "
        f"1 context in {parts[1]}): run the same command again to go on from there\n")
    monkeypatch.setattr(evaluation, "decode", real)
    code, out, err = run_main(sample.main, capsys, *flags)
    assert code == 0, err
    assert "resuming: 2 of 5 contexts" in out and "resuming: 1 of 5 contexts" in out
    for name in ("run-yes", "run-no"):
        assert (tmp_path / "mixed" / name / "predictions.tsv").read_text() == \
            (tmp_path / "whole" / name / "predictions.tsv").read_text()
