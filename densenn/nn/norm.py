"""Normalisation layers: BatchNorm (each feature over the batch) and LayerNorm (each sample
over its features), both with a learned scale γ and shift β, forward and backward by hand.

With x̂ = (x - μ) / √(σ² + ε) and a = γ ∘ x̂ + β, for the gradient g = ∂C/∂a:

    ∂C/∂β = Σ g,   ∂C/∂γ = Σ g ∘ x̂        (sums over the batch: one value per feature)
    BatchNorm (μ, σ² per feature, over the n samples):
        ∂C/∂x = γ/√(σ²+ε) · (g - (∂C/∂β + x̂ ∘ ∂C/∂γ) / n)
    LayerNorm (μ, σ² per sample, over its d features; h = γ ∘ g):
        ∂C/∂x = 1/√(σ²+ε) · (h - (Σ h + x̂ Σ h ∘ x̂) / d)

The signal goes into x, the layer below's output. BatchNorm keeps running averages of μ
and of the unbiased σ² for inference, updated once per training step (``advance``):
running = momentum · running + (1 - momentum) · batch value. Weight decay never applies
to γ or β. The row-wise LayerNorm passes are RowMaps (a C body per row, a Numba form
over rows, a NumPy form), as softmax's are.
"""
from __future__ import annotations

import abc
import math

import numpy as np

from densenn.errors import DensennError, check_float_range, check_positive_float
from densenn.kernels.numpy_eval import per_col, per_row
from densenn.kernels.ops import Map, RowMap
from densenn.nn.layer import Inference, Layer, TrainingLayer


# -- the operations ---------------------------------------------------------------------------
def _np(fn):
    """A NumPy form from ``fn(arrays, scalars, work)`` (no engine needed)."""
    def run(engine, arrays, scalars, work):
        fn(arrays, scalars, work)
    return run


def _squared_np(arrays, scalars, work):
    x, mu, d = arrays
    per_col(np.subtract, x, mu, d)
    np.square(d, out=d)


def _inv_np(arrays, scalars, work):
    var, inv = arrays
    inv_n, eps = scalars
    np.multiply(var, inv_n, out=inv)
    np.add(inv, eps, out=inv)
    np.sqrt(inv, out=inv)
    np.divide(1.0, inv, out=inv)


def _bn_forward_np(arrays, scalars, work):
    x, mu, inv, gamma, beta, xhat, a = arrays
    per_col(np.subtract, x, mu, xhat)
    per_col(np.multiply, xhat, inv, xhat)
    per_col(np.multiply, xhat, gamma, a)
    per_col(np.add, a, beta, a)


def _gxhat_np(arrays, scalars, work):
    g, xhat, t = arrays
    np.multiply(g, xhat, out=t)


def _bn_backward_np(arrays, scalars, work):
    g, xhat, dgamma, dbeta, gamma, inv, x = arrays
    (inv_n,) = scalars
    per_col(np.multiply, xhat, dgamma, x)
    per_col(np.add, x, dbeta, x)
    np.multiply(x, -inv_n, out=x)
    np.add(x, g, out=x)
    per_col(np.multiply, x, gamma, x)
    per_col(np.multiply, x, inv, x)


def _running_np(engine, arrays, scalars, work):
    rmean, rvar, mu, var = arrays
    momentum, unbias = scalars
    np.multiply(rmean, momentum, out=rmean)
    engine.axpy(1.0 - momentum, mu, rmean)
    np.multiply(rvar, momentum, out=rvar)
    engine.axpy((1.0 - momentum) * unbias, var, rvar)


#: xhat = (x - μ)², its column sums (Σ over the batch) being n σ²
BN_SQUARED = Map("bn_squared", "x mu:col d", writes="d", numpy=_np(_squared_np), body="d = (x - mu) * (x - mu)")
BN_INV = Map("bn_inv", "var inv", writes="inv", scalars="inv_n eps", numpy=_np(_inv_np),
             body="inv = 1 / sqrt(var * inv_n + eps)")
BN_FORWARD = Map("bn_forward", "x mu:col inv:col gamma:col beta:col xhat a", writes="xhat a",
                 numpy=_np(_bn_forward_np), body="""
xhat = (x - mu) * inv
a = gamma * xhat + beta
""")
#: t = g ∘ x̂, whose column sums are ∂C/∂γ (BatchNorm and LayerNorm)
NORM_GXHAT = Map("norm_gxhat", "g xhat t", writes="t", numpy=_np(_gxhat_np), body="t = g * xhat")
BN_BACKWARD = Map("bn_backward", "g xhat dgamma:col dbeta:col gamma:col inv:col x", writes="x", scalars="inv_n",
                  numpy=_np(_bn_backward_np), body="x = gamma * inv * (g - (dbeta + xhat * dgamma) * inv_n)")
