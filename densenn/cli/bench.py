"""``densenn bench``: the seed's micro-benchmark (see :mod:`densenn.seedbench`)."""
from __future__ import annotations

from densenn import seedbench
from densenn.cli.common import _engine, _guard, _print_json
from densenn.cli.info import _blas_info, _threads_info

#: N when --size is not given: the seed scaled to 2 cores on a CPU engine, the seed itself on a GPU
CPU_SIZE = 4000


def run_bench(engine, n: int, repeat: int, dtype) -> dict:
    """The seed's micro-benchmark on ``engine``: see ``densenn bench --help``."""
    return seedbench.run(engine, n, repeat, dtype)


def cmd_bench(args) -> int:
    from densenn.backend import check_dtype

    engine = _engine(args.engine)
    dtype = check_dtype(engine, args.dtype)
    n = args.size or (CPU_SIZE if engine.name.startswith("cpu") else seedbench.SEED_SIZE)
    if not args.json:
        print(f"densenn bench: x {n}×{n}, {seedbench.describe(n)}; "
              f"engine {engine.name} ({engine!r}), {dtype.name}; median of {args.repeat} after one warm-up")
    result = run_bench(engine, n, args.repeat, dtype)
    if engine.name.startswith("cpu"):
        blas = _guard(_blas_info)
        if isinstance(blas, dict):
            result["blas_threads"] = _threads_info(blas).get("blas")
    if args.json:
        _print_json(result)
        return 0
    print(f"{'':<32}{'ms':>10}{'GFLOP/s':>10}")
    for label, key, flop in (("forward", "forward_ms", result["gflop_forward"]),
                             ("training step (fwd + bwd)", "step_ms", result["gflop_step"]),
                             ("the step's GEMMs alone", "gemm_ms", result["gflop_step"])):
        print(f"{label:<32}{result[key]:>10.2f}{flop * 1e3 / result[key]:>10.1f}")
    print(f"overhead ratio (step / GEMMs): {result['overhead_ratio']:.3f}; GEMMs are "
          f"{100 * result['gemm_share']:.0f}% of the step ({result['gflop_step']:.2f} GFLOP per step, "
          f"forward check max |error| {result['check_max_error']:.1e})")
    return 0
