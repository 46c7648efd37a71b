"""04 — The backward pass, by hand: delta, ∇w, ∇b, the signal, and an SGD update.

Part 9 of the seed ends at the first line of the backward pass,
``(mul! (prime activ-fn z) a)``, and names what is left: ∇_b C, ∇_w C, the
signal for the previous layer, and the weight update. This example does all of
it with the engine's operations, one equation per line, on the seed's network
(tanh 2→4, sigmoid 4→1, its weights) and a tiny problem (XOR, four samples):

    forward        z = x·wᵀ + b  (kept)        a = f(z)
    cost           C = mean over samples of ½‖a − y‖²     (the quadratic cost)
    ∇ₐC            a ← (a − y)/n                written into the LAST layer's a
    delta          z ← f'(z) ∘ a                the seed's one-liner; z is spent
    ∇w             dw = deltaᵀ·x                (seed, column-major: δ·xᵀ)
    ∇b             db = Σ over samples of delta (seed: δ·1)
    signal         x ← delta·w                  (seed: wᵀδ) — x IS the previous
                                                layer's a, so that is where the
                                                previous layer finds its signal
    SGD            w ← w − η·dw,  b ← b − η·db

Then it checks that ``DenseTraining.backward`` does exactly these lines, that the
gradients match densenn.check_gradients (central finite differences), and trains
a few hand-written SGD steps, printing the loss going down.

Run:  python examples/04_backward.py [--engine cpu] [--steps 20] [--lr 2.0]
      (--steps 1000 solves XOR: outputs ≈ 0.02 0.98 0.98 0.03)
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import densenn as dn
from densenn.backend import check_dtype


def column_major(values, rows, cols):
    """The seed's ``(ge factory rows cols values)``: a rows×cols matrix filled column by column."""
    return np.asarray(values, dtype=np.float64).reshape(cols, rows).T


def fresh(engine, host, dtype):
    """A new engine array holding ``host`` (to_engine may return ``host`` itself on the CPU)."""
    host = np.ascontiguousarray(host, dtype=dtype)
    return engine.upload(host, engine.empty(host.shape, dtype))


# The seed's weights (densenn adds b, the seed subtracts it: we store −b).
W1 = column_major([0.3, 0.1, 0.9, 0.0, 0.6, 2.0, 3.7, 1.0], 4, 2)
B1 = -np.array([0.7, 0.2, 1.1, 2.0])
W2 = column_major([0.75, 0.15, 0.22, 0.33], 1, 4)
B2 = -np.array([0.3])
# XOR: four samples, two features, one 0/1 target each
X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
Y = np.array([[0.0], [1.0], [1.0], [0.0]])


def numpy_reference(w1, b1, w2, b2, x, y):
    """Loss and gradients in float64 NumPy, the chain rule written out, for comparison."""
    z1 = x @ w1.T + b1
    a1 = np.tanh(z1)
    z2 = a1 @ w2.T + b2
    a2 = 1 / (1 + np.exp(-z2))
    n = len(x)
    loss = 0.5 * np.sum((a2 - y) ** 2) / n
    d2 = (a2 - y) / n * a2 * (1 - a2)              # ∇ₐC ∘ σ'(z2)
    d1 = (d2 @ w2) * (1 - a1 ** 2)                 # (δ²·w2) ∘ tanh'(z1)
    return loss, [(d1.T @ x, d1.sum(0)), (d2.T @ a1, d2.sum(0))]