BN_RUNNING = Map("bn_running", "rmean rvar mu var", writes="rmean rvar", scalars="momentum unbias",
                 numpy=_running_np, cpu_blocks=False, body="""
rmean = momentum * rmean + (1 - momentum) * mu
rvar = momentum * rvar + (1 - momentum) * var * unbias
""")
BN_INFER = Map("bn_infer", "x rmean:col rvar:col gamma:col beta:col a", writes="a", scalars="eps",
               body="a = gamma * (x - rmean) / sqrt(rvar + eps) + beta")

_LN_STATS_C = """
T mean = (T)0;
for (I j = 0; j < cols; ++j) mean += x[j];
mean /= (T)cols;
T var = (T)0;
for (I j = 0; j < cols; ++j) { const T d = x[j] - mean; var += d * d; }
const T inv = (T)1 / sqrt(var / (T)cols + eps);
"""


def _ln_stats(njit):
    def stats(x, i):
        """(mean, σ²) of row i: two passes, as the C body."""
        m = x.shape[1]
        mean = 0.0
        for j in range(m):
            mean += x[i, j]
        mean /= m
        var = 0.0
        for j in range(m):
            d = x[i, j] - mean
            var += d * d
        return mean, var / m
    return njit(stats)


def _ln_forward(njit):
    stats = _ln_stats(njit)

    def kernel(x, gamma, beta, xhat, a, eps, db):
        for i in range(x.shape[0]):
            mean, var = stats(x, i)
            inv = 1.0 / math.sqrt(var + eps)
            for j in range(x.shape[1]):
                xhat[i, j] = (x[i, j] - mean) * inv
                a[i, j] = gamma[j] * xhat[i, j] + beta[j]
    return kernel


def _ln_backward(njit):
    stats = _ln_stats(njit)

    def kernel(g, xhat, gamma, t, x, eps, db):
        m = x.shape[1]
        for i in range(x.shape[0]):
            _, var = stats(x, i)
            inv = 1.0 / math.sqrt(var + eps)
            s1 = 0.0
            s2 = 0.0
            for j in range(m):
                h = g[i, j] * gamma[j]
                t[i, j] = h
                s1 += h
                s2 += h * xhat[i, j]
            for j in range(m):
                x[i, j] = inv * (t[i, j] - (s1 + xhat[i, j] * s2) / m)
    return kernel


def _ln_forward_np(engine, arrays, scalars, work):
    x, gamma, beta, xhat, a = arrays
    (eps,) = scalars
    w = work[:, 0]
    cols = x.shape[1]
    np.add.reduce(x, axis=1, out=w)
    np.multiply(w, 1.0 / cols, out=w)
    per_row(np.subtract, x, w, xhat)
    np.square(xhat, out=a)
    np.add.reduce(a, axis=1, out=w)
    np.multiply(w, 1.0 / cols, out=w)
    np.add(w, eps, out=w)
    np.sqrt(w, out=w)
    per_row(np.divide, xhat, w, xhat)
    per_col(np.multiply, xhat, gamma, a)
    per_col(np.add, a, beta, a)


def _ln_backward_np(engine, arrays, scalars, work):
    g, xhat, gamma, t, x = arrays
    (eps,) = scalars
    cols = x.shape[1]
    mean, inv, s2 = work[:, 0], work[:, 1], work[:, 2]
    np.add.reduce(x, axis=1, out=mean)
    np.multiply(mean, 1.0 / cols, out=mean)
    per_row(np.subtract, x, mean, t)
    np.square(t, out=t)
    np.add.reduce(t, axis=1, out=inv)
    np.multiply(inv, 1.0 / cols, out=inv)
    np.add(inv, eps, out=inv)
    np.sqrt(inv, out=inv)                       # √(σ² + ε), divided by at the end
    per_col(np.multiply, g, gamma, t)           # h = γ ∘ g
    np.add.reduce(t, axis=1, out=mean)                 # Σ h (the mean is spent)
    np.multiply(t, xhat, out=x)                 # x is spent once its variance is known
    np.add.reduce(x, axis=1, out=s2)            # Σ h ∘ x̂
    per_row(np.multiply, xhat, s2, x)
    per_row(np.add, x, mean, x)
    np.multiply(x, -1.0 / cols, out=x)
    np.add(x, t, out=x)
    per_row(np.divide, x, inv, x)


