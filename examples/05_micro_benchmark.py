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

Sizes: the default N=2000 runs in about a second on 2 CPU cores; ``--size 4000``
is the CPU-scaled version from the project's performance guide (147.3 GFLOP per
step); ``--size 10000`` is the seed's GPU run (2.30 TFLOP per step; use it with
``--engine cuda``, or be patient on a CPU).

Run:  python examples/05_micro_benchmark.py [--engine cpu] [--size 2000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import densenn as dn
from densenn.backend import check_dtype


def fresh(engine, host, dtype):
    """A new engine array holding ``host``."""
    host = np.ascontiguousarray(host, dtype=dtype)
    return engine.upload(host, engine.empty(host.shape, dtype))


def median_ms(engine, fn, repeats: int) -> float:
    """Median wall time of fn() in ms, after one warm-up; synchronises so device work is counted."""
    fn()
    engine.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        engine.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


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
    if args.size < 20 or args.repeats < 1:
        parser.error("--size must be at least 20 and --repeats at least 1")
    try:
        engine = dn.get_engine(args.engine)
        dtype = check_dtype(engine, args.dtype)
    except dn.DensennError as exc:
        sys.exit(f"engine {args.engine!r} cannot run this here: {exc}")

    n = args.size
    sizes = [n, n // 2, n // 10, 10]
    activations = ["tanh", "sigmoid", "sigmoid"]
    print(f"the seed's micro-benchmark: x {n}×{n} (batch {n}), "
          f"{sizes[0]}→{sizes[1]} tanh → {sizes[2]} sigmoid → {sizes[3]} sigmoid")
    print(f"engine {engine!r}, {dtype}" + (f", BLAS: {blas_threads()}" if engine.name == "cpu" else ""))

    # Random data and weights (never time on zeros); weights scaled by 1/√fan_in so the
    # activations are not saturated. Drawn on the host, uploaded once.
    rng = np.random.default_rng(0)
    x_host = rng.random((n, n), dtype=np.float32) * 2 - 1
    x = fresh(engine, x_host, dtype)
    layers = []
    for n_in, n_out, act in zip(sizes, sizes[1:], activations):
        w = rng.standard_normal((n_out, n_in), dtype=np.float32) / np.float32(np.sqrt(n_in))
        b = rng.standard_normal(n_out).astype(np.float32) * 0.1
        layers.append(dn.DenseInference(engine, n_in, n_out, act, dtype, w=fresh(engine, w, dtype),
                                        b=fresh(engine, b, dtype)))
    t1 = dn.DenseTraining(layers[0], x)
    t2 = dn.DenseTraining.after(layers[1], t1)
    t3 = dn.DenseTraining.after(layers[2], t2)
    training = [t1, t2, t3]

    def forward():
        for t in training:
            t.forward()

    def step():
        # the seed's (do (forward 1) (forward 2) (forward 3) (backward 3) (backward 2) (backward 1))
        forward()
        t3.backward()                  # signal: t3's own output, as in the seed
        t2.backward()
        t1.backward(propagate=False)   # nothing below the first layer: x is not written

    # The same GEMMs alone. The signal GEMMs write into scratch buffers, not into the
    # layers' inputs, so repeating them cannot grow the values without bound.
    scratch = {id(t): engine.empty(t.x.shape, dtype) for t in (t2, t3)}

    def gemms():
        for t in training:
            engine.gemm(1.0, t.x, t.w, 0.0, t.z, trans_b=True)          # z = x·wᵀ
        for t in reversed(training):
            engine.gemm(1.0, t.z, t.x, 0.0, t.dw, trans_a=True)         # ∇w = deltaᵀ·x
            if t is not t1:
                engine.gemm(1.0, t.z, t.w, 0.0, scratch[id(t)])         # signal = delta·w

    # FLOPs of the GEMMs: 2·batch·n_in·n_out for each product
    per_layer = [2.0 * n * t.inference.n_in * t.inference.n_out for t in training]
    flop_forward = sum(per_layer)
    flop_dw = sum(per_layer)
    flop_signal = sum(per_layer[1:])
    flop_step = flop_forward + flop_dw + flop_signal
    print(f"GEMM work per step: forward {flop_forward / 1e9:.2f} GFLOP, backward "
          f"{(flop_dw + flop_signal) / 1e9:.2f} (∇w {flop_dw / 1e9:.2f}, signal {flop_signal / 1e9:.2f}), "
          f"total {flop_step / 1e9:.2f} GFLOP")
    owned = engine.nbytes(x) + sum(l.nbytes() for l in layers) + sum(sum(t.nbytes().values()) for t in training)
    print(f"memory: {owned / 2**20:.1f} MiB (x, weights, z/a, gradients) + "
          f"{sum(engine.nbytes(s) for s in scratch.values()) / 2**20:.1f} MiB scratch for the GEMM-only timing")

    # Check the result before timing: the forward pass of the first 64 samples against
    # float64 NumPy (the rest of the batch is the same code).
    forward()
    rows = min(64, n)
    h = x_host[:rows].astype(np.float64)
    for layer, act in zip(layers, activations):
        h = h @ engine.to_host(layer.w).astype(np.float64).T + engine.to_host(layer.b).astype(np.float64)
        h = np.tanh(h) if act == "tanh" else 1 / (1 + np.exp(-h))
    err = float(np.abs(engine.to_host(t3.a)[:rows] - h).max())
    tol = 1e-3 if dtype == np.float32 else 1e-10
    print(f"check: forward output vs float64 NumPy, max |difference| {err:.1e} "
          f"({'ok' if err < tol else 'WRONG'})")
    if not err < tol:
        sys.exit(1)

    print(f"\ntiming: median of {args.repeats} after one warm-up")
    results = [("forward", median_ms(engine, forward, args.repeats), flop_forward),
               ("full step (forward + backward)", median_ms(engine, step, args.repeats), flop_step),
               ("the step's GEMMs alone", median_ms(engine, gemms, args.repeats), flop_step)]
    print(f"{'':<32}{'ms':>10}{'GFLOP/s':>10}")
    for name, ms, flop in results:
        print(f"{name:<32}{ms:>10.2f}{flop / ms / 1e6:>10.1f}")
    step_ms, gemm_ms = results[1][1], results[2][1]
    print(f"\nGEMMs are {100 * gemm_ms / step_ms:.0f}% of the step; everything else (bias, activations, "
          f"derivatives, Σ rows) takes {max(step_ms - gemm_ms, 0.0):.2f} ms")
    print("(the seed, N=10000: 130.9 ms on a GTX 1080 Ti with CUDA, 342.7 ms on an R9 290X with OpenCL)")

    for obj in training + layers:
        obj.release()


if __name__ == "__main__":
    main()
