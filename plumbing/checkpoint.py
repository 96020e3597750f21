"""Checkpoint plumbing: the official GPT-2 checkpoints found, downloaded from the hub and checked
strictly; safetensors read and written (and .bin read, without running pickled code); atomic
writes; adapter files with their settings and the fingerprint of their base.

model.py, lora.py and adapter.py hold the ideas (model.py also the conversion of the official
layout to ours); this file holds what it takes to store them. Nothing here builds a model: it
works on dicts of tensors and plain config fields, so model.py can call it without a circle of
imports.
"""

import contextlib
import hashlib
import http.client
import json
import math
import os
import pickle
import urllib.error
import urllib.request

import torch

from plumbing.errors import UserError, WriteError


class CheckpointError(UserError):
    """A file that is not what it should be (unreadable, another shape or format), named, with
    what to do about it."""


class DownloadError(UserError, RuntimeError):
    """A download that failed or stopped, with what to do instead."""


# -------------------------------------------------------------------------------------------------
# The official checkpoints: found (or downloaded), read, and checked strictly. The conversion of
# their layout to ours is model.py's (hf_to_ours, ours_to_hf).


def read_official(name_or_path: str, presets: dict) -> tuple[dict, dict, str]:
    """An official GPT-2 checkpoint: a preset name (downloaded once from the hub), a local HF
    model folder (config.json + model.safetensors or pytorch_model.bin) or one weights file.
    Returns (GPTConfig fields: its config.json's, the preset's or read off the shapes; its
    tensors; the file they came from)."""
    preset = name_or_path.removeprefix("openai-community/")  # the hub's repository names
    if os.path.exists(name_or_path):
        fields, weights_file = find_weights(name_or_path)
    elif preset in presets:
        fields, weights_file = presets[preset], download_checkpoint(preset)
    elif os.sep in name_or_path or name_or_path.endswith((".safetensors", ".bin", ".json")):
        raise FileNotFoundError(f"no such file or directory: {name_or_path}")
    else:
        raise CheckpointError(f"unknown model '{name_or_path}': not a local path and not a preset "
                              f"({', '.join(presets)})")
    tensors = load_tensors(weights_file)
    heads = {p["n_embd"]: p["n_head"] for p in presets.values()}
    return fields or shape_from_weights(tensors, weights_file, heads), tensors, weights_file


def checked_official(hf: dict, expected: dict, config: dict, source: str) -> dict:
    """An official state dict with exactly the tensors of expected (our model's, in the official
    layout: names and shapes), in fp32; every problem is listed in one CheckpointError.

    Accepted variations: the 'transformer.' prefix (present in files saved from GPT2LMHeadModel,
    absent in OpenAI's originals), the causal-mask buffers attn.bias / attn.masked_bias (constants,
    not weights), and an lm_head.weight that equals wte (the tie made explicit).
    """
    hf = {k.removeprefix("transformer."): v for k, v in hf.items()}
    hf = {k: v for k, v in hf.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    lm_head = hf.pop("lm_head.weight", None)
    untied = (["lm_head.weight (differs from wte.weight: GPT-2 ties them)"]
              if lm_head is not None and "wte.weight" in hf
              and not torch.equal(lm_head, hf["wte.weight"]) else [])
    problems = tensor_mismatch(hf, expected, untied)
    if problems:
        shape = ", ".join(f"{k}={config[k]}" for k in ("n_layer", "n_head", "n_embd",
                                                        "vocab_size", "block_size"))
        raise CheckpointError(f"{source} does not match GPT-2 ({shape}): {problems}")
    return {k: v.float() for k, v in hf.items()}


def tensor_mismatch(found: dict, expected: dict, also_unexpected: list = ()) -> str:
    """'' when found has exactly expected's names and shapes; else every difference, listed
    ('2 missing: ...; 1 unexpected: ...; 1 wrongly shaped: name (3,) (expected (4,))')."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected)) + list(also_unexpected)
    wrong_shape = [f"{k} {tuple(found[k].shape)} (expected {tuple(expected[k].shape)})"
                   for k in sorted(set(found) & set(expected))
                   if tuple(found[k].shape) != tuple(expected[k].shape)]
    return "; ".join(f"{len(items)} {what}: {short_list(items)}" for what, items in
                     (("missing", missing), ("unexpected", unexpected),
                      ("wrongly shaped", wrong_shape)) if items)


def short_list(items: list, limit: int = 8) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# -------------------------------------------------------------------------------------------------
# config.json (HF's GPT-2 fields) <-> the fields of model.GPTConfig

# HF GPT-2 config fields that would change the computation; we implement only GPT-2's values.
_HF_FIXED = {"activation_function": ("gelu_new", "gelu_pytorch_tanh"), "n_inner": (None,),
             "scale_attn_weights": (True,), "scale_attn_by_inverse_layer_idx": (False,),
             "add_cross_attention": (False,), "tie_word_embeddings": (True,)}


def read_hf_config(path: str) -> dict:
    """GPTConfig fields from an HF config.json, refusing what is not plain GPT-2."""
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if hf.get("model_type") != "gpt2":
        raise CheckpointError(f"{path} describes a '{hf.get('model_type')}' model, not GPT-2")
    required = ("n_positions", "vocab_size", "n_layer", "n_head", "n_embd")
    if missing := [k for k in required if k not in hf]:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    if hf.get("n_inner") == 4 * hf["n_embd"]:
        hf["n_inner"] = None
    unsupported = [f"{k}={hf[k]!r}" for k, ok in _HF_FIXED.items() if k in hf and hf[k] not in ok]
    if unsupported:
        raise CheckpointError(f"{path}: this GPT-2 implementation does not support "
                              f"{', '.join(unsupported)}")
    return dict(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=hf.get("resid_pdrop", 0.1),
                layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5))


def hf_config(c: dict) -> dict:
    """An HF config.json for GPTConfig fields c."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": c["vocab_size"], "n_positions": c["block_size"],
            "n_ctx": c["block_size"], "n_embd": c["n_embd"], "n_layer": c["n_layer"],
            "n_head": c["n_head"], "n_inner": None, "activation_function": "gelu_new",
            "resid_pdrop": c["dropout"], "embd_pdrop": c["dropout"], "attn_pdrop": c["dropout"],
            "layer_norm_epsilon": c["layer_norm_eps"], "initializer_range": 0.02,
            "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": True}


