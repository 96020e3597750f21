"""Why does LoRA work? The paper's Section 7 measurements, on adapters you trained.

    python -m paper.analysis similarity RUN_R8/adapter.safetensors RUN_R64/adapter.safetensors \
        --out phi.csv
    python -m paper.analysis amplification RUN/adapter.safetensors [--model BASE]

similarity (Sec. 7.2, Figures 3 and 4): two adapters on the same matrices, e.g. r=8 and r=64, or
two seeds of one rank. With U_r the right-singular vectors of A (r x k) ordered by singular value,

    phi(A_r1, A_r2, i, j) = ||U_r1[:, :i]^T U_r2[:, :j]||_F^2 / min(i, j)      in [0, 1]

how much of the subspace of A_r1's top i directions lies in A_r2's top j. The paper finds the top
direction shared (phi > 0.5) and the rest near what two random subspaces give, max(i, j) / k:
the update has a very low "intrinsic rank". The grid goes to a CSV (rows i, columns j) and, when
matplotlib is installed (it is optional), to a heatmap like Figure 3.

amplification (Sec. 7.3, Table 7): how Delta W = (alpha/r) B A relates to the pretrained W. With
U, V the top-r left/right singular vectors of Delta W, ||U^T W V^T||_F measures how much of W lies
in Delta W's directions; the same with W's own top-r directions and with a random matrix's gives
the scale. The paper (GPT-3, W_q, r=4): 0.32 against 21.67 and 0.02, with ||Delta W||_F = 6.91, an
amplification factor ||Delta W||_F / ||U^T W V^T||_F of 21.5: Delta W amplifies directions W
already has but does not emphasise.

Both read adapters saved by train.py (lora.save) and PEFT adapter folders (through
peft_interop.import_peft, which needs the base model: --model, else the adapter's own record;
each matrix with the rank components its own B uses: peft_factors). DoRA's and PiSSA's own files
are refused: their change to W0 is not s B A.
"""

import json
import os
import sys

import torch

import lora
from model import GPT
from paper import peft_interop
from plumbing import checkpoint, cli, rundir
from plumbing.cli import UserError

# --- the adapters' factors -------------------------------------------------------------------------


def read_factors(path: str, model_name: str | None = None) -> tuple[dict, str]:
    """{(layer, target): (A, B, scaling)} of an adapter, and its base model. Our adapter files are
    read directly; a PEFT folder is imported onto its base model first."""
    if rundir.is_run_folder(path):  # train.py's run folder: its adapter.safetensors
        path, full = rundir.run_result(path)
        if full:
            raise UserError(f"{full} is a full fine-tuning run's model: it has no A and B")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise UserError(f"{path} is neither a run folder of train.py's (adapter.safetensors) "
                            "nor a PEFT adapter folder (adapter_config.json)")
        with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
            config = json.load(f)
        if config.get("use_dora"):  # (as our own DoRA files, below)
            raise UserError(f"{path} is a DoRA adapter (use_dora): Section 7's analysis reads "
                            "plain LoRA's Delta W = s B A, and DoRA's change to W0 is not that")
        base = model_name or config.get("base_model_name_or_path", "")
        return peft_factors(peft_interop.import_peft(GPT.from_pretrained(base), path), path), base
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such adapter file: {path}")
    meta = checkpoint.load_metadata(path)
    if meta.get("method") != "lora":
        kind = {"adapter": "an Adapter^H or Adapter^L adapter"}.get(meta.get("method"),
                                                                   "not a LoRA adapter")
        raise UserError(f"{path} is {kind}: Section 7's analysis reads LoRA's A and B")
    tensors = checkpoint.load_tensors(path)
    s = checkpoint.adapter_settings(path, meta, "lora")  # (each of its type)
    try:  # a hand-edited file may record anything
        lora.check_settings(s["targets"], s["r"], s["alpha"], s["dropout"], s.get("init", "lora"))
    except (KeyError, TypeError, ValueError) as e:
        raise checkpoint.invalid_settings(path, e) from None
    if s.get("dora") or s.get("init") == "pissa":  # (their change to W0 is not s B A)
        raise UserError(f"{path} is a {'DoRA' if s.get('dora') else 'PiSSA'} adapter: Section "
                        "7's analysis reads plain LoRA's Delta W = s B A (rsLoRA's too)")
    scaling = s["alpha"] / (s["r"] ** 0.5 if s.get("rslora") else s["r"])
    factors = {}
    for key, A in tensors.items():
        if key.endswith(".A"):
            parts = key.split(".")  # transformer.h.{i}.{attn|mlp}.{q|...}.A
            target = next(t for t, m in lora.TARGETS.items() if m == ".".join(parts[3:5]))
            factors[(int(parts[2]), target)] = (A, tensors[key[:-1] + "B"], scaling)
    return factors, model_name or meta.get("base_model", "")


