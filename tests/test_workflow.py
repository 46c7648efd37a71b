"""The training workflow: validation split, callbacks, continued fits, checkpoints and resume."""
import csv
import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import densenn as dn
from densenn.training import checkpoint as ckpt
from densenn.training.split import validation_split

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "workflow_worker.py")


def blobs(n=400, d=10, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, :3] @ rng.normal(size=(3, k))).argmax(axis=1)
    return x, y


def small_net(seed=1, **kw):
    return dn.Network(10, [dn.Dense(16, "relu", norm="batch"), dn.Dropout(0.2), dn.Dense(3, "softmax")],
                      seed=seed, **kw)


def weights_equal(a, b) -> bool:
    return all(np.array_equal(p, q) for la, lb in zip(a, b) for p, q in zip(la, lb))


# -- validation_split ------------------------------------------------------------------------
def test_validation_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    train, val = validation_split(0.1, 1000, labels, seed=5)
    assert len(val) == 100 and len(train) == 900
    assert not set(train) & set(val)
    assert np.bincount(labels[val]).tolist() == [50, 30, 20]
    again = validation_split(0.1, 1000, labels, seed=5)
    assert np.array_equal(again[1], val)
    assert not np.array_equal(validation_split(0.1, 1000, labels, seed=6)[1], val)


def test_validation_split_rounds_to_the_total_and_regression_is_random():
    labels = np.repeat([0, 1, 2], [3, 3, 4])
    _, val = validation_split(0.5, 10, labels, seed=0)
    assert len(val) == 5 and set(np.bincount(labels[val], minlength=3)) <= {1, 2}
    _, val = validation_split(0.25, 8, None, seed=0)
    assert len(val) == 2


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, "0.1", True, float("nan")])
def test_validation_split_refuses_a_bad_fraction(fraction):
    x, y = blobs(50)
    with pytest.raises(dn.DensennError, match="validation_split"):
        small_net().fit(x, y, epochs=1, validation_split=fraction, progress=False)


def test_validation_split_that_leaves_no_sample_is_refused():
    x, y = blobs(10)
    with pytest.raises(dn.DensennError, match="leaves no validation sample"):
        small_net().fit(x, y, epochs=1, validation_split=0.01, progress=False)
    with pytest.raises(dn.DensennError, match="not both"):
        small_net().fit(x, y, epochs=1, validation_split=0.5, validation_data=(x, y), progress=False)


def test_fit_with_validation_split_trains_on_the_rest_and_reports_val_metrics():
    x, y = blobs()
    net = small_net()
    h = net.fit(x, y, epochs=2, batch_size=20, validation_split=0.25, progress=False)
    assert all(v is not None for v in h["val_loss"] + h["val_accuracy"])
    train, val = validation_split(0.25, len(x), y, net.seed)
    assert net.evaluate(x[val], y[val])["loss"] == pytest.approx(h["val_loss"][-1], rel=1e-6)


# -- callbacks -------------------------------------------------------------------------------
class Recorder(dn.Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, run):
        self.calls.append("train_begin")

    def on_epoch_begin(self, run):
        self.calls.append(f"epoch_begin {run.epoch}")

    def on_batch_begin(self, run):
        self.calls.append(f"batch_begin {run.step}")

    def on_batch_end(self, run):
        self.calls.append(f"batch_end {run.step}")

    def on_epoch_end(self, run, logs):
        self.calls.append(f"epoch_end {run.epoch} {sorted(k for k, v in logs.items() if v is not None)}")

    def on_train_end(self, run):
        self.calls.append("train_end")


def test_callback_hooks_come_in_order():
    x, y = blobs(40)
    rec = Recorder()
    small_net().fit(x, y, epochs=2, batch_size=20, callbacks=[rec], progress=False)
    logs = "['accuracy', 'loss', 'lr', 'seconds']"
    assert rec.calls == ["train_begin",
                         "epoch_begin 0", "batch_begin 0", "batch_end 1", "batch_begin 1", "batch_end 2",
                         f"epoch_end 0 {logs}",
                         "epoch_begin 1", "batch_begin 0", "batch_end 1", "batch_begin 1", "batch_end 2",
                         f"epoch_end 1 {logs}", "train_end"]


