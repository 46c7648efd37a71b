"""ONNX export and import of densenn networks (docs/onnx.md).

Export writes the inference form of a network as a standard ONNX graph: one input
``input`` of shape (N, n_in), one output ``output`` of shape (N, n_out); a Dense layer is a
Gemm node (``transB=1``: densenn's w is (units, fan_in)) followed by its activation's
node(s), BatchNorm is BatchNormalization with the running statistics, LayerNorm is
LayerNormalization (axis −1), Dropout is an Identity. Float32 graphs use ONNX's own
activation operators; float64 graphs write LeakyRelu, Elu, Selu, Softplus, Mish and Gelu
(tanh form) out in elementary operators, since onnxruntime's CPU kernels for those are
float-only; exact GELU needs Erf, which onnxruntime has in float only, so a float64 graph
computes that one function in float32 (Cast, Erf, Cast: about 1e-7 relative).

Import reads a feed-forward chain of MatMul/Gemm/Add and activation nodes (what PyTorch's
exporter and skl2onnx write for an MLP) into layer specs and tensors; densenn.nn.network
builds the Network. The optional ``onnx`` package is imported when a function needs it.
"""
from __future__ import annotations

import json
import math

import numpy as np

from densenn.errors import DensennError, describe
from densenn.files import write_bytes
from densenn.modelfile import _check_path
from densenn.nn.activation import ELU, Activation, LeakyReLU, get_activation
from densenn.nn.activation_layer import ActivationLayer
from densenn.nn.activations_modern import SELU_ALPHA, SELU_LAMBDA
from densenn.nn.dense import Dense
from densenn.nn.dropout import Dropout
from densenn.nn.layer import layer_type
from densenn.nn.norm import BatchNorm, LayerNorm

DEFAULT_OPSET = 21
#: LayerNormalization is an operator from opset 17 on
MIN_OPSET = 17
#: the metadata key of the network's config in a graph densenn wrote
CONFIG_KEY = "densenn.config"
_INSTALL = "pip install 'densenn[onnx]' (or pip install onnx)"


def _onnx():
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401
    except ImportError:
        raise DensennError(f"ONNX export and import need the onnx package: {_INSTALL}") from None
    return onnx


# -- export ------------------------------------------------------------------------------------
class _Graph:
    """The nodes and initializers of the graph being written, with unique names."""

    def __init__(self, onnx, dtype: np.dtype, opset: int):
        self.onnx, self.dtype, self.opset = onnx, dtype, opset
        self.f64 = dtype == np.float64
        self.nodes: list = []
        self.inits: list = []
        self.count = 0
        self._scalars: dict[float, str] = {}

    def const(self, name: str, value) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype=self.dtype), name))
        return name

    def scalar(self, value: float) -> str:
        if value not in self._scalars:
            self._scalars[value] = self.const(f"const_{len(self._scalars)}", value)
        return self._scalars[value]

    def last_axis(self) -> str:
        """The name of the int64 constant [-1] (ReduceMean's axes)."""
        if not any(i.name == "axes_last" for i in self.inits):
            self.inits.append(self.onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), "axes_last"))
        return "axes_last"

    def node(self, op: str, inputs: list[str], prefix: str, **attrs) -> str:
        self.count += 1
        out = f"{prefix}/{op}_{self.count}"
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _softplus(g: _Graph, x: str, p: str) -> str:
    """log(1 + e^x) = max(x, 0) + log(1 + e^-|x|), in operators onnxruntime has in double."""
    t = g.node("Exp", [g.node("Neg", [g.node("Abs", [x], p)], p)], p)
    return g.node("Add", [g.node("Relu", [x], p), g.node("Log", [g.node("Add", [t, g.scalar(1.0)], p)], p)], p)


def _elu(g: _Graph, x: str, alpha: float, p: str) -> str:
    """x (x > 0), α(e^x − 1) (x ≤ 0), in operators onnxruntime has in double."""
    neg = g.node("Sub", [g.node("Exp", [g.node("Min", [x, g.scalar(0.0)], p)], p), g.scalar(1.0)], p)
    return g.node("Where", [g.node("Greater", [x, g.scalar(0.0)], p), x, g.node("Mul", [neg, g.scalar(alpha)], p)], p)