def find_weights(path: str) -> tuple[dict | None, str]:
    """A directory or a weights file -> (its config.json's fields or None, the weights file)."""
    if os.path.isdir(path):
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(path, name)):
                weights = os.path.join(path, name)
                break
        else:
            raise FileNotFoundError(f"{path} holds neither model.safetensors nor pytorch_model.bin")
    else:
        weights = path
    if weights.endswith(".safetensors") and load_metadata(weights).get("format") == ADAPTER_FORMAT:
        raise CheckpointError(f"{path} is an adapter (train.py's), not a GPT-2 checkpoint: pass "
                              "its base model as --model and the adapter as --adapter")
    config_file = os.path.join(os.path.dirname(weights), "config.json")
    return (read_hf_config(config_file) if os.path.isfile(config_file) else None), weights


def shape_from_weights(hf: dict, path: str, heads_by_width: dict) -> dict:
    """GPTConfig fields of a bare weights file, from its shapes; the number of heads comes from
    heads_by_width (the official sizes: width -> heads)."""
    hf = {k.removeprefix("transformer."): v for k, v in hf.items()}
    if "wte.weight" not in hf or "wpe.weight" not in hf:
        raise CheckpointError(f"{path} is not a GPT-2 checkpoint: it has no wte/wpe embeddings")
    vocab_size, n_embd = hf["wte.weight"].shape
    n_layer = 1 + max((int(k.split(".")[1]) for k in hf if k.startswith("h.")), default=-1)
    if n_embd not in heads_by_width:
        raise CheckpointError(f"cannot tell the number of heads of {path} (n_embd={n_embd}); "
                              "put its config.json beside it")
    return dict(block_size=hf["wpe.weight"].shape[0], vocab_size=vocab_size, n_layer=n_layer,
                n_head=heads_by_width[n_embd], n_embd=n_embd)


def save_official(directory: str, hf: dict, config: dict):
    """Official GPT-2 tensors (model.ours_to_hf's) as config.json + model.safetensors in HF's
    GPT-2 format."""
    hf = {"transformer." + k: v.detach().cpu().contiguous() for k, v in hf.items()}
    os.makedirs(directory, exist_ok=True)
    save_tensors(os.path.join(directory, "model.safetensors"), hf, {"format": "pt"})
    write_atomic(os.path.join(directory, "config.json"),
                 json.dumps(hf_config(config), indent=2) + "\n")


# -------------------------------------------------------------------------------------------------
# Tensor files: safetensors (read and written), .bin (read only, without running pickled code)


