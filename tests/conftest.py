"""Shared fixtures: tiny random GPT-2 checkpoints written by transformers, the reference, and
the E2E data and GPT-2 vocabulary, found wherever this clone can find them.

The E2E CSVs come from $E2E_DATA_DIR if set, else ../shared/data/e2e beside the repository (the
project's CI), else the project's own verified download into data/e2e/; the tests that need them
skip, with the reason, when none of these works (no network). tiktoken's GPT-2 vocabulary comes
from $TIKTOKEN_CACHE_DIR (set to ../shared/tiktoken_cache when that exists) or tiktoken's own
download, with the same skip. The paper's released dev and test text (data/e2e/paper_format.py)
comes from $E2E_LORA_DIR (set to ../shared/data/e2e-lora when that exists) or its download.
"""

import http.server
import importlib.util
import os
import random
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from data.scorers import meteor

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = REPO / "tests" / "fixtures"
# make test runs a worker per core (pytest -n auto), and many tests start train.py or torchrun
# besides: one thread per process, where each would otherwise spin on every core
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
if (SHARED / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
if (SHARED / "data" / "e2e-lora").is_dir():  # the paper's released dev and test text
    os.environ.setdefault("E2E_LORA_DIR", str(SHARED / "data" / "e2e-lora"))
# The METEOR 1.5 jar that pycocoevalcap ships (None without Java or pycocoevalcap): the reference
# for meteor.py, with the Stanford PTBTokenizer jar beside it
METEOR_JAR = meteor.meteor_jar()
needs_jar = pytest.mark.skipif(METEOR_JAR is None,
                               reason=f"the jars: {meteor.meteor_note(implementation='jar')}")


@pytest.fixture(scope="session")
def e2e_data() -> str:
    """The folder with the official E2E CSVs (a failure is cached: one attempt per session)."""
    from data.e2e import prepare

    if os.environ.get("E2E_DATA_DIR"):  # set on purpose: a wrong folder is an error, not a skip
        return prepare.locate()
    if (SHARED / "data" / "e2e").is_dir():
        return str(SHARED / "data" / "e2e")
    try:
        return prepare.locate()  # data/e2e/, downloaded and checked on first use
    except prepare.DataError:
        pytest.skip("no E2E data: set E2E_DATA_DIR or put the release in data/e2e")


@pytest.fixture(scope="session")
def released_text():
    """split -> the lines of the paper's released valid.txt / test.txt, or a skip."""
    from data.e2e import prepare

    lines = {split: prepare.released_lines(split) for split in ("dev", "test")}
    if None in lines.values():
        pytest.skip("no released E2E text: set E2E_LORA_DIR to a folder with valid.txt, test.txt")
    return lines


@pytest.fixture(scope="session")
def gpt2_vocab():
    """tiktoken's "gpt2" encoding, or a skip that says how to provide it."""
    from data.e2e import prepare

    try:
        return prepare.tokenizer()
    except prepare.DataError:
        pytest.skip("no GPT-2 vocabulary: set TIKTOKEN_CACHE_DIR to a folder that holds it")


@pytest.fixture(scope="session")
def webnlg_data() -> str:
    """WebNLG's folder: $WEBNLG_DATA_DIR, else the challenge's XML in ../shared/data/webnlg,
    else the released files' download into data/webnlg/, else a skip."""
    from data.webnlg import prepare

    if os.environ.get("WEBNLG_DATA_DIR"):
        return prepare.locate()
    if (SHARED / "data" / "webnlg").is_dir():
        return str(SHARED / "data" / "webnlg")
    try:
        return prepare.locate()
    except prepare.DataError:
        pytest.skip("no WebNLG data: set WEBNLG_DATA_DIR or put the release in data/webnlg")


def shared_folder(name: str) -> Path:
    """A folder of ../shared/data that only this project's machines have, or a skip."""
    folder = SHARED / "data" / name
    if not folder.is_dir():
        pytest.skip(f"no {folder}: the public cases with official scores live there")
    return folder


# A tiny GPT-2 with the real vocabulary, so real tiktoken tokens are valid inputs.
TINY = dict(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=50257)


def random_gpt2(seed: int = 0, std: float = 0.3, **shape):
    """A transformers GPT2LMHeadModel with all weights drawn at random (std 0.3, not GPT-2's
    0.02: at that init a tiny model's greedy output repeats one token, which proves nothing)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**{**TINY, **shape})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if (".ln_" in name and name.endswith("weight")) else 0.0, std)
    return model


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny GPT-2 checkpoint folder whose 256 positions fit every E2E example (random weights
    at std 0.3, so its LM head can express peaked distributions and the loss has room to fall)."""
    path = tmp_path_factory.mktemp("tiny")
    random_gpt2(n_positions=256).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def hf_model():
    return random_gpt2()


@pytest.fixture(scope="session")
def hf_dir(hf_model, tmp_path_factory):
    """config.json + model.safetensors, exactly as transformers' save_pretrained writes them."""
    path = tmp_path_factory.mktemp("hf_safetensors")
    hf_model.save_pretrained(path)
    assert (path / "model.safetensors").is_file()
    return path


@pytest.fixture(scope="session")
def hf_bin_dir(hf_model, tmp_path_factory):
    """config.json + pytorch_model.bin: the older pickle format (a state dict saved by torch)."""
    path = tmp_path_factory.mktemp("hf_bin")
    hf_model.config.save_pretrained(path)
    torch.save(hf_model.state_dict(), path / "pytorch_model.bin")
    return path


@pytest.fixture(scope="session")
def official_layout_dir(hf_model, tmp_path_factory):
    """model.safetensors laid out like the official GPT-2 repositories on the hub: no
    'transformer.' prefix, no lm_head, and the causal-mask buffers attn.bias / attn.masked_bias."""
    from safetensors.torch import save_file

    n = hf_model.config.n_positions
    state = {k.removeprefix("transformer."): v.contiguous()
             for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    for i in range(hf_model.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    path = tmp_path_factory.mktemp("official")
    hf_model.config.save_pretrained(path)
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return path


VOCAB = 50257  # GPT-2's


@pytest.fixture
def base(hf_dir):
    """Our GPT-2, loaded from the tiny checkpoint transformers wrote."""
    from model import GPT
    return GPT.from_pretrained(str(hf_dir)).eval()


def batch(seed=0, shape=(2, 13), vocab=VOCAB):
    """Random token ids, the same for the same seed."""
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def trained(model, seed=0, std=0.3):
    """Give every LoRA layer non-zero A and B, as training would (B starts at zero)."""
    import lora
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.B.copy_(torch.randn(layer.B.shape, generator=g) * std)
            layer.A.copy_(torch.randn(layer.A.shape, generator=g) * std)
    return model


def assert_grads_equal_peft(model, ref, r: int):
    """Every LoRA layer's A and B gradient equal to PEFT's (ref, after backward) for an adapter
    export_peft wrote: q, k, v inside c_attn as A = [A_q; A_v] stacked and B block-diagonal
    (rank len(fused) x r), the other targets a module each."""
    import lora
    grads = {n: p.grad for n, p in ref.named_parameters() if "lora_" in n}
    C, fused = model.config.n_embd, [t for t in "qkv" if t in lora.settings(model)["targets"]]
    for name, layer in lora.lora_layers(model).items():
        i, t = int(name.split(".")[2]), next(t for t, m in lora.TARGETS.items()
                                             if name.endswith(m))
        prefix = f"base_model.model.transformer.h.{i}."
        if t in fused:  # A = [A_q; A_v], B block-diagonal (export_peft's layout)
            j, row = fused.index(t), "qkv".index(t) * C
            dA = grads[prefix + "attn.c_attn.lora_A.default.weight"][j * r:(j + 1) * r]
            dB = grads[prefix + "attn.c_attn.lora_B.default.weight"][row:row + C,
                                                                      j * r:(j + 1) * r]
        else:
            module = {"o": "attn.c_proj", "fc": "mlp.c_fc", "proj": "mlp.c_proj"}[t]
            dA = grads[prefix + f"{module}.lora_A.default.weight"]
            dB = grads[prefix + f"{module}.lora_B.default.weight"]
        assert_close(layer.A.grad, dA)
        assert_close(layer.B.grad, dB)


def tiny_vocab_model(seed=0, vocab_size=6, block_size=16):
    """Our GPT with 6 tokens (5 is the stop token), weights large enough for peaked
    distributions: small enough to search every continuation exhaustively."""
    from model import GPT, GPTConfig
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2,
                          n_embd=16, dropout=0))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def max_diff(a, b):
    return (a - b).abs().max().item()


def assert_close(actual, expected):
    """Equal up to fp32 round-off: |actual - expected| <= 1e-5 (1 + |expected|) everywhere.

    Plain max-abs 1e-5 is too tight once logits reach ~5 (fp32 spacing there is ~5e-7 and a
    forward pass sums thousands of terms in a different order than the reference does)."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def run_main(main, capsys, *argv):
    """A script's main(argv) in this process, the command line's code path without a new
    interpreter: (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop what came before (e.g. transformers' progress bars)
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:  # a Ctrl-C that escapes main is a traceback for the user
        code = "KeyboardInterrupt escaped"
    out, err = capsys.readouterr()
    return code, out, err


# The user's environment: `make train` installs requirements.txt alone, so the test-only packages
# (transformers, peft, pycocoevalcap, pyter3, nltk) are absent there, and Java may be too. A
# subprocess started with this environment cannot import them (sitecustomize hides them) and
# finds no `java`.
_HIDE_PACKAGES = '''
import sys


class HidePackages:
    names = {names!r}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, HidePackages())
'''


def installed(name: str) -> bool:
    """Whether a package is there to import (here or in a plain environment, whose finder above
    raises where a missing package's find_spec gives None)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _plain_env(tmp_path, hidden: set[str]) -> dict:
    site = tmp_path / "user_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_HIDE_PACKAGES.format(names=hidden))
    (tmp_path / "empty_bin").mkdir()
    return {**os.environ, "PYTHONPATH": str(site), "PATH": str(tmp_path / "empty_bin")}


@pytest.fixture
def user_env(tmp_path):
    """os.environ for a subprocess as a plain install sees it: no reference packages, no Java
    (PATH holds only an empty folder; scripts run as sys.executable, an absolute path)."""
    return _plain_env(tmp_path, {"transformers", "peft", "bitsandbytes", "pycocoevalcap", "pyter",
                                "nltk"})


@pytest.fixture
def meteor_env(tmp_path):
    """As user_env, plus pycocoevalcap (METEOR's word lists): a plain install that scores METEOR,
    still without Java. Skips where pycocoevalcap is not installed."""
    if not installed("pycocoevalcap"):
        pytest.skip("pycocoevalcap is not installed (METEOR's word lists come from it)")
    return _plain_env(tmp_path, {"transformers", "peft", "bitsandbytes", "pyter", "nltk"})


# A local HTTP server standing in for the Hugging Face hub and the E2E release (no network here).


class FileServer(http.server.BaseHTTPRequestHandler):
    """Serves one payload at any path, honours Range, and can cut the first response short."""
    payload = b""
    cut_after = None  # bytes sent before the connection drops (once), or None
    requests = []  # the start offset of each request

    def do_GET(self):
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
        type(self).requests.append(start)
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_after is not None:
            body, type(self).cut_after = body[: self.cut_after], None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server():
    """(server, handler class): set handler.payload, then fetch http://127.0.0.1:PORT/any."""
    FileServer.payload, FileServer.cut_after, FileServer.requests = b"", None, []
    server = http.server.HTTPServer(("127.0.0.1", 0), FileServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, FileServer
    server.shutdown()


# Every fixture and every test starts from the same random state, so what one draws never depends
# on what ran before it in the process (the test order, what pytest-xdist gave this worker): a
# tolerance met once is met every time.


def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef, request):
    _seed_everything()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    _seed_everything()


# A signal at a moment of a run, sent by the process itself. Sending it from the test once the run
# prints a line is a race: the run goes on while the test reads the line, further on a loaded
# machine, and may finish first. A subprocess started with signal_on_line's environment sends the
# signal from inside its own print of the line, before it goes on.
_SIGNAL_ON_LINE = '''
"""tests/conftest.py's signal_on_line: when this process (torchrun's rank 0, or a process that is
no rank) writes a line to stdout that starts with SIGNAL_ON_LINE, it sends SIGNAL_SEND's signal
to whom it names: self; parent (torchrun or reproduce.py's launcher, which pass it on to the
ranks: this process then waits until its own copy arrives, as it would have had it been sent to
it); parent-group, the parent's process group; or rank:N, the rank whose pid is in this folder.
The line is written first."""
import os
import signal
import sys
import time

FOLDER = os.path.dirname(os.path.abspath(__file__))
if "RANK" in os.environ:  # (what rank:N finds)
    with open(os.path.join(FOLDER, f"rank{os.environ['RANK']}.pid"), "w") as f:
        f.write(str(os.getpid()))
NAME, WHOM = os.environ["SIGNAL_SEND"].split()
SIG = getattr(signal, NAME)


def send():
    if WHOM == "self":
        os.kill(os.getpid(), SIG)
    elif WHOM.startswith("rank:"):
        with open(os.path.join(FOLDER, f"rank{WHOM[5:]}.pid")) as f:
            os.kill(int(f.read()), SIG)
    elif WHOM == "parent-group":  # (kill -9 to a launcher's process group)
        os.killpg(os.getpgid(os.getppid()), SIG)
    else:
        got, previous = [], signal.getsignal(SIG)

        def seen(number, frame):
            got.append(number)
            signal.signal(SIG, previous)
            if callable(previous):
                previous(number, frame)
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), number)
        signal.signal(SIG, seen)
        os.kill(os.getppid(), SIG)
        deadline = time.monotonic() + 600
        while not got:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the parent did not pass {NAME} on within 600 s")
            time.sleep(0.01)


class Lines:
    def __init__(self, stream):
        self.stream, self.text, self.sent = stream, "", False

    def write(self, text):
        n = self.stream.write(text)
        if not self.sent:
            self.text += text
            lines = self.text.split("\\n")
            self.text = lines.pop()
            if any(line.startswith(os.environ["SIGNAL_ON_LINE"]) for line in lines):
                self.sent = True
                self.stream.flush()
                send()
        return n

    def __getattr__(self, name):
        return getattr(self.stream, name)


if os.environ.get("RANK", "0") == "0":
    sys.stdout = Lines(sys.stdout)
'''


def signal_on_line(folder, line: str, sig, whom: str = "self", env: dict | None = None) -> dict:
    """The environment of a subprocess that sends sig to whom (self, parent, rank:N: above) as it
    prints a line starting with line: its own sitecustomize in folder (new)."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(_SIGNAL_ON_LINE)
    env = {**os.environ, **(env or {})}
    path = os.pathsep.join([str(folder), *filter(None, [env.get("PYTHONPATH")])])
    return {**env, "PYTHONPATH": path, "SIGNAL_ON_LINE": line,
            "SIGNAL_SEND": f"{signal.Signals(sig).name} {whom}"}