def _layernorm(g: _Graph, x: str, gamma: str, beta: str, eps: float, p: str) -> str:
    """LayerNorm written out, for a float64 eps that ONNX's float32 epsilon attribute would round."""
    def mean(v):        # over each row; the axes are an input from opset 18 on, an attribute before
        if g.opset >= 18:
            return g.node("ReduceMean", [v, g.last_axis()], p, keepdims=1)
        return g.node("ReduceMean", [v], p, axes=[-1], keepdims=1)
    d = g.node("Sub", [x, mean(x)], p)
    std = g.node("Sqrt", [g.node("Add", [mean(g.node("Mul", [d, d], p)), g.scalar(eps)], p)], p)
    return g.node("Add", [g.node("Mul", [g.node("Div", [d, std], p), gamma], p), beta], p)


def _activation(g: _Graph, act: Activation, x: str, p: str) -> str:
    """The node(s) of ``act`` applied to ``x``; the name of their output."""
    name, f64, opset = act.name, g.f64, g.opset
    if name == "linear":
        return x
    simple = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}
    if name in simple:
        return g.node(simple[name], [x], p)
    if name == "softmax":
        return g.node("Softmax", [x], p, axis=-1)
    if name == "leaky_relu":
        if f64:     # max(x, s·x) is leaky ReLU for 0 ≤ s < 1
            return g.node("Max", [x, g.node("Mul", [x, g.scalar(act.param)], p)], p)
        return g.node("LeakyRelu", [x], p, alpha=float(act.param))
    if name == "elu":
        alpha = float(act.param) if act.param else 1.0
        return _elu(g, x, alpha, p) if f64 else g.node("Elu", [x], p, alpha=alpha)
    if name == "selu":
        if f64:
            return g.node("Mul", [_elu(g, x, SELU_ALPHA, p), g.scalar(SELU_LAMBDA)], p)
        return g.node("Selu", [x], p, alpha=SELU_ALPHA, gamma=SELU_LAMBDA)
    if name == "softplus":
        return _softplus(g, x, p) if f64 else g.node("Softplus", [x], p)
    if name == "silu":
        return g.node("Mul", [x, g.node("Sigmoid", [x], p)], p)
    if name == "mish":
        if f64 or opset < 18:
            return g.node("Mul", [x, g.node("Tanh", [_softplus(g, x, p)], p)], p)
        return g.node("Mish", [x], p)
    if name == "gelu":
        if not f64 and opset >= 20:
            return g.node("Gelu", [x], p)
        u = g.node("Mul", [x, g.scalar(1 / math.sqrt(2.0))], p)
        if f64:     # onnxruntime has Erf in float only: erf runs in float32 (~1e-7 relative), cast back
            u = g.node("Cast", [u], p, to=g.onnx.TensorProto.FLOAT)
        erf = g.node("Erf", [u], p)
        if f64:
            erf = g.node("Cast", [erf], p, to=g.onnx.TensorProto.DOUBLE)
        return g.node("Mul", [g.node("Mul", [x, g.scalar(0.5)], p), g.node("Add", [erf, g.scalar(1.0)], p)], p)
    if name == "gelu_tanh":
        if not f64 and opset >= 20:
            return g.node("Gelu", [x], p, approximate="tanh")
        cube = g.node("Mul", [g.node("Mul", [x, x], p), x], p)
        inner = g.node("Add", [x, g.node("Mul", [cube, g.scalar(0.044715)], p)], p)
        t = g.node("Tanh", [g.node("Mul", [inner, g.scalar(math.sqrt(2.0 / math.pi))], p)], p)
        return g.node("Mul", [g.node("Mul", [x, g.scalar(0.5)], p), g.node("Add", [t, g.scalar(1.0)], p)], p)
    raise DensennError(f"activation {name!r} has no ONNX form in densenn's exporter (a user-registered "
                       f"activation cannot be exported)")