def test_a_callback_stops_training_and_changes_the_rate():
    x, y = blobs(40)

    class Halve(dn.Callback):
        def on_epoch_end(self, run, logs):
            run.optimizer.lr /= 2
            if run.epoch == 2:
                run.stop_training = True

    h = small_net().fit(x, y, epochs=10, batch_size=20, callbacks=[Halve()], progress=False)
    assert h.epochs == 3 and h["lr"] == [1e-3, 5e-4, 2.5e-4]


def test_plain_functions_still_work_as_callbacks():
    x, y = blobs(40)
    seen = []
    h = small_net().fit(x, y, epochs=5, batch_size=20, progress=False,
                        callbacks=[lambda epoch, logs: seen.append(epoch) or epoch == 1])
    assert seen == [0, 1] and h.epochs == 2


def test_early_stopping_stops_and_restores_the_best_weights():
    x, y = blobs()
    net = small_net()
    snapshots = {}

    def keep(epoch, logs):
        snapshots[epoch] = (logs["val_loss"], net.get_weights(), net.tensors())

    # a rate that overshoots from epoch 3 on makes the validation loss worse and worse
    class Overshoot(dn.Callback):
        def on_epoch_end(self, run, logs):
            if run.epoch == 2:
                run.optimizer.lr = 1.0

    es = dn.EarlyStopping(patience=2)
    h = net.fit(x, y, epochs=30, batch_size=20, validation_split=0.2, progress=False,
                callbacks=[keep, Overshoot(), es])
    best = int(np.argmin(h["val_loss"]))
    assert es.best_epoch == best and es.stopped_epoch == best + 2 and h.epochs == best + 3
    assert weights_equal(net.get_weights(), snapshots[best][1])
    # the running statistics come back with the weights
    assert all(np.array_equal(v, snapshots[best][2][k]) for k, v in net.tensors().items())


def test_early_stopping_restores_after_a_divergence_too():
    x, y = blobs()
    net = small_net()
    seen = {}

    class Blowup(dn.Callback):
        def on_epoch_end(self, run, logs):
            seen[run.epoch] = net.get_weights()
            if run.epoch == 1:
                run.optimizer.lr = 1e30

    es = dn.EarlyStopping(monitor="loss", patience=10)
    with pytest.raises(dn.TrainingDiverged):
        net.fit(x, y, epochs=10, batch_size=20, callbacks=[Blowup(), es], progress=False)
    assert weights_equal(net.get_weights(), seen[es.best_epoch])


def test_early_stopping_without_restore_keeps_the_last_weights():
    x, y = blobs()
    net = small_net()
    last = {}
    es = dn.EarlyStopping(monitor="loss", patience=0, min_delta=10.0, restore_best_weights=False)
    h = net.fit(x, y, epochs=10, batch_size=20, progress=False,
                callbacks=[es, lambda e, logs: last.update(w=net.get_weights())])
    assert h.epochs == 2 and weights_equal(net.get_weights(), last["w"])


@pytest.mark.parametrize("make, match", [
    (lambda: dn.EarlyStopping(monitor="val_acc"), "monitor"),
    (lambda: dn.EarlyStopping(mode="up"), "mode"),
    (lambda: dn.EarlyStopping(patience=-1), "patience"),
    (lambda: dn.EarlyStopping(min_delta=float("nan")), "min_delta"),
    (lambda: dn.ReduceLROnPlateau(factor=1.5), "factor"),
    (lambda: dn.ReduceLROnPlateau(min_lr=-1), "min_lr"),
    (lambda: dn.ModelCheckpoint("/no/such/folder/m.dn"), "path"),
])
def test_callbacks_refuse_bad_arguments(make, match):
    with pytest.raises(dn.DensennError, match=match):
        make()


def test_a_validation_monitor_without_validation_data_is_refused_before_training():
    x, y = blobs(40)
    net = small_net()
    before = net.get_weights()
    with pytest.raises(dn.DensennError, match="no validation set"):
        net.fit(x, y, epochs=2, callbacks=[dn.EarlyStopping()], progress=False)
    assert weights_equal(net.get_weights(), before)
    xr = np.zeros((40, 10), np.float32)
    reg = dn.Network(10, [dn.Dense(1, "linear")])
    with pytest.raises(dn.DensennError, match="not class labels"):
        reg.fit(xr, np.linspace(0.1, 0.9, 40), epochs=1, callbacks=[dn.EarlyStopping("accuracy")], progress=False)


