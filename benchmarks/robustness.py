"""Robustness metrics speed and memory: all pairs of a PLISM layout, ours against the pair-by-pair dense recipe.

Run it from the repository root::

    .venv/bin/python benchmarks/robustness.py            # 21 conditions, 4,096 tiles on CPU (~5 min on 2 cores)
    .venv/bin/python benchmarks/robustness.py --quick    # 6 conditions, 1,024 tiles: a smoke test

On random float32 features (``[C, n, D]``, D = 1,536 as H-Optimus-0's CLS, 3
stainings × 7 scanners = 210 pairs) it times and prints one markdown table:

- **ours**: :func:`pipeline.robustness.robustness_table`, C within-slide
  blocks and one cross block per pair (C + C(C−1)/2 n × n products), in
  square tiles of ``--block``;
- **pair by pair**: the reference's recipe (plismbench ``core_compute_metrics``)
  in torch on the same device: the dense 2n × 2n cosine matrix of ``[a; b]``
  (four n × n blocks) and a top-(k_max + 1) per row; timed on ``--naive-pairs``
  pairs and multiplied by the number of pairs (every pair costs the same);
- **plain GEMM**: ``torch.matmul`` of the shapes each uses (tiles of
  ``block × D × block``; one ``2n × D × 2n``), the rate their products could reach.

"GEMM GFLOP/s" of ours is its matrix-product FLOPs, 2 n² D per n × n block,
over its *whole* wall time (norms, comparisons and counting included), so it
is a lower bound on the rate of its products. Peak memory is the growth of
the process's peak resident set (``VmHWM``, reset before each row) on CPU,
``torch.cuda.max_memory_allocated`` on CUDA, above what the row started with.
Seconds at 16,278 tiles are the measured ones × (16,278 / n)²: every part of
both computations (products, comparisons, top-k) grows as n² at fixed D.

Numbers are noisy on a busy machine; rerun before quoting them.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, and it holds benchmarks/tiling.py and
# benchmarks/registration.py: ``import tiling`` / ``import registration`` would import the scripts,
# not the packages. Drop the folder before any import that could reach them.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

import argparse  # noqa: E402
import itertools  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.robustness import Condition, robustness_table  # noqa: E402
from pipeline.robustness.ranking import TileBuffer  # noqa: E402

PLISM_TILES = 16_278
STAININGS = ("GIVH", "GMH", "MY")
SCANNERS = ("AT2", "GT450", "P", "S210", "S360", "S60", "SQ")
KS = (1, 3, 5, 10)
GOAL_TIME_FRACTION = 0.35
GOAL_GEMM_FRACTION = 0.70


@dataclass
class Row:
    """One line of the table."""

    name: str
    tiles: int | str = ""
    pairs: int | str = ""
    seconds: float | None = None
    full_seconds: float | None = None
    gflops: float | None = None
    memory_mib: float | None = None
    notes: str = ""

    def cells(self) -> str:
        """The markdown row."""

        def fmt(value: float | None, spec: str) -> str:
            return "" if value is None else format(value, spec)

        return (
            f"| {self.name} | {self.tiles} | {self.pairs} | {fmt(self.seconds, '.1f')} | "
            f"{fmt(self.full_seconds, ',.0f')} | {fmt(self.gflops, '.1f')} | {fmt(self.memory_mib, ',.0f')} "
            f"| {self.notes} |"
        )


class PeakMemory:
    """Peak memory above the starting point of a block of code, in MiB (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.start = self.proc_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = self.proc_kib("VmHWM") * 1024
        self.mib = (peak - self.start) / 2**20

    @staticmethod
    def proc_kib(field: str) -> int:
        """One ``kB`` field of ``/proc/self/status``."""
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)