def build_model(net, opset: int | None = None):
    """The ONNX ModelProto of ``net``'s inference form (checked by onnx.checker)."""
    onnx = _onnx()
    newest = int(onnx.defs.onnx_opset_version())
    if opset is None:
        opset = min(DEFAULT_OPSET, newest)
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise DensennError(f"opset must be an int from {MIN_OPSET} to {newest} (this onnx package's newest), "
                           f"got {describe(opset)}")
    dtype = np.dtype(net.dtype)
    g = _Graph(onnx, dtype, opset)
    tensors = net.tensors()
    x = "input"
    for i, spec in enumerate(net.specs):
        p, t = f"layers.{i}", (lambda name, i=i: g.const(f"layers.{i}.{name}", tensors[f"layers.{i}.{name}"]))
        if isinstance(spec, Dense):
            x = g.node("Gemm", [x, t("w"), t("b")], p, transB=1)
            x = _activation(g, get_activation(spec.activation), x, p)
        elif isinstance(spec, Dropout):
            x = g.node("Identity", [x], p)
        elif isinstance(spec, BatchNorm):
            # ONNX's epsilon attribute is a float32: a float64 graph moves the rest of eps into the variance
            eps32 = float(np.float32(spec.eps))
            var = t("running_var") if eps32 == spec.eps or not g.f64 else \
                g.const(f"{p}.running_var_plus_eps_rest", tensors[f"{p}.running_var"] + (spec.eps - eps32))
            x = g.node("BatchNormalization", [x, t("gamma"), t("beta"), t("running_mean"), var], p, epsilon=eps32)
        elif isinstance(spec, LayerNorm):
            if g.f64 and float(np.float32(spec.eps)) != spec.eps:
                x = _layernorm(g, x, t("gamma"), t("beta"), spec.eps, p)
            else:
                x = g.node("LayerNormalization", [x, t("gamma"), t("beta")], p, axis=-1, epsilon=float(spec.eps))
        elif isinstance(spec, ActivationLayer):
            x = _activation(g, spec.activation, x, p)
        else:
            raise DensennError(f"layer {i} ({type(spec).__name__}) has no ONNX form in densenn's exporter")
    if x == "input" or x != g.nodes[-1].output[0]:
        x = g.node("Identity", [x], "output")
    g.nodes[-1].output[0] = "output"
    h = onnx.helper
    elem = onnx.TensorProto.DOUBLE if g.f64 else onnx.TensorProto.FLOAT
    graph = h.make_graph(g.nodes, "densenn", [h.make_tensor_value_info("input", elem, ["N", net.n_in])],
                         [h.make_tensor_value_info("output", elem, ["N", net.n_out])], g.inits)
    opsets = [h.make_opsetid("", opset)]
    model = h.make_model(graph, opset_imports=opsets, producer_name="densenn",
                         ir_version=max(h.find_min_ir_version_for(opsets), 8))
    model.doc_string = repr(net)
    # densenn's own reader rebuilds the network from this and the initializers (see read)
    h.set_model_props(model, {CONFIG_KEY: json.dumps(net.config())})
    onnx.checker.check_model(model, full_check=True)
    return model


def export(net, path, opset: int | None = None) -> str:
    """Write ``net`` (a densenn Network) to ``path`` as an ONNX model, atomically; the path."""
    path = _check_path(path)
    return write_bytes(path, build_model(net, opset).SerializeToString())


# -- import ------------------------------------------------------------------------------------
_FLOATS = {1: np.float32, 11: np.float64}
_ACTS = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "Softplus": "softplus", "Mish": "mish"}
_PASS = ("Identity", "Dropout", "Cast", "Flatten", "Reshape")


def _unsupported(node, why: str) -> DensennError:
    return DensennError(f"ONNX node {node.op_type} ({node.name or node.output[0]}) is not supported: {why}")


