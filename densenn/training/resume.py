"""densenn.resume: continue a fit from its checkpoint."""
from __future__ import annotations

from densenn.errors import DensennError, TrainingDiverged
from densenn.nn.network import Network
from densenn.optim import get_optimizer
from densenn.training import checkpoint as ckpt
from densenn.training.callbacks import BUILTIN, check_callbacks


def resume(path, x, y, validation_data=None, callbacks=None, epochs: int | None = None, engine=None,
           progress=None, checkpoint=None, sample_weight=None) -> Network:
    """Continue the fit whose checkpoint is at ``path``; returns the network, trained to the
    end (its ``history`` holds every epoch, before the checkpoint and after).

    ``x`` and ``y`` must be the training data the fit was given (checked against the
    checkpoint's fingerprint), with its ``sample_weight`` if it had them (its class_weight
    the checkpoint keeps), and ``validation_data`` given again if that fit had it. The
    rest comes from the checkpoint: the weights, the optimizer and its state, the batch
    size, cost, schedule, the batch order and the callbacks (the built-in ones are rebuilt
    from their config; pass ``callbacks`` — the same kinds, in the same order — when the fit
    had others). ``epochs`` may extend the run; new checkpoints go to ``path`` (or
    ``checkpoint``). On the same engine and thread count, the weights end byte-identical to
    those of the run never interrupted. If training is interrupted again (Ctrl-C) or
    diverges, the KeyboardInterrupt or TrainingDiverged raised carries the network as its
    ``network`` attribute.
    """
    state = ckpt.read(path)
    tr = state.training
    fit_args = tr["fit"]
    if fit_args["validation_data"] and validation_data is None:
        raise DensennError(f"checkpoint {state.path!r} was written by a fit with validation_data: give it again "
                           "(validation_data=(x_val, y_val))")
    if callbacks is None:
        callbacks = []
        for j, saved in enumerate(tr["callbacks"]):
            kind = BUILTIN.get(saved["type"])
            if kind is None or saved["config"] is None:
                raise DensennError(f"checkpoint {state.path!r} was written with a callback of type "
                                   f"{saved['type']!r} (callbacks[{j}]) that it cannot rebuild: pass the fit's "
                                   "callbacks again (callbacks=[...])")
            callbacks.append(kind(**saved["config"]))
    callbacks = check_callbacks(callbacks)
    net = Network.from_file_parts(state.config, state.model, engine=engine or tr["engine"])
    try:
        _continue(net, state, x, y, validation_data, callbacks, epochs, progress, checkpoint, sample_weight)
    except KeyboardInterrupt as exc:
        exc.network = net       # type: ignore[attr-defined]    # the caller keeps what was trained
        raise
    except TrainingDiverged as exc:
        exc.network = net       # type: ignore[attr-defined]
        raise
    return net


def _continue(net, state, x, y, validation_data, callbacks, epochs, progress, checkpoint, sample_weight) -> None:
    tr, fit_args = state.training, state.training["fit"]
    class_weight = fit_args.get("class_weight")
    if isinstance(class_weight, list):
        class_weight = {int(k): v for k, v in class_weight}
    net.fit(x, y, epochs=fit_args["epochs"] if epochs is None else epochs, batch_size=fit_args["batch_size"],
            cost=fit_args["cost"], optimizer=get_optimizer(tr["optimizer"]["config"]),
            validation_data=validation_data, validation_split=fit_args["validation_split"],
            shuffle=fit_args["shuffle"], callbacks=callbacks, checkpoint=checkpoint or state.path,
            checkpoint_every=fit_args["checkpoint_every"], progress=progress, resume_from=state, extra=tr["extra"],
            sample_weight=sample_weight, class_weight=class_weight)