LN_FORWARD = RowMap("ln_forward", "x gamma:col beta:col xhat a", writes="xhat a", scalars="eps",
                    numba=_ln_forward, numpy=_ln_forward_np, reassociate=True, c_body=_LN_STATS_C + """
for (I j = 0; j < cols; ++j) { xhat[j] = (x[j] - mean) * inv; a[j] = gamma[j] * xhat[j] + beta[j]; }
""")
LN_BACKWARD = RowMap("ln_backward", "g xhat gamma:col t x", writes="t x", scalars="eps",
                     numba=_ln_backward, numpy=_ln_backward_np, reassociate=True, c_body=_LN_STATS_C + """
T s1 = (T)0, s2 = (T)0;
for (I j = 0; j < cols; ++j) { const T h = g[j] * gamma[j]; t[j] = h; s1 += h; s2 += h * xhat[j]; }
for (I j = 0; j < cols; ++j) x[j] = inv * (t[j] - (s1 + xhat[j] * s2) / (T)cols);
""")


# -- the specs ----------------------------------------------------------------------------------
def _check_eps(eps) -> float:
    return check_positive_float("eps", eps)


class _Norm(Layer):
    short_name = ""

    def short(self) -> str:
        return self.short_name
    def tensor_shapes(self, n_in):
        return {name: (n_in,) for name in ("gamma", "beta")}

    def __eq__(self, other):
        return type(other) is type(self) and other.config() == self.config()

    def __hash__(self):
        return hash(tuple(sorted(self.config().items())))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"


class BatchNorm(_Norm):
    """Normalise each feature over the batch, then scale by γ and shift by β (learned).

    Place it after a Dense layer's linear part: ``Dense(256, "linear"), BatchNorm(),
    "relu"``, or in one line ``Dense(256, "relu", norm="batch")``. ``momentum`` weighs
    the running averages kept for inference. Training needs batches of 2 or more."""

    type = "batchnorm"
    short_name = "bn"
    config_keys = ((), ("momentum", "eps"))

    def __init__(self, momentum: float = 0.9, eps: float = 1e-5):
        self.momentum = check_float_range("momentum", momentum, 0.0, 1.0, high_open=True)
        self.eps = _check_eps(eps)

    def config(self) -> dict:
        return {"type": self.type, "momentum": self.momentum, "eps": self.eps}

    def tensor_shapes(self, n_in):
        return {name: (n_in,) for name in ("gamma", "beta", "running_mean", "running_var")}

    def check_place(self, index):
        if index == 0:
            raise DensennError("BatchNorm cannot be the first layer: it normalises a layer's output (put it "
                               "after a Dense layer, e.g. Dense(256, 'linear'), BatchNorm(), 'relu'); standardise "
                               "the inputs themselves with densenn.datasets.Standardizer")

    def build(self, engine, n_in, dtype, rng, seed, index):
        return BatchNormInference(engine, n_in, self.momentum, self.eps, dtype)


class LayerNorm(_Norm):
    """Normalise each sample over its features, then scale by γ and shift by β (learned)."""

    type = "layernorm"
    short_name = "ln"
    config_keys = ((), ("eps",))

    def __init__(self, eps: float = 1e-5):
        self.eps = _check_eps(eps)

    def config(self) -> dict:
        return {"type": self.type, "eps": self.eps}

    def build(self, engine, n_in, dtype, rng, seed, index):
        return LayerNormInference(engine, n_in, self.eps, dtype)


# -- inference ----------------------------------------------------------------------------------
class _NormInference(Inference):
    param_names = ("gamma", "beta")
    #: weight decay applies to neither γ nor β
    decays = (False, False)

    def __init__(self, engine, n_in: int, eps: float, dtype):
        super().__init__(engine, n_in, dtype)
        self.eps = eps
        self.gamma = engine.to_engine(np.ones(n_in), dtype)
        self.beta = engine.zeros((n_in,), dtype)


class BatchNormInference(_NormInference):
    """γ, β and the running mean and variance; inference normalises with the running ones."""

    buffer_names = ("running_mean", "running_var")

    def __init__(self, engine, n_in: int, momentum: float, eps: float, dtype):
        super().__init__(engine, n_in, eps, dtype)
        self.momentum = momentum
        self.running_mean = engine.zeros((n_in,), dtype)
        self.running_var = engine.to_engine(np.ones(n_in), dtype)

    def __call__(self, x):
        a = self.engine.empty(x.shape, self.dtype)
        self.engine.map(BN_INFER, (x, self.running_mean, self.running_var, self.gamma, self.beta, a), (self.eps,))
        return a


class LayerNormInference(_NormInference):
    def __call__(self, x):
        e = self.engine
        a, xhat, work = e.empty(x.shape, self.dtype), e.empty(x.shape, self.dtype), e.empty((x.shape[0], 3), self.dtype)
        e.map(LN_FORWARD, (x, self.gamma, self.beta, xhat, a), (self.eps,), work=work)
        for buf in (xhat, work):
            e.release(buf)
        return a


