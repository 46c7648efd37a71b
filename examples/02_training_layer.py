"""02 — The training layer: shared weights, own buffers, and buffers passed between layers.

The seed builds a ``FullyConnectedTraining`` from an inference layer:

* it takes *views* of the inference layer's ``w`` and ``b`` (training changes
  the very weights inference uses; nothing is copied);
* it owns ``z`` and ``a`` for one fixed batch size (the inference layer works
  for any batch size and so cannot preallocate them);
* its input ``a-1`` is the previous layer's output ``a``: the same buffer, not a
  copy. In the backward pass the next layer writes its signal into that buffer,
  so the previous layer finds it in its own ``a``.

densenn's ``DenseTraining`` is that type. ``DenseTraining(inference, x)`` builds
the first layer on the batch ``x``; ``DenseTraining.after(inference, previous)``
(the seed's two-argument ``training-layer``) builds one that reads
``previous.a``. This example builds both for the seed's network, runs the
forward pass, shows what is shared and what is owned, and runs the seed's exact
sequence (forward, forward, backward, backward, read the output: 0.44).

Run:  python examples/02_training_layer.py [--engine cpu] [--size BATCH]
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


def same_buffer(p, q) -> str:
    """Whether two engine arrays are one buffer: np.shares_memory on the CPU, identity elsewhere."""
    if isinstance(p, np.ndarray) and isinstance(q, np.ndarray):
        return f"np.shares_memory -> {np.shares_memory(p, q)}"
    return f"is -> {p is q}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="cpu", help="engine name: cpu, cpu:numpy, opencl, cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--size", type=int, default=2,
                        help="batch size: how many copies of the seed's sample (0.3, 0.9) (default 2, as in the seed)")
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error("--size must be at least 1")
    try:
        engine = dn.get_engine(args.engine)
        dtype = check_dtype(engine, args.dtype)
    except dn.DensennException as exc:
        sys.exit(f"engine {args.engine!r} is not available here: {exc}")
    np.set_printoptions(precision=7, suppress=True)
    print(f"engine: {engine!r}, dtype: {dtype}, batch: {args.size}\n")

    # The inference layers of example 01, with the seed's weights (and −b: the seed
    # subtracts its bias, densenn adds it).
    w1 = column_major([0.3, 0.1, 0.9, 0.0, 0.6, 2.0, 3.7, 1.0], 4, 2)
    w2 = column_major([0.75, 0.15, 0.22, 0.33], 1, 4)
    layer1 = dn.DenseInference(engine, 2, 4, "tanh", dtype)
    layer2 = dn.DenseInference(engine, 4, 1, "sigmoid", dtype)
    for host, device in ((w1, layer1.w), (-np.array([0.7, 0.2, 1.1, 2.0]), layer1.b),
                         (w2, layer2.w), (-np.array([0.3]), layer2.b)):
        engine.upload(np.ascontiguousarray(host, dtype=dtype), device)

    # The batch: the user's data, (samples, features). The first training layer reads it
    # and never writes it.
    x = engine.to_engine(np.tile([0.3, 0.9], (args.size, 1)), dtype)

    # -- building the training layers ------------------------------------------------------
    # (training-layer layer-1 x ones)        -> DenseTraining(layer1, x)
    # (training-layer layer-2 training-layer-1) -> DenseTraining.after(layer2, t1)
    with dn.DenseTraining(layer1, x) as t1, dn.DenseTraining.after(layer2, t1) as t2:
        print(t1, "and", t2)
        print("\nshared with the inference layers (views of the same weights):")
        print(f"  t1.w and layer1.w: {same_buffer(t1.w, layer1.w)}")
        print(f"  t2.b and layer2.b: {same_buffer(t2.b, layer2.b)}")
        print("owned by each training layer, sized for the batch:")
        for name, t in (("t1", t1), ("t2", t2)):
            print(f"  {name}: z {tuple(t.z.shape)}, a {tuple(t.a.shape)}, dw {tuple(t.dw.shape)}, "
                  f"db {tuple(t.db.shape)}, activation work: {t.activ_fn.work is not None}; "
                  f"bytes {t.nbytes()}")
        print("passed between layers (no copy):")
        print(f"  t1.x and the batch x: {same_buffer(t1.x, x)}")
        print(f"  t2.x and t1.a (layer 2's input IS layer 1's output): {same_buffer(t2.x, t1.a)}")
        print(f"  t1.z and t1.a are different buffers: {same_buffer(t1.z, t1.a)}")

        # -- the forward pass ------------------------------------------------------------
        # forward: z = x·wᵀ (one GEMM into z), z += b, a = f(z). z is KEPT: the backward
        # pass needs f'(z). Layer 2 needs no input argument: its x is t1.a, already filled.
        t1.forward()
        t2.forward()
        print("\nafter t1.forward(), t2.forward():")
        print("  t1.z (linear part, kept for the backward pass), first sample:", engine.to_host(t1.z)[0])
        print("  t1.a = tanh(t1.z), first sample:                               ", engine.to_host(t1.a)[0])
        print("  t2.x, first sample (the same numbers: it is t1.a):             ", engine.to_host(t2.x)[0])
        out = engine.to_host(t2.a)
        print(f"  t2.a, the network's output: {out.ravel()}   (the seed: 0.44)")

        # Training writes the weights through the training layer; inference sees it at once.
        before = engine.to_host(layer2(layer1(x)))[0, 0]
        engine.scal(0.5, t2.w)                         # halve layer 2's weights via t2 ...
        after = engine.to_host(layer2(layer1(x)))[0, 0]  # ... and layer2 computes with them
        engine.scal(2.0, t2.w)
        print(f"\nhalving t2.w changes what layer2 computes: {before:.7f} -> {after:.7f} (then restored)")

        # -- the seed's full check: forward, forward, backward, backward, read the output --
        # In part 9, backward only computes delta = f'(z) ∘ a into z. densenn's backward
        # goes on (∇w, ∇b, and the signal for the layer below, written into t1.a through
        # t2.x); example 04 takes it apart. Here the signal in t2.a is simply the output
        # itself, as in the seed (no cost function yet), and, as in the seed, the output is
        # read after the backward pass: sigmoid's delta only reads a. (The contract allows
        # delta to use a as scratch, and softmax does: read outputs before backward.)
        t1.forward()
        t2.forward()
        t2.backward()                   # z2 <- f'(z2)∘a2, dw2, db2, and t1.a <- delta2·w2
        t1.backward(propagate=False)    # z1 <- f'(z1)∘a1, dw1, db1; the batch x is not written
        output = engine.to_host(t2.a)   # the seed's (transfer (output training-layer-2))
        print("\nthe seed's sequence (forward, forward, backward, backward, read the output):")
        print(f"  output {output.ravel()}  -> rounded {np.round(output.astype(float).ravel(), 2).tolist()}")
        print(f"  t1.a now holds the signal from layer 2 (delta2·w2): {engine.to_host(t1.a)[0]}")
        print(f"  the batch x is untouched: {engine.to_host(x)[0]}")

        # -- partial batches: views, not new buffers --------------------------------------
        if args.size > 1:
            part = t1.rows(1)
            print(f"\nt1.rows(1) works on the first sample only; its z is a view of t1.z: "
                  f"{same_buffer(part.z, t1.z)}")
    print("\nreleased: t1.z is", t1.z, "; the weights stay with the inference layer:", layer1.w is not None)
    layer1.release()
    layer2.release()


if __name__ == "__main__":
    main()
