"""01 — The inference layer, built by hand: the seed's two-layer example.

The seed (part 9 of "Deep Learning from Scratch to GPU") checks its layers on a
tiny network: a tanh layer 2→4, then a sigmoid layer 4→1, fed two samples that
are both (0.3, 0.9). It prints 0.44 for each. Here we build the same two layers
with densenn's lowest-level class, ``DenseInference``, put the seed's weights in
them with ``engine.upload``, and get the same number (0.4352126, rounded 0.44).

Two things differ between the seed (Clojure/Neanderthal) and densenn:

1. **Layout.** The seed's matrices are column-major with one sample per column
   (``features × samples``). densenn's are NumPy-style row-major with one sample
   per row (``samples × features``). For a *batch* the two are the same bytes in
   memory; for the *weights* (``n_out × n_in`` in both) the values the seed lists
   column by column have to be read column by column.
2. **Bias sign.** The seed computes ``z = w·x − b`` (``(rk! -1.0 b ones ...)``
   subtracts the rank-1 matrix b·1ᵀ); densenn computes ``z = x·wᵀ + b``, the
   usual convention. To reproduce the seed's numbers we pass ``−b``.

Run:  python examples/01_inference_layer.py [--engine cpu] [--dtype float32]
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


# The seed's numbers, exactly as it writes them.
SEED_W1 = [0.3, 0.1, 0.9, 0.0, 0.6, 2.0, 3.7, 1.0]   # 4×2, column-major
SEED_B1 = [0.7, 0.2, 1.1, 2]
SEED_W2 = [0.75, 0.15, 0.22, 0.33]                   # 1×4
SEED_B2 = [0.3]
SEED_X = [0.3, 0.9, 0.3, 0.9]                        # 2 features × 2 samples, column-major


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="cpu", help="engine name: cpu, cpu:numpy, opencl, cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)
    try:
        engine = dn.get_engine(args.engine)
        dtype = check_dtype(engine, args.dtype)
    except dn.DensennException as exc:
        sys.exit(f"engine {args.engine!r} is not available here: {exc}")
    np.set_printoptions(precision=7, suppress=True)
    print(f"engine: {engine!r}, dtype: {dtype}\n")

    # -- 1. the data, moved from the seed's layout to densenn's -----------------------
    w1 = column_major(SEED_W1, 4, 2)      # (n_out=4, n_in=2), the same matrix as the seed's
    w2 = column_major(SEED_W2, 1, 4)      # (1, 4)
    b1 = np.array(SEED_B1, dtype=np.float64)
    b2 = np.array(SEED_B2, dtype=np.float64)
    # The seed's x is 2 features × 2 samples, column-major. Its transpose, (samples,
    # features), stored row-major, holds the very same bytes in the same order:
    x_host = np.ascontiguousarray(column_major(SEED_X, 2, 2).T)
    print("w1, (n_out, n_in) =\n", w1)
    print("x, one sample per row =\n", x_host)
    print("x in memory order:", x_host.ravel(), "== the seed's list", SEED_X, "\n")

    # -- 2. two inference layers, owned weights, on the engine -------------------------
    # DenseInference allocates w (n_out, n_in) and b (n_out,) on the engine, zero-filled.
    # It is the seed's FullyConnectedInference: it owns w and b, works for any batch size,
    # and its __call__ is the seed's (invoke [_ x ones a]).
    with dn.DenseInference(engine, 2, 4, "tanh", dtype) as layer1, \
            dn.DenseInference(engine, 4, 1, "sigmoid", dtype) as layer2:
        print(layer1, "w", tuple(layer1.w.shape), "b", tuple(layer1.b.shape))
        print(layer2, "w", tuple(layer2.w.shape), "b", tuple(layer2.b.shape))

        # The seed's (transfer! [...] (weights layer-1)): copy host values into the
        # engine arrays the layer already owns. Note the bias goes in NEGATED (see above).
        engine.upload(np.ascontiguousarray(w1, dtype=dtype), layer1.w)
        engine.upload(np.ascontiguousarray(-b1, dtype=dtype), layer1.b)
        engine.upload(np.ascontiguousarray(w2, dtype=dtype), layer2.w)
        engine.upload(np.ascontiguousarray(-b2, dtype=dtype), layer2.b)

        # -- 3. the forward pass: a = f(x·wᵀ + b), layer after layer --------------------
        x = engine.to_engine(x_host, dtype)
        a1 = layer1(x)                    # tanh(x·w1ᵀ − b1): (2 samples, 4)
        a2 = layer2(a1)                   # sigmoid(a1·w2ᵀ − b2): (2 samples, 1)
        out = engine.to_host(a2)
        print("\nlayer 1 output a1 = tanh(x·w1ᵀ − b1) =\n", engine.to_host(a1))
        print("layer 2 output a2 = sigmoid(a1·w2ᵀ − b2) =\n", out)
        print(f"\noutput: {out[0, 0]:.7f} {out[1, 0]:.7f}   (the seed prints 0.44 0.44; "
              f"rounded: {np.round(out.astype(np.float64).ravel(), 2).tolist()})")

        # The same computation in plain float64 NumPy, in the seed's own convention and
        # layout (column-major thinking: z = w·x − b, one sample per column).
        xs = column_major(SEED_X, 2, 2)
        ref = 1 / (1 + np.exp(-(w2 @ np.tanh(w1 @ xs - b1[:, None]) - b2[:, None])))
        print(f"float64 NumPy reference, z = w·x − b:  {ref[0, 0]:.7f}  "
              f"(max difference {np.abs(out.T - ref).max():.1e})")

        # -- 4. why −b: what the seed's weights give with densenn's +b ------------------
        engine.upload(np.ascontiguousarray(b1, dtype=dtype), layer1.b)
        engine.upload(np.ascontiguousarray(b2, dtype=dtype), layer2.b)
        wrong = engine.to_host(layer2(layer1(x)))
        print(f"\nwith +b instead of −b the output would be {wrong[0, 0]:.7f}: "
              "the seed subtracts its bias, densenn adds it.")
        engine.upload(np.ascontiguousarray(-b1, dtype=dtype), layer1.b)
        engine.upload(np.ascontiguousarray(-b2, dtype=dtype), layer2.b)

        # -- 5. any batch size, and caller-provided buffers -------------------------------
        # An inference layer takes any number of rows. Called with only x it allocates its
        # z and a; pass z= and a= to reuse buffers (training layers never allocate).
        batch = engine.to_engine(np.array([[0.3, 0.9], [0.0, 0.0], [1.0, -1.0]]), dtype)
        z1 = engine.empty((3, 4), dtype)
        h1 = engine.empty((3, 4), dtype)
        layer1(batch, z=z1, a=h1)                 # writes z1 = x·wᵀ + b and h1 = tanh(z1)
        print("\nthree samples through the same layers, into our own buffers:",
              engine.to_host(layer2(h1)).ravel())
        print("z1 keeps the linear part x·w1ᵀ + b (b holds the seed's −b1), first sample:",
              engine.to_host(z1)[0])
    # Leaving the `with` released w and b (on a GPU engine this frees device memory now).
    print("\nreleased: layer1.w is", layer1.w)


if __name__ == "__main__":
    main()
