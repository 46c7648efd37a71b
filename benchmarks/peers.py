"""What the sections of ``run.py`` share: the peers (PyTorch, scikit-learn, JAX), built with
densenn's weights, the MLP's learning rate, and how many samples a row with a target takes."""
from __future__ import annotations

import warnings

import numpy as np

MLP_LR = 0.01


def log(*a):
    print(*a, flush=True)


def try_torch():
    try:
        import torch
        return torch, None
    except Exception as exc:
        return None, f"PyTorch not importable ({type(exc).__name__}: {exc}); pip install torch==2.13.0"


def try_jax():
    try:
        import jax
        jax.config.update("jax_platforms", "cpu")
        import jax.numpy  # noqa: F401
        return jax, None
    except Exception as exc:
        return None, f"JAX skipped: `import jax` failed ({type(exc).__name__}: {exc})"


def try_sklearn():
    try:
        from sklearn.neural_network import MLPClassifier  # noqa: F401
        return True, None
    except Exception as exc:
        return False, f"scikit-learn not importable ({type(exc).__name__}: {exc})"


ACT_MODULES = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid"}


def torch_model(weights, acts):
    """nn.Sequential of Linear + activation with densenn's (w, b) copied in; softmax is left to the loss."""
    import torch

    mods = []
    for (w, b), act in zip(weights, acts):
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w, np.float32)))
            lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(b, np.float32)))
        mods.append(lin)
        if act in ACT_MODULES:
            mods.append(getattr(torch.nn, ACT_MODULES[act])())
        elif act != "softmax":
            raise ValueError(act)
    return torch.nn.Sequential(*mods)


def torch_trainer(model, x, labels, batches, optimizer):
    """A PyTorch step as a plain training loop does it: gather the batch, forward, loss, backward, update."""
    import torch
    import torch.nn.functional as F

    X = torch.from_numpy(x)
    Y = torch.from_numpy(np.asarray(labels, np.int64))
    idx = [torch.from_numpy(np.asarray(b, np.int64)) for b in batches]
    state = {"i": 0}

    def step():
        i = state["i"]
        state["i"] = (i + 1) % len(idx)
        xb = X.index_select(0, idx[i])
        yb = Y.index_select(0, idx[i])
        loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, X, Y


def sklearn_clf(weights, hidden, **kw):
    """An MLPClassifier whose initial weights are densenn's (its initialiser is replaced per instance)."""
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=tuple(hidden), activation="relu", alpha=0.0, **kw)
    it = iter([(w.copy(), b.copy()) for w, b in weights])

    def _init_coef(fan_in, fan_out, dtype):
        w, b = next(it)
        assert w.shape == (fan_out, fan_in), (w.shape, fan_in, fan_out)
        return np.ascontiguousarray(w.T, dtype=dtype), b.astype(dtype)

    clf._init_coef = _init_coef
    return clf


def quiet_sklearn():
    from sklearn.exceptions import ConvergenceWarning

    warnings.filterwarnings("ignore", category=ConvergenceWarning)


# -- JAX: jit-compiled equivalents --------------------------------------------------------------
def jax_mlp(jax, weights, acts):
    jnp = jax.numpy
    fns = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "softmax": lambda h: h}
    params = [(jnp.asarray(w, dtype=jnp.float32), jnp.asarray(b, dtype=jnp.float32)) for w, b in weights]

    def logits(p, x):
        h = x
        for (w, b), act in zip(p, acts):
            h = fns[act](h @ w.T + b)
        return h

    def loss(p, x, y):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits(p, x)), y[:, None], axis=1))

    return params, logits, loss


def target_rounds(args) -> int:
    """Samples per library for a row with a target: 2·repeats - 1 (21 by default).

    On this shared machine one sample of a step swings by ±10% with the neighbours' load,
    and between runs the median of 11 moved a ratio by up to ±5%; twice the samples halve
    the rounds a burst of load can tip.
    """
    return max(3, 2 * args.repeats - 1)
