"""LoRA's descendants in lora.py (rsLoRA, DoRA, PiSSA) and train.py (LoRA+), each against PEFT's
implementation of it on the tiny GPT-2: the same model (PEFT's LoRA on the Conv1D layers of
transformers' GPT2LMHeadModel, ours on the same matrices), then the logits, train.py's training
loss, the gradient of every trainable tensor, one AdamW step and the merged weights. The
matrices are W_o and the MLP's two (attn.c_proj, mlp.c_fc, mlp.c_proj: one module each on both
sides). W_q and W_v share transformers' fused c_attn: rsLoRA, DoRA (its norms are per row) and
LoRA+ compute the same there, PiSSA does not (PEFT takes one SVD of the fused 3d x d matrix, we
one of each d x d matrix: another residual, another start; paper/peft_interop.py exports ours
as the plain LoRA its change to W0 is). The optimizers are compared with one set-up on both
sides, said in each test: where PEFT's usual set-ups differ from ours (DoRA's m decayed), a test
shows that too."""

import json
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, assert_close, batch, run_main, signal_on_line
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from transformers import GPT2LMHeadModel

import lora
import reproduce
import sample
import train
from data.task import collate, loss_positions
from model import GPT

TARGETS = {"o": "attn.c_proj", "fc": "mlp.c_fc", "proj": "mlp.c_proj"}  # ours -> transformers'
VARIANTS = {  # name -> (lora.apply's keywords, LoraConfig's)
    "lora": ({}, {}),
    "rslora": ({"rslora": True}, {"use_rslora": True}),
    "dora": ({"dora": True}, {"use_dora": True}),
    "pissa": ({"init": "pissa"}, {"init_lora_weights": "pissa"}),
    "dora+rslora": ({"dora": True, "rslora": True}, {"use_dora": True, "use_rslora": True}),
}
R, ALPHA = 3, 6  # (alpha / r = 2, alpha / sqrt(r) = 3.46: a wrong scaling shows)


def pair(hf_dir, name: str):
    """Ours and PEFT's model with the same variant on the same matrices, their adapters equal and
    carrying something: B (zero at the start) and DoRA's m (||W0|| at the start) drawn at
    random on ours, then copied into PEFT's; A copied too (each side draws its own)."""
    ours_kwargs, peft_kwargs = VARIANTS[name]
    torch.manual_seed(0)
    ours = lora.apply(GPT.from_pretrained(str(hf_dir)), ",".join(TARGETS), r=R, alpha=ALPHA,
                      **ours_kwargs)
    theirs = get_peft_model(GPT2LMHeadModel.from_pretrained(str(hf_dir)), LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=list(TARGETS.values()), fan_in_fan_out=True,
        lora_dropout=0.0, **peft_kwargs))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for ours_name, layer in lora.lora_layers(ours).items():
            peft_layer = theirs.get_submodule(peft_name(ours_name))
            if name != "pissa":  # (PiSSA's A and B are W0's SVD on both sides: compared below)
                peft_layer.lora_A["default"].weight.copy_(layer.A)
            layer.B.add_(torch.randn(layer.B.shape, generator=g) * 0.3)
            peft_layer.lora_B["default"].weight.copy_(layer.B)
            if isinstance(layer, lora.DoRALinear):
                layer.m.mul_(1 + 0.2 * torch.rand(layer.m.shape, generator=g))
                peft_layer.lora_magnitude_vector["default"].weight.copy_(layer.m)
    return ours, theirs


def peft_name(ours_name: str) -> str:
    """transformer.h.0.attn.o -> base_model.model.transformer.h.0.attn.c_proj"""
    prefix, target = ours_name.rsplit(".", 2)[0], ours_name.split(".", 3)[3]
    t = next(t for t, path in lora.TARGETS.items() if path == target)
    return f"base_model.model.{prefix}.{TARGETS[t]}"


