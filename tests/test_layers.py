"""Layers beyond Dense: Dropout, BatchNorm, LayerNorm and activations as layers.

Their forward passes against NumPy references, their backward passes against finite
differences (float64, training mode) on every engine, the same dropout masks on every
engine, inference mode in predict, running statistics, what weight decay touches,
saving and loading, the weights API and bad input.
"""
from __future__ import annotations

import numpy as np
import pytest

import densenn as dn
from densenn.kernels import random

X_RNG = np.random.default_rng(11)
X = X_RNG.normal(size=(14, 5))
LABELS = X_RNG.integers(0, 3, 14)
Y_REG = X_RNG.normal(size=(14, 2))

#: (id, layers, targets): every new layer, before and after others, with the costs that touch it
GRAD_CASES = [
    ("batchnorm-tanh", lambda: [dn.Dense(6, "tanh", norm="batch"), dn.Dense(3, "softmax")], LABELS),
    ("layernorm-relu", lambda: [dn.Dense(6, "relu", norm="layer"), dn.Dense(3, "softmax")], LABELS),
    ("dropout", lambda: [dn.Dense(6, "sigmoid"), dn.Dropout(0.3), dn.Dense(3, "softmax")], LABELS),
    ("input-dropout-ln-bn", lambda: [dn.Dropout(0.2), dn.Dense(6, "linear"), dn.LayerNorm(), "tanh",
                                     dn.Dense(4, "linear"), dn.BatchNorm(), dn.Dense(3, "softmax")], LABELS),
    ("softmax-layer", lambda: [dn.Dense(6, "linear"), dn.BatchNorm(), dn.Dense(3, "linear"), "softmax"], LABELS),
    ("bn-elu-dropout-regression", lambda: [dn.Dense(6, "elu", norm="batch"), dn.Dropout(0.5),
                                           dn.Dense(2, "linear")], Y_REG),
    ("layernorm-output-sigmoid", lambda: [dn.Dense(6, "relu"), dn.LayerNorm(), dn.Dense(2, "sigmoid")],
     (Y_REG > 0).astype(float)),
]


def _float64(engine):
    if not engine.supports("float64"):
        pytest.skip(f"engine {engine.name!r} has no float64 here")
    return "float64"


@pytest.mark.parametrize("make,y", [c[1:] for c in GRAD_CASES], ids=[c[0] for c in GRAD_CASES])
def test_backward_matches_finite_differences_in_training_mode(engine, make, y):
    net = dn.Network(5, make(), engine=engine, dtype=_float64(engine), seed=3)
    assert dn.check_gradients(net, X, y) < 1e-6


def test_gradients_list_one_tuple_per_layer_with_parameters():
    net = dn.Network(5, [dn.Dense(6, "relu", norm="batch"), dn.Dropout(0.1), dn.Dense(4, "linear"), dn.LayerNorm(),
                         dn.Dense(3, "softmax")], dtype="float64", seed=0)
    shapes = [tuple(p.shape for p in group) for group in net.get_weights()]
    assert shapes == [((6, 5), (6,)), ((6,), (6,)), ((4, 6), (4,)), ((4,), (4,)), ((3, 4), (3,))]
    grads = net.gradients(X, LABELS)
    assert [tuple(g.shape for g in group) for group in grads] == shapes
    assert [layer.type for layer in net.specs] == ["dense", "batchnorm", "activation", "dropout", "dense",
                                                   "layernorm", "dense"]


# -- forward passes against NumPy -----------------------------------------------------------------
def _training_output(net, x, layer_index):
    """The training-mode output of layer ``layer_index`` for the batch x (one forward pass)."""
    with dn.TrainingNetwork(net, len(x), net.default_cost()) as tn:
        net.engine.upload(np.asarray(x, net.dtype), tn.x)
        for layer in tn.layers:
            layer.forward()
        return net.engine.to_host(tn.layers[layer_index].a)


