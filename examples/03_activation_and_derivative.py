"""03 — The activation and its derivative: activ keeps z, prime overwrites z.

The seed's ``Activation`` protocol has two methods, shaped after how a training
layer uses them:

* ``(activ [_ z a!])``: the forward pass writes f(z) into ``a`` and keeps ``z``
  (the backward pass will need it);
* ``(prime [_ z!])``: the backward pass no longer needs ``z`` after taking the
  derivative, so f'(z) overwrites it.

and the backward pass's one-liner ``(mul! (prime activ-fn z) a)``: delta =
f'(z) ∘ a, into z. densenn's ``ActivationFn`` (densenn/nn/activation.py) is the
seed's ``SigmoidActivation``/``TanhActivation`` object: an activation bound to an
engine plus the working memory it needs for one batch size. Its methods are
``activ(z, a)``, ``prime(z)`` and ``delta(z, a)``.

Part 1 reproduces the seed's sigmoid table and its tanh. Part 2 goes through
every activation densenn has: what it computes, its derivative checked against
finite differences, what working memory it needs, and why.

Run:  python examples/03_activation_and_derivative.py [--engine cpu] [--dtype float64]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import densenn as dn
from densenn.backend import check_dtype
from densenn.nn.activation import ActivationFn, get_activation


def fresh(engine, host, dtype):
    """A new engine array holding ``host``.

    Not ``engine.to_engine(host)``: on the CPU engine that may hand back ``host`` itself
    (no copy when the dtype already matches), and prime/delta would then overwrite our
    NumPy array. Here the engine writes into z, so it gets its own buffer.
    """
    host = np.ascontiguousarray(host, dtype=dtype)
    return engine.upload(host, engine.empty(host.shape, dtype))


def column_major(values, rows, cols):
    """The seed's ``(fge rows cols values)``: a rows×cols matrix filled column by column."""
    return np.asarray(values, dtype=np.float64).reshape(cols, rows).T


# Why each activation needs (or does not need) working memory in densenn. The seed's
# sigmoid needs a work matrix because its derivative σ(1−σ) holds σ in z and computes
# 1−σ next to it; densenn rewrites the formula so it runs in place.
WHY_WORK = {
    "sigmoid": "none: σ'(z) = (1 − tanh²(z/2))/4 is computed in place in z "
               "(the seed's σ·(1−σ) needed a second matrix for 1−σ)",
    "tanh": "none: tanh'(z) = 1 − tanh²(z), in place (the seed's 1/cosh²(z) needs none either)",
    "relu": "none: f'(z) is the step [z > 0], written over z",
    "leaky_relu": "none: f'(z) = p + (1 − p)[z > 0], in place",
    "elu": "full (like z): f'(z) = α·exp(min(z,0)) + (1−α)[z > 0] needs exp(min(z,0)) and the "
           "sign of z at the same time; one of them lives in work (activ uses it for α·expm1 too)",
    "softplus": "none: f'(z) = sigmoid(z), in place",
    "linear": "none: f'(z) = 1; delta just copies the signal into z",
    "softmax": "one value per sample, (batch, 1): the row max (for a stable exp), the row sum, "
               "and in delta the dot product Σⱼ sⱼ·gⱼ of each sample",
}


def part1_seed_table(engine, dtype):
    print("=" * 78)
    print("Part 1: the seed's table, (fge 2 3 [-0.6 0 0.2 0.5 0.7 1])")
    print("=" * 78)
    seed_z = column_major([-0.6, 0, 0.2, 0.5, 0.7, 1], 2, 3)      # 2×3, as the seed prints it
    print("z in the seed's layout (2 outputs × 3 samples):\n", seed_z)
    # densenn's array for the same matrix is (samples, outputs) = (3, 2): the transpose,
    # and (as for every batch) the same bytes in the same order as the seed's.
    z = fresh(engine, seed_z.T, dtype)
    a = engine.empty(z.shape, dtype)

    # ((sigmoid) z): the constructor that sizes the working memory for this batch
    sigmoid = ActivationFn.for_layer(get_activation("sigmoid"), engine, batch=3, n_out=2, dtype=dtype)
    sigmoid.activ(z, a)                      # a <- σ(z); z kept
    z_after_activ = engine.to_host(z).T
    sigmoid.prime(z)                         # z <- σ'(z); z overwritten
    function, derivative = engine.to_host(a).T, engine.to_host(z).T
    print("\n:function   (activ z a)  =\n", np.round(function.astype(float), 2))
    print(":derivative (prime z)    =\n", np.round(derivative.astype(float), 2))
    print("the seed prints  [[0.35 0.55 0.67] [0.50 0.62 0.73]]  and  [[0.23 0.25 0.22] [0.25 0.24 0.20]]")
    print("activ kept z:", np.allclose(z_after_activ, seed_z),
          "| prime overwrote z with σ'(z):", not np.allclose(derivative, seed_z))
    print("sigmoid working memory:", sigmoid.work, "(densenn needs none, see Part 2)")

    # tanh: the seed's TanhActivation, derivative 1/cosh²(z)
    tanh = ActivationFn.for_layer(get_activation("tanh"), engine, 3, 2, dtype)
    z = fresh(engine, seed_z.T, dtype)
    tanh.activ(z, a)
    tanh.prime(z)
    print("\ntanh(z)  =\n", np.round(engine.to_host(a).T.astype(float), 2))
    print("tanh'(z) =\n", np.round(engine.to_host(z).T.astype(float), 2))
    print("max |densenn's 1 − tanh²  −  the seed's 1/cosh²|:",
          f"{np.abs(engine.to_host(z).T - 1 / np.cosh(seed_z) ** 2).max():.1e}")

    # The backward one-liner: delta = prime(z) ∘ a, into z, with a holding the signal g.
    z = fresh(engine, seed_z.T, dtype)
    g = np.array([[1.0, -1.0], [0.5, 2.0], [0.0, 3.0]])            # some signal from above
    sigmoid.delta(z, fresh(engine, g, dtype))
    s = 1 / (1 + np.exp(-seed_z.T))
    print("\n(mul! (prime activ-fn z) a): delta(z, a) = σ'(z) ∘ a; max error vs NumPy:",
          f"{np.abs(engine.to_host(z) - s * (1 - s) * g).max():.1e}")
    sigmoid.release()
    tanh.release()


