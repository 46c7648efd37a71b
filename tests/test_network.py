"""The user API end to end: fit/predict/evaluate, determinism, batching, engines,
saving and loading, the divergence guard, and input validation.

Digits come from scikit-learn (standardised with the training split's statistics),
not from ``densenn.datasets``, so these tests depend on the core alone.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import densenn as dn
from densenn import io as dn_io
from densenn.nn.dense import FoldedSGDDense

# -- data -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.25, random_state=0, stratify=data.target)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0
    return {"x_train": ((x_train - mean) / std).astype(np.float32), "y_train": y_train,
            "x_test": ((x_test - mean) / std).astype(np.float32), "y_test": y_test,
            "raw_x": data.data, "raw_y": data.target}


def small_problem(n=10, n_in=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)), np.arange(n) % classes


def small_net(n_in=4, classes=3, seed=0, dtype="float64", engine=None):
    return dn.Network(n_in, [dn.Dense(6, "tanh"), dn.Dense(classes, "softmax")], engine=engine,
                      dtype=dtype, seed=seed)


def weights_equal(a, b):
    return all(np.array_equal(wa, wb) and np.array_equal(ba, bb) for (wa, ba), (wb, bb) in zip(a, b))


# -- the README's ten lines -----------------------------------------------------------------------
def test_readme_ten_lines(digits, tmp_path):
    net = dn.Network(64, [dn.Dense(128, "relu"), dn.Dense(10, "softmax")],
                     engine="cpu", dtype="float32", seed=0)
    history = net.fit(digits["x_train"], digits["y_train"], epochs=20, batch_size=32,
                      optimizer=dn.Adam(1e-3), validation_data=(digits["x_test"], digits["y_test"]),
                      progress=False)
    scores = net.evaluate(digits["x_test"], digits["y_test"])
    assert set(scores) == {"loss", "accuracy"}
    assert scores["accuracy"] >= 0.97, scores
    assert history["val_accuracy"][-1] == pytest.approx(scores["accuracy"])
    path = net.save(tmp_path / "digits.dn")
    net2 = dn.load(path)
    np.testing.assert_array_equal(net2.predict(digits["x_test"]), net.predict(digits["x_test"]))
    png = history.plot(tmp_path / "digits.png")
    assert os.path.getsize(png) > 1000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["digits.dn", "digits.png"]      # no temporary files left
    assert "128" in net.summary() and "softmax" in net.summary()
    assert repr(net).startswith("Network(64-128relu-10soft")


# -- determinism --------------------------------------------------------------------------------------
def test_same_seed_same_training_different_seed_different(digits):
    def train(seed):
        net = dn.Network(64, [dn.Dense(32, "relu"), dn.Dense(10, "softmax")], seed=seed)
        h = net.fit(digits["x_train"][:300], digits["y_train"][:300], epochs=3, batch_size=32, progress=False)
        return net.get_weights(), h["loss"]

    (w1, l1), (w2, l2), (w3, l3) = train(7), train(7), train(8)
    assert weights_equal(w1, w2) and l1 == l2
    assert not np.array_equal(w1[0][0], w3[0][0]) and l1 != l3
    # the initial weights alone differ with the seed too
    a, b = dn.Network(5, [dn.Dense(3)], seed=1), dn.Network(5, [dn.Dense(3)], seed=2)
    assert not np.array_equal(a.get_weights()[0][0], b.get_weights()[0][0])


def test_shuffling_depends_on_the_seed_only(digits):
    """Two fits in a row continue the shuffle stream; a network rebuilt with the seed replays it."""
    x, y = digits["x_train"][:100], digits["y_train"][:100]
    a = dn.Network(64, [dn.Dense(10, "softmax")], seed=3)
    a.fit(x, y, epochs=1, batch_size=10, optimizer=dn.SGD(0.1), progress=False)
    a.fit(x, y, epochs=1, batch_size=10, optimizer=dn.SGD(0.1), progress=False)
    b = dn.Network(64, [dn.Dense(10, "softmax")], seed=3)
    b.fit(x, y, epochs=2, batch_size=10, optimizer=dn.SGD(0.1), progress=False)
    assert weights_equal(a.get_weights(), b.get_weights())


# -- batches ---------------------------------------------------------------------------------------------
def test_partial_last_batch_is_trained_on():
    x, y = small_problem(n=10)
    net = small_net()
    opt = dn.SGD(0.5)
    net.fit(x, y, epochs=2, batch_size=4, optimizer=opt, shuffle=False, progress=False)
    assert opt.t == 6                                    # ceil(10 / 4) = 3 steps per epoch

    # changing only the last two samples (the partial batch when not shuffled) changes the result
    y2 = y.copy()
    y2[8:] = (y2[8:] + 1) % 3
    other = small_net()
    other.fit(x, y2, epochs=2, batch_size=4, optimizer=dn.SGD(0.5), shuffle=False, progress=False)
    assert not np.allclose(other.get_weights()[0][0], net.get_weights()[0][0])


def test_one_epoch_equals_three_manual_sgd_steps():
    """Batches [0:4], [4:8], [8:10], each with the mean gradient over its own rows."""
    x, y = small_problem(n=10)
    net = small_net()
    ref = small_net()
    net.fit(x, y, epochs=1, batch_size=4, optimizer=dn.SGD(0.5), shuffle=False, progress=False)
    for rows in (slice(0, 4), slice(4, 8), slice(8, 10)):
        grads = ref.gradients(x[rows], y[rows])
        ref.set_weights([(w - 0.5 * gw, b - 0.5 * gb) for (w, b), (gw, gb) in zip(ref.get_weights(), grads)])
    for (w, b), (rw, rb) in zip(net.get_weights(), ref.get_weights()):
        np.testing.assert_allclose(w, rw, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(b, rb, rtol=1e-12, atol=1e-14)
    # history's loss is the mean over the epoch's samples, seen before each batch's update
    loss = net.history["loss"][0]
    assert np.isfinite(loss) and loss > 0


class UnfoldedSGD(dn.SGD):
    """Plain SGD that updates from the gradients afterwards, as every other optimizer does."""

    folds_into_gemm = False

    def gemm_update(self, epoch=0.0):
        return None


@pytest.mark.parametrize("cost,out_act", [("crossentropy", "softmax"), ("quadratic", "linear")])
def test_plain_sgd_folded_into_the_gemms_equals_the_update_from_gradients(engine, cost, out_act):
    """w ← (1 − lr·λ)·w − lr·δᵀx inside the ∇w GEMM, the signal through scratch: the same
    training as ∇w then the update, with decay, a schedule and a partial last batch."""
    dtype = "float64" if engine.supports("float64") else "float32"
    r = np.random.default_rng(3)
    x = r.normal(size=(27, 5))
    y = r.integers(0, 3, 27) if cost == "crossentropy" else r.normal(size=(27, 3))
    nets, opts = [], []
    for make in (dn.SGD, UnfoldedSGD):
        net = dn.Network(5, [dn.Dense(7, "tanh"), dn.Dense(4, "relu"), dn.Dense(3, out_act)], engine=engine,
                         dtype=dtype, seed=1)
        opt = make(0.2, weight_decay=0.05, schedule="cosine")
        net.fit(x, y, epochs=3, batch_size=8, cost=cost, optimizer=opt, progress=False)
        nets.append(net)
        opts.append(opt)
    folded, unfolded = nets
    assert opts[0].t == opts[1].t == 12                 # 4 steps per epoch, the last of 3 rows
    # the folded run has no ∇w buffers at all: that path was taken, and they cost nothing
    assert all(layer.dw is None for layer in folded._trainer.layers)
    assert all(engine.to_host(layer.dw).any() for layer in unfolded._trainer.layers)
    assert folded.nbytes()["gradients"] < unfolded.nbytes()["gradients"]
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    for (w, b), (rw, rb), (w0, _) in zip(folded.get_weights(), unfolded.get_weights(),
                                         dn.Network(5, folded.specs, dtype=dtype, seed=1).get_weights()):
        np.testing.assert_allclose(w, rw, **tol)
        np.testing.assert_allclose(b, rb, **tol)
        assert not np.allclose(w, w0)
    np.testing.assert_allclose(folded.history["loss"], unfolded.history["loss"], **tol)


def test_momentum_is_not_folded():
    assert dn.SGD(0.1, momentum=0.9).gemm_update(0.0) is None
    assert dn.Adam().gemm_update(0.0) is None
    assert dn.SGD(0.1).folds_into_gemm and not dn.SGD(0.1, momentum=0.5).folds_into_gemm
    assert not dn.Adam().folds_into_gemm
    opt = dn.SGD(0.1, weight_decay=0.5)
    assert opt.gemm_update(0.0) == (-0.1, 1.0 - 0.1 * 0.5) and opt.t == 1


def test_switching_from_folded_sgd_to_adam_gives_the_trainer_its_gradients():
    x, y = small_problem(n=12)
    net = small_net()
    net.fit(x, y, epochs=1, batch_size=4, optimizer=dn.SGD(0.1), progress=False)
    assert not net._trainer.gradients and net._trainer.layers[0].dw is None
    net.fit(x, y, epochs=1, batch_size=4, optimizer=dn.Adam(0.01), progress=False)
    assert net._trainer.gradients and net._trainer.layers[0].dw is not None
    grads_trainer = net._trainer
    net.fit(x, y, epochs=1, batch_size=4, optimizer=dn.SGD(0.1), progress=False)
    assert net._trainer is grads_trainer          # one with gradients serves folded SGD too
    without = FoldedSGDDense(net.layers[0], net._trainer.x)
    with pytest.raises(dn.DensennError, match="keeps no ∇w"):
        without.backward(propagate=False)


def test_batch_larger_than_the_data_is_one_step():
    x, y = small_problem(n=10)
    net = small_net()
    opt = dn.SGD(0.1)
    net.fit(x, y, epochs=3, batch_size=64, optimizer=opt, progress=False)
    assert opt.t == 3


def test_every_sample_is_used_each_epoch_when_shuffled():
    """Loss/accuracy of an epoch are sums over all n samples: with lr tiny, they match evaluate."""
    x, y = small_problem(n=11)
    net = small_net()
    before = net.evaluate(x, y)
    h = net.fit(x, y, epochs=1, batch_size=4, optimizer=dn.SGD(1e-12), progress=False)
    assert h["loss"][0] == pytest.approx(before["loss"], rel=1e-9)
    assert h["accuracy"][0] == pytest.approx(before["accuracy"])


# -- history and metrics -------------------------------------------------------------------------------------
def test_history_keys_lengths_and_validation(digits):
    x, y = digits["x_train"][:400], digits["y_train"][:400]
    xv, yv = digits["x_test"][:200], digits["y_test"][:200]
    net = dn.Network(64, [dn.Dense(32, "relu"), dn.Dense(10, "softmax")], seed=0)
    h = net.fit(x, y, epochs=4, batch_size=50, validation_data=(xv, yv), progress=False)
    assert net.history is h and h.epochs == 4
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"):
        assert len(h[key]) == 4, key
    assert set(h.to_dict()) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"}
    assert h["loss"][-1] < h["loss"][0]
    assert all(0.0 <= v <= 1.0 for v in h["accuracy"] + h["val_accuracy"])
    assert h["lr"] == [1e-3] * 4 and all(s > 0 for s in h["seconds"])
    final = net.evaluate(xv, yv)
    assert h["val_loss"][-1] == pytest.approx(final["loss"], rel=1e-6)
    assert h["val_accuracy"][-1] == pytest.approx(final["accuracy"])
    # no validation data: the validation entries are None and left out of to_dict
    h2 = net.fit(x, y, epochs=2, batch_size=50, progress=False)
    assert h2["val_loss"] == [None, None] and "val_loss" not in h2.to_dict()
    assert "History(epochs=2" in repr(h2)


def test_callback_can_stop_training():
    x, y = small_problem()
    seen = []

    def stop_after_two(epoch, logs):
        seen.append((epoch, sorted(logs)))
        return epoch == 1

    h = small_net().fit(x, y, epochs=10, batch_size=5, callbacks=[stop_after_two], progress=False)
    assert h.epochs == 2 and [e for e, _ in seen] == [0, 1]
    assert seen[0][1] == ["accuracy", "loss", "lr", "seconds", "val_accuracy", "val_loss"]


def test_labels_as_indices_or_one_hot_train_the_same():
    x, y = small_problem(n=12)
    a, b = small_net(), small_net()
    ha = a.fit(x, y, epochs=3, batch_size=5, progress=False)
    hb = b.fit(x, np.eye(3)[y], epochs=3, batch_size=5, progress=False)
    assert weights_equal(a.get_weights(), b.get_weights())
    assert ha["loss"] == hb["loss"] and ha["accuracy"] == hb["accuracy"]
    assert a.evaluate(x, y) == b.evaluate(x, np.eye(3)[y])
    # whole floats are class indices too
    c = small_net()
    c.fit(x, y.astype(np.float64), epochs=3, batch_size=5, progress=False)
    assert weights_equal(a.get_weights(), c.get_weights())


def test_regression_has_no_accuracy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3))
    y = np.stack([x[:, 0] * 2 - x[:, 1], np.sin(x[:, 2])], axis=1)
    net = dn.Network(3, [dn.Dense(16, "tanh"), dn.Dense(2, "linear")], dtype="float64", seed=0)
    assert net.default_cost() == "quadratic"
    h = net.fit(x, y, epochs=30, batch_size=16, optimizer=dn.Adam(0.01), validation_data=(x, y), progress=False)
    assert h["accuracy"] == [None] * 30 and h["val_accuracy"] == [None] * 30
    assert "accuracy" not in h.to_dict()
    scores = net.evaluate(x, y)
    assert scores["accuracy"] is None
    assert scores["loss"] < 0.5 * h["loss"][0]
    expected = 0.5 * ((net.predict(x) - y) ** 2).sum(axis=1).mean()
    assert scores["loss"] == pytest.approx(expected, rel=1e-9)
    # one output with 1-D real targets is regression too
    one = dn.Network(3, [dn.Dense(1, "linear")], seed=0)
    assert one.fit(x, y[:, 0], epochs=1, progress=False)["accuracy"] == [None]


def test_binary_classifier_with_one_sigmoid_output():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    net = dn.Network(2, [dn.Dense(8, "tanh"), dn.Dense(1, "sigmoid")], seed=0)
    assert net.default_cost() == "binary_crossentropy"
    net.fit(x, y, epochs=30, batch_size=20, optimizer=dn.Adam(0.02), progress=False)
    scores = net.evaluate(x, y)
    assert scores["accuracy"] >= 0.95
    assert scores["accuracy"] == pytest.approx(np.mean(net.predict_classes(x) == y))
    assert net.confusion_matrix(x, y).shape == (2, 2)


def test_evaluate_and_confusion_matrix(digits):
    net = dn.Network(64, [dn.Dense(32, "relu"), dn.Dense(10, "softmax")], seed=0)
    net.fit(digits["x_train"], digits["y_train"], epochs=5, batch_size=32, progress=False)
    x, y = digits["x_test"], digits["y_test"]
    cm = net.confusion_matrix(x, y)
    assert cm.shape == (10, 10) and cm.sum() == len(y)
    assert (cm.sum(axis=1) == np.bincount(y, minlength=10)).all()
    scores = net.evaluate(x, y)
    assert np.trace(cm) / len(y) == pytest.approx(scores["accuracy"])
    assert dn.accuracy(y, net.predict_classes(x)) == pytest.approx(scores["accuracy"])
    np.testing.assert_array_equal(cm, dn.confusion_matrix(y, net.predict_classes(x), 10))
    # the loss is the mean cross-entropy (probabilities clipped at the dtype's eps, as documented),
    # recomputed here; chunked evaluation changes nothing
    p = np.maximum(net.predict(x)[np.arange(len(y)), y].astype(np.float64), np.finfo(np.float32).eps)
    assert scores["loss"] == pytest.approx(-np.log(p).mean(), rel=1e-5)
    assert net.evaluate(x, y, batch_size=7) == pytest.approx(scores)
    np.testing.assert_allclose(net.predict(x, batch_size=13), net.predict(x), rtol=1e-5, atol=1e-6)


def test_predict_shape_and_dtype():
    x, _ = small_problem()
    for dtype in ("float32", "float64"):
        p = small_net(dtype=dtype).predict(x)
        assert p.shape == (10, 3) and p.dtype == np.dtype(dtype)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)


def test_to_engine_float64_gives_the_same_predictions(digits):
    net = dn.Network(64, [dn.Dense(32, "relu"), dn.Dense(10, "softmax")], seed=0)
    net.fit(digits["x_train"], digits["y_train"], epochs=2, progress=False)
    other = net.to_engine("cpu", dtype="float64")
    assert other.dtype == np.float64 and net.dtype == np.float32
    assert weights_equal([(w.astype(np.float64), b.astype(np.float64)) for w, b in net.get_weights()],
                         other.get_weights())
    x = digits["x_test"]
    np.testing.assert_allclose(other.predict(x), net.predict(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(other.predict_classes(x), net.predict_classes(x))
    same = net.to_engine("cpu:numpy")
    assert same.dtype == np.float32
    np.testing.assert_allclose(same.predict(x), net.predict(x), rtol=1e-5, atol=1e-6)


# -- save and load --------------------------------------------------------------------------------------------
@pytest.fixture
def trained(digits):
    net = dn.Network(64, [dn.Dense(16, "relu"), dn.Dense(10, "softmax")], seed=0)
    net.fit(digits["x_train"][:200], digits["y_train"][:200], epochs=1, progress=False)
    return net


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_load_round_trip(dtype, tmp_path, digits):
    net = dn.Network(64, [dn.Dense(16, dn.LeakyReLU(0.2)), dn.Dense(10, "softmax")],
                     dtype=dtype, seed=4)
    net.fit(digits["x_train"][:200], digits["y_train"][:200], epochs=1, progress=False)
    path = tmp_path / "model.dn"
    assert net.save(path, extra={"mean": [1.5, 2.0], "note": "digits"}) == str(path)
    loaded = dn.load(path)
    assert loaded.dtype == np.dtype(dtype)
    assert loaded.config() == net.config()
    assert loaded.layers[0].activation == dn.LeakyReLU(0.2)
    np.testing.assert_array_equal(loaded.predict(digits["x_test"]), net.predict(digits["x_test"]))
    assert weights_equal(loaded.get_weights(), net.get_weights())
    assert dn_io.load_extra(path) == {"mean": [1.5, 2.0], "note": "digits"}
    assert os.listdir(tmp_path) == ["model.dn"]
    # onto another engine, or another dtype
    on_numpy = dn.load(path, engine="cpu:numpy")
    np.testing.assert_allclose(on_numpy.predict(digits["x_test"]), net.predict(digits["x_test"]),
                               rtol=1e-5, atol=1e-6)
    assert dn_io.load(path, dtype="float64").dtype == np.float64
    # any safetensors reader opens it
    from safetensors.numpy import load_file
    tensors = load_file(str(path))
    assert sorted(tensors) == ["layers.0.b", "layers.0.w", "layers.1.b", "layers.1.w"]
    assert tensors["layers.0.w"].dtype == np.dtype(dtype)


def test_saving_over_an_existing_file(trained, tmp_path):
    path = tmp_path / "model.dn"
    trained.save(path)
    other = dn.Network(64, [dn.Dense(16, "relu"), dn.Dense(10, "softmax")], seed=9)
    other.save(path)
    assert weights_equal(dn.load(path).get_weights(), other.get_weights())
    assert os.listdir(tmp_path) == ["model.dn"]


def test_refuses_a_missing_file(tmp_path):
    with pytest.raises(dn.DensennError, match="does not exist"):
        dn.load(tmp_path / "nope.dn")


def test_refuses_a_truncated_file(trained, tmp_path):
    path = tmp_path / "model.dn"
    trained.save(path)
    data = path.read_bytes()
    for cut in (0, 4, 8, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(dn.DensennError, match="truncated or corrupted|not a readable") as info:
            dn.load(path)
        assert str(path) in str(info.value)


def test_refuses_a_bit_flipped_file(trained, tmp_path):
    path = tmp_path / "model.dn"
    trained.save(path)
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    rng = np.random.default_rng(0)
    # every flip in the tensor data is caught by the checksum
    for pos in rng.choice(np.arange(8 + header_len, len(data)), 40, replace=False):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(flipped))
        with pytest.raises(dn.DensennError, match="corrupted"):
            dn.load(path)
    # a flip in the header gives a DensennError, or (metadata that does not matter, e.g. the
    # seed) the same network; never another exception or other weights
    x = np.random.default_rng(1).normal(size=(5, 64))
    expected = trained.predict(x)
    for pos in rng.choice(np.arange(0, 8 + header_len), 150, replace=False):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(flipped))
        try:
            net = dn.load(path)
        except dn.DensennError:
            continue
        np.testing.assert_array_equal(net.predict(x), expected)


def test_refuses_a_safetensors_file_not_from_densenn(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weight": np.zeros((2, 2), np.float32)}, str(path))
    with pytest.raises(dn.DensennError, match="not written by densenn"):
        dn.load(path)
    save_file({"weight": np.zeros((2, 2), np.float32)}, str(path), metadata={"format": "pt"})
    with pytest.raises(dn.DensennError, match="not written by densenn"):
        dn.load(path)


def test_refuses_a_text_file(tmp_path):
    path = tmp_path / "model.dn"
    path.write_text("{ this is not a model }")
    with pytest.raises(dn.DensennError, match="not a readable"):
        dn.load(path)


def _write_densenn_like(path, net, **overrides):
    """A format-version-1 file (its checksum covers the tensors only, so the metadata can be
    changed and the file still reaches the loader's checks of it)."""
    from safetensors.numpy import save_file

    tensors = {}
    for i, (w, b) in enumerate(net.get_weights()):
        tensors[f"layers.{i}.w"], tensors[f"layers.{i}.b"] = w, b
    metadata = {"format": "densenn", "format_version": "1",
                "config": json.dumps(net.config()), "extra": "{}", "sha256": dn_io._digest_v1(tensors)}
    metadata.update(overrides)
    save_file(tensors, str(path), metadata={k: v for k, v in metadata.items() if v is not None})


def test_refuses_another_format_version(trained, tmp_path):
    path = tmp_path / "model.dn"
    _write_densenn_like(path, trained)              # the control: this one loads
    assert weights_equal(dn.load(path).get_weights(), trained.get_weights())
    for version in ("3", "0", "1.0", "", None):
        _write_densenn_like(path, trained, format_version=version)
        with pytest.raises(dn.DensennError, match="format version") as info:
            dn.load(path)
        assert "reads versions 1 and 2" in str(info.value)


def test_refuses_bad_metadata(trained, tmp_path):
    path = tmp_path / "model.dn"
    _write_densenn_like(path, trained, sha256="0" * 64)
    with pytest.raises(dn.DensennError, match="checksum"):
        dn.load(path)
    _write_densenn_like(path, trained, sha256=None)
    with pytest.raises(dn.DensennError, match="checksum"):
        dn.load(path)
    _write_densenn_like(path, trained, config="{not json")
    with pytest.raises(dn.DensennError, match="architecture"):
        dn.load(path)
    cfg = trained.config()
    cfg["layers"][0]["units"] = 17                   # does not match the saved tensors
    _write_densenn_like(path, trained, config=json.dumps(cfg))
    with pytest.raises(dn.DensennError, match="shape"):
        dn.load(path)
    cfg = trained.config()
    cfg["layers"][0]["activation"] = {"name": "gelu_erf_typo"}
    _write_densenn_like(path, trained, config=json.dumps(cfg))
    with pytest.raises(dn.DensennError, match="invalid network"):
        dn.load(path)
    cfg = trained.config()
    del cfg["n_in"]
    _write_densenn_like(path, trained, config=json.dumps(cfg))
    with pytest.raises(dn.DensennError, match="incomplete"):
        dn.load(path)


def test_save_is_atomic(trained, tmp_path, monkeypatch):
    path = tmp_path / "model.dn"
    trained.save(path)
    good = path.read_bytes()
    assert os.listdir(tmp_path) == ["model.dn"]

    def fail(*args, **kwargs):
        raise OSError("disk full (simulated)")

    other = dn.Network(64, [dn.Dense(16, "relu"), dn.Dense(10, "softmax")], seed=5)
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="simulated"):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == good                 # the existing model is intact
    assert os.listdir(tmp_path) == ["model.dn"]      # and no temporary file is left behind
    assert weights_equal(dn.load(path).get_weights(), trained.get_weights())


