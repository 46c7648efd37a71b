"""The training network: the training layers of one batch size and cost, and one step."""
from __future__ import annotations

from typing import Any

from densenn.errors import DensennError, check_positive_int
from densenn.nn.cost import diff, get_cost
from densenn.nn.dense import DenseTraining, FoldedSGDDense
from densenn.nn.metrics import count_correct
from densenn.nn.targets import index_dtype


class TrainingNetwork:
    """Training layers for one batch size and cost, sharing ``net``'s weights.

    Owns: ``x`` (batch, n_in), ``y`` (batch, n_out), ``labels`` (batch,), the
    layers' ``z``/``a``/gradients/work, the cost's scratch, and ``acc`` = [Σ loss,
    Σ correct] accumulated on the engine until read.
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

    def load(self, xs, ys, labels, idx):
        """Gather the rows ``idx`` (host ints) of the engine arrays into the batch buffers. Returns n.

        The indices are uploaded once into ``self.idx`` and used for x, y and the
        labels alike: one host→engine transfer per batch. The one-hot rows of y
        are not gathered when the fused output kernel reads the labels instead.
        """
        n = len(idx)
        _, x, y, lab, _, _ = self.views(n)
        idx_e = self.idx[:n]
        self.engine.upload(idx, idx_e)
        self.engine.take_rows(xs, idx_e, x)
        if labels is None or not self.head:
            self.engine.take_rows(ys, idx_e, y)
        if labels is not None:
            self.engine.take_rows(labels, idx_e, lab)
        return n

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
        folded into the ∇w GEMMs (see ``DenseTraining.backward``)."""
        e = self.engine
        layers, _, y, labels, work, mwork = self.views(n)
        last = layers[-1]
        head = with_labels and self.head
        if head:
            for layer in layers[:-1]:
                layer.forward()
            last.forward_linear()
            e.map(self.cost.fused_head, (last.z, last.b, last.a, labels, self.acc),
                  (1.0 / n, self.cost.eps(last.z.dtype)), sums=last.db)
        else:
            for layer in layers:
                layer.forward()
            self.cost.value(e, last.a, y, work, self.acc[0:1])
            if with_labels:
                count_correct(e, last.a, labels, mwork, self.acc[1:2])
            if self.fused:
                diff(e, last.a, y, last.z, 1.0 / n)
            else:
                self.cost.gradient(e, last.a, y, last.a, 1.0 / n, work)
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
        step's dropout masks), without a backward pass; nothing is advanced."""
        layers, _, y, _, work, _ = self.views(n)
        for layer in layers:
            layer.forward()
        self.engine.fill(self.acc, 0.0)
        self.cost.value(self.engine, layers[-1].a, y, work, self.acc[0:1])
        return self.read_acc()[0] / n

    def step(self, n: int, optimizer, epoch: float, with_labels: bool):
        """One training step on the first n rows of the loaded batch.

        Plain SGD is folded into the backward pass's GEMMs (``optimizer.gemm_update``);
        any other optimizer updates from the gradients afterwards."""
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
        out["batch"] = sum(e.nbytes(b) for b in (self.x, self.y, self.labels, self.idx) if b is not None)
        out["work"] += sum(e.nbytes(b) for b in (self.cost_work, self.metric_work, self.acc, self.signal)
                           if b is not None)
        return out

    def release(self):
        for layer in self.layers:
            layer.release()
        for name in ("x", "y", "labels", "idx", "cost_work", "metric_work", "acc", "signal"):
            if getattr(self, name) is not None:
                self.engine.release(getattr(self, name))
                setattr(self, name, None)       # nothing stays reachable through a released network
        self.layers = []
        self._views = {}
        self._signal_views = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