def peft_factors(model, path: str) -> dict:
    """The factors of a PEFT adapter imported onto our model, each matrix's own: PEFT's fused
    c_attn gives W_q, W_k and W_v one A of every matrix's rank components stacked (our export of a
    q,v adapter at r=4: rank 8, W_k's rows of B zero), so each matrix keeps the components its B
    uses, and a matrix whose B is zero (W_k there) was not adapted. (A PiSSA adapter in PEFT's
    conversion is a LoRA of rank 2r on the pretrained W0: it reads as that.)"""
    factors = {}
    for name, layer in lora.lora_layers(model).items():
        A, B = layer.A.detach(), layer.B.detach()
        used = B.abs().sum(0) != 0  # the rank components this matrix's B takes
        if used.any():
            target = next(t for t, m in lora.TARGETS.items() if name.endswith(m))
            factors[(int(name.split(".")[2]), target)] = (A[used], B[:, used], layer.scaling)
    if not factors:
        raise UserError(f"{path}: every B is zero (an adapter that never trained): its Delta W "
                        "is 0, there is nothing to analyse")
    return factors


def pick(factors: dict, target: str, layer: int | None, path: str) -> dict:
    """The factors of one target, in one layer or all; refused when the adapter has none."""
    chosen = {k: v for k, v in factors.items() if k[1] == target and layer in (None, k[0])}
    if not chosen:
        have = sorted({t for _, t in factors}), sorted({i for i, _ in factors})
        raise UserError(f"{path} has no LoRA on {target}" + (f" in layer {layer}" if layer is
                        not None else "") + f" (targets {','.join(have[0])}, layers "
                        f"{have[1][0]}-{have[1][-1]})")
    return chosen


# --- Sec. 7.2: subspace similarity -----------------------------------------------------------------


def right_singular_vectors(A: torch.Tensor) -> torch.Tensor:
    """The right-singular vectors of A (r x k) as the columns of a k x r matrix, by decreasing
    singular value."""
    _, _, Vh = torch.linalg.svd(A.double(), full_matrices=False)
    return Vh.T