def test_save_refuses_bad_arguments(trained, tmp_path):
    with pytest.raises(dn.DensennError, match="does not exist"):
        trained.save(tmp_path / "no" / "such" / "model.dn")
    with pytest.raises(dn.DensennError, match="extra"):
        trained.save(tmp_path / "model.dn", extra={"f": object()})
    assert os.listdir(tmp_path) == []


# -- the divergence guard ------------------------------------------------------------------------------------
def test_huge_learning_rate_raises_training_diverged(digits):
    x, y = digits["raw_x"], np.eye(10)[digits["raw_y"]] * 10.0       # unscaled inputs
    net = dn.Network(64, [dn.Dense(32, "relu"), dn.Dense(10, "linear")], seed=0)
    net.fit(x, y, epochs=1, optimizer=dn.SGD(1e-5), progress=False)    # a good epoch first
    start = net.get_weights()
    with pytest.raises(dn.TrainingDiverged, match="epoch 1") as info:
        net.fit(x, y, epochs=3, optimizer=dn.SGD(1e6), progress=False)
    assert isinstance(info.value, dn.DensennException) and not isinstance(info.value, ValueError)
    assert "learning rate" in str(info.value)
    assert weights_equal(net.get_weights(), start)                        # the start of that epoch
    assert all(np.isfinite(w).all() and np.isfinite(b).all() for w, b in net.get_weights())
    assert np.isfinite(net.predict(x)).all()


