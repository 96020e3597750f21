"""reproduce.py: the paper's protocol (seeds x epochs, the epoch chosen three ways, mean +- std)
on a tiny random GPT-2, checked against what it stored and against numpy; a kill mid-decode
changes nothing in the results; bad input is one line with nothing touched."""

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import types

import numpy as np
import pytest
from conftest import REPO, _plain_env, installed, run_main, signal_on_line

import reproduce
from data.e2e import paper_results
from harness.experiment import report, table
from model import GPTConfig
from paper import adapter


def scores(bleu):
    return {"BLEU": bleu, "NIST": 10 * bleu, "METEOR": None, "ROUGE_L": bleu / 2, "CIDEr": bleu}


def test_the_three_selections_pick_their_own_epochs():
    # built so that dev and test disagree: test peaks at epoch 2, dev at epoch 3, the last is 4
    epochs = {1: {"test": scores(0.60), "dev": scores(0.50)},
              2: {"test": scores(0.70), "dev": scores(0.55)},
              3: {"test": scores(0.65), "dev": scores(0.58)},
              4: {"test": scores(0.62), "dev": scores(0.57)}}
    assert reproduce.select(epochs) == {"best_test": 2, "best_dev": 3, "last": 4}
    epochs[3]["dev"]["BLEU"] = epochs[4]["dev"]["BLEU"] = 0.55  # a tie on dev: the earliest
    assert reproduce.select(epochs)["best_dev"] == 2


def test_the_summary_is_numpys_mean_and_sample_std():
    values = [0.701, 0.705, 0.699]
    summary = reproduce.summarize([scores(v) for v in values])
    assert summary["BLEU"]["mean"] == np.mean(values)
    assert summary["BLEU"]["std"] == np.std(values, ddof=1)
    assert summary["METEOR"] == {"mean": None, "std": None}
    assert reproduce.summarize([scores(0.7)])["BLEU"]["std"] is None  # one seed: no spread


def test_cells_are_rounded_as_table_3():
    assert paper_results.TABLE.cell("BLEU", 0.70412, 0.00123) == "70.4+-.1"
    assert paper_results.TABLE.cell("NIST", 8.8531, 0.0213) == "8.85+-.02"
    assert paper_results.TABLE.cell("CIDEr", 2.4712) == "2.47"
    assert paper_results.TABLE.paper_cell("METEOR", 46.3, 0.0) == "46.3+-.0"


@pytest.mark.parametrize("row, model, paper", [
    ("adapter_h", "gpt2-medium", 11.09e6), ("adapter_l", "gpt2-medium", 0.37e6),
    ("adapter_l", "gpt2-large", 0.88e6)])
def test_the_adapter_rows_have_the_papers_parameter_counts(row, model, paper):
    # Table 3's "# Trainable Parameters" column, to the precision the paper prints it (0.01M)
    settings, note = reproduce.row_settings(row, GPTConfig.from_preset(model))
    rank = settings["rank"]
    assert "Table 3 has no such row" not in note
    shape = {"gpt2-medium": (24, 1024), "gpt2-large": (36, 1280)}[model]
    kind = "houlsby" if row == "adapter_h" else "lin"
    assert abs(adapter.num_trainable(*shape, rank, kind) - paper) < 0.005e6 + 0.01 * paper


def test_the_paper_row_is_chosen_by_the_models_shape_not_its_name():
    # a local copy of gpt2-medium (any folder name) gets GPT-2 M's row, a tiny model none
    summary = {m: {"mean": 0.5, "std": None} for m in paper_results.METRICS}
    row = {"trainable": 393216, "selections": {"best_test": summary}}
    for size, expected in (("gpt2-medium", True), (None, False)):
        result = {"settings": {"command": "table3", "size": size}, "rows": {"lora": row}}
        text = table(result, "best_test", paper_results.TABLE)
        assert ("| paper: GPT-2 M (LoRA) | 0.35M | 70.4+-.1 |" in text) == expected, text


def flags(tiny, data, out, *extra):
    """2 seeds x 2 epochs of 4 steps, 3 MRs per split at beam 2: seconds on a CPU."""
    return ["table3", "--model", tiny, "--data", data, "--seeds", "1,2", "--epochs", "2",
            "--limit", "32", "--mrs", "3", "--beam", "2", "--max-new-tokens", "8",
            "--batch-size", "1", "--no-meteor", "--device", "cpu", "--out", out, *extra]