def similarity(A1: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
    """phi(A1, A2, i, j) for 1 <= i <= r1, 1 <= j <= r2, as an r1 x r2 grid (Sec. 7.2)."""
    U1, U2 = right_singular_vectors(A1), right_singular_vectors(A2)
    overlap = (U1.T @ U2) ** 2  # r1 x r2: squared cosines between single directions
    cumulative = overlap.cumsum(0).cumsum(1)  # ||U1[:, :i]^T U2[:, :j]||_F^2
    i = torch.arange(1, U1.shape[1] + 1, dtype=torch.double)[:, None]
    j = torch.arange(1, U2.shape[1] + 1, dtype=torch.double)[None, :]
    return cumulative / torch.minimum(i, j)


def shared_directions(grid: torch.Tensor, k: int) -> str:
    """The paper's reading of a grid: how many top directions the two adapters share."""
    diagonal = [grid[n, n].item() for n in range(min(grid.shape))]
    shared = next((n for n, v in enumerate(diagonal) if v <= 0.5), len(diagonal))
    which = ("no direction is shared" if shared == 0 else "the top direction is shared"
             if shared == 1 else f"the top {shared} directions are shared")
    return (f"phi(i, i) for i = 1..{len(diagonal)}: "
            + " ".join(f"{v:.2f}" for v in diagonal)
            + f"\n{which} (phi > 0.5); two random subspaces give "
            f"phi(i, j) = max(i, j) / k on average ({1 / k:.3f} at i = j = 1, k = {k})")


def write_grid(grid: torch.Tensor, path: str, title: str):
    """The grid as CSV (rows i, columns j), and as a heatmap PNG beside it when matplotlib is
    installed."""
    rows = [["i\\j", *range(1, grid.shape[1] + 1)]]
    rows += [[i + 1, *(f"{v:.6f}" for v in grid[i].tolist())] for i in range(grid.shape[0])]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = "".join(",".join(map(str, row)) + "\n" for row in rows)
    checkpoint.write_atomic(path, text)
    print(f"wrote {path}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no heatmap (pip install matplotlib for one)")
        return
    fig, ax = plt.subplots(figsize=(6, 2 + 4 * grid.shape[0] / grid.shape[1]))
    image = ax.imshow(grid.numpy(), vmin=0, vmax=1, origin="lower", aspect="auto",
                      extent=(0.5, grid.shape[1] + 0.5, 0.5, grid.shape[0] + 0.5))
    ax.set(xlabel="j", ylabel="i", title=title)
    fig.colorbar(image)
    png = os.path.splitext(path)[0] + ".png"
    fig.savefig(png, dpi=120, bbox_inches="tight")
    print(f"wrote {png}")


# --- Sec. 7.3: Delta W against W -------------------------------------------------------------------


def projection(W: torch.Tensor, M: torch.Tensor, r: int) -> float:
    """||U^T W V^T||_F with U, V the top-r left/right singular vectors of M."""
    U, _, Vh = torch.linalg.svd(M.double(), full_matrices=False)
    return torch.linalg.matrix_norm(U[:, :r].T @ W.double() @ Vh[:r].T).item()


def amplification(W: torch.Tensor, dW: torch.Tensor, r: int, seed: int = 0) -> dict:
    """Table 7's numbers for one matrix: W projected on the top-r directions of Delta W, of W
    itself and of a random matrix; the norms; ||Delta W||_F / ||U^T W V^T||_F."""
    random = torch.randn(W.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.double)
    on_dw = projection(W, dW, r)
    return {"dW": on_dw, "W": projection(W, W, r), "random": projection(W, random, r),
            "norm_W": torch.linalg.matrix_norm(W.double()).item(),
            "norm_dW": torch.linalg.matrix_norm(dW.double()).item(),
            "factor": torch.linalg.matrix_norm(dW.double()).item() / max(on_dw, 1e-30)}


# --- the command line ------------------------------------------------------------------------------


def run_similarity(args):
    a, _ = read_factors(args.adapters[0], args.model)
    b, _ = read_factors(args.adapters[1], args.model)
    a, b = pick(a, args.target, args.layer, args.adapters[0]), pick(b, args.target, args.layer,
                                                                      args.adapters[1])
    layers = sorted({i for i, _ in a} & {i for i, _ in b})
    if not layers:
        raise UserError("the two adapters share no layer for this target")
    k1, k2 = (f[(layers[0], args.target)][0].shape[1] for f in (a, b))
    if k1 != k2:
        raise UserError(f"the two adapters adapt W_{args.target} of different widths ({k1} and "
                        f"{k2}): they were trained on base models of different shapes")
    grid = sum(similarity(a[(i, args.target)][0], b[(i, args.target)][0]) for i in layers)
    grid = grid / len(layers)
    k = a[(layers[0], args.target)][0].shape[1]
    where = f"layer {layers[0]}" if len(layers) == 1 else f"mean over {len(layers)} layers"
    print(f"phi(A_r={grid.shape[0]}, A_r={grid.shape[1]}, i, j) on W_{args.target}, {where}")
    print(shared_directions(grid, k))
    write_grid(grid, args.out, f"W_{args.target}, {where}: phi(i, j)")


def base_matrix(model, name: str, layer: int, target: str, A, B) -> torch.Tensor:
    """The W that A and B adapt, refused when the model is not the adapter's base."""
    if layer >= model.config.n_layer:
        raise UserError(f"the adapter adapts layer {layer}, but {name} has "
                        f"{model.config.n_layer} layers: not the adapter's base model")
    W = model.get_submodule(f"transformer.h.{layer}.{lora.TARGETS[target]}").weight.detach()
    if W.shape != (B.shape[0], A.shape[1]):
        raise UserError(f"the adapter adapts {B.shape[0]} x {A.shape[1]} matrices, but W_{target} "
                        f"of {name} is {W.shape[0]} x {W.shape[1]}: not the adapter's base model")
    return W


def run_amplification(args):
    factors, base = read_factors(args.adapters[0], args.model)
    if not base:
        raise UserError(f"{args.adapters[0]} does not name its base model; pass --model")
    model = GPT.from_pretrained(args.model or base)
    targets = [args.target] if args.target else sorted({t for _, t in factors},
                                                       key=list(lora.TARGETS).index)
    lines = []
    for target in targets:
        rows = []
        for (i, _), (A, B, scaling) in sorted(pick(factors, target, args.layer,
                                                   args.adapters[0]).items()):
            W = base_matrix(model, args.model or base, i, target, A, B)
            rows.append(amplification(W, scaling * (B.double() @ A.double()), A.shape[0], seed=i))
        mean = {k: sum(row[k] for row in rows) / len(rows) for k in rows[0]}
        label = f"W_{target}" + ("" if len(rows) == 1 else f" (mean of {len(rows)} layers)")
        lines.append(f"| {label} | {len(A)} | {mean['dW']:.3f} | {mean['W']:.2f} | "
                     f"{mean['random']:.3f} | {mean['norm_W']:.2f} | {mean['norm_dW']:.3f} | "
                     f"{mean['factor']:.1f} |")
    print(f"Delta W against W (Sec. 7.3, Table 7) for {args.adapters[0]} on {base}"
          + ("" if args.layer is None else f", layer {args.layer}") + ":\n")
    print("| matrix | r | U^T W V^T: Delta W | W (top r) | random | ||W|| | ||Delta W|| "
          "| amplification |\n|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print("\npaper (GPT-3, W_q, layer 48, r=4): 0.32 | 21.67 | 0.02 | 61.95 | 6.91 | 21.5")


def parse_args(argv=None):
    p = cli.parser("analysis.py", description="The paper's Section 7 on your adapters: subspace "
                   "similarity (7.2) and how Delta W relates to W (7.3).")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("similarity", formatter_class=cli.HelpFormatter, allow_abbrev=False,
                       help="phi(A1, A2, i, j) between two adapters (Figure 3)")
    s.add_argument("adapters", nargs=2, metavar="ADAPTER",
                   help="two adapters: adapter.safetensors, a run folder, or a PEFT folder")
    s.add_argument("--out", required=True, help="the CSV grid (and a PNG beside it)")
    a = sub.add_parser("amplification", formatter_class=cli.HelpFormatter, allow_abbrev=False,
                       help="Delta W against W: Table 7 for one adapter")
    a.add_argument("adapters", nargs=1, metavar="ADAPTER",
                   help="adapter.safetensors, a run folder, or a PEFT folder")
    for q, target in ((s, "q"), (a, None)):
        q.error = p.error
        q.add_argument("--target", default=target, choices=list(lora.TARGETS),
                       help="the adapted matrix" + (" (default: each one the adapter adapts)"
                                                    if target is None else ""))
        q.add_argument("--layer", type=int, help="one layer, from 0 (default: all, averaged)")
        q.add_argument("--model", help="the base model (default: the adapter's own record)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.layer is not None and args.layer < 0:
            raise UserError(f"--layer counts from 0 (the first layer), got {args.layer}")
        if args.command == "similarity":
            cli.check_writable_file(args.out, "--out")
            run_similarity(args)
        else:
            run_amplification(args)
    except cli.USER_ERRORS as e:
        cli.fail("analysis.py", e)
    except cli.WriteError as e:  # a full disk: nothing half-written is left
        cli.cannot_write("analysis.py", e)
    except KeyboardInterrupt:
        cli.interrupted("analysis.py", "stopped; nothing was written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
