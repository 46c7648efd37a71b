"""05 — The seed's micro-benchmark: one forward + backward step of a big three-layer network.

The seed times, on a GPU, a batch x of 10000×10000 through
10000→5000 tanh → 1000 sigmoid → 10 sigmoid, forward and backward, and observes
that adding the backward pass's elementwise work (derivative, Hadamard product)
costs almost nothing: the matrix multiplications, O(n³), dominate the O(n²)
rest. This script builds the same network for any N (x N×N, N → N/2 tanh →
N/10 sigmoid → 10 sigmoid) and times, as the median of a few repeats after a
warm-up:

* the forward pass alone,
* the full step (forward + backward, as the seed: the signal in the last layer
  is its own output, no cost; densenn's backward computes delta, ∇w, ∇b and the
  signal for the layer below, which the seed's part 9 has not written yet),
* the same GEMMs alone, with no bias, activation or derivative,

and prints milliseconds and GFLOP/s (GEMM FLOPs: 2·m·n·k each). The share of
the step spent in GEMMs shows the seed's point.

The network, its three timed functions and the check are ``densenn.seedbench``
(``SeedBench``): a ``densenn.Network`` of three ``Dense`` layers with drawn
weights, and the ``TrainingNetwork`` for a batch of N that holds x. The same
code is behind ``densenn bench`` and the scripts in ``benchmarks/``.

Sizes: the default N=2000 runs in about a second on 2 CPU cores; ``--size 4000``
is the CPU-scaled version from the project's performance guide (147.3 GFLOP per
step); ``--size 10000`` is the seed's GPU run (2.30 TFLOP per step; use it with
``--engine cuda``, or be patient on a CPU).

Run:  python examples/05_micro_benchmark.py [--engine cpu] [--size 2000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import sys

import densenn as dn
from densenn import seedbench


def blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    blas = [f"{i.get('internal_api')} {i.get('num_threads')} threads" for i in threadpool_info()
            if i.get("user_api") == "blas"]
    return ", ".join(blas) or "none found"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="cpu", help="engine name: cpu, cpu:numpy, opencl, cuda (default cpu)")
    parser.add_argument("--size", type=int, default=2000,
                        help="N: x is N×N, layers N→N/2→N/10→10 (default 2000; 4000 CPU-scaled seed; 10000 the seed)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up (default 5)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)
    if args.size < seedbench.MIN_SIZE or args.repeats < 1:
        parser.error(f"--size must be at least {seedbench.MIN_SIZE} and --repeats at least 1")
    n = args.size
    try:
        # the seed's network on the engine: drawn weights (never time on zeros), x in the
        # training network's input buffer, the training layers z, a, ∇w, ∇b
        bench = seedbench.SeedBench(n, args.engine, args.dtype)
    except dn.DensennError as exc:
        sys.exit(f"engine {args.engine!r} cannot run this here: {exc}")
    engine = bench.engine
    print(f"the seed's micro-benchmark: x {n}×{n} (batch {n}), {seedbench.describe(n)}")
    print(f"engine {engine!r}, {bench.dtype}" + (f", BLAS: {blas_threads()}" if engine.name == "cpu" else ""))

    # FLOPs of the GEMMs: 2·batch·n_in·n_out for each product (no signal below the first layer)
    flops = seedbench.flops(n)
    print(f"GEMM work per step: forward {flops['forward'] / 1e9:.2f} GFLOP, backward "
          f"{(flops['dw'] + flops['signal']) / 1e9:.2f} (∇w {flops['dw'] / 1e9:.2f}, "
          f"signal {flops['signal'] / 1e9:.2f}), total {flops['step'] / 1e9:.2f} GFLOP")
    # Check the result before timing: the forward pass of the first 64 samples against
    # float64 NumPy (the rest of the batch is the same code).
    err = bench.check()
    bench.gemms()           # makes the GEMM-only timing's scratch, counted below
    mem = bench.nbytes()
    print(f"memory: {(mem['weights'] + mem['input'] + mem['layers']) / 2**20:.1f} MiB (x, weights, z/a, "
          f"gradients) + {mem['scratch'] / 2**20:.1f} MiB scratch for the GEMM-only timing")
    print(f"check: forward output vs float64 NumPy, max |difference| {err:.1e} "
          f"({'ok' if err < bench.tolerance() else 'WRONG'})")
    if not err < bench.tolerance():
        sys.exit(1)

    print(f"\ntiming: median of {args.repeats} after one warm-up")
    results = [("forward", seedbench.median_ms(engine, bench.forward, args.repeats), flops["forward"]),
               ("full step (forward + backward)", seedbench.median_ms(engine, bench.step, args.repeats),
                flops["step"]),
               ("the step's GEMMs alone", seedbench.median_ms(engine, bench.gemms, args.repeats), flops["step"])]
    print(f"{'':<32}{'ms':>10}{'GFLOP/s':>10}")
    for name, ms, flop in results:
        print(f"{name:<32}{ms:>10.2f}{flop / ms / 1e6:>10.1f}")
    step_ms, gemm_ms = results[1][1], results[2][1]
    print(f"\nGEMMs are {100 * gemm_ms / step_ms:.0f}% of the step; everything else (bias, activations, "
          f"derivatives, Σ rows) takes {max(step_ms - gemm_ms, 0.0):.2f} ms")
    print("(the seed, N=10000: 130.9 ms on a GTX 1080 Ti with CUDA, 342.7 ms on an R9 290X with OpenCL)")
    bench.release()


if __name__ == "__main__":
    main()