def load_tensors(path: str) -> dict:
    """Tensors from a .safetensors file or, with torch.load(weights_only=True), a .bin file."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        with _readable_safetensors(path):
            return load_file(path)
    try:  # weights_only: a .bin is a pickle, and a pickle can run code; this refuses anything else
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(f"{path} is not a readable PyTorch weights file ({e})") from None
        raise CheckpointError(f"{path} holds pickled code, not only tensors, so it is not loaded "
                              "(loading would run that code); convert it to safetensors where "
                              "you trust it, or use a model.safetensors") from None
    except Exception as e:  # torch raises several types for a damaged or non-tensor file
        raise CheckpointError(f"{path} is not a readable PyTorch weights file ({e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def load_metadata(path: str) -> dict:
    """The string-to-string metadata in a .safetensors header ({} when there is none)."""
    from safetensors import safe_open
    with _readable_safetensors(path), safe_open(path, "pt") as f:
        return f.metadata() or {}


@contextlib.contextmanager
def _readable_safetensors(path: str):
    """Turns safetensors' errors on a damaged file into one message that says what to do."""
    from safetensors import SafetensorError
    try:
        yield
    except (SafetensorError, OSError) as e:
        downloaded = os.path.abspath(path).startswith(os.path.abspath(cache_dir()) + os.sep)
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be "
                              "truncated or corrupted" + (": delete it and it is downloaded "
                                                          "again" if downloaded else "")) from None


def save_tensors(path: str, tensors: dict, metadata: dict | None = None):
    """Write a .safetensors file atomically: into path + '.tmp', then renamed over path. Its
    permissions follow the umask, as any file's (safetensors itself makes it private: 0600)."""
    from safetensors.torch import save_file

    with writing(path, leftover=path + ".tmp"):
        save_file(tensors, path + ".tmp", metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path + ".tmp", 0o666 & ~umask)
        os.replace(path + ".tmp", path)