def test_batchnorm_normalises_each_feature_over_the_batch(engine):
    dt = _float64(engine)
    net = dn.Network(5, [dn.Dense(4, "linear"), dn.BatchNorm(eps=1e-3), dn.Dense(2, "linear")], engine=engine,
                     dtype=dt, seed=1)
    gamma, beta = np.array([1.5, -2.0, 0.5, 1.0]), np.array([0.1, 0.2, -0.3, 0.0])
    weights = net.get_weights()
    weights[1] = (gamma, beta)
    net.set_weights(weights)
    w, b = weights[0]
    z = X @ w.T + b
    ref = gamma * (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-3) + beta    # the biased variance, as PyTorch
    np.testing.assert_allclose(_training_output(net, X, 1), ref, rtol=1e-10, atol=1e-12)


def test_layernorm_normalises_each_sample_in_training_and_inference_alike(engine):
    dt = _float64(engine)
    net = dn.Network(5, [dn.Dense(4, "linear"), dn.LayerNorm(), dn.Dense(2, "linear")], engine=engine, dtype=dt,
                     seed=2)
    gamma, beta = np.array([1.0, 2.0, 3.0, -1.0]), np.array([0.5, 0.0, -0.5, 1.0])
    weights = net.get_weights()
    weights[1] = (gamma, beta)
    net.set_weights(weights)
    w, b = weights[0]
    z = X @ w.T + b
    ref = gamma * (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-5) + beta
    np.testing.assert_allclose(_training_output(net, X, 1), ref, rtol=1e-10, atol=1e-12)
    w2, b2 = weights[2]
    np.testing.assert_allclose(net.predict(X), ref @ w2.T + b2, rtol=1e-10, atol=1e-12)


def test_batchnorm_running_statistics_and_inference():
    """After each step: running = m·running + (1 - m)·batch (the unbiased variance); predict
    normalises with the running statistics, not the batch's."""
    net = dn.Network(5, [dn.Dense(4, "linear"), dn.BatchNorm(momentum=0.8), dn.Dense(3, "softmax")],
                     dtype="float64", seed=4)
    w, b = net.get_weights()[0]
    net.fit(X, LABELS, epochs=1, batch_size=len(X), optimizer=dn.SGD(1e-12), shuffle=False, progress=False)
    z = X @ w.T + b                    # the step changed w by ~1e-12 only
    rmean = 0.2 * z.mean(0)
    rvar = 0.8 * 1.0 + 0.2 * z.var(0, ddof=1)
    saved = net.tensors()
    np.testing.assert_allclose(saved["layers.1.running_mean"], rmean, rtol=1e-9)
    np.testing.assert_allclose(saved["layers.1.running_var"], rvar, rtol=1e-9)
    (w1, b1), (gamma, beta), (w2, b2) = net.get_weights()
    h = gamma * (X @ w1.T + b1 - rmean) / np.sqrt(rvar + 1e-5) + beta
    logits = h @ w2.T + b2
    ref = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(net.predict(X), ref / ref.sum(1, keepdims=True), rtol=1e-8)


def test_gradients_and_training_loss_do_not_move_running_statistics_or_masks():
    net = dn.Network(5, [dn.Dense(4, "relu", norm="batch"), dn.Dropout(0.5), dn.Dense(3, "softmax")],
                     dtype="float64", seed=5)
    before = net.tensors()
    first = net.gradients(X, LABELS)
    loss = net.training_loss(X, LABELS)
    again = net.gradients(X, LABELS)
    for g1, g2 in zip(first, again):
        for a, b in zip(g1, g2):
            np.testing.assert_array_equal(a, b)
    assert net.training_loss(X, LABELS) == loss
    for name, value in net.tensors().items():
        np.testing.assert_array_equal(value, before[name])


# -- dropout --------------------------------------------------------------------------------------
def test_dropout_drops_the_rate_and_keeps_the_mean(engine):
    x = np.random.default_rng(0).uniform(1.0, 2.0, size=(500, 40))
    net = dn.Network(40, [dn.Dropout(0.3), dn.Dense(2, "linear")], engine=engine, seed=9)
    a = _training_output(net, x, 0)
    dropped = a == 0
    assert abs(dropped.mean() - 0.3) < 0.01
    np.testing.assert_allclose(a[~dropped], (x / 0.7)[~dropped], rtol=1e-6)
    assert abs(a.mean() / x.mean() - 1.0) < 0.02