class ProductTimer:
    """Time and FLOPs spent inside the similarity products of :mod:`pipeline.robustness.ranking`, while active.

    The issue's second goal is about the matrix products themselves; the run also compares and counts
    every element, which is not GEMM work.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self.flop, self.calls = device, 0.0, 0, 0

    def __enter__(self) -> ProductTimer:
        self.original = TileBuffer.similarities

        def similarities(buffer: TileBuffer, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            seconds, result = timed(self.device, lambda: self.original(buffer, rows, cols))
            self.seconds += seconds
            self.flop += 2 * rows.shape[0] * cols.shape[0] * rows.shape[1]
            self.calls += 1
            return result

        TileBuffer.similarities = similarities
        return self

    def __exit__(self, *exc: object) -> None:
        TileBuffer.similarities = self.original


def timed(device: torch.device, fn: Callable[[], object]) -> tuple[float, object]:
    """Wall seconds of ``fn()`` (device work included) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def dense_pair(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """The reference's per-pair recipe in torch: one 2n × 2n cosine matrix, top-(k_max + 1) per row."""
    n = a.shape[0]
    ab = torch.cat([a, b])
    norms = ab.norm(dim=1, keepdim=True)
    cos = (ab @ ab.T) / (norms * norms.T)
    metrics = {"cosine_similarity": float(torch.diagonal(cos[:n, n:]).double().mean())}
    nearest = torch.topk(cos, max(KS) + 1, dim=1).indices[:, 1:]  # position 0: the tile itself
    match = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(ab.device)[:, None]
    for k in KS:
        hits = (nearest[:, :k] == match).any(dim=1).double()
        metrics[f"top_{k}_accuracy"] = float((hits[:n].mean() + hits[n:].mean()) / 2)
    return metrics


def gemm_rate(device: torch.device, rows: int, cols: int, dim: int, repeats: int) -> float:
    """GFLOP/s of ``torch.matmul([rows, dim], [dim, cols])`` into a reused output, best of ``repeats``."""
    x = torch.randn(rows, dim, device=device)
    y = torch.randn(cols, dim, device=device)
    out = torch.empty(rows, cols, device=device)
    torch.matmul(x, y.T, out=out)
    best = min(timed(device, lambda: torch.matmul(x, y.T, out=out))[0] for _ in range(repeats))
    return 2 * rows * cols * dim / best / 1e9


def run(args: argparse.Namespace) -> list[Row]:
    """Measure everything and return the table's rows."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n, dim = args.tiles, args.dim
    scanners = SCANNERS[: 2 if args.quick else 7]
    conditions = [Condition(f"{st}_{sc}", st, sc) for st in STAININGS for sc in scanners]
    n_cond = len(conditions)
    n_pairs = n_cond * (n_cond - 1) // 2
    rng = np.random.default_rng(0)
    embeddings = np.empty((n_cond, n, dim), dtype=np.float32)
    for c in range(n_cond):
        embeddings[c] = rng.standard_normal((n, dim), dtype=np.float32)
    scale = (PLISM_TILES / n) ** 2
    block_flop = 2 * n * n * dim

    robustness_table(embeddings[:2, :64], conditions[:2], KS, device=device, block=args.block)  # BLAS warm-up
    products = ProductTimer(device)
    with PeakMemory(device) as ours_memory, products:
        ours_s, table = timed(
            device, lambda: robustness_table(embeddings, conditions, KS, device=device, block=args.block)
        )
    print(f"  ours: {ours_s:.1f} s for {n_pairs} pairs", file=sys.stderr, flush=True)

    naive_times, agree = [], True
    with PeakMemory(device) as naive_memory:
        for p, (i, j) in enumerate(itertools.islice(itertools.combinations(range(n_cond), 2), args.naive_pairs)):
            a = torch.from_numpy(embeddings[i]).to(device)
            b = torch.from_numpy(embeddings[j]).to(device)
            seconds, metrics = timed(device, lambda a=a, b=b: dense_pair(a, b))
            naive_times.append(seconds)
            ours = table.iloc[p]
            agree &= all(metrics[f"top_{k}_accuracy"] == ours[f"top_{k}_accuracy"] for k in KS)
            agree &= abs(metrics["cosine_similarity"] - ours["cosine_similarity"]) < 1e-5
    naive_pair_s = float(np.mean(naive_times))
    naive_s = naive_pair_s * n_pairs
    print(f"  pair by pair: {naive_pair_s:.2f} s a pair", file=sys.stderr, flush=True)

    tile_gflops = gemm_rate(device, min(args.block, n), min(args.block, n), dim, repeats=3)
    dense_gflops = gemm_rate(device, 2 * n, 2 * n, dim, repeats=2)
    ours_gflops = (n_cond + n_pairs) * block_flop / ours_s / 1e9
    naive_gflops = 4 * block_flop / naive_pair_s / 1e9
    fraction_time = ours_s / naive_s
    fraction_gemm = ours_gflops / tile_gflops
    products_gflops = products.flop / products.seconds / 1e9
    fraction_products = products_gflops / tile_gflops
    verdict = {True: "**met**", False: "**not met**"}
    return [
        Row(
            "ours: C within-slide + 1 cross block a pair",
            n,
            n_pairs,
            ours_s,
            ours_s * scale,
            ours_gflops,
            ours_memory.mib,
            f"{n_cond + n_pairs} n × n products; tiles of {args.block}; "
            f"unit-norm copy of all slides {n_cond * n * dim * 4 / 2**20:,.0f} MiB of the peak",
        ),
        Row(
            "pair by pair: dense 2n × 2n per pair (reference recipe)",
            n,
            n_pairs,
            naive_s,
            naive_s * scale,
            naive_gflops,
            naive_memory.mib,
            f"{4 * n_pairs} n × n products; timed on {len(naive_times)} pairs "
            f"({naive_pair_s:.2f} s each) × {n_pairs}; top-k equal to ours on them: {agree}",
        ),
        Row(
            f"plain torch GEMM, {min(args.block, n)} × {dim} × {min(args.block, n)} tiles",
            gflops=tile_gflops,
            notes="best of 3; the shape of our products",
        ),
        Row(
            f"plain torch GEMM, {2 * n} × {dim} × {2 * n}",
            gflops=dense_gflops,
            notes="best of 2; the shape of the pair-by-pair product",
        ),
        Row(
            f"goal: ≤ {GOAL_TIME_FRACTION:.0%} of the pair-by-pair time",
            seconds=None,
            notes=f"{fraction_time:.1%}: {verdict[fraction_time <= GOAL_TIME_FRACTION]}",
        ),
        Row(
            "ours: its matrix products alone",
            n,
            n_pairs,
            products.seconds,
            products.seconds * scale,
            products_gflops,
            notes=f"{products.calls:,} tile products timed inside the run ({products.flop / 1e12:.2f} "
            "TFLOP); the rest of ours is comparisons and counts",
        ),
        Row(
            f"goal: products ≥ {GOAL_GEMM_FRACTION:.0%} of plain GEMM rate",
            notes=f"{fraction_products:.1%} of the tile GEMM rate: {verdict[fraction_products >= GOAL_GEMM_FRACTION]} "
            f"(whole run counted as product time: {fraction_gemm:.1%})",
        ),
    ]


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tiles",
        type=int,
        default=None,
        help=f"tiles per slide (default {PLISM_TILES:,} on CUDA, 4,096 on CPU, 1,024 with --quick)",
    )
    parser.add_argument("--dim", type=int, default=1536, help="feature dimension D")
    parser.add_argument("--block", type=int, default=2048, help="side of the similarity tiles")
    parser.add_argument("--naive-pairs", type=int, default=3, help="pairs timed pair by pair")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--quick", action="store_true", help="3 × 2 conditions, 1,024 tiles: a smoke test")
    args = parser.parse_args()
    if args.tiles is None:
        args.tiles = 1024 if args.quick else (PLISM_TILES if torch.cuda.is_available() else 4096)
    return args


def main() -> None:
    args = _parse_args()
    started = time.perf_counter()
    rows = run(args)
    load = os.getloadavg()[0]
    print(
        f"\n{torch.get_num_threads()} torch threads, load average {load:.1f} at the end; D = {args.dim}; "
        f"ks = {KS}; random float32 features. Benchmark took {time.perf_counter() - started:.0f} s.\n"
    )
    print(
        "| computation | tiles | pairs | s measured | s at 16,278 tiles | GEMM GFLOP/s | peak memory (MiB) "
        "| notes |\n|---|---:|---:|---:|---:|---:|---:|---|"
    )
    print("\n".join(row.cells() for row in rows))


if __name__ == "__main__":
    main()