def loss_of(engine, t2, y_host):
    """The quadratic cost of the last forward pass, read to the host (a real loop keeps it on the engine)."""
    a = engine.to_host(t2.a).astype(np.float64)
    return 0.5 * float(np.sum((a - y_host) ** 2)) / len(y_host)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="cpu", help="engine name: cpu, cpu:numpy, opencl, cuda (default cpu)")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                        help="float64 (default) for a tight gradient check")
    parser.add_argument("--steps", type=int, default=20, help="hand-written SGD steps (default 20)")
    parser.add_argument("--lr", type=float, default=2.0, help="SGD learning rate η (default 2.0)")
    args = parser.parse_args(argv)
    if args.steps < 1 or not args.lr > 0:
        parser.error("--steps must be ≥ 1 and --lr > 0")
    try:
        engine = dn.get_engine(args.engine)
        dtype = check_dtype(engine, args.dtype)
    except dn.DensennException as exc:
        sys.exit(f"engine {args.engine!r} cannot run this here: {exc}")
    np.set_printoptions(precision=6, suppress=True)
    print(f"engine: {engine!r}, dtype: {dtype}\n")

    n = len(X)
    layer1 = dn.DenseInference(engine, 2, 4, "tanh", dtype, w=fresh(engine, W1, dtype), b=fresh(engine, B1, dtype))
    layer2 = dn.DenseInference(engine, 4, 1, "sigmoid", dtype, w=fresh(engine, W2, dtype), b=fresh(engine, B2, dtype))
    x = fresh(engine, X, dtype)
    y = fresh(engine, Y, dtype)
    t1 = dn.DenseTraining(layer1, x)              # reads the batch x (never writes it)
    t2 = dn.DenseTraining.after(layer2, t1)       # reads t1.a; writes its signal there
    quadratic = dn.get_cost("quadratic")
    cost_work = engine.empty((n, 1), dtype)

    # ================================================================================
    print("One step, equation by equation")
    print("=" * 78)
    t1.forward()                                  # z1 = x·w1ᵀ + b1, a1 = tanh(z1)
    t2.forward()                                  # z2 = a1·w2ᵀ + b2, a2 = σ(z2)
    loss0 = loss_of(engine, t2, Y)
    print(f"forward: outputs a2 = {engine.to_host(t2.a).ravel()}, targets {Y.ravel()}, loss {loss0:.6f}")

    # ∇ₐC into the last layer's a. For C = ½‖a − y‖² averaged over n samples it is (a − y)/n.
    # (The cost writes straight into a: the output is no longer needed once the loss is read.)
    quadratic.gradient(engine, t2.a, y, t2.a, 1.0 / n, cost_work)
    print(f"\n∇ₐC = (a2 − y)/n, written into t2.a:            {engine.to_host(t2.a).ravel()}")

    # -- layer 2 (the last) --
    t2.activ_fn.delta(t2.z, t2.a)                 # z2 ← σ'(z2) ∘ a2: delta², the seed's one-liner
    print(f"delta² = σ'(z2) ∘ ∇ₐC, written into t2.z:      {engine.to_host(t2.z).ravel()}")
    engine.gemm(1.0, t2.z, t2.x, 0.0, t2.dw, trans_a=True)   # dw2 = delta²ᵀ·a1   (1×4)
    engine.sum_rows(t2.z, t2.db)                              # db2 = Σ_samples delta²
    print(f"∇w2 = delta²ᵀ·a1:                                {engine.to_host(t2.dw).ravel()}")
    print(f"∇b2 = Σ delta²:                                  {engine.to_host(t2.db)}")
    engine.gemm(1.0, t2.z, t2.w, 0.0, t2.x)                   # t2.x (= t1.a) ← delta²·w2
    print(f"signal delta²·w2 written into t2.x, which IS t1.a: first sample {engine.to_host(t1.a)[0]}")

    # -- layer 1 (the first): the same three lines, but no signal: its x is the user's batch --
    t1.activ_fn.delta(t1.z, t1.a)                 # z1 ← tanh'(z1) ∘ (delta²·w2): delta¹
    engine.gemm(1.0, t1.z, t1.x, 0.0, t1.dw, trans_a=True)   # dw1 = delta¹ᵀ·x    (4×2)
    engine.sum_rows(t1.z, t1.db)                              # db1 = Σ delta¹
    print(f"delta¹ = tanh'(z1) ∘ signal, first sample:        {engine.to_host(t1.z)[0]}")
    print(f"∇w1 = delta¹ᵀ·x:\n{engine.to_host(t1.dw)}")
    print(f"∇b1 = Σ delta¹:                                  {engine.to_host(t1.db)}")

    hand = [(engine.to_host(t.dw).astype(np.float64), engine.to_host(t.db).astype(np.float64)) for t in (t1, t2)]
    ref_loss, ref = numpy_reference(W1, B1, W2, B2, X, Y)
    err_ref = max(np.abs(h - r).max() for hp, rp in zip(hand, ref) for h, r in zip(hp, rp))
    print(f"\nagainst the chain rule in float64 NumPy: max |difference| {err_ref:.1e}")

    # -- the same, as DenseTraining.backward does it ------------------------------------
    t1.forward()
    t2.forward()
    quadratic.gradient(engine, t2.a, y, t2.a, 1.0 / n, cost_work)
    t2.backward()                                 # delta, dw, db, and the signal into t1.a
    t1.backward(propagate=False)                  # delta, dw, db; x stays the user's data
    layers = [(engine.to_host(t.dw), engine.to_host(t.db)) for t in (t1, t2)]
    same = all(np.array_equal(h.astype(dtype), l) for hp, lp in zip(hand, layers) for h, l in zip(hp, lp))
    print(f"DenseTraining.backward() gives the very same numbers: {same}")

    # -- finite differences -----------------------------------------------------------
    # A Network with the same layers and weights: net.gradients runs this backward pass,
    # dn.check_gradients compares it with (C(θ+ε) − C(θ−ε))/2ε for every weight and bias.
    net = dn.Network(2, [dn.Dense(4, "tanh"), dn.Dense(1, "sigmoid")], engine=engine, dtype=dtype)
    net.set_weights([(W1, B1), (W2, B2)])
    net_grads = net.gradients(X, Y, cost="quadratic")
    err_net = max(np.abs(h - g).max() for hp, gp in zip(hand, net_grads) for h, g in zip(hp, gp))
    eps = 1e-6 if dtype == np.float64 else 1e-3
    rel = dn.check_gradients(net, X, Y, cost="quadratic", eps=eps)
    tol = 1e-6 if dtype == np.float64 else 5e-2
    print(f"net.gradients(...) vs by hand: max |difference| {err_net:.1e}")
    print(f"check_gradients (finite differences): max relative error {rel:.1e} "
          f"({'ok' if rel < tol else 'TOO LARGE'}: < {tol:g} in {dtype})")
    # one entry by hand, to see what a finite difference is
    w2p, w2m = W2.copy(), W2.copy()
    w2p[0, 0] += eps
    w2m[0, 0] -= eps
    numeric = (numpy_reference(W1, B1, w2p, B2, X, Y)[0] - numpy_reference(W1, B1, w2m, B2, X, Y)[0]) / (2 * eps)
    print(f"∂C/∂w2[0,0]: backprop {hand[1][0][0, 0]:.8f}, (C(w+ε) − C(w−ε))/2ε = {numeric:.8f}")
    net.release()

    # ================================================================================
    print(f"\nTraining: {args.steps} hand-written SGD steps, η = {args.lr}")
    print("=" * 78)
    losses = []
    for step in range(args.steps):
        t1.forward()
        t2.forward()
        losses.append(loss_of(engine, t2, Y))
        quadratic.gradient(engine, t2.a, y, t2.a, 1.0 / n, cost_work)
        t2.backward()
        t1.backward(propagate=False)
        for t in (t1, t2):                        # w ← w − η·∇w, b ← b − η·∇b (in place, BLAS axpy)
            engine.axpy(-args.lr, t.dw, t.w)
            engine.axpy(-args.lr, t.db, t.b)
        if step < 5 or step == args.steps - 1 or (step + 1) % 10 == 0:
            print(f"step {step + 1:>4}: loss before the update {losses[-1]:.6f}")
    t1.forward()
    t2.forward()
    final = loss_of(engine, t2, Y)
    decreasing = all(b <= a for a, b in zip(losses, losses[1:] + [final]))
    print(f"loss {losses[0]:.6f} -> {final:.6f} after {args.steps} steps "
          f"({'decreased at every step' if decreasing else 'did NOT decrease at every step'})")
    # The training layers updated the inference layers' weights: inference sees them.
    print(f"inference with the updated weights: {engine.to_host(layer2(layer1(x))).ravel()} (targets {Y.ravel()})")
    print("(dn.SGD(lr).step(params, grads, ...) does the same update through engine.sgd_update.)")

    for obj in (t1, t2, layer1, layer2):
        obj.release()
    if err_ref > (1e-10 if dtype == np.float64 else 1e-5) or rel >= tol or final >= losses[0]:
        sys.exit(1)


if __name__ == "__main__":
    main()