def test_reduce_lr_on_plateau_reduces_down_to_min_lr():
    x, y = blobs(40)
    cb = dn.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=100.0, min_lr=2e-4)
    h = small_net().fit(x, y, epochs=6, batch_size=20, callbacks=[cb], progress=False)
    # the first epoch sets the best; each later one fails to beat it by min_delta, and the
    # history holds the rate each epoch was trained with
    assert h["lr"] == [1e-3, 1e-3, 5e-4, 2.5e-4, 2e-4, 2e-4]


def test_model_checkpoint_saves_every_epoch_or_the_best(tmp_path):
    x, y = blobs()
    every = dn.ModelCheckpoint(str(tmp_path / "m-{epoch:02d}.dn"))
    best = dn.ModelCheckpoint(str(tmp_path / "best.dn"), monitor="val_loss", save_best_only=True)
    net = small_net()
    h = net.fit(x, y, epochs=3, batch_size=20, validation_split=0.2, callbacks=[every, best], progress=False)
    assert sorted(os.listdir(tmp_path)) == ["best.dn", "m-01.dn", "m-02.dn", "m-03.dn"]
    assert len(best.saved) == sum(1 for i, v in enumerate(h["val_loss"]) if v == min(h["val_loss"][:i + 1]))
    assert weights_equal(dn.load(str(tmp_path / "m-03.dn")).get_weights(), net.get_weights())


def test_csv_logger_writes_a_row_per_epoch(tmp_path):
    x, y = blobs(40)
    path = tmp_path / "log.csv"
    h = small_net().fit(x, y, epochs=3, batch_size=20, callbacks=[dn.CSVLogger(str(path))], progress=False)
    rows = list(csv.DictReader(open(path)))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [float(r["loss"]) for r in rows] == h["loss"] and rows[0]["val_loss"] == ""
    small_net().fit(x, y, epochs=2, batch_size=20, callbacks=[dn.CSVLogger(str(path), append=True)], progress=False)
    assert len(list(csv.DictReader(open(path)))) == 5


# -- fit goes on -----------------------------------------------------------------------------
def test_a_second_fit_continues_the_first():
    x, y = blobs()
    one = small_net()
    one.fit(x, y, epochs=2, batch_size=32, progress=False)
    t = one.optimizer.t
    one.fit(x, y, epochs=2, batch_size=32, progress=False)
    assert one.optimizer.t == 2 * t        # the same Adam, its moments and step count kept
    both = small_net()
    both.fit(x, y, epochs=4, batch_size=32, progress=False)
    assert weights_equal(one.get_weights(), both.get_weights())


def test_initial_epoch_continues_a_schedule():
    x, y = blobs()
    opt = dn.Adam(1e-2, schedule=dn.StepDecay(every=1, gamma=0.5))
    one = small_net()
    one.fit(x, y, epochs=2, batch_size=32, optimizer=opt, progress=False)
    h = one.fit(x, y, epochs=4, initial_epoch=2, batch_size=32, progress=False)
    assert h["lr"] == [1e-2 * 0.25, 1e-2 * 0.125]
    both = small_net()
    both.fit(x, y, epochs=4, batch_size=32, optimizer=dn.Adam(1e-2, schedule=dn.StepDecay(every=1, gamma=0.5)),
             progress=False)
    assert weights_equal(one.get_weights(), both.get_weights())
    with pytest.raises(dn.DensennError, match="initial_epoch"):
        one.fit(x, y, epochs=2, initial_epoch=2, progress=False)


# -- checkpoints -----------------------------------------------------------------------------
def run_with_checkpoint(tmp_path, epochs=3, **kw):
    x, y = blobs()
    path = str(tmp_path / "run.ckpt")
    net = small_net()
    net.fit(x, y, epochs=epochs, batch_size=32, validation_split=0.2, checkpoint=path, progress=False,
            callbacks=[dn.EarlyStopping(patience=10)], **kw)
    return net, path, x, y


