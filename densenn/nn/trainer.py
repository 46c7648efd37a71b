"""The training network: the training layers of one batch size and cost, and one step."""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from densenn.errors import DensennError, check_positive_int
from densenn.nn.cost import diff, get_cost
from densenn.nn.dense import DenseTraining, FoldedSGDDense
from densenn.nn.metrics import count_correct
from densenn.nn.targets import index_dtype


class SampleWeights(NamedTuple):
    """One weight per sample of a data set (see ``TrainingNetwork.sample_weights``): on the
    engine, where ``load`` gathers a batch's, and on the host, where it sums them; both
    rounded to the network's dtype, so the sums are of the weights the kernels read."""

    on_engine: Any
    on_host: np.ndarray

    @property
    def total(self) -> float:
        """Σ w over the data set: what an epoch's Σ w·loss and Σ w·hit are divided by."""
        return float(self.on_host.sum())


class TrainingNetwork:
    """Training layers for one batch size and cost, sharing ``net``'s weights.

    Owns: ``x`` (batch, n_in), ``y`` (batch, n_out), ``labels`` (batch,), the
    layers' ``z``/``a``/gradients/work, the cost's scratch, and ``acc`` = [Σ loss,
    Σ correct] accumulated on the engine until read. With per-sample weights (see
    ``sample_weights``; the buffers are made then, once): ``w`` (batch,), the batch's
    weights, and ``w_sum``, their sum (None while a batch is unweighted); acc then holds
    [Σ w·loss, Σ w·hit], and the gradient is that of Σ w·loss / Σ w.
    """

    def __init__(self, net, batch: int, cost, gradients: bool = True):
        # gradients=False: layers that fold plain SGD into their GEMMs (FoldedSGDDense)
        e = self.engine = net.engine
        self.net = net
        self.batch = check_positive_int("batch_size", batch)
        self.cost = get_cost(cost)
        dt = net.dtype
        self.x = e.empty((batch, net.n_in), dt)
        self.y = e.empty((batch, net.n_out), dt)
        self.labels = e.zeros((batch,), index_dtype(e))
        self.idx = e.zeros((batch,), index_dtype(e))
        self.cost_work = e.empty((batch, net.n_out), dt)
        self.metric_work = e.empty((batch,), index_dtype(e))
        self.acc = e.zeros((2,), dt)
        # per-sample weights' buffers: made by the first weighted use (see _make_weight_buffers)
        self.w: Any = None
        self.hit: Any = None
        self._w_host: Any = None
        self._weight_views: dict = {}
        self.w_sum: float | None = None
        self.folded = not gradients
        if self.folded and not net.folds_sgd():
            raise DensennError("this network has layers other than Dense with parameters: plain SGD cannot fold "
                               "into its GEMMs (make the trainer with gradients=True)")
        self.layers: list = []
        x = self.x
        for inference in net.layers:
            self.layers.append(inference.training(x, batch, self.folded))
            x = self.layers[-1].a
        last = self.layers[-1]
        # ∂C/∂z = a - y when the output layer is a Dense one whose activation is the cost's partner
        self.fused = isinstance(last, DenseTraining) and self.cost.pairs_with == last.inference.activation.name
        # softmax + cross-entropy against class labels: one kernel where the engine has it
        self.head = self.fused and self.cost.fused_head is not None and e.can(self.cost.fused_head)
        weighted_head = self.cost.fused_head_weighted
        self.head_weighted = self.fused and weighted_head is not None and e.can(weighted_head)
        self.params = [p for layer in self.layers for p in layer.params]
        self.grads = [] if self.folded else [g for layer in self.layers for g in layer.grads]
        self.decays = [d for layer in self.layers for d in layer.decays]
        # layers with state a training step moves on (a dropout mask's counter, running statistics)
        self.advancing = [i for i, layer in enumerate(self.layers) if hasattr(layer, "advance")]
        # at least 2 rows per batch where a layer normalises over the batch
        self.min_rows = max([getattr(layer, "min_rows", 1) for layer in self.layers])
        self._views = {batch: self._buffers()}
        # scratch for the signals of a folded SGD step (see DenseTraining.backward), made at
        # the first such step: one flat buffer viewed per layer and batch size
        self.signal: Any = None
        self._signal_views: dict = {}

    def _buffers(self, n: int | None = None):
        if n is None:
            return (self.layers, self.x, self.y, self.labels, self.cost_work, self.metric_work)
        return ([layer.rows(n) for layer in self.layers], self.x[:n], self.y[:n], self.labels[:n],
                self.cost_work[:n], self.metric_work[:n])

    def views(self, n: int):
        """The buffers for a batch of ``n <= batch`` rows (cached: made once per size)."""
        if n not in self._views:
            self._views[n] = self._buffers(n)
        return self._views[n]

    def sample_weights(self, w) -> SampleWeights:
        """The per-sample weights ``w`` (a host vector, one per sample of the data set; see
        densenn.training.weights.resolve_weights) on the engine, for ``load``. Makes this
        trainer's weight buffers the first time. The caller releases ``.on_engine``."""
        self._make_weight_buffers()
        on_host = np.asarray(w, dtype=self.net.dtype).astype(np.float64)
        return SampleWeights(self.engine.to_engine(on_host, self.net.dtype), on_host)

    def _make_weight_buffers(self):
        # made once, by the first weighted use: an unweighted trainer holds none
        if self.w is None:
            self.w = self.engine.empty((self.batch,), self.net.dtype)
            self.hit = self.engine.empty((self.batch,), np.bool_)
            self._w_host = np.empty(self.batch, np.float64)

    def weight_views(self, n: int):
        """(w, hit, host w) for a batch of ``n <= batch`` rows (cached: made once per size)."""
        if n not in self._weight_views:
            self._make_weight_buffers()
            self._weight_views[n] = (self.w[:n], self.hit[:n], self._w_host[:n])
        return self._weight_views[n]

    def load(self, xs, ys, labels, idx, ws: SampleWeights | None = None):
        """Gather the rows ``idx`` (host ints) of the engine arrays into the batch buffers. Returns n.

        The indices are uploaded once into ``self.idx`` and used for x, y, the labels
        and the weights ``ws`` (from ``sample_weights``; None: an unweighted batch) alike:
        one host→engine transfer per batch. The one-hot rows of y are not gathered when
        the fused output kernel reads the labels instead. Sets ``w_sum``.
        """
        n = len(idx)
        _, x, y, lab, _, _ = self.views(n)
        idx_e = self.idx[:n]
        self.engine.upload(idx, idx_e)
        self.engine.take_rows(xs, idx_e, x)
        if labels is None or not (self.head if ws is None else self.head_weighted):
            self.engine.take_rows(ys, idx_e, y)
        if labels is not None:
            self.engine.take_rows(labels, idx_e, lab)
        if ws is None:
            self.w_sum = None
        else:
            w, _, w_host = self.weight_views(n)
            self.engine.take_rows(ws.on_engine, idx_e, w)
            # Σw from the host copy: the gradient's scale 1/Σw is a kernel argument, and a sum
            # on the engine would be read back (a wait for the queue) at every step
            np.take(ws.on_host, idx, out=w_host, mode="clip")
            self.w_sum = float(w_host.sum())
        return n

    def put_weights(self, w, n: int) -> None:
        """Upload the weights of the first ``n`` rows of the batch (a host vector of n values)
        as they are, without a gather (for a batch uploaded whole); sets ``w_sum``."""
        self._make_weight_buffers()
        dev, _, host = self.weight_views(n)
        np.copyto(host, np.asarray(w, dtype=self.net.dtype))
        self.engine.upload(host, dev)
        self.w_sum = float(host.sum())

    @property
    def gradients(self) -> bool:
        """Whether the layers keep ∇w buffers (not for folded SGD; see FoldedSGDDense)."""
        return not self.folded

    def signals(self, n: int) -> list:
        """Per layer, the (n, n_in) scratch its folded update writes its signal into (None for the
        first layer, which sends none, and for layers that fold nothing)."""
        if n not in self._signal_views:
            widths = [layer.inference.n_in if i and isinstance(layer, FoldedSGDDense) else 0
                      for i, layer in enumerate(self.layers)]
            if self.signal is None and max(widths) > 0:
                self.signal = self.engine.empty((self.batch * max(widths),), self.net.dtype)
            self._signal_views[n] = [self.signal[:n * k].reshape(n, k) if k else None for k in widths]
        return self._signal_views[n]

    def forward_backward(self, n: int, with_labels: bool, update=None):
        """Forward, cost (accumulated into acc), backward for the first n rows of the batch.

        With ``update=(alpha, beta)`` the backward pass also applies a plain SGD step
        folded into the ∇w GEMMs (see ``DenseTraining.backward``). A weighted batch (``w_sum``
        set by ``load``) gives the gradient of Σ w·loss / Σ w: zero where Σ w is 0."""
        e = self.engine
        layers, _, y, labels, work, mwork = self.views(n)
        last = layers[-1]
        if self.w_sum is None:
            w = hit = None
            scale = 1.0 / n
            head = with_labels and self.head
        else:
            w, hit, _ = self.weight_views(n)
            scale = 1.0 / self.w_sum if self.w_sum > 0 else 0.0
            head = with_labels and self.head_weighted
        if head:
            for layer in layers[:-1]:
                layer.forward()
            last.forward_linear()
            if w is None:
                e.map(self.cost.fused_head, (last.z, last.b, last.a, labels, self.acc),
                      (scale, self.cost.eps(last.z.dtype)), sums=last.db)
            else:
                e.map(self.cost.fused_head_weighted, (last.z, last.b, last.a, labels, w, self.acc),
                      (scale, self.cost.eps(last.z.dtype)), sums=last.db)
        else:
            for layer in layers:
                layer.forward()
            self.cost.value(e, last.a, y, work, self.acc[0:1], w)
            if with_labels:
                count_correct(e, last.a, labels, mwork, self.acc[1:2], w, hit)
            if self.fused:
                diff(e, last.a, y, last.z, scale, w)
            else:
                self.cost.gradient(e, last.a, y, last.a, scale, work, w)
        if update is not None:
            # a folded update leaves each signal in scratch, where the layer below reads it; the
            # views of one buffer can share it, as each layer's delta has read the signal from
            # above before its own GEMM writes the next one
            for layer, signal in zip(layers, self.signals(n)):
                if isinstance(layer, FoldedSGDDense):
                    layer.update, layer.signal = update, signal
        if self.fused:
            grad = last.backward_from_delta(propagate=len(layers) > 1, db_ready=head)
        else:
            grad = last.backward(propagate=len(layers) > 1)
        for i in range(len(layers) - 2, -1, -1):
            # a signal written into the layer above's input is this layer's output: None says so
            grad = layers[i].backward(None if grad is layers[i + 1].x else grad, propagate=i > 0)

    def loss(self, n: int) -> float:
        """The mean cost of the first n loaded rows in training mode (batch statistics, this
        step's dropout masks), without a backward pass; nothing is advanced. A weighted batch
        gives Σ w·loss / Σ w (0 where Σ w is 0)."""
        layers, _, y, _, work, _ = self.views(n)
        for layer in layers:
            layer.forward()
        self.engine.fill(self.acc, 0.0)
        w = None if self.w_sum is None else self.weight_views(n)[0]
        self.cost.value(self.engine, layers[-1].a, y, work, self.acc[0:1], w)
        total = self.read_acc()[0]
        if self.w_sum is None:
            return total / n
        return total / self.w_sum if self.w_sum > 0 else 0.0

    def step(self, n: int, optimizer, epoch: float, with_labels: bool):
        """One training step on the first n rows of the loaded batch.

        Plain SGD is folded into the backward pass's GEMMs (``optimizer.gemm_update``);
        any other optimizer updates from the gradients afterwards. A weighted batch whose
        weights are all 0 is skipped (no update, nothing advanced), as if left out."""
        if self.w_sum == 0:
            return
        update = optimizer.gemm_update(epoch) if self.folded else None
        if self.folded and update is None:
            raise DensennError(f"this training network folds plain SGD into its GEMMs; {optimizer!r} needs "
                               "gradients (make the trainer with gradients=True)")
        self.forward_backward(n, with_labels, update)
        if update is None:
            optimizer.step(self.params, self.grads, self.decays, epoch)
        if self.advancing:
            layers = self.views(n)[0]
            for i in self.advancing:
                layers[i].advance()

    def read_acc(self, reset: bool = True):
        """(Σ loss, Σ correct) read from the engine, then zeroed."""
        loss, correct = (float(v) for v in self.engine.to_host(self.acc))
        if reset:
            self.engine.fill(self.acc, 0.0)
        return loss, correct

    def nbytes(self) -> dict:
        e = self.engine
        out = {"activations": 0, "gradients": 0, "work": 0}
        for layer in self.layers:
            for k, v in layer.nbytes().items():
                out[k] += v
        out["batch"] = sum(e.nbytes(b) for b in (self.x, self.y, self.labels, self.idx, self.w) if b is not None)
        out["work"] += sum(e.nbytes(b) for b in (self.cost_work, self.metric_work, self.acc, self.signal, self.hit)
                           if b is not None)
        return out

    def release(self):
        for layer in self.layers:
            layer.release()
        for name in ("x", "y", "labels", "idx", "cost_work", "metric_work", "acc", "signal", "w", "hit"):
            if getattr(self, name) is not None:
                self.engine.release(getattr(self, name))
                setattr(self, name, None)       # nothing stays reachable through a released network
        self.layers = []
        self._views = {}
        self._signal_views = {}
        self._weight_views = {}
        self._w_host = self.w_sum = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