class _Reader:
    """Walks the chain of nodes from the graph's input to its output into layers."""

    def __init__(self, onnx, consts: dict, n_in: int):
        self.onnx, self.consts, self.width = onnx, consts, n_in
        #: ["dense", w, b, activation or None] or [spec, {name: tensor}]
        self.layers: list[list] = []
        self.negated: str | None = None

    def attrs(self, node) -> dict:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def _last_linear(self):
        last = self.layers[-1] if self.layers else None
        return last if last is not None and last[0] == "dense" and last[3] is None else None

    def activation(self, act: Activation) -> None:
        last = self._last_linear()
        if last is not None:
            last[3] = act
        else:
            self.layers.append([ActivationLayer(act), {}])

    def const(self, node, name: str) -> np.ndarray:
        if name not in self.consts:
            raise _unsupported(node, f"its input {name!r} must be a constant (an initializer or a Constant node)")
        return self.consts[name]

    def dense(self, node, w: np.ndarray, b: np.ndarray | None) -> None:
        if w.ndim != 2 or w.shape[1] != self.width:
            raise _unsupported(node, f"its weights have shape {w.shape}, expected (units, {self.width})")
        units = w.shape[0]
        bias = np.zeros(units) if b is None else np.broadcast_to(np.asarray(b, dtype=np.float64).reshape(-1),
                                                                 (units,))
        self.layers.append(["dense", np.asarray(w, dtype=np.float64), np.array(bias), None])
        self.width = units

    def step(self, node, chain: str) -> str:
        """Apply one node whose input ``chain`` is the chain's value; the chain's new value."""
        op, a = node.op_type, self.attrs(node)
        others = [i for i in node.input if i and i != chain]
        if op == "Gemm":
            if node.input[0] != chain or a.get("transA", 0):
                raise _unsupported(node, "only Gemm(x, W, C) with transA=0 on the data maps onto a Dense layer")
            w = self.const(node, node.input[1]).astype(np.float64) * float(a.get("alpha", 1.0))
            w = w if a.get("transB", 0) else w.T
            c = self.const(node, node.input[2]) * float(a.get("beta", 1.0)) if len(node.input) > 2 and \
                node.input[2] else None
            self.dense(node, w, c)
        elif op == "MatMul":
            if node.input[0] != chain:
                raise _unsupported(node, "only MatMul(x, W) with a constant W maps onto a Dense layer")
            self.dense(node, self.const(node, node.input[1]).T, None)
        elif op == "Add":
            last = self._last_linear()
            c = self.const(node, others[0]) if len(others) == 1 else None
            if last is None or c is None or c.size not in (1, self.width):
                raise _unsupported(node, "an Add must add a constant bias right after a MatMul or Gemm")
            last[2] = last[2] + np.broadcast_to(c.astype(np.float64).reshape(-1), last[2].shape)
        elif op in _ACTS:
            self.activation(get_activation(_ACTS[op]))
        elif op == "LeakyRelu":
            self.activation(LeakyReLU(float(a.get("alpha", 0.01))))
        elif op == "Elu":
            self.activation(ELU(float(a.get("alpha", 1.0))))
        elif op == "Selu":
            alpha, gamma = float(a.get("alpha", 1.6732632)), float(a.get("gamma", 1.0507010))   # ONNX's defaults
            if not (math.isclose(alpha, SELU_ALPHA, rel_tol=1e-6) and math.isclose(gamma, SELU_LAMBDA, rel_tol=1e-6)):
                raise _unsupported(node, f"densenn's selu has alpha={SELU_ALPHA}, gamma={SELU_LAMBDA}; "
                                         f"this one alpha={alpha}, gamma={gamma}")
            self.activation(get_activation("selu"))
        elif op == "Gelu":
            self.activation(get_activation("gelu_tanh" if a.get("approximate", b"none") in ("tanh", b"tanh")
                                            else "gelu"))
        elif op == "Softmax":
            if a.get("axis", -1) not in (-1, 1):
                raise _unsupported(node, f"softmax over axis {a['axis']} (densenn's is over each row: axis -1)")
            self.activation(get_activation("softmax"))
        elif op == "BatchNormalization":
            if a.get("training_mode", 0):
                raise _unsupported(node, "training_mode=1 (only the inference form maps onto densenn's BatchNorm)")
            names = ("gamma", "beta", "running_mean", "running_var")
            self.norm(node, BatchNorm(eps=float(a.get("epsilon", 1e-5))), names, node.input[1:5])
        elif op == "LayerNormalization":
            if a.get("axis", -1) not in (-1, 1):
                raise _unsupported(node, f"normalisation over axis {a['axis']} (densenn's LayerNorm: axis -1)")
            self.norm(node, LayerNorm(eps=float(a.get("epsilon", 1e-5))), ("gamma", "beta"), node.input[1:3])
        elif op in _PASS:
            self.passthrough(node, op, a)
        elif op == "Sub" and node.input[1] == chain and self._is_one(node.input[0]):
            self.negated = node.output[0]       # 1 − p, for skl2onnx's binary classifier
            return chain
        elif op == "Concat" and self.negated is not None and list(node.input) == [self.negated, chain]:
            self.binary(node)
        else:
            raise _unsupported(node, "densenn reads MatMul/Gemm, Add (a bias), Relu, LeakyRelu, Elu, Selu, Tanh, "
                                     "Sigmoid, Softplus, Mish, Gelu, Softmax, BatchNormalization, "
                                     "LayerNormalization, Identity, Dropout, Cast, Flatten and Reshape")
        return node.output[0]

    def _is_one(self, name: str) -> bool:
        c = self.consts.get(name)
        return c is not None and c.size == 1 and float(c.reshape(-1)[0]) == 1.0

    def binary(self, node) -> None:
        """[1 − σ(z), σ(z)] is softmax([−z/2, z/2]): the last Dense layer becomes two softmax units."""
        last = self.layers[-1] if self.layers else None
        if last is None or last[0] != "dense" or last[3] is None or last[3].name != "sigmoid" or self.width != 1:
            raise _unsupported(node, "only Concat([1 - p, p]) after a one-unit sigmoid Dense layer is supported")
        last[1] = np.concatenate([-0.5 * last[1], 0.5 * last[1]])
        last[2] = np.concatenate([-0.5 * last[2], 0.5 * last[2]])
        last[3] = get_activation("softmax")
        self.width = 2

    def norm(self, node, spec, names, inputs) -> None:
        tensors = {}
        for name, inp in zip(names, inputs):
            v = self.const(node, inp).reshape(-1)
            if v.size != self.width:
                raise _unsupported(node, f"its {name} has {v.size} values for {self.width} features")
            tensors[name] = v
        self.layers.append([spec, tensors])

    def passthrough(self, node, op: str, a: dict) -> None:
        if op == "Cast" and a.get("to") not in _FLOATS:
            raise _unsupported(node, "a Cast to anything but float or double leaves the network's values")
        if op == "Flatten" and a.get("axis", 1) != 1:
            raise _unsupported(node, "only Flatten(axis=1) of the (N, features) data is supported")
        if op == "Reshape":
            shape = [int(s) for s in self.const(node, node.input[1]).reshape(-1)]
            if len(shape) != 2 or shape[1] not in (self.width, -1) or (shape[1] == -1 and shape[0] not in (0, -1)):
                raise _unsupported(node, f"a Reshape to {shape} changes the (N, {self.width}) rows")