def theirs_of(theirs, ours_name: str, param: str) -> torch.Tensor:
    """PEFT's tensor for one of ours: A, B, or DoRA's m."""
    layer = theirs.get_submodule(peft_name(ours_name))
    return {"A": layer.lora_A, "B": layer.lora_B,
            "m": layer.lora_magnitude_vector}[param]["default"].weight


def losses(ours, theirs):
    """train.py's loss (label smoothing 0.1, at the reference tokens) on both, from the same
    batch of two examples of different lengths."""
    examples = [(batch(seed, (1, n))[0].numpy(), p) for seed, n, p in [(0, 12, 5), (1, 9, 4)]]
    inputs, targets = collate(examples)
    positions, labels = loss_positions(targets)
    mine = train.token_loss(ours, inputs, positions, labels, 0.1)
    logits = theirs(inputs).logits.flatten(0, 1).index_select(0, positions)
    return mine, F.cross_entropy(logits.float(), labels, label_smoothing=0.1, reduction="sum")


@pytest.mark.fast
@pytest.mark.parametrize("name", list(VARIANTS))
def test_outputs_loss_gradients_and_a_step_equal_pefts(hf_dir, name):
    ours, theirs = pair(hf_dir, name)
    ours.eval(), theirs.eval()  # (eval: no dropout to draw; gradients flow as in training)
    if name == "pissa":  # A and B from W0's top singular directions, W0 the rest: as PEFT's
        for ours_name, layer in lora.lora_layers(ours).items():
            assert_close(layer.A, theirs_of(theirs, ours_name, "A"))
            base = theirs.get_submodule(peft_name(ours_name)).base_layer.weight  # (in, out)
            assert_close(layer.base.weight, base.T)
    with torch.no_grad():
        for seed in range(2):
            assert_close(ours(batch(seed)), theirs(batch(seed)).logits)
    mine, reference = losses(ours, theirs)
    assert_close(mine, reference)
    mine.backward()
    reference.backward()
    params = lora._lora_params(ours)
    for key, p in params.items():
        layer_name, param = key.rsplit(".", 1)
        assert_close(p.grad, theirs_of(theirs, layer_name, param).grad)
    # one AdamW step: train.make_optimizer's groups (weight decay on matrices, not on DoRA's
    # m), PEFT's parameters grouped alike (its usual set-ups decay m: the test below)
    ours_opt = train.make_optimizer(ours, lr=1e-2, weight_decay=0.01)
    decayed = [p for n, p in theirs.named_parameters() if "lora_A" in n or "lora_B" in n]
    vectors = [p for n, p in theirs.named_parameters() if "lora_magnitude_vector" in n]
    theirs_opt = torch.optim.AdamW([{"params": decayed, "weight_decay": 0.01},
                                    {"params": vectors, "weight_decay": 0.0}], lr=1e-2,
                                   betas=(0.9, 0.999), eps=1e-6)
    ours_opt.step()
    theirs_opt.step()
    for key, p in params.items():
        layer_name, param = key.rsplit(".", 1)
        assert_close(p, theirs_of(theirs, layer_name, param))


@pytest.mark.fast
@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_merged_model_is_plain_gpt2_with_pefts_merged_weights(hf_dir, name):
    ours, theirs = pair(hf_dir, name)
    with torch.no_grad():
        before = ours.eval()(batch(0))
        lora.merge(ours)
        merged = theirs.merge_and_unload().eval()
        for i in range(ours.config.n_layer):
            for t, path in TARGETS.items():
                layer = ours.get_submodule(f"transformer.h.{i}.{lora.TARGETS[t]}")
                assert type(layer) is torch.nn.Linear  # (Conv1D's weight is (in, out))
                assert_close(layer.weight,
                             merged.get_submodule(f"transformer.h.{i}.{path}").weight.T)
        assert_close(ours(batch(0)), before)
        assert_close(ours(batch(0)), merged(batch(0)).logits)
        lora.unmerge(ours)  # W0 back (PiSSA: the residual), the variant's layers back
        assert_close(ours(batch(0)), before)