def test_resume_from_a_finished_run_changes_nothing(tmp_path):
    net, path, x, y = run_with_checkpoint(tmp_path)
    again = dn.resume(path, x, y, progress=False)
    assert weights_equal(again.get_weights(), net.get_weights())
    assert again.history.history["loss"] == net.history.history["loss"]


def test_resume_can_extend_the_run_to_more_epochs(tmp_path):
    net, path, x, y = run_with_checkpoint(tmp_path, epochs=2)
    longer = dn.resume(path, x, y, epochs=4, progress=False)
    assert longer.history.epochs == 4
    # extending is what a 4-epoch run would have done (constant rate, no horizon)
    ref = small_net()
    ref.fit(x, y, epochs=4, batch_size=32, validation_split=0.2, progress=False,
            callbacks=[dn.EarlyStopping(patience=10)])
    assert weights_equal(longer.get_weights(), ref.get_weights())


def test_a_checkpoint_loads_as_a_model_and_is_refused_by_the_model_reader(tmp_path):
    net, path, x, _ = run_with_checkpoint(tmp_path, epochs=1)
    loaded = dn.load(path)
    assert np.array_equal(loaded.predict(x), net.predict(x))
    with pytest.raises(dn.DensennError, match="checkpoint"):
        dn.resume(net.save(str(tmp_path / "model.dn")), x, x)


def test_a_checkpoint_holds_the_training_state(tmp_path):
    net, path, _, _ = run_with_checkpoint(tmp_path, epochs=2, checkpoint_every=4)
    state = ckpt.read(path)
    tr = state.training
    assert (tr["epoch"], tr["step"]) == (2, 0) and tr["optimizer"]["t"] == net.optimizer.t
    assert len(state.prefixed("optimizer")) == 2 * len(net.optimizer.state)
    assert tr["callbacks"][0]["type"] == "EarlyStopping" and tr["history"]["loss"] == net.history["loss"]
    assert state.prefixed("callbacks.0")        # the best weights
    assert tr["fit"]["checkpoint_every"] == 4


