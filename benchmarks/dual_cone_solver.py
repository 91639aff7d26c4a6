"""UPGrad / DualProj's QP solver (fastmtl/methods/dual_cone.py): how much of its pivoting budget
it uses, and how fast ``fastmtl.aggregate`` is next to torchjd.

    python benchmarks/dual_cone_solver.py budget [--seeds 10] [--exact-up-to 20]
    python benchmarks/dual_cone_solver.py time [--calls 21] [--threads 2] [--baseline-ref HEAD]
    python benchmarks/dual_cone_solver.py op [--calls 2001] [--seeds 3]

``budget`` solves a corpus of hard QPs (rank-deficient and stationary Jacobians as in torchjd's
tests, random, duplicated, opposite, zero, badly scaled, near-rank-deficient, huge and Murty-hard
tasks, T up to 64; UPGrad's T rows and DualProj's one row per Jacobian) on both paths: the CPU's
(early exit) and the fixed-budget one a GPU runs. It reports the pivoting steps each needed, the
rows left unsolved and the largest deviation from quadprog and (``--exact-up-to T``, for the
problems with at most T tasks) from the exact rational solution of the float64 QP. ``time`` reports median times of
``fastmtl.aggregate(G, "upgrad"/"dualproj")`` on float32 G (random, and rank 10), torchjd's ``UPGrad()`` /
``DualProj()`` on the same G, and optionally the solver of another git revision (loaded from
``git show REF:python/fastmtl/methods/dual_cone.py``). ``op`` times the compiled op
``fastmtl::dual_cone_weights`` (one thread, median of ``--calls``) next to the torch reference on
float64 K from random G (T = 4, 8, 16, 64), and its worst case over the ``budget`` corpus."""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import time

import torch

import fastmtl
from fastmtl.methods import dual_cone

REG = 1e-4
ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----- the corpus --------------------------------------------------------------------------------


def _orthonormal(n, gen):
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return Q * R.diagonal().sign()


def _complement(Q, gen):
    """Orthonormal columns spanning the orthogonal complement of Q's (orthonormal) columns."""
    X = torch.randn(Q.shape[0], Q.shape[0] - Q.shape[1], generator=gen, dtype=torch.float64)
    return torch.linalg.qr(X - Q @ (Q.T @ X))[0]


def _spectrum(r, gen):
    return torch.diag(torch.randn(r, generator=gen, dtype=torch.float64).abs())


def low_rank(m, n, r, gen):
    return _orthonormal(m, gen)[:, :r] @ _spectrum(r, gen) @ _orthonormal(n, gen)[:r]


def strongly_stationary(m, n, r, gen):
    """Rows with a positive combination equal to 0: left singular vectors orthogonal to c > 0."""
    c = torch.randn(m, generator=gen, dtype=torch.float64).abs()
    return _complement((c / c.norm())[:, None], gen)[:, :r] @ _spectrum(r, gen) @ _orthonormal(n, gen)[:r]


def weakly_stationary(m, n, r, gen):
    """A non-negative (not positive) combination equal to 0; a disjoint one is a singular vector."""
    c = torch.randn(m, generator=gen, dtype=torch.float64).abs()
    split = int(torch.randint(1, m, (1,), generator=gen))
    order = torch.randperm(m, generator=gen)
    first, second = torch.zeros(m, dtype=torch.float64), torch.zeros(m, dtype=torch.float64)
    first[order[:split]] = c[order[:split]] / c[order[:split]].norm()
    second[order[split:]] = c[order[split:]] / c[order[split:]].norm()
    pair = torch.stack([first, second], 1)
    left = torch.hstack([pair, _complement(pair, gen)])
    return left[:, 1:r + 1] @ _spectrum(r, gen) @ _orthonormal(n, gen)[:r]


def not_stationary(m, n, r, gen):
    """A positive left singular vector: no non-negative combination of the rows is 0."""
    c = torch.randn(m, generator=gen, dtype=torch.float64).abs()
    left = torch.hstack([(c / c.norm())[:, None], _complement((c / c.norm())[:, None], gen)])
    return left[:, :r] @ _spectrum(r, gen) @ _orthonormal(n, gen)[:r]