@pytest.mark.fast
@pytest.mark.parametrize("name", ["lora", "dora"])
def test_lora_plus_groups_and_step_equal_pefts(hf_dir, name):
    # PEFT's create_loraplus_optimizer with our set-up said explicitly: the weight decay given
    # (its loraplus_weight_decay defaults to 0; ours is --weight-decay, Table 11's 0.01), and
    # DoRA's m, which it decays with B, moved to its undecayed B group (make_optimizer decays no
    # vector: docs/variants.md)
    from peft.optimizers import create_loraplus_optimizer

    ours, theirs = pair(hf_dir, name)
    ours_opt = train.make_optimizer(ours, lr=1e-3, weight_decay=0.01, lora_plus=16)
    theirs_opt = create_loraplus_optimizer(theirs, torch.optim.AdamW, lr=1e-3,
                                           loraplus_lr_ratio=16, loraplus_weight_decay=0.01,
                                           betas=(0.9, 0.999), eps=1e-6)
    magnitudes = {id(p) for n, p in theirs.named_parameters() if "lora_magnitude_vector" in n}
    decayed_b, plain_b = [g for g in theirs_opt.param_groups if g["lr"] == 16e-3]
    assert decayed_b["weight_decay"] == 0.01 and plain_b["weight_decay"] == 0.0
    assert sum(id(p) in magnitudes for p in decayed_b["params"]) == len(magnitudes)  # (PEFT's)
    plain_b["params"] += [p for p in decayed_b["params"] if id(p) in magnitudes]
    decayed_b["params"] = [p for p in decayed_b["params"] if id(p) not in magnitudes]
    groups = lambda opt: sorted((g["lr"], g["weight_decay"], len(g["params"]))  # noqa: E731
                                for g in opt.param_groups if g["params"])
    assert groups(ours_opt) == groups(theirs_opt)
    # A at lr, B at 16 lr (2 layers x 3 matrices each), DoRA's m at 16 lr without decay
    assert groups(ours_opt) == {"lora": [(1e-3, 0.01, 6), (16e-3, 0.01, 6)],
                                "dora": [(1e-3, 0.01, 6), (16e-3, 0.0, 6), (16e-3, 0.01, 6)]}[name]
    for _ in range(2):  # two steps: Adam's moments carry the groups' rates
        mine, reference = losses(ours.eval(), theirs.eval())
        mine.backward()
        reference.backward()
        ours_opt.step()
        theirs_opt.step()
        ours_opt.zero_grad()
        theirs_opt.zero_grad()
    for key, p in lora._lora_params(ours).items():
        layer_name, param = key.rsplit(".", 1)
        assert_close(p, theirs_of(theirs, layer_name, param))