def test_diverging_in_a_later_epoch_keeps_that_epochs_start(digits):
    x, y = digits["raw_x"], np.eye(10)[digits["raw_y"]] * 10.0
    net = dn.Network(64, [dn.Dense(32, "relu"), dn.Dense(10, "linear")], seed=0)
    opt = dn.SGD(1e-5, momentum=0.9)
    end_of = {}

    def blow_up_after_epoch_two(epoch, logs):
        end_of[epoch] = net.get_weights()
        if epoch == 1:
            opt.lr = 1e6

    with pytest.raises(dn.TrainingDiverged, match="epoch 3"):
        net.fit(x, y, epochs=5, optimizer=opt, callbacks=[blow_up_after_epoch_two], progress=False)
    assert sorted(end_of) == [0, 1]
    assert weights_equal(net.get_weights(), end_of[1])
    # the optimizer's state is not left full of NaN: a retry with a sane rate trains
    opt.lr = 1e-5
    h = net.fit(x, y, epochs=2, optimizer=opt, progress=False)
    assert all(np.isfinite(h["loss"]))


# -- input validation ------------------------------------------------------------------------------------------
def _net():
    return dn.Network(4, [dn.Dense(5, "relu"), dn.Dense(3, "softmax")], seed=0)


X, Y = small_problem(n=10)

