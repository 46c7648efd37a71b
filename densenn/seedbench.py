"""The seed's micro-benchmark, defined once.

Dragan Djuric's "Deep Learning from Scratch to GPU", part 9, times one training step
of a big network on a GPU: a batch ``x`` of 10000×10000 through 10000→5000 tanh →
1000 sigmoid → 10 sigmoid, forward and backward, and observes that the backward
pass's elementwise work (derivative, Hadamard product) costs almost nothing next to
the O(n³) matrix products. Here the same network for any ``N`` (x N×N, N → N/2 tanh
→ N/10 sigmoid → 10 sigmoid), built with the public API (``Network``, ``Dense``,
``TrainingNetwork``):

* ``forward``: the training layers' forward pass;
* ``step``: forward, then backward through the three layers, as the seed: the signal
  of the last layer is its own output (∂C/∂a = a, i.e. C = ½·Σa²), no cost kernel, no
  optimizer update; densenn's backward computes δ, ∇w, ∇b and the signal for the layer
  below (none below the first layer);
* ``gemms``: the same step's GEMMs alone (z = x·wᵀ, ∇w = δᵀ·x, signal = δ·w) through
  ``engine.gemm``, on the same buffers (the signals into scratch, so repeating them
  cannot grow the values): the floor the step is compared with.

Weights are drawn, not initialised to zero (never time on zeros): ``w`` ~ N(0, 1)/√fan_in
(the activations are not saturated), ``b`` ~ 0.1·N(0, 1), ``x`` uniform in [-1, 1), from
``numpy.random.default_rng(seed)`` in that order; the same numbers on every engine.

:class:`SeedBench` holds one such network on an engine; :func:`run` times it and
returns the figures ``densenn bench`` prints. ``examples/05_micro_benchmark.py`` and the
scripts in ``benchmarks/`` use the same two.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from densenn.backend import check_dtype, get_engine
from densenn.errors import DensennError
from densenn.nn.network import Dense, Network, TrainingNetwork

#: the activations of the three layers
ACTIVATIONS = ("tanh", "sigmoid", "sigmoid")
#: the smallest N: the third layer has N/10 units
MIN_SIZE = 20
#: the seed's own size (its GPU run)
SEED_SIZE = 10000
#: rows of the forward output checked against float64 NumPy
CHECK_ROWS = 64


def layer_sizes(n: int) -> list[int]:
    """``[N, N/2, N/10, 10]``: the input width and the three layers' widths."""
    return [n, n // 2, n // 10, 10]


def describe(n: int) -> str:
    """``"N→N/2 tanh → N/10 sigmoid → 10 sigmoid"`` for this N."""
    s = layer_sizes(n)
    return f"{s[0]}→{s[1]} tanh → {s[2]} sigmoid → {s[3]} sigmoid"


def flops(n: int) -> dict:
    """GEMM FLOPs (2·m·n·k each) of one step: forward, ∇w, signals (none below the first layer), step."""
    per = [2.0 * n * a * b for a, b in zip(layer_sizes(n), layer_sizes(n)[1:])]
    return {"forward": sum(per), "dw": sum(per), "signal": sum(per[1:]), "step": 2 * sum(per) + sum(per[1:])}


def check_size(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < MIN_SIZE:
        raise DensennError(f"the seed benchmark's N must be an integer of at least {MIN_SIZE} "
                           f"(the third layer has N/10 units), got {n!r}")
    return int(n)


def draw(n: int, seed: int = 0):
    """``(x, [(w, b), ...])``: the input and the weights as float32 host arrays (see the module doc)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, n), dtype=np.float32) * 2 - 1
    sizes = layer_sizes(n)
    weights = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        w = rng.standard_normal((n_out, n_in), dtype=np.float32) / np.float32(np.sqrt(n_in))
        b = rng.standard_normal(n_out).astype(np.float32) * np.float32(0.1)
        weights.append((w, b))
    return x, weights


def reference_forward(x, weights, rows: int = CHECK_ROWS) -> np.ndarray:
    """The network's output for the first ``rows`` rows of ``x``, in float64 NumPy."""
    h = np.asarray(x[:rows], dtype=np.float64)
    for (w, b), act in zip(weights, ACTIVATIONS):
        h = h @ np.asarray(w, dtype=np.float64).T + np.asarray(b, dtype=np.float64)
        h = np.tanh(h) if act == "tanh" else 1 / (1 + np.exp(-h))
    return h


def median_ms(engine, fn, repeat: int) -> float:
    """Median wall time of fn() in ms after one warm-up; synchronises so device work is counted."""
    fn()
    engine.synchronize()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        engine.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


class SeedBench:
    """The seed's network for x ``n``×``n`` on ``engine``, with its training network.

    ``net`` is the :class:`~densenn.Network` (weights from :func:`draw`), ``x_host``
    and ``weights`` the host arrays, ``trainer`` the :class:`~densenn.TrainingNetwork`
    for a batch of ``n`` holding ``x`` in its input buffer, ``layers`` its training
    layers. ``attach=False`` makes only the network (weights on the engine, ``x`` on
    the host); :meth:`attach` adds the training network later (what training adds).
    Use as a context manager, or call :meth:`release`.
    """

    def __init__(self, n: int, engine=None, dtype="float32", seed: int = 0, attach: bool = True):
        self.n = check_size(n)
        self.sizes = layer_sizes(self.n)
        self.engine = get_engine(engine)
        self.dtype = check_dtype(self.engine, dtype)
        self.x_host, self.weights = draw(self.n, seed)
        specs = [Dense(units, act) for units, act in zip(self.sizes[1:], ACTIVATIONS)]
        self.net = Network(self.n, specs, engine=self.engine, dtype=self.dtype, seed=seed)
        self.net.set_weights(self.weights)
        self.trainer: TrainingNetwork | None = None
        self.layers: list = []
        self._scratch: list = []
        if attach:
            self.attach()

    def attach(self) -> SeedBench:
        """Make the training network (input buffer, z, a, ∇w, ∇b, work) and load ``x`` into it."""
        if self.trainer is None:
            # the cost is never used: the seed's step starts backward from the last layer's output
            self.trainer = TrainingNetwork(self.net, self.n, "quadratic")
            self.engine.upload(np.ascontiguousarray(self.x_host, dtype=self.dtype), self.trainer.x)
            self.layers = list(self.trainer.layers)
        return self

    # -- the three timed functions -------------------------------------------------------
    def forward(self):
        """The forward pass: z = x·wᵀ + b, a = f(z), layer by layer."""
        for layer in self.layers:
            layer.forward()

    def step(self):
        """The seed's (forward 1) (forward 2) (forward 3) (backward 3) (backward 2) (backward 1)."""
        self.forward()
        for i in range(len(self.layers) - 1, -1, -1):
            # the last layer's signal is its own output; nothing below the first layer
            self.layers[i].backward(propagate=i > 0)

    def gemms(self):
        """The step's GEMMs alone; the signal GEMMs write into scratch, not into the layers' inputs."""
        e = self.engine
        if not self._scratch:
            self._scratch = [None] + [e.empty(tuple(t.x.shape), self.dtype) for t in self.layers[1:]]
        for t in self.layers:
            e.gemm(1.0, t.x, t.w, 0.0, t.z, trans_b=True)
        for t, scratch in zip(reversed(self.layers), reversed(self._scratch)):
            e.gemm(1.0, t.z, t.x, 0.0, t.dw, trans_a=True)
            if scratch is not None:
                e.gemm(1.0, t.z, t.w, 0.0, scratch)

    # -- results ---------------------------------------------------------------------------
    def output(self) -> np.ndarray:
        """The last layer's ``a`` as a host array (after :meth:`forward`; backward overwrites it)."""
        return self.engine.to_host(self.layers[-1].a)

    def gradients(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(∇w, ∇b), ...] per layer as host arrays (after :meth:`step`)."""
        return [(self.engine.to_host(t.dw), self.engine.to_host(t.db)) for t in self.layers]

    def check(self, rows: int = CHECK_ROWS) -> float:
        """Run the forward pass; max |output − float64 NumPy| over the first ``rows`` rows."""
        self.forward()
        rows = min(rows, self.n)
        return float(np.abs(self.output()[:rows] - reference_forward(self.x_host, self.weights, rows)).max())

    def tolerance(self) -> float:
        return 1e-3 if self.dtype == np.float32 else 1e-10

    def nbytes(self) -> dict:
        """Engine bytes: ``weights``, ``input`` (the batch x), ``layers`` (the training layers'
        z, a, ∇w, ∇b, work), ``unused`` (the training network's buffers the seed's step does
        not touch: targets, labels, the cost's work), ``scratch`` (the GEMM-only timing's),
        and their ``total``."""
        e = self.engine
        out = {"weights": sum(layer.nbytes() for layer in self.net.layers), "input": 0, "layers": 0, "unused": 0,
               "scratch": sum(e.nbytes(s) for s in self._scratch if s is not None)}
        if self.trainer is not None:
            out["input"] = e.nbytes(self.trainer.x)
            out["layers"] = sum(sum(layer.nbytes().values()) for layer in self.layers)
            out["unused"] = sum(self.trainer.nbytes().values()) - out["input"] - out["layers"]
        out["total"] = sum(out.values())
        return out

    def release(self):
        for buf in self._scratch:
            if buf is not None:
                self.engine.release(buf)
        self._scratch = []
        if self.trainer is not None:
            self.trainer.release()
            self.trainer = None
        self.layers = []
        self.net.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def run(engine=None, n: int = 4000, repeat: int = 3, dtype="float32", seed: int = 0) -> dict:
    """The seed's micro-benchmark on ``engine``: check the forward pass against float64 NumPy
    (a DensennError if it differs), then the median of ``repeat`` timed runs after one warm-up
    of the forward pass, the step and the step's GEMMs alone. Returns the figures
    ``densenn bench --json`` prints (see docs/cli.md)."""
    with SeedBench(n, engine, dtype, seed) as s:
        e = s.engine
        err = s.check()
        tol = s.tolerance()
        if not err < tol:
            raise DensennError(f"bench check failed: the forward pass differs from NumPy by {err:.2e} "
                               f"(tolerance {tol:g}) on engine {e.name}")
        f = flops(s.n)
        forward_ms = median_ms(e, s.forward, repeat)
        step_ms = median_ms(e, s.step, repeat)
        gemm_ms = median_ms(e, s.gemms, repeat)
        nbytes = s.nbytes()
        memory = nbytes["weights"] + nbytes["input"] + nbytes["layers"]
        return {"size": s.n, "layers": s.sizes, "activations": list(ACTIVATIONS), "repeat": repeat,
                "engine": e.name, "dtype": s.dtype.name,
                "forward_ms": forward_ms, "step_ms": step_ms, "gemm_ms": gemm_ms,
                "overhead_ratio": step_ms / gemm_ms, "gemm_share": gemm_ms / step_ms,
                "gflop_forward": f["forward"] / 1e9, "gflop_step": f["step"] / 1e9,
                "forward_gflops": f["forward"] / forward_ms / 1e6, "step_gflops": f["step"] / step_ms / 1e6,
                "gemm_gflops": f["step"] / gemm_ms / 1e6, "check_max_error": err, "memory_bytes": memory}


__all__ = ["ACTIVATIONS", "MIN_SIZE", "SEED_SIZE", "SeedBench", "run", "layer_sizes", "describe", "flops",
           "draw", "reference_forward", "median_ms", "check_size"]