def write_atomic(path: str, text: str):
    """Write a text file atomically: into path + '.tmp', then renamed over path, so a crash
    never leaves half a file (or destroys the previous one)."""
    with writing(path, leftover=path + ".tmp"):
        with open(path + ".tmp", "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


@contextlib.contextmanager
def writing(path: str, leftover: str | None = None):
    """Around a write of path: the operating system's refusal (a full disk, a folder no longer
    writable) becomes a WriteError naming path and why, once `leftover` (the half-written
    path.tmp) is removed; path itself is untouched. Anything else still raises as it is."""
    try:
        yield
    except Exception as e:
        if (reason := refused_write(e)) is None:
            raise
        if leftover:
            with contextlib.suppress(OSError):
                os.remove(leftover)
        raise WriteError(path, reason) from None


def refused_write(e: Exception) -> str | None:
    """Why the OS refused a write, from an OSError or safetensors' error for one ("... I/O
    error: No space left on device (os error 28)"), or None for any other exception."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    if type(e).__name__ == "SafetensorError" and "I/O error: " in str(e):
        return str(e).split("I/O error: ", 1)[1].split(" (os error")[0]
    return None


# -------------------------------------------------------------------------------------------------
# Adapter files (lora.py, adapter.py): only the trained tensors, with the settings and the base
# model in the safetensors metadata

ADAPTER_FORMAT, ADAPTER_FORMAT_VERSION = "lora-gpt2", 1


def _base_shape(model) -> dict:
    c = model.config
    return dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, vocab_size=c.vocab_size,
                block_size=c.block_size)


def fingerprint(weights: list) -> list[float]:
    """A sketch of the base weights an adapter was trained on: u^T W v for each matrix W, with
    fixed random +-1 vectors u, v. Two checkpoints of the same shape give different numbers;
    the same weights give the same numbers up to float rounding (after a merge and an unmerge,
    W0 comes back only up to rounding, so an exact hash would not do)."""
    if any(w.is_meta for w in weights):  # a model built without weights: nothing to sketch
        return []
    values = []
    for w in weights:
        g = torch.Generator().manual_seed(w.shape[0] * 100_003 + w.shape[-1])
        u, v = (torch.randint(0, 2, (n,), generator=g).double() * 2 - 1 for n in w.shape)
        values.append(float(u @ w.detach().double().cpu() @ v))
    return values


def check_base(path: str, model, base_weights: list):
    """Refuse to load an adapter onto another base than the one it was trained on."""
    meta = load_metadata(path)
    recorded = _field(path, meta, "base_fingerprint", [])
    if not isinstance(recorded, list) or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in recorded):
        raise CheckpointError(f"{path}: its base_fingerprint is not a list of numbers as "
                              "lora.save / adapter.save write it; the file was edited or damaged")
    if not recorded:  # files from before the fingerprint, or saved from a weightless model
        return
    here = fingerprint(base_weights)
    scale = max(max(map(abs, recorded), default=0.0), 1e-12)
    if len(recorded) != len(here) or any(abs(a - b) > 1e-5 * scale for a, b in zip(recorded, here)):
        def short(values):
            return hashlib.sha256(json.dumps([f"{v:.3e}" for v in values]).encode()).hexdigest()[:12]
        raise CheckpointError(
            f"{path} was trained on base model '{meta.get('base_model')}' (weights fingerprint "
            f"{short(recorded)}), but this model ('{model.name_or_path}') has fingerprint "
            f"{short(here)}: another checkpoint of the same shape. Load the adapter onto its own "
            "base (or skip this check on purpose: check_base=False, sample.py --any-base)")


def adapter_metadata(model, method: str, base_weights: list, **settings) -> dict:
    """What an adapter file records besides its tensors (safetensors metadata: strings only):
    the base model as a preset name or an absolute path, and the fingerprint of the base
    weights it adapts."""
    base = model.name_or_path or ""
    return {"format": ADAPTER_FORMAT, "format_version": str(ADAPTER_FORMAT_VERSION),
            "method": method, "base_model": os.path.abspath(base) if os.path.exists(base) else base,
            "base_shape": json.dumps(_base_shape(model)),
            "base_fingerprint": json.dumps(fingerprint(base_weights)),
            **{k: json.dumps(v) for k, v in settings.items()}}


ADAPTER_KEYS = ("format_version", "method", "base_model", "base_shape")
# What each method's file records of its settings, by type (JSON's: true/false is no number, a
# number in a string is a string): another type is refused, naming the field and its value.
SETTINGS = {"lora": {"targets": "a list of target names", "r": "a whole number",
                     "alpha": "a number", "dropout": "a number", "rslora": "true or false",
                     "dora": "true or false", "init": "a string",
                     "quantize": "a string or null"},
            "adapter": {"kind": "a string", "r": "a whole number"}}
_IS = {"a list of target names": lambda v: isinstance(v, list) and all(isinstance(t, str)
                                                                       for t in v),
       "a whole number": lambda v: isinstance(v, int) and not isinstance(v, bool),
       "a number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
       "true or false": lambda v: isinstance(v, bool), "a string": lambda v: isinstance(v, str),
       "a string or null": lambda v: v is None or isinstance(v, str)}


def adapter_settings(path: str, meta: dict, method: str) -> dict:
    """The settings a `method` adapter file records (those it has), each of the type it is
    written with; a CheckpointError names the field and the value that is not."""
    settings = {}
    for key, kind in SETTINGS[method].items():
        if key in meta:
            value = settings[key] = _field(path, meta, key)
            if not _IS[kind](value):
                raise CheckpointError(f"{path}: its recorded {key} is {json.dumps(value)}, not "
                                      f"{kind}; the file was edited or damaged")
    return settings


def read_adapter_metadata(path: str, method: str, model) -> dict:
    """The settings stored with an adapter, after checking the file is a `method` adapter for
    model's shape."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such adapter file: {path}")
    meta = load_metadata(path)
    if meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"{path} is not an adapter file saved by this project (lora.save "
                              "or adapter.save)")
    if missing := [k for k in ADAPTER_KEYS if k not in meta]:
        raise CheckpointError(f"{path}: its metadata lacks {', '.join(missing)}; the file is "
                              "damaged or was not written by lora.save / adapter.save")
    if meta.get("method") != method:
        raise CheckpointError(f"{path} holds a {meta.get('method')!r} adapter, not a {method!r} "
                              f"one; load it with {meta.get('method')}.load")
    version = _field(path, meta, "format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path}: its format_version {meta['format_version']!r} is not a "
                              "number; the file was edited or damaged")
    if version > ADAPTER_FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {meta['format_version']}; this code "
                              f"reads up to {ADAPTER_FORMAT_VERSION}: update the code")
    if _field(path, meta, "base_shape") != _base_shape(model):
        raise CheckpointError(f"{path} was trained on base model '{meta['base_model']}' "
                              f"{meta['base_shape']}, but this model is "
                              f"{json.dumps(_base_shape(model))}; load the adapter onto its own "
                              "base model")
    known = {"format", "format_version", "method", "base_model", "base_shape", "base_fingerprint",
             *SETTINGS[method]}
    return {**{k: _field(path, meta, k) for k in meta if k not in known},
            **adapter_settings(path, meta, method)}


def _field(path: str, meta: dict, key: str, default=None):
    """One value of an adapter's metadata (JSON, as adapter_metadata writes them)."""
    if key not in meta:
        return default
    try:
        return json.loads(meta[key])
    except ValueError:
        raise CheckpointError(f"{path}: its metadata {key}={meta[key][:40]!r} is not what "
                              "lora.save / adapter.save write; the file was edited or "
                              "damaged") from None