# -- training -----------------------------------------------------------------------------------
class _NormTraining(TrainingLayer, abc.ABC):
    activations = ("a", "xhat")
    gradients = ("dgamma", "dbeta")
    decays = (False, False)

    def __init__(self, inference, x, batch: int):
        super().__init__(inference, x, batch)
        e, d, dt = self.engine, inference.n_out, inference.dtype
        self.a, self.xhat, self.t = e.empty((batch, d), dt), e.empty((batch, d), dt), e.empty((batch, d), dt)
        self.dgamma, self.dbeta = e.zeros((d,), dt), e.zeros((d,), dt)

    def backward(self, grad=None, propagate: bool = True):
        """From ∂C/∂a in ``grad`` (default ``a``): ∂C/∂β = Σ g and ∂C/∂γ = Σ g ∘ x̂ (t is scratch)
        and, when ``propagate``, the signal into x. Overwrites dbeta, dgamma, t, x. Returns x."""
        g = self.a if grad is None else grad
        self.engine.sum_rows(g, self.dbeta)
        self.engine.map(NORM_GXHAT, (g, self.xhat, self.t), sums=self.dgamma)
        if not propagate:
            return None
        self._signal(g)
        return self.x

    @abc.abstractmethod
    def _signal(self, g):
        """x = ∂C/∂x from g (BatchNorm's or LayerNorm's formula). Overwrites x."""


class BatchNormTraining(_NormTraining):
    """Owns a, x̂, the scratch t (batch, d), the batch's μ, Σ(x - μ)², 1/√(σ² + ε) and ∂C/∂γ, ∂C/∂β (d,)."""

    batch_work = ("t",)
    work = ("t", "mu", "var", "inv")
    #: the variance of one sample is 0
    min_rows = 2

    def __init__(self, inference: BatchNormInference, x, batch: int):
        super().__init__(inference, x, batch)
        e, d, dt = self.engine, inference.n_out, inference.dtype
        self.mu, self.var, self.inv = e.empty((d,), dt), e.empty((d,), dt), e.empty((d,), dt)

    def forward(self):
        """a = γ ∘ x̂ + β with the batch's statistics. Overwrites a, x̂, μ, var, inv."""
        e, n = self.engine, self.batch
        if n < 2:
            raise DensennError("BatchNorm needs at least 2 samples per batch in training (the variance of one is "
                               "0): use a batch_size of 2 or more, and one that leaves no last batch of 1 sample")
        e.sum_rows(self.x, self.mu)
        e.scal(1.0 / n, self.mu)
        e.map(BN_SQUARED, (self.x, self.mu, self.xhat), sums=self.var)
        e.map(BN_INV, (self.var, self.inv), (1.0 / n, self.inference.eps))
        inf = self.inference
        e.map(BN_FORWARD, (self.x, self.mu, self.inv, inf.gamma, inf.beta, self.xhat, self.a))
        return self.a

    def _signal(self, g):
        self.engine.map(BN_BACKWARD, (g, self.xhat, self.dgamma, self.dbeta, self.inference.gamma, self.inv, self.x),
                        (1.0 / self.batch,))

    def advance(self):
        """After a training step: the running averages take this batch's μ and unbiased σ²."""
        inf = self.inference
        self.engine.map(BN_RUNNING, (inf.running_mean, inf.running_var, self.mu, self.var),
                        (inf.momentum, 1.0 / (self.batch - 1)))


class LayerNormTraining(_NormTraining):
    """Owns a, x̂, the scratch t (batch, d), three values per sample of scratch, ∂C/∂γ, ∂C/∂β."""

    batch_work = work = ("t", "rowwork")

    def __init__(self, inference: LayerNormInference, x, batch: int):
        super().__init__(inference, x, batch)
        self.rowwork = self.engine.empty((batch, 3), inference.dtype)

    def forward(self):
        """a = γ ∘ x̂ + β with each sample's own statistics. Overwrites a, x̂."""
        inf = self.inference
        self.engine.map(LN_FORWARD, (self.x, inf.gamma, inf.beta, self.xhat, self.a), (inf.eps,), work=self.rowwork)
        return self.a

    def _signal(self, g):
        self.engine.map(LN_BACKWARD, (g, self.xhat, self.inference.gamma, self.t, self.x), (self.inference.eps,),
                        work=self.rowwork)


# the inference layers make their training layers, defined after them
BatchNormInference.training_class, BatchNormInference.label = BatchNormTraining, "batch norm"
LayerNormInference.training_class, LayerNormInference.label = LayerNormTraining, "layer norm"