def _constants(onnx, graph) -> dict:
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            attr = {a.name: a for a in node.attribute}
            if "value" not in attr:
                raise _unsupported(node, "only a Constant with a tensor value is read")
            consts[node.output[0]] = onnx.numpy_helper.to_array(attr["value"].t)
    return consts


def _load(onnx, path: str):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DensennError(f"cannot read the ONNX file {path!r}: {e.strerror or e}") from None
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:      # protobuf's DecodeError and whatever onnx raises for a bad file
        raise DensennError(f"{path!r} is not an ONNX model file ({type(e).__name__}: {e})") from None
    if not model.graph.node or not model.graph.input or not model.opset_import:
        raise DensennError(f"{path!r} is not an ONNX model file (no graph, inputs or opset in it)")
    return model


def _output(path: str, graph):
    floats = [o for o in graph.output if o.type.tensor_type.elem_type in _FLOATS]
    if len(floats) > 1:
        floats = [o for o in floats if "prob" in o.name.lower()] or floats
    if len(floats) != 1:
        raise DensennError(f"{path!r}: densenn reads a graph with one float output (or a classifier's "
                           f"'probabilities'), this one has outputs {[o.name for o in graph.output]}")
    return floats[0].name


def read(path, dtype=None):
    """(n_in, layer specs, tensors named ``layers.{i}.{name}``, dtype) of the ONNX file at ``path``."""
    onnx = _onnx()
    path = _check_path(path)
    model = _load(onnx, path)
    graph = model.graph
    consts = _constants(onnx, graph)
    own = _own(path, model, consts)
    if own is not None:
        return own[0], own[1], own[2], np.dtype(dtype or own[3])
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        raise DensennError(f"{path!r}: densenn reads a graph with one input, this one has {[i.name for i in inputs]}")
    t = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if len(dims) != 2 or not dims[1]:
        raise DensennError(f"{path!r}: its input {inputs[0].name!r} must have shape (N, features) with a known "
                           f"number of features, got {dims}")
    file_dtype = _FLOATS.get(t.elem_type)
    if file_dtype is None:
        raise DensennError(f"{path!r}: its input must be float or double (ONNX element type {t.elem_type})")
    target = _output(path, graph)
    nodes = list(graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    needed, todo = set(), [target]          # the nodes the output needs (not a classifier's label path)
    while todo:
        k = producer.get(todo.pop())
        if k is not None and k not in needed:
            needed.add(k)
            todo += list(nodes[k].input)
    reader, chain = _Reader(onnx, consts, dims[1]), inputs[0].name
    for k, node in enumerate(nodes):
        if k not in needed or node.op_type == "Constant":
            continue
        if chain not in node.input:
            raise _unsupported(node, "it does not act on the chain of layers from the input (densenn reads "
                                     "feed-forward graphs only)")
        chain = reader.step(node, chain)
    if chain != target:
        raise DensennError(f"{path!r}: the output {target!r} is not reached from the input by a chain of layers")
    specs, tensors = _specs(path, reader.layers)
    return int(dims[1]), specs, tensors, np.dtype(dtype or file_dtype)


def _own(path: str, model, consts: dict):
    """(n_in, specs, tensors, dtype) of a graph densenn wrote (its config in the metadata), else None."""
    props = {p.key: p.value for p in model.metadata_props}
    if CONFIG_KEY not in props:
        return None
    try:
        config = json.loads(props[CONFIG_KEY])
        specs = [layer_type(cfg, f"layers[{i}]").from_config(cfg) for i, cfg in enumerate(config["layers"])]
        n_in, dtype = int(config["n_in"]), np.dtype(config["dtype"])
    except (ValueError, KeyError, TypeError, DensennError) as e:
        raise DensennError(f"{path!r}: its {CONFIG_KEY} metadata is not a densenn config ({e})") from None
    tensors = {}
    for i, spec in enumerate(specs):
        for name in spec.tensor_shapes(1):
            key, shift = f"layers.{i}.{name}", 0.0
            if key not in consts and name == "running_var":     # float64: eps's rest moved into it
                eps = float(getattr(spec, "eps", 0.0))
                key, shift = f"{key}_plus_eps_rest", eps - float(np.float32(eps))
            if key not in consts:
                raise DensennError(f"{path!r}: the graph has no initializer {key}, which its {CONFIG_KEY} needs")
            tensors[f"layers.{i}.{name}"] = consts[key] - shift if shift else consts[key]
    return n_in, specs, tensors, dtype


def _specs(path: str, layers: list) -> tuple[list, dict]:
    if not any(la[0] == "dense" for la in layers):
        raise DensennError(f"{path!r}: the graph has no MatMul or Gemm node: no Dense layer to read")
    specs, tensors = [], {}
    for i, layer in enumerate(layers):
        if layer[0] == "dense":
            _, w, b, act = layer
            specs.append(Dense(w.shape[0], act or "linear"))
            tensors[f"layers.{i}.w"], tensors[f"layers.{i}.b"] = w, b
        else:
            specs.append(layer[0])
            tensors.update({f"layers.{i}.{k}": v for k, v in layer[1].items()})
    return specs, tensors
