"""Many tasks on one base model (Sec. 4.1, Sec. 4.2): several LoRA adapters served from one copy
of GPT-2.

The paper's deployment story (Sec. 4.1): the pretrained W0 is shared, and each task keeps only
its A and B (1.6 MB for GPT-2 medium at r=4 on W_q, W_v). Two ways to serve the tasks:

- switch (the paper's way, Sec. 4.1): W = W0 + s_i B_i A_i while task i is served, s = alpha/r.
  To go to task j, subtract s_i B_i A_i and add s_j B_j A_j: "a quick operation with very little
  memory overhead", after which the model costs exactly what GPT-2 costs. A batch then holds
  one task.
- mixed (the limitation Sec. 4.2 names, and the way around it it mentions: "not merge the
  weights and dynamically choose the LoRA modules to use for samples in a batch"): W0 stays
  unmerged, and each row b of a batch uses its own task t = tasks[b]:

      h_b = W0 x_b + s_t B_t A_t x_b

  The A's of all N adapters are stacked in one (N, r, k) tensor and the B's in one (N, d, r);
  each row's own are gathered (A[tasks], B[tasks]) and applied with two batched matmuls over
  the rows, (rows, T, k) @ (rows, k, r) -> (rows, T, r) @ (rows, r, d) -> (rows, T, d). The
  shared W0 x is one matmul for the whole batch, as for one task; what is added is LoRA's
  unmerged path (Table 1's "no additional latency" is given up for the batch's sake).

    model = GPT.from_pretrained("gpt2-medium").eval()
    tasks = multitask.Adapters(model, ["e2e/adapter.safetensors", "toy/adapter.safetensors"])
    tasks.switch(0)                                            # W0 + s_0 B_0 A_0: the E2E model
    tasks.mix()                                                # or: every row its own adapter
    decoding.decode(model, prompts, tasks=[0, 1, 1, 0], ...)   # beam search, each beam its row's

Adapters of other ranks or targets share the stacks too: a smaller r is padded with zero rows of
A and zero columns of B, a matrix an adapter leaves alone gets A = B = 0, and neither changes
B A. Only LoRA adapters can be served this way: an Adapter^H or Adapter^L adds layers to the
forward path instead of an update to W0, so there is nothing to merge in and out, or to add row
by row beside a shared W0. What is here serves (inference): nothing trains, no dropout.
"""

import contextlib
import math
import os
import weakref

import torch
import torch.nn as nn

import lora
from model import GPT
from plumbing import checkpoint


class Adapters:
    """N LoRA adapters for one base model, side by side: per adapted matrix, the N A's stacked
    in one (N, r, k) tensor and the N B's in one (N, d, r), on the model's device."""

    def __init__(self, model: GPT, paths: list[str], check_base: bool = True):
        if not paths:
            raise ValueError("no adapters given")
        if lora.lora_layers(model) or model in _MIXED:
            raise ValueError("this model has LoRA layers already: give Adapters the plain base "
                             "model (it keeps the adapters itself)")
        self.model, self.paths = model, list(paths)
        self.settings = [read_settings(model, path, check_base) for path in self.paths]
        self.scaling = [s["alpha"] / (math.sqrt(s["r"]) if s["rslora"] else s["r"])
                        for s in self.settings]  # alpha/r (Sec. 4.1), rsLoRA's alpha/sqrt(r)
        r = max(s["r"] for s in self.settings)
        adapted = set()
        for s in self.settings:
            adapted.update(lora.TARGETS[t] for t in s["targets"])
        self.names = [f"transformer.h.{i}.{path}" for i in range(model.config.n_layer)
                      for path in lora.TARGETS.values() if path in adapted]  # in model order
        like = dict(dtype=model.lm_head.weight.dtype, device=model.lm_head.weight.device)
        self.A, self.B = {}, {}
        for name in self.names:
            W0 = model.get_submodule(name)
            self.A[name] = torch.zeros(len(paths), r, W0.in_features, **like)
            self.B[name] = torch.zeros(len(paths), W0.out_features, r, **like)
        for i, path in enumerate(self.paths):  # each file strictly: its names and shapes
            checkpoint.copy_tensors(path, self.params(i))
        self.merged = None  # the task whose B A is in W now (switch), or None: W = W0
        self.tasks = None  # each row's task in a mixed batch (route)

    def params(self, i: int) -> dict:
        """Task i's own A and B, views into the stacks, by the names lora.save writes."""
        r, targets = self.settings[i]["r"], self.settings[i]["targets"]
        mine = [name for name in self.names if name.endswith(tuple(lora.TARGETS[t]
                                                                   for t in targets))]
        return {**{f"{name}.A": self.A[name][i, :r] for name in mine},
                **{f"{name}.B": self.B[name][i, :, :r] for name in mine}}

    def __len__(self) -> int:
        return len(self.paths)

    # --- switch: merge one task at a time (Sec. 4.1) ----------------------------------------

    @torch.no_grad()
    def _add(self, i: int, sign: int):
        """W <- W + sign s_i B_i A_i in every matrix task i adapts (as LoRALinear.merge does)."""
        params = self.params(i)
        for name in {key.rsplit(".", 1)[0] for key in params}:
            W = self.model.get_submodule(name).weight  # (in fp32, as LoRALinear.fold)
            delta = self.scaling[i] * (params[name + ".B"].float() @ params[name + ".A"].float())
            W.copy_(W.float() + sign * delta)

    def switch(self, i: int | None) -> GPT:
        """Serve task i with its adapter merged: subtract the merged task's B A (W0 again, up to
        float rounding), add task i's. None: the base model. The rounding adds up over many
        switches (bench.py tasks measures it): a server that switches for days reloads W0."""
        if self.model in _MIXED:
            raise ValueError("the model is serving mixed batches: call unmix() before switch()")
        if i is not None and not 0 <= i < len(self):
            raise IndexError(f"task {i}: there are {len(self)} adapters (0 to {len(self) - 1})")
        if self.merged is not None and self.merged != i:
            self._add(self.merged, -1)
            self.merged = None
        if i is not None and self.merged is None:
            self._add(i, +1)
            self.merged = i
        return self.model

    @contextlib.contextmanager
    def merged_into(self, i: int):
        """with tasks.merged_into(i): the model is task i's (merged), then the base again."""
        self.switch(i)
        try:
            yield self.model
        finally:
            self.switch(None)

    # --- mixed: every row of a batch its own task (Sec. 4.2) ----------------------------------

    def mix(self) -> GPT:
        """Put a MixedLoRALinear in place of each adapted matrix: unmerged, each row of a batch
        adds its own task's B A x (route() says which)."""
        if _MIXED.get(self.model) is self:
            return self.model
        if self.model in _MIXED:
            raise ValueError("another Adapters serves mixed batches on this model: unmix it first")
        self.switch(None)  # W = W0
        scaling = torch.tensor(self.scaling, device=self.A[self.names[0]].device)
        for name in self.names:
            base = self.model.get_submodule(name)
            self.model.set_submodule(name, MixedLoRALinear(base, self.A[name], self.B[name],
                                                           scaling, self))
        _MIXED[self.model] = self
        return self.model

    def unmix(self) -> GPT:
        """The plain base model again (the layers mix() put in are taken out)."""
        if _MIXED.get(self.model) is self:
            del _MIXED[self.model]
            for name in self.names:
                self.model.set_submodule(name, self.model.get_submodule(name).base)
        return self.model


