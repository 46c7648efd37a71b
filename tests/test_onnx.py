"""ONNX export (net.to_onnx, densenn export) through onnxruntime, and import (dn.from_onnx) of
PyTorch's and skl2onnx's MLPs. Outputs are compared with a relative tolerance on the output's
scale: |ours − theirs| ≤ rtol · max|ours| (a product near zero after cancellation has no
relative accuracy in either runtime)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import densenn as dn
from densenn.cli import main

onnx = pytest.importorskip("onnx", reason="ONNX export/import needs the onnx package (pip install onnx)")
ort = pytest.importorskip("onnxruntime", reason="the round-trip checks run the graphs in onnxruntime")

RTOL = {"float32": 1e-5, "float64": 1e-12}
ACTIVATIONS = ["relu", dn.LeakyReLU(0.1), dn.ELU(0.7), "tanh", "sigmoid", "softplus", "linear", "softmax",
               "gelu", "gelu_tanh", "silu", "mish", "selu"]


def _act_id(act):
    return act if isinstance(act, str) else act.name


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def _close(got, want, rtol):
    assert got.shape == want.shape
    err = float(np.max(np.abs(got.astype(np.float64) - want)) / max(float(np.max(np.abs(want))), 1e-300))
    assert err <= rtol, f"max error {err:.3g} relative to the output's scale (tolerance {rtol:g})"


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)) * 2
    y = rng.integers(0, 3, 64)
    return x, y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act", ACTIVATIONS, ids=_act_id)
def test_every_activation_round_trips_through_onnxruntime(tmp_path, data, act, dtype):
    x, _ = data
    net = dn.Network(6, [dn.Dense(9, act), dn.Dense(5, act), dn.ActivationLayer(act), dn.Dense(3, "linear")],
                     engine="cpu", dtype=dtype, seed=1)
    path = net.to_onnx(tmp_path / "m.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 21
    (got,) = _run(path, x.astype(dtype))
    assert got.dtype == np.dtype(dtype)
    # float64's exact GELU computes erf in float32 (onnxruntime has no double Erf): ~1e-7
    rtol = 1e-6 if (dtype == "float64" and _act_id(act) == "gelu") else RTOL[dtype]
    _close(got, net.predict(x), rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dropout_batchnorm_layernorm_softmax_in_inference_form(tmp_path, data, dtype):
    x, y = data
    net = dn.Network(6, [dn.Dense(16, "relu", norm="batch"), dn.Dropout(0.3), dn.Dense(12, "tanh", norm="layer"),
                         dn.Dropout(0.2), dn.LayerNorm(eps=1e-3), dn.Dense(3, "softmax")],
                     engine="cpu", dtype=dtype, seed=2)
    net.fit(x, y, epochs=3, batch_size=16, optimizer=dn.Adam(1e-2), progress=False)
    running = net.tensors()["layers.1.running_var"]
    assert not np.allclose(running, 1.0)            # the running statistics moved
    opset = 20 if dtype == "float32" else 17        # 17: ReduceMean's axes as an attribute
    path = net.to_onnx(tmp_path / "m.onnx", opset=opset)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert {"Gemm", "BatchNormalization", "Identity", "Softmax"} <= set(ops)
    # float64: eps 1e-5 and 1e-3 are no float32s (ONNX's epsilon attribute): LayerNorm written out
    assert ("LayerNormalization" in ops) == (dtype == "float32") and ("ReduceMean" in ops) == (dtype == "float64")
    assert model.opset_import[0].version == opset
    (got,) = _run(path, x.astype(dtype))
    _close(got, net.predict(x), RTOL[dtype])


def test_opset_is_checked(tmp_path):
    net = dn.Network(3, [dn.Dense(2, "relu")], engine="cpu")
    for bad in (16, 10_000, "21", True):
        with pytest.raises(dn.DensennError, match="opset must be an int"):
            net.to_onnx(tmp_path / "m.onnx", opset=bad)
    assert not (tmp_path / "m.onnx").exists()
    net.to_onnx(tmp_path / "m.onnx", opset=17)      # the oldest with LayerNormalization: Erf/Mish written out
    onnx.checker.check_model(onnx.load(tmp_path / "m.onnx"))


def test_cli_export(tmp_path, data, capsys):
    x, y = data
    net = dn.Network(6, [dn.Dense(8, "relu"), dn.Dense(3, "softmax")], engine="cpu", seed=0)
    net.fit(x, y, epochs=2, progress=False)
    model = net.save(tmp_path / "m.dn")
    assert main(["export", str(model), str(tmp_path / "m.onnx"), "--json"]) == 0
    report = __import__("json").loads(capsys.readouterr().out)
    assert report["onnx"] == str(tmp_path / "m.onnx") and report["n_in"] == 6 and report["opset"] == 21
    (got,) = _run(tmp_path / "m.onnx", x.astype(np.float32))
    _close(got, net.predict(x), 1e-5)
    assert main(["export", str(model), str(tmp_path / "m2.onnx")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "missing.dn"), str(tmp_path / "x.onnx")]) == 1
    assert "densenn: error:" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_export_then_import_is_the_same_network(tmp_path, data, dtype):
    """A graph densenn wrote carries its config: read back exactly, whatever its nodes are."""
    x, y = data
    net = dn.Network(6, [dn.Dense(8, dn.LeakyReLU(0.05), norm="batch"), dn.Dense(8, "gelu"), dn.Dropout(0.1),
                         dn.LayerNorm(1e-3), dn.Dense(3, "softmax")], engine="cpu", dtype=dtype, seed=3)
    net.fit(x, y, epochs=2, batch_size=16, progress=False)
    net.to_onnx(tmp_path / "m.onnx")
    back = dn.from_onnx(tmp_path / "m.onnx", engine="cpu")
    assert back.dtype == np.dtype(dtype) and back.n_in == 6 and back.n_out == 3
    assert back.specs == net.specs
    _close(back.predict(x), net.predict(x), 1e-15)       # running_var + (eps − float32 eps) − that, in float64
    back.fit(x, y, epochs=1, batch_size=16, progress=False)


def test_import_reads_the_nodes_without_densenn_metadata(tmp_path, data):
    x, _ = data
    net = dn.Network(6, [dn.Dense(8, dn.LeakyReLU(0.05)), dn.Dense(8, "gelu_tanh"), dn.Dropout(0.1),
                         dn.Dense(5, "linear"), dn.BatchNorm(), dn.ActivationLayer("elu"), dn.LayerNorm(),
                         dn.Dense(3, "softmax")], engine="cpu", seed=3)
    model = onnx.load(net.to_onnx(tmp_path / "m.onnx"))
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "plain.onnx")
    back = dn.from_onnx(tmp_path / "plain.onnx", engine="cpu")
    assert [type(s).__name__ for s in back.specs] == ["Dense", "Dense", "Dense", "BatchNorm", "ActivationLayer",
                                                        "LayerNorm", "Dense"]
    np.testing.assert_array_equal(back.predict(x), net.predict(x))


# -- import ------------------------------------------------------------------------------------
def test_import_torch_sequential_and_train_further(tmp_path, data):
    torch = pytest.importorskip("torch", reason="the PyTorch export test needs torch")
    x, y = data
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 7), torch.nn.Tanh(),
                                torch.nn.Linear(7, 3), torch.nn.Softmax(dim=1)).eval()
    path = tmp_path / "torch.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(2, 6),), str(path), dynamo=False, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    except Exception as exc:        # a torch without the TorchScript exporter (and no onnxscript)
        pytest.skip(f"torch.onnx.export(dynamo=False) is not available here: {exc}")
    net = dn.from_onnx(path, engine="cpu")
    assert [s.config()["activation"]["name"] for s in net.specs] == ["relu", "tanh", "softmax"]
    with torch.no_grad():
        want = model(torch.from_numpy(x.astype(np.float32))).numpy()
    _close(net.predict(x), want, 1e-5)
    before = net.evaluate(x, y)["loss"]
    net.fit(x, y, epochs=20, batch_size=16, optimizer=dn.Adam(1e-2), progress=False)
    assert net.evaluate(x, y)["loss"] < before

    # opset 20: GELU is one Gelu node (older opsets write it out with Div/Erf: not read, named)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 5), torch.nn.LeakyReLU(0.2),
                                torch.nn.Linear(5, 4), torch.nn.ELU(0.5), torch.nn.Linear(4, 1), torch.nn.Sigmoid())
    for opset in (20, 17):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (torch.zeros(2, 6),), str(path), dynamo=False, opset_version=opset,
                              input_names=["x"], dynamic_axes={"x": {0: "N"}})
        if opset == 17:
            with pytest.raises(dn.DensennError, match=r"ONNX node Div \(.*\) is not supported"):
                dn.from_onnx(path)
            continue
        net = dn.from_onnx(path, engine="cpu")
        assert [s.config()["activation"] for s in net.specs] == [
            {"name": "gelu"}, {"name": "leaky_relu", "param": pytest.approx(0.2)}, {"name": "elu", "param": 0.5},
            {"name": "sigmoid"}]
        with torch.no_grad():
            _close(net.predict(x), model(torch.from_numpy(x.astype(np.float32))).numpy(), 1e-5)


@pytest.fixture(scope="module")
def skl2onnx():
    return pytest.importorskip("skl2onnx", reason="the scikit-learn import tests need skl2onnx")


@pytest.mark.parametrize("n_classes, activation", [(3, "relu"), (2, "tanh")])
def test_import_skl2onnx_mlp_classifier(tmp_path, data, skl2onnx, n_classes, activation):
    from sklearn.neural_network import MLPClassifier

    x, _ = data
    y = np.random.default_rng(1).integers(0, n_classes, len(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(12, 8), activation=activation, max_iter=200, random_state=0)
        clf.fit(x, y)
    model = skl2onnx.to_onnx(clf, x[:1].astype(np.float32), options={id(clf): {"zipmap": False}}, target_opset=21)
    (tmp_path / "clf.onnx").write_bytes(model.SerializeToString())
    net = dn.from_onnx(tmp_path / "clf.onnx", engine="cpu")
    assert net.n_out == n_classes and net.output_activation == "softmax"
    proba = net.predict(x)
    _close(proba, clf.predict_proba(x.astype(np.float32)), 1e-5)
    _, theirs = _run(tmp_path / "clf.onnx", x.astype(np.float32))
    _close(proba, theirs, 1e-5)
    assert (net.predict_classes(x) == clf.predict(x)).mean() > 0.98
    net.fit(x, y, epochs=3, batch_size=16, progress=False)      # trains on as a densenn network


def test_import_skl2onnx_mlp_regressor(tmp_path, data, skl2onnx):
    from sklearn.neural_network import MLPRegressor

    x, _ = data
    target = np.sin(x[:, 0]) + x[:, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = MLPRegressor(hidden_layer_sizes=(10, 5), max_iter=300, random_state=0).fit(x, target)
    model = skl2onnx.to_onnx(reg, x[:1].astype(np.float32), target_opset=21)
    (tmp_path / "reg.onnx").write_bytes(model.SerializeToString())
    net = dn.from_onnx(tmp_path / "reg.onnx", engine="cpu", dtype="float64")
    assert net.dtype == np.float64 and net.n_out == 1
    _close(net.predict(x)[:, 0], reg.predict(x), 1e-5)
    before = net.evaluate(x, target[:, None])["loss"]
    net.fit(x, target[:, None], epochs=30, batch_size=16, optimizer=dn.Adam(1e-3), progress=False)
    assert net.evaluate(x, target[:, None])["loss"] < before


def _model(nodes, inits, n_in=4):
    h = onnx.helper
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", n_in])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                         [onnx.numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])


def test_gemm_attributes_and_matmul_add(tmp_path):
    rng = np.random.default_rng(5)
    w1, c1, w2, b2 = rng.normal(size=(4, 5)), rng.normal(size=(5,)), rng.normal(size=(5, 2)), rng.normal(size=(1, 2))
    h = onnx.helper
    model = _model([h.make_node("Flatten", ["x"], ["f"], axis=1),
                    h.make_node("Gemm", ["f", "w1", "c1"], ["g"], alpha=0.5, beta=2.0, transB=0, name="gemm"),
                    h.make_node("Elu", ["g"], ["e"], alpha=0.3), h.make_node("MatMul", ["e", "w2"], ["m"]),
                    h.make_node("Add", ["b2", "m"], ["a"]), h.make_node("Softmax", ["a"], ["y"], axis=1)],
                   {"w1": w1, "c1": c1, "w2": w2, "b2": b2})
    onnx.save(model, tmp_path / "g.onnx")
    net = dn.from_onnx(tmp_path / "g.onnx", engine="cpu")
    assert [s.config()["activation"]["name"] for s in net.specs] == ["elu", "softmax"]
    x = rng.normal(size=(20, 4)).astype(np.float32)
    _close(net.predict(x), _run(tmp_path / "g.onnx", x)[0], 1e-5)


def test_unsupported_node_is_named(tmp_path):
    h = onnx.helper
    model = _model([h.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
                    h.make_node("HardSigmoid", ["g"], ["y"], name="odd_one")], {"w": np.ones((3, 4)), "b": np.ones(3)})
    onnx.save(model, tmp_path / "u.onnx")
    with pytest.raises(dn.DensennError, match=r"ONNX node HardSigmoid \(odd_one\) is not supported: "):
        dn.from_onnx(tmp_path / "u.onnx")


def test_a_file_that_is_not_onnx(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x00\xffthis is not a protobuf\xff" * 10)
    (tmp_path / "text.onnx").write_text("hello")
    for name in ("junk.onnx", "text.onnx"):
        with pytest.raises(dn.DensennError, match="is not an ONNX model file"):
            dn.from_onnx(tmp_path / name)
    with pytest.raises(dn.DensennError, match="cannot read the ONNX file"):
        dn.from_onnx(tmp_path / "missing.onnx")
    net = dn.Network(3, [dn.Dense(2)], engine="cpu")
    net.save(tmp_path / "m.dn")
    with pytest.raises(dn.DensennError, match="is not an ONNX model file"):
        dn.from_onnx(tmp_path / "m.dn")


def test_other_defects_are_named(tmp_path, monkeypatch):
    h = onnx.helper
    model = _model([h.make_node("Add", ["x", "c"], ["y"], name="lonely")], {"c": np.ones(4)})
    onnx.save(model, tmp_path / "add.onnx")
    with pytest.raises(dn.DensennError, match=r"ONNX node Add \(lonely\) is not supported: an Add must add a "
                                              r"constant bias right after a MatMul or Gemm"):
        dn.from_onnx(tmp_path / "add.onnx")
    net = dn.Network(3, [dn.Dense(2, "relu")], engine="cpu")
    model = onnx.load(net.to_onnx(tmp_path / "m.onnx"))
    model.metadata_props[0].value = "{not json"
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(dn.DensennError, match="densenn.config metadata is not a densenn config"):
        dn.from_onnx(tmp_path / "bad.onnx")
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)       # as if onnx were not installed
    with pytest.raises(dn.DensennError, match="need the onnx package"):
        net.to_onnx(tmp_path / "n.onnx")
    with pytest.raises(dn.DensennError, match="need the onnx package"):
        dn.from_onnx(tmp_path / "m.onnx")