BAD_FIT = [
    ("wrong feature count", lambda n: n.fit(X[:, :3], Y), "x", "4 features"),
    ("3-D x", lambda n: n.fit(X[None], Y), "x", "2-D"),
    ("NaN in x", lambda n: n.fit(np.where(X > 1, np.nan, X), Y), "x", "NaN"),
    ("inf in x", lambda n: n.fit(np.where(X > 1, -np.inf, X), Y), "x", "infinite"),
    ("labels out of range", lambda n: n.fit(X, Y + 1), "y", "[0, 2]"),
    ("negative labels", lambda n: n.fit(X, Y - 1), "y", "[0, 2]"),
    ("non-integer labels", lambda n: n.fit(X, Y + 0.5), "y", "integer"),
    ("string x", lambda n: n.fit(X.astype(str), Y), "x", "numeric"),
    ("string y", lambda n: n.fit(X, Y.astype(str)), "y", "numeric"),
    ("object x", lambda n: n.fit([[1, 2, 3, "a"]] * 10, Y), "x", "numeric"),
    ("empty x", lambda n: n.fit(np.empty((0, 4)), np.empty(0)), "x", "empty"),
    ("empty y", lambda n: n.fit(X, np.empty(0)), "y", "10 rows"),
    ("y too short", lambda n: n.fit(X, Y[:9]), "y", "10 rows"),
    ("y too long", lambda n: n.fit(X, np.arange(11) % 3), "y", "10 rows"),
    ("NaN in y", lambda n: n.fit(X, np.full((10, 3), np.nan)), "y", "NaN"),
    ("y with wrong columns", lambda n: n.fit(X, np.zeros((10, 2))), "y", "(10, 3)"),
    ("one-hot y out of range", lambda n: n.fit(X, np.eye(3)[Y] * 2), "y", "[0, 1]"),
    ("batch_size 0", lambda n: n.fit(X, Y, batch_size=0), "batch_size", "positive integer"),
    ("batch_size -1", lambda n: n.fit(X, Y, batch_size=-1), "batch_size", "positive integer"),
    ("batch_size 1.5", lambda n: n.fit(X, Y, batch_size=1.5), "batch_size", "positive integer"),
    ("batch_size True", lambda n: n.fit(X, Y, batch_size=True), "batch_size", "positive integer"),
    ("epochs 0", lambda n: n.fit(X, Y, epochs=0), "epochs", "positive integer"),
    ("epochs 2.0", lambda n: n.fit(X, Y, epochs=2.0), "epochs", "positive integer"),
    ("unknown cost", lambda n: n.fit(X, Y, cost="hinge"), "cost", "crossentropy"),
    ("unknown optimizer", lambda n: n.fit(X, Y, optimizer="rmsprop"), "optimizer", "adam"),
    ("lr 0", lambda n: n.fit(X, Y, lr=0), "lr", "positive"),
    ("lr -1 with a name", lambda n: n.fit(X, Y, optimizer="sgd", lr=-1), "lr", "positive"),
    ("validation_data not a pair", lambda n: n.fit(X, Y, validation_data=X), "validation_data", "pair"),
    ("validation x features", lambda n: n.fit(X, Y, validation_data=(X[:, :2], Y)), "validation_data x",
     "4 features"),
    ("validation y range", lambda n: n.fit(X, Y, validation_data=(X, Y + 5)), "validation_data y", "[0, 2]"),
]