def corpus(seeds):
    """("family: size", G) pairs, float64."""
    out = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        for m, n, r in [(4, 3, 1), (4, 3, 2), (9, 11, 5), (9, 11, 9), (20, 10, 10), (20, 10, 5), (20, 100, 19),
                        (20, 10, 1), (32, 20, 10), (64, 40, 20), (64, 100, 63), (64, 10, 3)]:
            out.append((f"low rank: {m}x{n} r{r}", low_rank(m, n, r, gen)))
        for m, n, r in [(20, 10, 10), (20, 10, 5), (20, 10, 1), (20, 100, 1), (20, 100, 19), (40, 30, 20),
                        (64, 50, 40), (64, 200, 63)]:
            out.append((f"strongly stationary: {m}x{n} r{r}", strongly_stationary(m, n, r, gen)))
            out.append((f"weakly stationary: {m}x{n} r{r}", weakly_stationary(m, n, r, gen)))
            out.append((f"not stationary: {m}x{n} r{r}", not_stationary(m, n, r, gen)))
        for T in (2, 5, 16, 33, 64):
            g = (torch.randn(T, 50, generator=gen, dtype=torch.float64)
                 + torch.linspace(-1, 1, T, dtype=torch.float64)[:, None] * torch.randn(50, generator=gen, dtype=torch.float64))
            out.append((f"random: T={T}", g))
            out.append((f"duplicated: T={T}", torch.cat([g[: (T + 1) // 2], g[: T // 2]])))
            out.append((f"opposite: T={T}", torch.cat([g[: (T + 1) // 2], -g[: T // 2]])))
            zero = g.clone()
            zero[::3] = 0
            out.append((f"zero rows: T={T}", zero))
            out.append((f"scales 1e-6..1e6: T={T}", g * torch.logspace(-6, 6, T, dtype=torch.float64)[:, None]))
        for T in (8, 16, 32, 64):
            g = torch.randn(T, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 40, generator=gen, dtype=torch.float64)
            out.append((f"rank 3: T={T}", g))
            out.append((f"near rank 3: T={T}", g + 1e-9 * torch.randn(T, 40, generator=gen, dtype=torch.float64)))
            h = torch.randn(T // 2, 40, generator=gen, dtype=torch.float64)
            out.append((f"near opposite: T={T}", torch.cat([h, -h + 1e-8 * torch.randn_like(h)])))
            out.append((f"near duplicated: T={T}", torch.cat([h, h * (1 + 1e-12)])))
            fathi = torch.tril(torch.full((T, T), 2.0, dtype=torch.float64), -1) + torch.eye(T, dtype=torch.float64)
            signs = torch.where(torch.rand(T, 1, generator=gen) < 0.5, -1.0, 1.0).double()
            out.append((f"Murty-hard: T={T}", fathi * signs))  # Fathi's (1979) matrix, rows' signs flipped
            wide = torch.randn(T, 5, generator=gen, dtype=torch.float64) * torch.logspace(-8, 8, T, dtype=torch.float64)[:, None]
            out.append((f"scales 1e-8..1e8, rank 5: T={T}", wide))
            out.append((f"huge (1e15): T={T}", 1e15 * torch.randn(T, 40, generator=gen, dtype=torch.float64)))
    return out


# ----- budget ------------------------------------------------------------------------------------


def _quadprog(A, U):
    import numpy as np
    import quadprog

    T = A.shape[0]
    return torch.tensor(np.stack([quadprog.solve_qp(A.numpy(), np.zeros(T), np.eye(T), u.numpy())[0] for u in U]))


def budget(seeds: int, exact_up_to: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from oracles import dual_cone_exact_solution  # the tests' exact rational oracle

    calls = {"n": 0}
    solve = dual_cone._free_set_solution

    def counted(*args):
        calls["n"] += 1
        return solve(*args)

    dual_cone._free_set_solution = counted
    default_cleanup = dual_cone._cleanup_pivots
    fixed_needed, cpu_solves, unsolved, worst_error, rows = {}, [], [], (0.0, ""), 0
    worst_exact, exact_rows = (0.0, ""), 0
    try:
        import quadprog  # noqa: F401
        have_quadprog = True
    except ImportError:
        have_quadprog = False
    problems = corpus(range(seeds))
    for name, G in problems:
        A = dual_cone.regularised_gram(G @ G.T, norm_eps=REG, reg_eps=REG)
        T = A.shape[0]
        for kind, U in (("upgrad", torch.eye(T, dtype=torch.float64) / T),
                        ("dualproj", torch.full((1, T), 1.0 / T, dtype=torch.float64))):
            rows += U.shape[0]
            calls["n"] = 0
            result = dual_cone.dual_cone_qp(A, U, early_exit=True)
            cpu_solves.append((calls["n"], f"{name} ({kind})"))
            if not bool(result.solved.all()):
                unsolved.append(f"{name} ({kind}), CPU path")
            if have_quadprog:
                expected = _quadprog(A, U)
                error = float(((result.v - expected).abs().amax(1) / expected.abs().amax(1)).max())
                worst_error = max(worst_error, (error, f"{name} ({kind})"))
            if T <= exact_up_to:
                for u, v in zip(U, result.v):
                    exact = dual_cone_exact_solution(A, u, v > u)
                    exact_rows += 1
                    worst_exact = max(worst_exact, (float((v - exact).abs().max() / exact.abs().max()), f"{name} ({kind})"))
            # The fixed-budget path: the fewest pivoting steps after the interior-point start that
            # leave every row solved (the budget is T + 8).
            for steps in sorted({1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, default_cleanup(T)}):
                if steps > default_cleanup(T):
                    break
                dual_cone._cleanup_pivots = lambda T, steps=steps: steps
                if bool(dual_cone.dual_cone_qp(A, U, early_exit=False).solved.all()):
                    fixed_needed.setdefault(steps, []).append(f"{name} ({kind})")
                    break
            else:
                unsolved.append(f"{name} ({kind}), fixed-budget path")
            dual_cone._cleanup_pivots = default_cleanup
    dual_cone._free_set_solution = solve
    print(f"{len(problems)} Jacobians, {2 * len(problems)} QPs, {rows} rows (u's)")
    print("fixed-budget path (GPU), pivoting steps needed after the interior-point start (budget T + 8):")
    for steps, names in sorted(fixed_needed.items()):
        hard = sorted({n.split(":")[0] for n in names}) if steps > 2 else []
        print(f"  <= {steps:2d}: {len(names):5d} QPs" + (f"  ({', '.join(hard)})" if hard else ""))
    cpu_solves.sort(reverse=True)
    print(f"CPU path (early exit): at most {cpu_solves[0][0]} free-set solves ({cpu_solves[0][1]}); "
          f"the start from {{q < 0}} alone sufficed for "
          f"{sum(n <= dual_cone._FIRST_PIVOTS for n, _ in cpu_solves)} of {len(cpu_solves)} QPs")
    print(f"unsolved: {unsolved or 'none'}")
    if have_quadprog:
        print(f"largest deviation from quadprog: {worst_error[0]:.2g} relative ({worst_error[1]})")
    if exact_rows:
        print(f"largest deviation from the exact rational solution ({exact_rows} rows, T <= {exact_up_to}): "
              f"{worst_exact[0]:.2g} relative ({worst_exact[1]})")


# ----- time --------------------------------------------------------------------------------------


def _baseline_solver(ref: str):
    """dual_cone_projection_weights as of git revision ``ref`` (its method classes not registered)."""
    source = subprocess.run(["git", "show", f"{ref}:python/fastmtl/methods/dual_cone.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    namespace = {"__name__": "baseline_dual_cone"}
    exec(compile(source.replace("@register\n", ""), f"{ref}:dual_cone.py", "exec"), namespace)  # noqa: S102
    solver = namespace["dual_cone_projection_weights"]
    return lambda K, U, *, norm_eps, reg_eps, early_exit=None: solver(K, U, norm_eps=norm_eps, reg_eps=reg_eps)


def _median_ms(fn, calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def timing(calls: int, threads: int, baseline_ref: str | None) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from oracles import random_gradients

    import torchjd.aggregation as torchjd

    torch.set_num_threads(threads)
    current = dual_cone.dual_cone_projection_weights
    solvers = {"after": current}
    if baseline_ref:
        solvers = {f"before ({baseline_ref})": _baseline_solver(baseline_ref), **solvers}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fastmtl._C {fastmtl.HAS_EXT}; "
          f"median of {calls} calls, ms")
    print("| T | P | G | method | " + " | ".join(f"fastmtl {label}" for label in solvers) + " | torchjd |")
    print("|---|---|---|---|" + "---|" * (len(solvers) + 1))
    gen = torch.Generator().manual_seed(0)
    inputs = [(T, P, "random", random_gradients(T, P, seed=0, dtype=torch.float32))
              for T, P in [(8, 100_000), (8, 1_000_000), (32, 100_000)]]
    inputs += [(T, 100_000, "rank 10", (torch.randn(T, 10, generator=gen, dtype=torch.float64)
                                        @ torch.randn(10, 100_000, generator=gen, dtype=torch.float64)).float())
               for T in (20, 32)]
    for T, P, kind, G in inputs:
        for method, peer in (("upgrad", torchjd.UPGrad()), ("dualproj", torchjd.DualProj())):
            cells = []
            for solver in solvers.values():
                dual_cone.dual_cone_projection_weights = solver
                cells.append(_median_ms(lambda G=G, method=method: fastmtl.aggregate(G, method), calls))
            dual_cone.dual_cone_projection_weights = current
            cells.append(_median_ms(lambda G=G, peer=peer: peer(G), calls))
            print(f"| {T} | {P:.0e} | {kind} | {method} | " + " | ".join(f"{c:.2f}" for c in cells) + " |", flush=True)


def op_timing(calls: int, seeds: int) -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; median of {calls} calls (the reference: of {max(calls // 20, 5)}), µs")
    print("| T | method | op | torch reference |")
    print("|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for T in (4, 8, 16, 64):
        G = torch.randn(T, 100, generator=gen, dtype=torch.float64)
        K = G @ G.T
        for method, U in (("upgrad", torch.eye(T, dtype=torch.float64) / T),
                          ("dualproj", torch.full((1, T), 1.0 / T, dtype=torch.float64))):
            op = _median_ms(lambda K=K, U=U: torch.ops.fastmtl.dual_cone_weights(K, U, REG, REG), calls)
            ref = _median_ms(lambda K=K, U=U: dual_cone.dual_cone_projection_weights(K, U, norm_eps=REG, reg_eps=REG),
                             max(calls // 20, 5))
            print(f"| {T} | {method} | {op * 1e3:.1f} | {ref * 1e3:.0f} |", flush=True)
    worst = []
    for name, G in corpus(range(seeds)):  # UPGrad's T rows: the op's heaviest use
        K = G @ G.T
        U = torch.eye(K.shape[0], dtype=torch.float64) / K.shape[0]
        worst.append((_median_ms(lambda K=K, U=U: torch.ops.fastmtl.dual_cone_weights(K, U, REG, REG), 5), name))
    worst.sort(reverse=True)
    print("slowest UPGrad solves over the corpus (median of 5 calls):")
    for ms, name in worst[:5]:
        print(f"  {ms * 1e3:8.0f} µs  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("budget")
    b.add_argument("--seeds", type=int, default=10)
    b.add_argument("--exact-up-to", type=int, default=0, help="check problems with at most this many tasks exactly")
    t = sub.add_parser("time")
    t.add_argument("--calls", type=int, default=21)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--baseline-ref", default=None, help="git revision whose solver to time as well, e.g. HEAD")
    o = sub.add_parser("op")
    o.add_argument("--calls", type=int, default=2001)
    o.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    if args.command == "op":
        op_timing(args.calls, args.seeds)
    elif args.command == "budget":
        torch.set_num_threads(1)
        budget(args.seeds, args.exact_up_to)
    else:
        timing(args.calls, args.threads, args.baseline_ref)


if __name__ == "__main__":
    main()