@pytest.mark.fast
def test_pefts_usual_optimizers_decay_doras_m_which_ours_does_not(hf_dir):
    # where docs/variants.md says we differ: transformers' Trainer decays every parameter but
    # biases and norms, DoRA's magnitude too; make_optimizer decays matrices only. Five AdamW
    # steps (lr 1e-2, decay 0.01) with the two set-ups then move m apart
    from transformers import Trainer

    ours, theirs = pair(hf_dir, "dora")
    decayed = set(Trainer.get_decay_parameter_names(None, theirs))
    named = [(n, p) for n, p in theirs.named_parameters() if p.requires_grad]
    assert {n for n, _ in named if "lora_magnitude_vector" in n} <= decayed
    ours_opt = train.make_optimizer(ours, lr=1e-2, weight_decay=0.01)
    assert all(g["weight_decay"] == 0.0 for g in ours_opt.param_groups
               if any(p.dim() == 1 for p in g["params"]))
    theirs_opt = torch.optim.AdamW([{"params": [p for n, p in named if n in decayed],
                                     "weight_decay": 0.01},
                                    {"params": [p for n, p in named if n not in decayed],
                                     "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.999), eps=1e-6)
    for _ in range(5):
        mine, reference = losses(ours.eval(), theirs.eval())
        mine.backward()
        reference.backward()
        ours_opt.step()
        theirs_opt.step()
        ours_opt.zero_grad()
        theirs_opt.zero_grad()
    gap = max((p - theirs_of(theirs, key.rsplit(".", 1)[0], "m")).abs().max().item()
              for key, p in lora._lora_params(ours).items() if key.endswith(".m"))
    assert gap > 1e-5  # (decay alone: m x lr x 0.01 per step, m ~ ||W0|| ~ 1)


@pytest.mark.fast
@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_starts_from_the_pretrained_model_as_pefts_does(hf_dir, name):
    ours_kwargs, peft_kwargs = VARIANTS[name]
    plain = GPT.from_pretrained(str(hf_dir)).eval()
    ours = lora.apply(GPT.from_pretrained(str(hf_dir)).eval(), ",".join(TARGETS), r=R,
                      alpha=ALPHA, **ours_kwargs)
    theirs = get_peft_model(GPT2LMHeadModel.from_pretrained(str(hf_dir)), LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=list(TARGETS.values()), fan_in_fan_out=True,
        **peft_kwargs))
    with torch.no_grad():
        assert_close(ours(batch(0)), plain(batch(0)))  # B A = 0, or PiSSA's W0 = rest + part
    for ours_name, layer in lora.lora_layers(ours).items():
        assert_close(layer.B, theirs_of(theirs, ours_name, "B"))  # zero, or PiSSA's
        if isinstance(layer, lora.DoRALinear):
            assert_close(layer.m, theirs_of(theirs, ours_name, "m"))  # ||W0||, row by row



# --- through the scripts ---------------------------------------------------------------------


ALL = ["--dora", "--rslora", "--init", "pissa", "--lora-plus", "16"]


def quick(tiny, data, out, *extra):
    return ["--model", tiny, "--data", data, "--device", "cpu", "--out", out, "--limit", "64",
            "--warmup", "0", "--log-interval", "1", "--lr", "1e-2", *extra]


def test_train_records_them_sample_merges_them_and_a_resume_goes_on_exactly(
        tiny, e2e_data, gpt2_vocab, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_main(train.main, capsys, *quick(tiny, e2e_data, run, "--max-steps", "4",
                                                         *ALL))
    assert code == 0, err
    assert "(48 matrices, rsLoRA, DoRA, PiSSA init)" not in out  # (the tiny model: 2 layers)
    assert "LoRA r=4 alpha=32 on q,v (4 matrices, rsLoRA, DoRA, PiSSA init): " in out
    config = json.loads((run / "config.json").read_text())["args"]
    assert (config["dora"], config["rslora"], config["init"], config["lora_plus"]) == \
        (True, True, "pissa", 16.0)
    with safe_open(str(run / "adapter.safetensors"), "pt") as f:  # A, B and DoRA's m
        assert sorted({k.rsplit(".", 1)[1] for k in f.keys()}) == ["A", "B", "m"]
    code, out, err = run_main(sample.main, capsys, "--adapter", run, "--data", e2e_data,
                              "--limit", "2", "--beam", "2", "--max-new-tokens", "4",
                              "--no-meteor", "--device", "cpu")
    assert code == 0, err
    assert "merged LoRA (LoRA r=4 alpha=32 on q,v (4 matrices, rsLoRA, DoRA, PiSSA init)) " in out
    # stopped after step 2 and resumed (W0 split again by PiSSA, m and A and B from the
    # checkpoint): the losses of the run above, step for step
    whole = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").open())
             if r["event"] == "train"]
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"),
                             *map(str, quick(tiny, e2e_data, tmp_path / "again", "--max-steps",
                                             "4", *ALL))],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=signal_on_line(tmp_path / "signal", "step 2/", signal.SIGTERM))
    assert proc.communicate() and proc.returncode == 143
    code, out, err = run_main(train.main, capsys, "--resume", tmp_path / "again")
    assert code == 0 and "resuming at step" in out, err
    resumed = {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "again" /
                                                             "metrics.jsonl").open())
               if r["event"] == "train"}
    assert [resumed[step] for step in range(1, 5)] == whole