@pytest.mark.parametrize("make,arg,detail", [b[1:] for b in BAD_FIT], ids=[b[0] for b in BAD_FIT])
def test_bad_fit_input_raises_naming_the_argument(make, arg, detail):
    net = _net()
    before = net.get_weights()
    with pytest.raises(dn.DensennError) as info:
        make(net)
    message = str(info.value)
    assert arg in message and detail in message, message
    assert weights_equal(net.get_weights(), before)           # nothing was trained


def test_binary_targets_out_of_range():
    net = dn.Network(4, [dn.Dense(1, "sigmoid")], seed=0)
    with pytest.raises(dn.DensennError, match=r"y must hold targets in \[0, 1\]"):
        net.fit(X, np.arange(10) % 3)                          # a third class for one sigmoid output
    with pytest.raises(dn.DensennError, match="binary_crossentropy"):
        net.evaluate(X, -np.ones(10))


BAD_OTHER = [
    ("unknown activation", lambda: dn.Dense(3, "gelu_erf_typo"), "activation", "relu"),
    ("unknown init", lambda: dn.Dense(3, init="orthogonal"), "init", "he_normal"),
    ("units 0", lambda: dn.Dense(0), "units", "positive integer"),
    ("unknown engine", lambda: dn.Network(4, [dn.Dense(3)], engine="tpu"), "engine", "cpu"),
    ("engine not a name", lambda: dn.Network(4, [dn.Dense(3)], engine=3), "engine", "cpu"),
    ("bad cpu variant", lambda: dn.Network(4, [dn.Dense(3)], engine="cpu:7"), "engine", "cpu"),
    ("dtype int32", lambda: dn.Network(4, [dn.Dense(3)], dtype="int32"), "dtype", "float32"),
    ("dtype float16", lambda: dn.Network(4, [dn.Dense(3)], dtype=np.float16), "dtype", "float64"),
    ("dtype nonsense", lambda: dn.Network(4, [dn.Dense(3)], dtype="double-ish"), "dtype", "float32"),
    ("n_in 0", lambda: dn.Network(0, [dn.Dense(3)]), "n_in", "positive integer"),
    ("no layers", lambda: dn.Network(4, []), "layers", "at least one"),
    ("layer not a layer", lambda: dn.Network(4, [3]), "layers[0]", "Dense"),
    ("negative seed", lambda: dn.Network(4, [dn.Dense(3)], seed=-1), "seed", "non-negative"),
    ("predict features", lambda: _net().predict(X[:, :3]), "x", "4 features"),
    ("predict 1-D", lambda: _net().predict(X[0]), "x", "2-D"),
    ("predict NaN", lambda: _net().predict(np.full((2, 4), np.nan)), "x", "NaN"),
    ("predict batch_size", lambda: _net().predict(X, batch_size=0), "batch_size", "positive integer"),
    ("evaluate labels", lambda: _net().evaluate(X, Y + 3), "y", "[0, 2]"),
    ("evaluate cost", lambda: _net().evaluate(X, Y, cost="nope"), "cost", "quadratic"),
    ("confusion of real targets", lambda: _net().confusion_matrix(X, np.full((10, 3), 0.3)), "y", "labels"),
    ("gradients features", lambda: _net().gradients(X[:, :1], Y), "x", "4 features"),
    ("set_weights w shape", lambda: _net().set_weights([(np.zeros((5, 3)), np.zeros(5)),
                                                        (np.zeros((3, 5)), np.zeros(3))]),
     "weights[0][0]", "(5, 4)"),
    ("set_weights b shape", lambda: _net().set_weights([(np.zeros((5, 4)), np.zeros(4)),
                                                        (np.zeros((3, 5)), np.zeros(3))]),
     "weights[0][1]", "(5,)"),
    ("set_weights second layer", lambda: _net().set_weights([(np.zeros((5, 4)), np.zeros(5)),
                                                             (np.zeros((5, 3)), np.zeros(3))]),
     "weights[1][0]", "(3, 5)"),
    ("set_weights count", lambda: _net().set_weights([(np.zeros((5, 4)), np.zeros(5))]), "weights", "2"),
    ("set_weights not pairs", lambda: _net().set_weights([np.zeros((5, 4)), np.zeros(5)]), "weights[0]", "pair"),
    ("set_weights NaN", lambda: _net().set_weights([(np.full((5, 4), np.nan), np.zeros(5)),
                                                    (np.zeros((3, 5)), np.zeros(3))]), "weights[0][0]", "NaN"),
    ("set_weights not a list", lambda: _net().set_weights(3), "weights", "list"),
]