class MixedLoRALinear(nn.Module):
    """A frozen nn.Linear W0 shared by the batch, plus each row's own LoRA update:
    h_b = W0 x_b + s_t B_t A_t x_b with t = tasks[b] (the module docstring has the shapes)."""

    def __init__(self, base: nn.Linear, A: torch.Tensor, B: torch.Tensor, scaling: torch.Tensor,
                 router: Adapters):
        super().__init__()
        self.base = base
        self.A, self.B, self.scaling = A, B, scaling  # (N, r, k), (N, d, r), (N,): not trained
        self.router = router  # holds the rows' tasks, set once per forward pass for all layers

    def forward(self, x):
        tasks = self.router.tasks
        if tasks is None or len(tasks) != x.size(0):
            raise ValueError(f"a mixed batch of {x.size(0)} rows needs the task of each row: "
                             "multitask.route(model, tasks) with one task per row")
        A, B = self.A[tasks], self.B[tasks]  # (rows, r, k), (rows, d, r): each row's own
        s = self.scaling[tasks].view(-1, *[1] * (x.dim() - 1))
        return self.base(x) + s * ((x @ A.transpose(-1, -2)) @ B.transpose(-1, -2))


# the model -> its Adapters while it serves mixed batches (route finds them here)
_MIXED = weakref.WeakKeyDictionary()


def route(model: GPT, tasks: torch.Tensor, check: bool = False):
    """Say which task each row of the next forward pass uses (a tensor of task indices, one per
    row, on the model's device). check: refuse an index that has no adapter (a host sync)."""
    adapters = _MIXED.get(model)
    if adapters is None:
        raise ValueError("this model does not serve mixed batches: call Adapters(...).mix() first")
    if check and len(tasks) and not 0 <= int(tasks.min()) <= int(tasks.max()) < len(adapters):
        raise IndexError(f"task {int(tasks.max())}: there are {len(adapters)} adapters (0 to "
                         f"{len(adapters) - 1})")
    adapters.tasks = tasks


def read_settings(model: GPT, path: str, check_base: bool = True) -> dict:
    """A LoRA adapter file's settings, checked for this base (lora.read_settings); an
    Adapter^H / Adapter^L file is refused with the reason."""
    meta = checkpoint.load_metadata(path) if os.path.isfile(path) else {}
    if meta.get("method") == "adapter":
        kind = {'"houlsby"': "Adapter^H", '"lin"': "Adapter^L"}.get(meta.get("kind"), "adapter")
        raise checkpoint.CheckpointError(
            f"{path} is an {kind} file: only LoRA adapters can share one base here (their update "
            "W0 + s B A merges in and out, or adds per row beside the shared W0; an adapter is "
            "a layer of its own in the forward path); decode it alone")
    s = lora.read_settings(model, path, check_base=False)
    if s["quantize"]:
        raise checkpoint.CheckpointError(
            f"{path} trained over W0 in NF4 (QLoRA): it is decoded alone, over the W0 it trained "
            "with (sample.py --adapter it --qlora-merge ...), not from a shared full-precision W0")
    if check_base:
        checkpoint.check_base(path, model, lora.base_weights(model, s["targets"]))
    if s["dora"] or s["init"] == "pissa":
        raise checkpoint.CheckpointError(
            f"{path} is a {'DoRA' if s['dora'] else 'PiSSA'} adapter: it "
            + ("rescales W0's rows" if s["dora"] else "was trained on W0 minus its top singular "
               "directions") + ", so it is not served from a shared, unmerged W0 (several "
            "adapters on one base, or --mix); decode it alone, without --mix")
    return s