def test_a_corrupted_or_truncated_checkpoint_is_refused(tmp_path):
    _, path, x, y = run_with_checkpoint(tmp_path, epochs=1)
    raw = open(path, "rb").read()
    bad = tmp_path / "bad.ckpt"
    for data in (raw[: len(raw) // 2], raw[:-1] + bytes([raw[-1] ^ 1]), b""):
        bad.write_bytes(data)
        with pytest.raises(dn.DensennError, match="bad.ckpt"):
            dn.resume(str(bad), x, y, progress=False)
    with pytest.raises(dn.DensennError, match="does not exist"):
        dn.resume(str(tmp_path / "none.ckpt"), x, y)


def test_resume_refuses_other_data_and_missing_validation_data(tmp_path):
    _, path, x, y = run_with_checkpoint(tmp_path, epochs=1)
    with pytest.raises(dn.DensennError, match="other data"):
        dn.resume(path, x[::-1].copy(), y[::-1].copy(), progress=False)
    xv, yv = blobs(30, seed=9)
    with_val = tmp_path / "val.ckpt"
    small_net().fit(x, y, epochs=1, validation_data=(xv, yv), checkpoint=str(with_val), progress=False)
    with pytest.raises(dn.DensennError, match="validation_data"):
        dn.resume(str(with_val), x, y, progress=False)


def test_resume_needs_user_callbacks_given_again(tmp_path):
    x, y = blobs()
    path = str(tmp_path / "run.ckpt")
    small_net().fit(x, y, epochs=1, checkpoint=path, callbacks=[Recorder()], progress=False)
    with pytest.raises(dn.DensennError, match="cannot rebuild"):
        dn.resume(path, x, y, progress=False)
    with pytest.raises(dn.DensennError, match="callbacks"):
        dn.resume(path, x, y, callbacks=[dn.CSVLogger(str(tmp_path / "l.csv"))], progress=False)
    dn.resume(path, x, y, callbacks=[Recorder()], progress=False)


def test_checkpoint_arguments_are_checked(tmp_path):
    x, y = blobs(40)
    with pytest.raises(dn.DensennError, match="checkpoint"):
        small_net().fit(x, y, epochs=1, checkpoint="/no/such/folder/run.ckpt", progress=False)
    with pytest.raises(dn.DensennError, match="checkpoint_every"):
        small_net().fit(x, y, epochs=1, checkpoint_every=5, progress=False)
    with pytest.raises(dn.DensennError, match="checkpoint_every"):
        small_net().fit(x, y, epochs=1, checkpoint=str(tmp_path / "c"), checkpoint_every=0, progress=False)


def test_ctrl_c_stops_between_steps_and_writes_a_checkpoint(tmp_path):
    x, y = blobs()
    path = str(tmp_path / "run.ckpt")

    class CtrlC(dn.Callback):
        def on_batch_begin(self, run):
            if run.global_step == 5:
                os.kill(os.getpid(), signal.SIGINT)     # arrives during the step, handled after it

    net = small_net()
    with pytest.raises(KeyboardInterrupt, match="densenn.resume"):
        net.fit(x, y, epochs=3, batch_size=32, checkpoint=path, callbacks=[CtrlC()], progress=False)
    tr = ckpt.read(path).training
    assert (tr["epoch"], tr["step"], tr["global_step"]) == (0, 6, 6)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    resumed = dn.resume(path, x, y, callbacks=[CtrlC()], progress=False)    # step 5 is behind it
    ref = small_net()
    ref.fit(x, y, epochs=3, batch_size=32, progress=False)
    assert weights_equal(resumed.get_weights(), ref.get_weights())


def test_fit_in_a_thread_leaves_signals_alone():
    x, y = blobs(40)
    out = {}
    t = threading.Thread(target=lambda: out.update(h=small_net().fit(x, y, epochs=1, progress=False)))
    t.start()
    t.join()
    assert out["h"].epochs == 1


def _worker(*args, **kw):
    env = dict(os.environ, DENSENN_THREADS="2")
    return subprocess.Popen([sys.executable, WORKER, *args], stdout=subprocess.PIPE, text=True, env=env, **kw)


@pytest.mark.slow
def test_a_run_killed_at_any_moment_resumes_to_identical_weights(tmp_path):
    full = _worker("full", str(tmp_path / "full.npz"))
    full.communicate()
    assert full.returncode == 0
    ref = np.load(tmp_path / "full.npz")
    steps_total = 6 * 34
    rng = np.random.default_rng(0)
    # kills just after a checkpoint, just before one, inside an epoch, at an epoch's end,
    # and a random point
    # (the first checkpoint is written after step 3, so no kill comes before step 4)
    for target in (4, 34, 35, 100, int(rng.integers(5, steps_total - 1))):
        folder = tmp_path / f"kill{target}"
        folder.mkdir()
        run = _worker("run", str(folder / "run.ckpt"), str(folder / "unused.npz"))
        for line in run.stdout:
            if int(line) >= target:
                run.send_signal(signal.SIGKILL)
                break
        run.wait()
        assert run.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        res = _worker("resume", str(folder / "run.ckpt"), str(folder / "resumed.npz"))
        res.communicate()
        assert res.returncode == 0
        got = np.load(folder / "resumed.npz")
        for name in ref.files:
            assert ref[name].tobytes() == got[name].tobytes(), (target, name)
        rows = list(csv.DictReader(open(folder / "log.csv")))
        assert [float(r["loss"]) for r in rows] == json.loads(str(ref["history"]))


def test_resume_of_an_early_stopped_run_keeps_the_stop_and_the_best_weights(tmp_path):
    x, y = blobs()
    path = str(tmp_path / "run.ckpt")
    net = small_net()

    def make():
        return dn.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)

    net.fit(x, y, epochs=10, batch_size=32, checkpoint=path, callbacks=[make()], progress=False)
    assert net.history.epochs == 2
    es = make()
    again = dn.resume(path, x, y, callbacks=[es], progress=False)
    assert (es.best_epoch, es.stopped_epoch) == (0, 1) and again.history.epochs == 2
    assert weights_equal(again.get_weights(), net.get_weights())


def test_an_interrupted_resume_hands_over_its_network(tmp_path):
    x, y = blobs()
    path = str(tmp_path / "run.ckpt")

    class CtrlCAt(dn.Callback):
        def __init__(self, step):
            self.at = step

        def on_batch_begin(self, run):
            if run.global_step == self.at:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        small_net().fit(x, y, epochs=3, batch_size=32, checkpoint=path, callbacks=[CtrlCAt(3)], progress=False)
    with pytest.raises(KeyboardInterrupt) as caught:
        dn.resume(path, x, y, callbacks=[CtrlCAt(20)], progress=False)
    net = caught.value.network
    assert isinstance(net, dn.Network) and net.optimizer.t == 21
    assert ckpt.read(path).training["global_step"] == 21


# -- weights in fit --------------------------------------------------------------------------
def dense_net(dtype="float64"):
    return dn.Network(10, [dn.Dense(16, "tanh"), dn.Dense(3, "softmax")], seed=2, dtype=dtype)


def test_fit_with_unit_weights_is_fit_without():
    x, y = blobs()
    a, b = dense_net("float32"), dense_net("float32")
    ha = a.fit(x, y, epochs=2, batch_size=32, progress=False)
    hb = b.fit(x, y, epochs=2, batch_size=32, sample_weight=np.ones(len(x)), progress=False)
    assert weights_equal(a.get_weights(), b.get_weights()) and ha["loss"] == hb["loss"]


def test_fit_with_zero_weights_is_fit_without_those_samples():
    x, y = blobs(120)
    w = np.ones(len(x))
    w[::3] = 0
    keep = w > 0
    a, b = dense_net(), dense_net()
    # one batch per epoch: the same gradients whatever order the shuffle puts the rows in
    ha = a.fit(x, y, epochs=3, batch_size=len(x), sample_weight=w, optimizer=dn.SGD(0.5), progress=False)
    hb = b.fit(x[keep], y[keep], epochs=3, batch_size=int(keep.sum()), optimizer=dn.SGD(0.5), progress=False)
    for la, lb in zip(a.get_weights(), b.get_weights()):
        for p, q in zip(la, lb):
            np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-10)
    np.testing.assert_allclose(ha["accuracy"], hb["accuracy"], rtol=1e-12)