@pytest.mark.parametrize("make,arg,detail", [b[1:] for b in BAD_OTHER], ids=[b[0] for b in BAD_OTHER])
def test_bad_input_raises_naming_the_argument(make, arg, detail):
    with pytest.raises(dn.DensennError) as info:
        make()
    message = str(info.value)
    assert arg in message and detail in message, message


def test_set_weights_failure_changes_nothing():
    net = _net()
    before = net.get_weights()
    with pytest.raises(dn.DensennError):
        net.set_weights([(np.ones((5, 4)), np.ones(5)), (np.ones((3, 4)), np.ones(3))])
    assert weights_equal(net.get_weights(), before)


def test_errors_a_user_can_tell_apart():
    """Bad input is a ValueError; a missing engine and a diverged training are not; one base
    class catches all three."""
    assert issubclass(dn.DensennError, ValueError)
    for cls in (dn.DensennError, dn.TrainingDiverged, dn.EngineUnavailable):
        assert issubclass(cls, dn.DensennException)
    assert not issubclass(dn.TrainingDiverged, ValueError) and not issubclass(dn.EngineUnavailable, ValueError)


def test_inputs_are_not_modified():
    x, y = small_problem()
    x64, y_copy = x.copy(), y.copy()
    x32 = x.astype(np.float32)
    x32_copy = x32.copy()
    small_net(dtype="float32").fit(x32, y, epochs=2, batch_size=3, progress=False)
    small_net(dtype="float64").fit(x, y, epochs=2, batch_size=3, progress=False)
    np.testing.assert_array_equal(x, x64)
    np.testing.assert_array_equal(x32, x32_copy)
    np.testing.assert_array_equal(y, y_copy)


def test_finite_check_tells_overflowing_sums_from_nan_and_inf():
    """check_matrix sums columns first: huge finite values overflow that sum and must not be
    taken for inf, while a NaN or ±inf among them is still found and counted."""
    from densenn.errors import check_matrix

    huge = np.full((6, 3), 3e38, np.float32)
    assert check_matrix("x", huge) is huge
    for bad in (np.nan, np.inf, -np.inf):
        x = huge.copy()
        x[4, 2] = bad
        x[1, 0] = bad
        with pytest.raises(dn.DensennError, match="x contains 2 NaN or infinite"):
            check_matrix("x", x)