def test_dropout_masks_are_the_same_on_every_engine(available_engines):
    """One hash, every engine: the masks of a training run match bit for bit, so the trained
    weights agree to rounding."""
    if len(available_engines) < 2:
        pytest.skip("only one engine here")
    r = np.random.default_rng(1)
    x, y = r.normal(size=(64, 8)), r.integers(0, 3, 64)
    weights = {}
    for name, engine in available_engines.items():
        dt = "float64" if engine.supports("float64") else "float32"
        net = dn.Network(8, [dn.Dense(16, "relu"), dn.Dropout(0.4), dn.Dense(3, "softmax")], engine=engine,
                         dtype=dt, seed=3)
        net.fit(x, y, epochs=3, batch_size=16, optimizer=dn.Adam(1e-2), progress=False)
        weights[name] = (dt, net.get_weights())
    names = list(weights)
    for name in names[1:]:
        tol = 1e-9 if weights[name][0] == weights[names[0]][0] == "float64" else 2e-4
        for ga, gb in zip(weights[names[0]][1], weights[name][1]):
            for a, b in zip(ga, gb):
                np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"{names[0]} vs {name}")


def test_the_engines_draw_the_same_uniform_numbers(available_engines):
    k = random.key(123, 4, 5)
    ref = np.array([(random.mix(((i * random.PHI) & random.MASK) ^ k) >> 8) * random.SCALE for i in range(300)])
    for name, engine in available_engines.items():
        for dt in ("float32", "float64"):
            if engine.supports(dt):
                out = engine.zeros((20, 15), dt)
                np.testing.assert_array_equal(engine.to_host(engine.uniform(out, k)).ravel(), ref, err_msg=name)


def test_dropout_is_reproducible_from_the_seed_and_changes_every_step():
    r = np.random.default_rng(2)
    x, y = r.normal(size=(40, 6)), r.integers(0, 2, 40)

    def trained(seed):
        net = dn.Network(6, [dn.Dense(8, "relu"), dn.Dropout(0.5), dn.Dense(2, "softmax")], seed=seed)
        net.fit(x, y, epochs=2, batch_size=10, progress=False)
        return net

    a, b, c = trained(1), trained(1), trained(2)
    for (wa, _), (wb, _) in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert not np.allclose(a.get_weights()[0][0], c.get_weights()[0][0])
    net = dn.Network(6, [dn.Dropout(0.5), dn.Dense(2, "linear")], seed=1)
    first = _training_output(net, x, 0)
    net.layers[0].steps += 1                        # what a training step does
    assert not np.array_equal(first == 0, _training_output(net, x, 0) == 0)


def test_predict_is_inference_mode():
    """Dropout is the identity and BatchNorm uses its running statistics: predict gives the same
    output every time, equal to the network without its dropout layers."""
    r = np.random.default_rng(3)
    x, y = r.normal(size=(50, 6)), r.integers(0, 3, 50)
    net = dn.Network(6, [dn.Dense(16, "relu", norm="batch"), dn.Dropout(0.5), dn.Dense(3, "softmax")], seed=0)
    net.fit(x, y, epochs=3, batch_size=10, progress=False)
    p = net.predict(x)
    np.testing.assert_array_equal(p, net.predict(x))
    np.testing.assert_array_equal(p[:7], net.predict(x[:7]))          # no batch dependence
    plain = dn.Network(6, [dn.Dense(16, "relu", norm="batch"), dn.Dense(3, "softmax")], seed=0)
    plain.set_tensors({k.replace("layers.4.", "layers.3."): v for k, v in net.tensors().items()})
    np.testing.assert_allclose(plain.predict(x), p, rtol=1e-6)
    assert net.evaluate(x, y)["accuracy"] == plain.evaluate(x, y)["accuracy"]