def softmax_rows(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def part2_all_activations(engine, dtype):
    print()
    print("=" * 78)
    print("Part 2: every activation in densenn.ACTIVATIONS")
    print("=" * 78)
    # 4 samples × 3 outputs. z = 0 is where relu and leaky_relu have a kink (densenn takes
    # f'(0) from the left: 0 for relu, p for leaky_relu); finite differences skip it.
    z_host = np.array([[-0.6, 0.0, 1.5], [-2.0, 0.2, 0.5], [3.0, -1.5, 0.7], [-0.1, 4.0, 2.5]])
    g_host = np.array([[1.0, -1.0, 0.5], [0.3, 2.0, -0.7], [-1.2, 0.4, 1.0], [0.9, -0.2, 0.6]])
    batch, n_out = z_host.shape
    h = 1e-6 if dtype == np.float64 else 1e-2
    tol = 1e-6 if dtype == np.float64 else 2e-3
    worst = 0.0
    for name, cls in dn.ACTIVATIONS.items():
        act = cls()
        fn = ActivationFn.for_layer(act, engine, batch, n_out, dtype)
        z = fresh(engine, z_host, dtype)
        a = engine.empty(z.shape, dtype)

        def f(values):
            zz = fresh(engine, values, dtype)
            out = engine.empty(zz.shape, dtype)
            fn.activ(zz, out)
            return engine.to_host(out).astype(np.float64)

        fn.activ(z, a)
        fa = engine.to_host(a)
        kept = np.array_equal(engine.to_host(z), z_host.astype(dtype))
        fn.prime(z)                                   # z <- f'(z) (softmax: the diagonal only)
        fp = engine.to_host(z).astype(np.float64)
        # finite differences of f itself, element by element (central, one z at a time)
        numeric = np.zeros_like(z_host)
        for i in range(batch):
            for j in range(n_out):
                up, down = z_host.copy(), z_host.copy()
                up[i, j] += h
                down[i, j] -= h
                numeric[i, j] = (f(up)[i, j] - f(down)[i, j]) / (2 * h)
        smooth = np.abs(z_host) > 10 * h
        err_prime = np.abs(fp - numeric)[smooth].max()
        # delta: z <- f'(z) ∘ g (softmax: the full Jacobian-vector product s ∘ (g − Σ s·g))
        z = fresh(engine, z_host, dtype)
        fn.delta(z, fresh(engine, g_host, dtype))
        delta = engine.to_host(z).astype(np.float64)
        if act.elementwise:
            expected = fp * g_host
        else:
            s = softmax_rows(z_host)
            expected = s * (g_host - (s * g_host).sum(axis=1, keepdims=True))
        err_delta = np.abs(delta - expected).max()
        worst = max(worst, err_prime, err_delta)

        work = "none" if fn.work is None else f"{tuple(fn.work.shape)}, {fn.nbytes()} bytes"
        print(f"\n{name:<11} f(z) first sample {np.round(fa[0].astype(float), 4)}, "
              f"f'(z) {np.round(fp[0], 4)}")
        print(f"{'':<11} activ kept z: {kept}; |prime − finite diff.| {err_prime:.1e}; "
              f"|delta − f'∘g| {err_delta:.1e}" + ("" if act.elementwise else " (full Jacobian)"))
        print(f"{'':<11} working memory for batch {batch}: {work}")
        print(f"{'':<11} why: {WHY_WORK.get(name, '(see densenn/nn/activation.py)')}")
        fn.release()
    status = "ok" if worst < tol else "TOO LARGE"
    print(f"\nlargest derivative error over all activations: {worst:.1e} ({status}: < {tol:g} in {dtype})")
    if worst >= tol:
        sys.exit(1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="cpu", help="engine name: cpu, cpu:numpy, opencl, cuda (default cpu)")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                        help="float64 (default) makes the finite-difference checks tight")
    args = parser.parse_args(argv)
    try:
        engine = dn.get_engine(args.engine)
        dtype = check_dtype(engine, args.dtype)
    except dn.DensennException as exc:
        sys.exit(f"engine {args.engine!r} cannot run this here: {exc}")
    np.set_printoptions(precision=4, suppress=True)
    print(f"engine: {engine!r}, dtype: {dtype}\n")
    part1_seed_table(engine, dtype)
    part2_all_activations(engine, dtype)


if __name__ == "__main__":
    main()