def test_weighted_validation_and_class_weights_in_fit():
    x, y = blobs()
    xv, yv = blobs(60, seed=4)
    wv = np.linspace(0, 2, 60)
    net = dense_net()
    h = net.fit(x, y, epochs=1, batch_size=32, class_weight="balanced", validation_data=(xv, yv, wv),
                progress=False)
    assert h["val_loss"][0] == pytest.approx(net.evaluate(xv, yv, sample_weight=wv)["loss"], rel=1e-12)
    with pytest.raises(dn.DensennError, match="sample_weight"):
        net.fit(x, y, epochs=1, sample_weight=-np.ones(len(x)), progress=False)
    with pytest.raises(dn.DensennError, match="class_weight"):
        net.fit(x, y, epochs=1, class_weight={7: 2.0}, progress=False)
    with pytest.raises(dn.DensennError, match="validation_data sample_weight"):
        net.fit(x, y, epochs=1, validation_data=(xv, yv, wv[:5]), progress=False)


def test_a_weighted_run_resumes_with_its_weights(tmp_path):
    x, y = blobs()
    w = np.random.default_rng(3).random(len(x))
    path = str(tmp_path / "run.ckpt")

    class Crash(dn.Callback):
        def __init__(self, at=17):
            self.at = at

        def on_batch_end(self, run):
            if run.global_step == self.at:
                raise KeyboardInterrupt      # a crash after the checkpoint of step 16

    with pytest.raises(KeyboardInterrupt):
        small_net().fit(x, y, epochs=3, batch_size=32, sample_weight=w, class_weight={0: 3.0}, checkpoint=path,
                        checkpoint_every=4, callbacks=[Crash()], progress=False)
    assert ckpt.read(path).training["global_step"] == 16
    with pytest.raises(dn.DensennError, match="other data"):
        dn.resume(path, x, y, callbacks=[Crash(-1)], progress=False)
    resumed = dn.resume(path, x, y, sample_weight=w, callbacks=[Crash(-1)], progress=False)
    ref = small_net()
    ref.fit(x, y, epochs=3, batch_size=32, sample_weight=w, class_weight={0: 3.0}, progress=False)
    assert weights_equal(resumed.get_weights(), ref.get_weights())