def test_plain_sgd_still_folds_with_dropout_and_not_with_normalisation():
    r = np.random.default_rng(4)
    x, y = r.normal(size=(30, 5)), r.integers(0, 3, 30)
    drop = dn.Network(5, [dn.Dense(8, "relu"), dn.Dropout(0.2), dn.Dense(3, "softmax")], dtype="float64", seed=1)
    near = dn.Network(5, [dn.Dense(8, "relu"), dn.Dropout(0.2), dn.Dense(3, "softmax")], dtype="float64", seed=1)
    drop.fit(x, y, epochs=3, batch_size=8, optimizer=dn.SGD(0.1), progress=False)
    assert drop._trainer.folded
    # momentum 1e-12: the update from gradients afterwards, to within 1e-12 of plain SGD
    near.fit(x, y, epochs=3, batch_size=8, optimizer=dn.SGD(0.1, momentum=1e-12), progress=False)
    assert not near._trainer.folded
    for ga, gb in zip(drop.get_weights(), near.get_weights()):
        for a, b in zip(ga, gb):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    bn = dn.Network(5, [dn.Dense(8, "relu", norm="batch"), dn.Dense(3, "softmax")], seed=1)
    gamma = bn.get_weights()[1][0].copy()
    history = bn.fit(x, y, epochs=5, batch_size=8, optimizer=dn.SGD(0.1), progress=False)
    assert not bn._trainer.folded                       # γ and β need their update too
    assert not np.allclose(bn.get_weights()[1][0], gamma)
    assert history["loss"][-1] < history["loss"][0]


def test_weight_decay_skips_gamma_beta_and_biases():
    net = dn.Network(5, [dn.Dense(6, "relu", norm="layer"), dn.Dense(4, "relu", norm="batch"), dn.Dense(3, "softmax")])
    tn = net.trainer(8, "crossentropy")
    assert tn.decays == [True, False, False, False, True, False, False, False, True, False]
    assert [tuple(p.shape) for p in tn.params] == [(6, 5), (6,), (6,), (6,), (4, 6), (4,), (4,), (4,), (3, 4), (3,)]


def test_norm_one_liner_is_the_three_layers_with_the_activations_initialiser():
    one = dn.Network(5, [dn.Dense(6, "relu", norm="batch"), dn.Dense(3, "softmax")], seed=7)
    three = dn.Network(5, [dn.Dense(6, "linear", init="he_normal"), dn.BatchNorm(), "relu", dn.Dense(3, "softmax")],
                       seed=7)
    assert one.specs == three.specs
    for a, b in zip(one.get_weights(), three.get_weights()):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    assert dn.Network(5, [dn.Dense(6, "relu", norm="none"), dn.Dense(3, "softmax")]).specs[0] == dn.Dense(6, "relu")


# -- saving, copies, memory ---------------------------------------------------------------------
def test_save_load_keeps_every_layer_and_the_running_statistics(tmp_path):
    r = np.random.default_rng(5)
    x, y = r.normal(size=(60, 6)), r.integers(0, 3, 60)
    net = dn.Network(6, [dn.Dense(16, "relu", norm="batch"), dn.Dropout(0.25), dn.Dense(8, "tanh", norm="layer"),
                         dn.Dense(3, "softmax")], seed=0)
    net.fit(x, y, epochs=2, batch_size=12, progress=False)
    loaded = dn.load(net.save(tmp_path / "m.dn"))
    assert loaded.specs == net.specs
    assert sorted(loaded.tensors()) == sorted(net.tensors())
    assert "layers.1.running_var" in loaded.tensors()
    np.testing.assert_array_equal(loaded.predict(x), net.predict(x))
    copy = net.to_engine("cpu:numpy")
    np.testing.assert_allclose(copy.predict(x), net.predict(x), rtol=1e-5)
    assert copy.layers[3].steps == net.layers[3].steps > 0


def test_pickle_keeps_the_layers_state():
    import pickle

    net = dn.Network(6, [dn.Dense(8, "relu", norm="batch"), dn.Dropout(0.3), dn.Dense(2, "softmax")], seed=0)
    r = np.random.default_rng(6)
    x, y = r.normal(size=(30, 6)), r.integers(0, 2, 30)
    net.fit(x, y, epochs=2, batch_size=10, progress=False)
    back = pickle.loads(pickle.dumps(net))
    np.testing.assert_array_equal(back.predict(x), net.predict(x))
    assert back.layers[3].steps == net.layers[3].steps
    for a, b in zip(back.gradients(x, y), net.gradients(x, y)):     # same next masks
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)