def invalid_settings(path: str, error: Exception) -> CheckpointError:
    """The error for an adapter whose recorded settings (r, alpha, ...) are not valid ones."""
    return CheckpointError(f"{path}: its recorded settings are not valid ({error}); the file was "
                           "edited or damaged")


def copy_tensors(path: str, params: dict):
    """Copy a file's tensors into params (name -> tensor), strictly: same names, same shapes."""
    tensors = load_tensors(path)
    problems = tensor_mismatch(tensors, params)
    if problems:
        raise CheckpointError(f"{path} does not fit this model: {problems}")
    if bad := [name for name, t in tensors.items() if not torch.isfinite(t).all()]:
        raise CheckpointError(f"{path} holds NaN or infinite values ({short_list(bad)}): the run "
                              "that wrote it diverged; use an earlier checkpoint")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])


def save_adapter_file(model, path: str, tensors: dict, metadata: dict):
    """Write the adapter atomically and print its size next to the full model's."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    save_tensors(path, {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata)
    n = sum(t.numel() for t in tensors.values())
    ours = {id(t) for t in tensors.values()}
    full = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in ours)
    print(f"saved {path}: {_size(os.path.getsize(path))} ({n:,} parameters) "
          f"instead of {_size(full)} for the full model")


def _size(n_bytes: float) -> str:
    for unit, scale, digits in (("GB", 1e9, 2), ("MB", 1e6, 1), ("kB", 1e3, 1)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.{digits}f} {unit}"
    return f"{n_bytes:.0f} B"


# -------------------------------------------------------------------------------------------------
# The download of the official checkpoints from the Hugging Face hub


def cache_dir() -> str:
    """Where downloaded checkpoints live: $GPT2_CACHE_DIR, else ~/.cache/lora-gpt2."""
    default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                           "lora-gpt2")
    return os.environ.get("GPT2_CACHE_DIR", default)


def download_checkpoint(preset: str) -> str:
    """Path of the preset's model.safetensors, downloaded from the hub the first time.

    A copy already in the Hugging Face cache (from transformers) is used as it is.
    $HF_ENDPOINT points at a mirror (default https://huggingface.co), as in Hugging Face's tools.
    """
    path = os.path.join(cache_dir(), preset, "model.safetensors")
    if os.path.isfile(path):
        return path
    hf_home = os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface"))
    snapshots = os.path.join(hf_home, "hub", f"models--openai-community--{preset}", "snapshots")
    for snapshot in sorted(os.listdir(snapshots)) if os.path.isdir(snapshots) else []:
        if os.path.isfile(os.path.join(snapshots, snapshot, "model.safetensors")):
            return os.path.join(snapshots, snapshot, "model.safetensors")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    make = " (make train ARGS=\"--model FOLDER\")" if os.environ.get("MAKELEVEL") else ""
    download(f"{endpoint}/openai-community/{preset}/resolve/main/model.safetensors", path,
             hint=f"or put config.json and model.safetensors of openai-community/{preset} in a "
                  f"folder and pass it as --model FOLDER{make}")  # (make: started by make train)
    return path


def download(url: str, path: str, chunk_size: int = 1 << 20, hint: str = ""):
    """Fetch url into path with a progress bar. Bytes land in path + '.part' first and the file is
    renamed only when complete; an interrupted download resumes from the partial file. `hint`
    ends the error message: what to do instead."""
    from tqdm import tqdm

    part = path + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "lora-gpt2"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file is not a prefix we can extend: start over
            os.remove(part)
            return download(url, path, chunk_size, hint)
        raise DownloadError(f"downloading {url} failed: HTTP {e.code} {e.reason}"
                            + (f"; {hint}" if hint else "")) from None
    except OSError as e:  # URLError, timeouts, refused connections
        raise DownloadError(f"cannot download {url} ({getattr(e, 'reason', e)}): no network? "
                            "Connect and run again" + (f", {hint}" if hint else "")) from None
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # once connected: a failed
    with response:  # attempt leaves no empty folder behind
        if have and response.status != 206:  # the server ignored the Range header: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length else None
        try:
            with open(part, "ab" if have else "wb") as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=f"downloading {os.path.basename(os.path.dirname(path))}") as bar:
                while chunk := response.read(chunk_size):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise DownloadError(f"download of {url} was interrupted ({e!r}); run again to resume "
                                f"from {part}") from None
    size = os.path.getsize(part)
    if total is not None and size != total:
        raise DownloadError(f"download of {url} stopped at {size} of {total} bytes; "
                            f"run again to resume from {part}")
    os.replace(part, path)