# the tests that read the experiment below run in one worker of pytest-xdist, which builds it once
with_the_experiment = pytest.mark.xdist_group("reproduce-experiment")


@pytest.fixture(scope="module")
def experiment(tiny, e2e_data, gpt2_vocab, tmp_path_factory):
    """A whole table3 experiment, run once for the module's tests."""
    out = tmp_path_factory.mktemp("experiment") / "table3"
    result = subprocess.run([sys.executable, str(REPO / "reproduce.py"),
                             *flags(tiny, e2e_data, out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


@with_the_experiment
def test_table3_keeps_decodes_and_scores_every_epoch_of_every_seed(experiment):
    out, stdout = experiment
    result = json.loads((out / "results.json").read_text())
    assert list(result["runs"]) == ["lora-seed1", "lora-seed2"]
    for name, run in result["runs"].items():
        folder = out / "runs" / name
        assert sorted(p.name for p in folder.glob("adapter-epoch*.safetensors")) == [
            "adapter-epoch1.safetensors", "adapter-epoch2.safetensors"]
        assert run["config"]["seed"] == int(name[-1]) and run["trainable"] == 1024
        for epoch in ("1", "2"):
            for split in ("test", "dev"):
                stored = json.loads((folder / "decode" / f"epoch{epoch}-{split}.scores.json")
                                    .read_text())
                assert stored["mrs"] == 3 and stored["split"] == split
                assert run["epochs"][epoch][split] == stored["scores"]
                assert stored["decoding"]["adapter"] == str(folder /
                                                            f"adapter-epoch{epoch}.safetensors")
    # each selection's epochs, and its mean and std, recomputed from the stored scores
    row = result["rows"]["lora"]["selections"]
    for selection, (_, split) in reproduce.SELECTIONS.items():
        chosen = row[selection]["epochs"]
        for name, run in result["runs"].items():
            epochs = run["epochs"]
            expected = (max(sorted(epochs), key=lambda e: epochs[e][split]["BLEU"]) if split
                        else "2")
            assert str(chosen[name]) == expected, (selection, name)
        for metric in ("BLEU", "NIST", "ROUGE_L", "CIDEr"):
            values = [result["runs"][n]["epochs"][str(e)]["test"][metric]
                      for n, e in chosen.items()]
            assert row[selection][metric]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
            assert row[selection][metric]["std"] == pytest.approx(np.std(values, ddof=1),
                                                                  abs=1e-12)
    md = (out / "results.md").read_text()
    assert md in stdout and "## best epoch on test (the paper's protocol" in md
    assert "## best epoch on dev" in md and "## last epoch" in md and "METEOR: skipped" in md
    assert "reproduce.py [4/4] decoded lora-seed2" in stdout
    if importlib.util.find_spec("matplotlib") is None:  # an optional extra: said, then the rest
        assert "matplotlib is not installed: no plots" in stdout


@with_the_experiment
def test_penalties_decode_the_kept_epochs_again_and_table_penalty_by_selection(
        experiment, tiny, e2e_data, tmp_path, capsys):
    # microsoft/LoRA #165: the released README decodes at length penalty 0.8 from the last
    # checkpoint, the paper at 0.9 from each seed's best epoch; --penalties added to a finished
    # experiment decodes each kept epoch at 0.8 too (0.9 is E2E's own) and tables both
    out, _ = experiment
    copy = tmp_path / "table3"
    shutil.copytree(out, copy)
    code, stdout, err = run_main(reproduce.main, capsys, *flags(tiny, e2e_data, copy,
                                                                "--penalties", "0.8,0.9"))
    assert code == 0, err
    assert "] trained" not in stdout and "] decoded lora-seed2" in stdout
    result = json.loads((copy / "results.json").read_text())
    assert result["rows"] == json.loads((out / "results.json").read_text())["rows"]  # untouched
    at = result["penalties"]["0.8"]["lora"]
    for name in ("lora-seed1", "lora-seed2"):
        decode = copy / "runs" / name / "decode"
        epochs = {e: {split: json.loads((decode / f"epoch{e}-{split}-lp0.8.scores.json")
                                        .read_text()) for split in ("test", "dev")}
                  for e in (1, 2)}
        assert {s["decoding"]["length_penalty"] for e in epochs.values() for s in e.values()} \
            == {0.8}
        best = max((1, 2), key=lambda e: epochs[e]["test"]["scores"]["BLEU"])
        assert at["best_test"]["epochs"][name] == best and at["last"]["epochs"][name] == 2
    md = (copy / "results.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| lora | 0.")]
    assert [line.split(" | ")[1:3] for line in rows] == [
        [lp, sel] for lp in ("0.8", "0.9")
        for sel in ("best epoch on test", "best epoch on dev", "last epoch")]
    code, stdout, err = run_main(reproduce.main, capsys, *flags(tiny, e2e_data, copy,
                                                                "--penalties", "0.8,0.9"))
    assert code == 0 and "] decoded" not in stdout and "] trained" not in stdout, err
    code, _, err = run_main(reproduce.main, capsys, *flags(tiny, e2e_data, copy,
                                                           "--penalties", "0.8,0"))
    assert code == 2 and err == ("reproduce.py: --penalties 0.8,0: a length penalty is a "
                                 "positive number, not 0\n")


@with_the_experiment
def test_a_kill_mid_decode_then_the_same_command_gives_the_same_results(experiment, tiny,
                                                                        e2e_data, tmp_path):
    out, _ = experiment
    copy = tmp_path / "table3"
    shutil.copytree(out, copy)
    for path in (copy / "runs" / "lora-seed2" / "decode").iterdir():
        path.unlink()  # seed 2 trained, nothing of it decoded yet
    (copy / "results.json").unlink()
    proc = subprocess.Popen([sys.executable, str(REPO / "reproduce.py"),
                             *flags(tiny, e2e_data, copy)], stdout=subprocess.PIPE, text=True,
                            env=signal_on_line(tmp_path / "signal", "decoded 2/3 MRs",
                                               signal.SIGKILL))  # (inside seed 2's first decode)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert (copy / "runs" / "lora-seed2" / "decode" / "epoch1-test.tsv.part").is_file()
    again = subprocess.run([sys.executable, str(REPO / "reproduce.py"),
                            *flags(tiny, e2e_data, copy)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resuming: 2 of 3 MRs were decoded already" in again.stdout
    assert "] trained" not in again.stdout  # both runs were done: nothing trained again
    original = json.loads((out / "results.json").read_text())
    resumed = json.loads((copy / "results.json").read_text())
    assert json.dumps(resumed, sort_keys=True).replace(str(copy), str(out)) == json.dumps(
        original, sort_keys=True)


@with_the_experiment
def test_sighup_mid_decode_is_one_line_and_keeps_what_was_decoded(experiment, tiny, e2e_data,
                                                                  tmp_path):
    # a closed terminal: stopped as Ctrl-C is, exit 129 (128 + SIGHUP)
    out, _ = experiment
    copy = tmp_path / "table3"
    shutil.copytree(out, copy)
    for path in (copy / "runs" / "lora-seed2" / "decode").iterdir():
        path.unlink()
    (copy / "results.json").unlink()
    proc = subprocess.Popen([sys.executable, str(REPO / "reproduce.py"),
                             *flags(tiny, e2e_data, copy)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=signal_on_line(tmp_path / "signal", "decoded 2/3 MRs",
                                               signal.SIGHUP))
    _, err = proc.communicate()
    assert proc.returncode == 129, err
    assert err == (f"reproduce.py: SIGHUP: stopped; what was done is kept in {copy}: rerun the "
                   "same command to go on from there\n")
    assert (copy / "runs" / "lora-seed2" / "decode" / "epoch1-test.tsv.part").is_file()


@with_the_experiment
@pytest.mark.parametrize("damaged, way_out", [
    ("experiment.json", "restore it, or start again with another --out"),
    ("runs/lora-seed2/decode/epoch1-dev.scores.json",
     "delete it, and the same command decodes that epoch again"),
    ("runs/lora-seed1/metrics.jsonl",
     "delete {exp}/runs/lora-seed1, and the same command trains that run again"),
    ("results.json", None),  # (written whole each time, never read)
])
def test_a_damaged_file_of_the_experiment_is_one_line_naming_it_and_the_way_out(
        experiment, tiny, e2e_data, tmp_path, capsys, damaged, way_out):
    out, _ = experiment
    copy = tmp_path / "table3"
    shutil.copytree(out, copy)
    path = copy / damaged
    if damaged.endswith(".jsonl"):  # a line edited by hand (a last line cut short by a kill
        path.write_bytes(b"{oops\n" + path.read_bytes()[:-40])  # is what training rewrites)
    else:  # cut short, as an editor or a full disk leaves it
        path.write_bytes(path.read_bytes()[:30])
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    code, stdout, err = run_main(reproduce.main, capsys, *flags(tiny, e2e_data, copy))
    if way_out is None:
        assert code == 0, err
        return
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"reproduce.py: {path} is damaged (") and f"): {way_out}".format(
        exp=copy) in err, err
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    if "delete it" in way_out:  # the way out, taken
        path.unlink()
        code, stdout, err = run_main(reproduce.main, capsys, *flags(tiny, e2e_data, copy))
        assert code == 0 and "decoded lora-seed2: 3 MRs" in stdout, err


def test_a_sweep_of_two_ranks_gives_two_rows(tiny, e2e_data, gpt2_vocab, tmp_path, capsys):
    argv = flags(tiny, e2e_data, tmp_path / "sweep")
    argv[argv.index("table3")] = "sweep"
    argv[argv.index("--seeds") + 1], argv[argv.index("--epochs") + 1] = "1", "1"
    code, out, err = run_main(reproduce.main, capsys, *argv, "--rank", "1,2", "--targets", "q,v")
    assert code == 0, err
    result = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert list(result["rows"]) == ["q,v r=1", "q,v r=2"]
    assert list(result["runs"]) == ["lora-qv-r1-seed1", "lora-qv-r2-seed1"]
    assert [r["trainable"] for r in result["rows"].values()] == [256, 512]  # 2 L d r
    assert "| ours: q,v r=1 | 256 |" in out and "| ours: q,v r=2 | 512 |" in out


@pytest.mark.parametrize("extra, message", [
    (["--rows", "lora,prefix"], "unknown row 'prefix': choose from lora, full, adapter_h"),
    (["--seeds", "1,1"], "--seeds 1,1 repeats 1"),
    (["--rows", "lora, lora"], "--rows lora, lora repeats lora"),
    (["--seeds", "1,x"], "--seeds '1,x': give a comma-separated list"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--data", "/nonexistent-e2e"], "/nonexistent-e2e: no such folder"),
    (["--model", "/nonexistent-gpt2"], "this experiment needs the shape of --model"),
])
def test_bad_input_is_one_line_and_touches_nothing(tiny, e2e_data, tmp_path, capsys, extra,
                                                   message):
    code, out, err = run_main(reproduce.main, capsys, *flags(tiny, e2e_data, tmp_path / "x"),
                              *extra)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x").exists()


@with_the_experiment
def test_a_folder_of_another_experiment_is_refused_untouched(experiment, tiny, e2e_data,
                                                             capsys):
    out, _ = experiment
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = run_main(reproduce.main, capsys, *flags(tiny, e2e_data, out, "--mrs", "5"))
    assert code == 2 and err.count("\n") == 1
    assert "holds an experiment with other settings (mrs differs)" in err, err
    argv = flags(tiny, e2e_data, out)
    argv[argv.index("table3")] = "sweep"
    code, _, err = run_main(reproduce.main, capsys, *argv, "--rank", "x")
    assert code == 2 and "--rank 'x': give a comma-separated list" in err
    code, _, err = run_main(reproduce.main, capsys, *argv, "--targets", "q,v", "v,q")
    assert code == 2 and err.count("\n") == 1
    assert "--targets gives q,v twice: give each set once" in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_plain_install_without_java_runs_the_experiment_and_says_meteor_is_missing(
        tiny, e2e_data, gpt2_vocab, user_env, tmp_path):
    argv = flags(tiny, e2e_data, tmp_path / "plain")
    argv.remove("--no-meteor")
    argv[argv.index("--seeds") + 1], argv[argv.index("--epochs") + 1] = "1", "1"
    argv[argv.index("--limit") + 1], argv[argv.index("--mrs") + 1] = "8", "2"
    result = subprocess.run([sys.executable, str(REPO / "reproduce.py"), *argv], env=user_env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    md = (tmp_path / "plain" / "results.md").read_text()
    assert "METEOR: n/a (needs the pycocoevalcap package for METEOR's word lists)." in md
    assert "| ours: lora | 1,024 |" in md and "| n/a |" in md
    # the same command where METEOR can run scores it from the saved predictions (no decoding)
    if not installed("pycocoevalcap"):
        pytest.skip("pycocoevalcap is not installed: METEOR cannot be added here")
    (tmp_path / "meteor").mkdir()
    before = json.loads((tmp_path / "plain" / "results.json").read_text())["runs"]
    result = subprocess.run([sys.executable, str(REPO / "reproduce.py"), *argv],
                            env=_plain_env(tmp_path / "meteor", {"transformers", "peft"}),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "scoring METEOR of 2 decodes that lacked it" in result.stdout
    assert "decoded " not in result.stdout
    after = json.loads((tmp_path / "plain" / "results.json").read_text())["runs"]
    for split in ("test", "dev"):
        old, new = before["lora-seed1"]["epochs"]["1"][split], \
            after["lora-seed1"]["epochs"]["1"][split]
        assert old.pop("METEOR") is None and isinstance(new.pop("METEOR"), float)
        assert old == new  # the other four, as they were
    md = (tmp_path / "plain" / "results.md").read_text()
    assert "METEOR: n/a" not in md and "| n/a |" not in md


def test_a_metric_some_seeds_lack_is_not_averaged_over_the_others():
    summary = reproduce.summarize([{**scores(0.7), "METEOR": 0.45}, scores(0.71)])
    assert summary["METEOR"] == {"mean": None, "std": None}
    assert summary["BLEU"]["mean"] == np.mean([0.7, 0.71])
    # results.md says so, and how the gap is filled
    runs = {f"lora-seed{n}": {"epochs": {"1": {"test": s, "dev": s}}}
            for n, s in ((1, {**scores(0.7), "METEOR": 0.45}), (2, scores(0.71)))}
    row = {"trainable": 1024, "trained": "", "selections": {
        sel: {"epochs": {"lora-seed1": 1, "lora-seed2": 1}, **summary}
        for sel in reproduce.SELECTIONS}}
    result = {"settings": {"command": "table3", "seeds": [1, 2], "epochs": 1, "mrs": 0,
                           "size": None, "meteor": True}, "rows": {"lora": row}, "runs": runs}
    md = report(result, "tiny", "MR", reproduce.SELECTIONS, paper_results.TABLE)
    assert "| ours: lora | 1,024 | 70.5+-.7 | 7.05+-.07 | n/a |" in md
    assert "METEOR: n/a: 2 of the 4 decodes were scored where it could not run" in md
    assert "the same command, rerun where it can (pip install pycocoevalcap), scores" in md


def test_a_first_attempt_that_failed_before_any_run_takes_new_settings(tiny, e2e_data, gpt2_vocab,
                                                                        tmp_path, capsys,
                                                                        monkeypatch):
    # (as a GPT-2 download fails offline: inside train.train, before its run folder exists)
    def offline(cfg, world, given, go_on):
        raise reproduce.UserError("cannot download gpt2: no network?")
    monkeypatch.setattr(reproduce.train, "train", offline)
    out = tmp_path / "table3"
    code, _, err = run_main(reproduce.main, capsys, *flags(tiny, e2e_data, out))
    assert code == 2 and err == "reproduce.py: cannot download gpt2: no network?\n"
    code, _, err = run_main(reproduce.main, capsys, *flags(tiny, e2e_data, out, "--epochs", "3"))
    assert code == 2 and err == "reproduce.py: cannot download gpt2: no network?\n"
    assert json.loads((out / "experiment.json").read_text())["settings"]["epochs"] == 3
    # once a run has started, the settings are the experiment's
    (out / "runs" / "lora-seed1").mkdir(parents=True)
    code, _, err = run_main(reproduce.main, capsys, *flags(tiny, e2e_data, out))
    assert code == 2 and "holds an experiment with other settings (epochs differs)" in err, err


def test_predictions_that_are_gone_or_edited_are_not_rescored(tmp_path):
    from harness import evaluation
    stem = str(tmp_path / "epoch1-test")
    (tmp_path / "epoch1-test.scores.json").write_text(json.dumps(
        {"split": "test", "mrs": 2, "scores": scores(0.5)}))
    task = types.SimpleNamespace(eval_groups=lambda split: ([("a", "a", ["x"]), ("b", "b", ["y"])],
                                                            "here"))
    with pytest.raises(reproduce.UserError, match=r"cannot read .*epoch1-test.tsv \(No such file"):
        evaluation.rescore(stem, task, meteor=True)
    (tmp_path / "epoch1-test.tsv").write_text("mr\toutput\na\tone\nc\ttwo\n")
    with pytest.raises(reproduce.UserError, match="does not hold the inputs its scores are of"):
        evaluation.rescore(stem, task, meteor=True)