def test_summary_and_nbytes_count_the_new_layers():
    net = dn.Network(10, [dn.Dense(20, "relu", norm="batch"), dn.Dropout(0.1), dn.Dense(4, "softmax")])
    text = net.summary()
    for word in ("batchnorm", "dropout", "activation", "rate 0.1", "40 running statistics"):
        assert word in text, text
    assert "total params: 344" in text                    # 220 + 40 + 84
    plain = dn.Network(10, [dn.Dense(20, "relu"), dn.Dense(4, "softmax")])
    assert net.nbytes()["weights"] - plain.nbytes()["weights"] == 80 * 4    # γ, β and the running pair
    net.trainer(16, "crossentropy")
    plain.trainer(16, "crossentropy")
    extra = net.nbytes()["activations"] - plain.nbytes()["activations"]
    # batchnorm a and x̂, the activation layer's a, dropout's a: four (16, 20) float32 buffers, less
    # the linear Dense layer's a, which is its z
    assert extra == 3 * 16 * 20 * 4


# -- bad input --------------------------------------------------------------------------------------
BAD = [
    ("dropout rate 1", lambda: dn.Dropout(1.0), "rate"),
    ("dropout rate negative", lambda: dn.Dropout(-0.1), "rate"),
    ("dropout rate a string", lambda: dn.Dropout("0.5"), "rate"),
    ("dropout rate True", lambda: dn.Dropout(True), "rate"),
    ("batchnorm momentum", lambda: dn.BatchNorm(momentum=1.0), "momentum"),
    ("batchnorm eps", lambda: dn.BatchNorm(eps=0), "eps"),
    ("layernorm eps", lambda: dn.LayerNorm(eps=-1.0), "eps"),
    ("norm unknown", lambda: dn.Dense(4, "relu", norm="group"), "norm"),
    ("batchnorm first", lambda: dn.Network(4, [dn.BatchNorm(), dn.Dense(2, "linear")]), "first"),
    ("activation unknown", lambda: dn.Network(4, [dn.Dense(3, "linear"), "no_such_activation"]), "activation"),
    ("layer of another kind", lambda: dn.Network(4, [dn.Dense(3, "linear"), 3.5]), "layers[1]"),
]


@pytest.mark.parametrize("make,word", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_layer_arguments_are_one_clear_error(make, word):
    with pytest.raises(dn.DensennError, match=word.replace("[", r"\[").replace("]", r"\]")):
        make()


def test_batchnorm_refuses_a_batch_of_one():
    net = dn.Network(5, [dn.Dense(4, "relu", norm="batch"), dn.Dense(3, "softmax")])
    with pytest.raises(dn.DensennError, match="batch_size"):
        net.fit(X, LABELS, epochs=1, batch_size=1, progress=False)
    with pytest.raises(dn.DensennError, match="batch of 1"):
        net.fit(X[:13], LABELS[:13], epochs=1, batch_size=4, progress=False)     # 13 = 3·4 + 1
    with pytest.raises(dn.DensennError, match="at least 2"):
        net.gradients(X[:1], LABELS[:1])
    net.fit(X[:12], LABELS[:12], epochs=1, batch_size=4, progress=False)       # 2 or more: fine


@pytest.mark.parametrize("hidden", [
    lambda: [dn.Dense(8, "linear"), dn.Dense(6, "tanh")],           # a folded layer's signal into a linear one
    lambda: [dn.Dense(8, "linear"), dn.Dropout(0.3), "relu"],        # a linear layer under dropout
], ids=["linear-under-dense", "linear-under-dropout"])
def test_a_linear_dense_layer_trains_as_any_other(hidden):
    """A linear Dense layer's output is its z (no copy, no delta pass): folded plain SGD and the
    update from gradients agree through it, and its gradients match finite differences."""
    r = np.random.default_rng(8)
    x, y = r.normal(size=(30, 5)), r.integers(0, 3, 30)
    nets = [dn.Network(5, hidden() + [dn.Dense(3, "softmax")], dtype="float64", seed=2) for _ in range(2)]
    nets[0].fit(x, y, epochs=3, batch_size=8, optimizer=dn.SGD(0.1), progress=False)
    nets[1].fit(x, y, epochs=3, batch_size=8, optimizer=dn.SGD(0.1, momentum=1e-12), progress=False)
    assert nets[0]._trainer.folded and not nets[1]._trainer.folded
    for ga, gb in zip(nets[0].get_weights(), nets[1].get_weights()):
        for a, b in zip(ga, gb):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert dn.check_gradients(nets[0], x[:12], y[:12]) < 1e-6