def test_a_descendants_flag_typed_as_its_default_is_taken_where_unused(tiny, e2e_data, gpt2_vocab,
                                                                       tmp_path, capsys):
    # --method full --init lora: lora is the default, so the run is the one without it (another
    # value is refused, below)
    code, out, err = run_main(train.main, capsys, *quick(tiny, e2e_data, tmp_path / "run",
                                                         "--method", "full", "--init", "lora",
                                                         "--lora-plus", "1", "--max-steps", "1"))
    assert code == 0, err


def test_mix_with_one_dora_adapter_says_why_without_naming_other_adapters(
        tiny, e2e_data, gpt2_vocab, tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = run_main(train.main, capsys, *quick(tiny, e2e_data, run, "--dora",
                                                       "--max-steps", "1"))
    assert code == 0, err
    code, out, err = run_main(sample.main, capsys, "--adapter", run, "--mix", "--data", e2e_data,
                              "--limit", "1", "--no-meteor", "--device", "cpu")
    assert code == 2 and err.count("\n") == 1, err
    assert "is a DoRA adapter: it rescales W0's rows, so it is not served from a shared, " \
        "unmerged W0 (several adapters on one base, or --mix); decode it alone, without --mix" \
        in err and "other adapters" not in err


@pytest.mark.parametrize("flags, message", [
    (["--method", "full", "--dora"], "--method full does not use --dora; drop it"),
    (["--method", "adapter_h", "--init", "pissa", "--lora-plus", "4"],
     "--method adapter_h does not use --init, --lora-plus; drop them"),
    (["--lora-plus", "0"], "--lora-plus must be positive, got 0.0"),
    (["--init", "svd"], "argument --init: invalid choice: 'svd'"),
])
def test_what_does_not_mix_is_one_line(tiny, e2e_data, gpt2_vocab, tmp_path, capsys, flags,
                                       message):
    code, out, err = run_main(train.main, capsys, *quick(tiny, e2e_data, tmp_path / "run",
                                                         *flags))
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_reproduce_compares_them_under_the_papers_protocol(tiny, e2e_data, gpt2_vocab, tmp_path,
                                                           capsys):
    argv = ["table3", "--rows", "lora,rslora,lora_plus,dora,pissa", "--model", tiny, "--data",
            e2e_data, "--seeds", "1", "--epochs", "1", "--limit", "16", "--mrs", "2", "--beam",
            "1", "--max-new-tokens", "4", "--no-meteor", "--device", "cpu", "--lr", "3e-3",
            "--warmup", "0", "--out", tmp_path / "table3"]
    code, out, err = run_main(reproduce.main, capsys, *argv)
    assert code == 0, err
    assert "reproduce.py [10/10] decoded pissa-seed1" in out  # 5 runs trained, 5 decoded
    result = json.loads((tmp_path / "table3" / "results.json").read_text())
    assert sorted(result["rows"]) == ["dora", "lora", "lora_plus", "pissa", "rslora"]
    trainable = {row: r["trainable"] for row, r in result["rows"].items()}
    assert trainable["dora"] == trainable["lora"] + 2 * 2 * 32  # m: a number per row of W_q, W_v
    assert len(set(trainable[row] for row in ("lora", "rslora", "lora_plus", "pissa"))) == 1
    runs = result["runs"]
    assert runs["dora-seed1"]["config"]["dora"] and runs["pissa-seed1"]["config"]["init"] == \
        "pissa" and runs["lora_plus-seed1"]["config"]["lora_plus"] == 16
    md = (tmp_path / "table3" / "results.md").read_text()
    assert "| ours: dora | 1,152 |" in md and "lora_plus 16.0; LoRA+ (arXiv 2402.12354)" in md
    assert "Every row trained with lr 0.003, warmup 0 (given)" in md
    assert all((r["config"]["lr"], r["config"]["warmup"]) == (3e-3, 0) for r in runs.values())
    code, out, err = run_main(reproduce.main, capsys, *argv)  # done: nothing runs again
    assert code == 0 and "reproduce.py [" not in out, out  # (no stage line: trained, decoded)
