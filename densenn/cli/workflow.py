"""``densenn train``'s workflow: the options of a run, its validation split, its checkpoint,
and ``--resume``.

A run is described by its *settings* (every option resolved to its value, defaults
included); they go into each checkpoint (the fit's ``extra``, as the model file's ``cli``
block) so that ``densenn train --resume PATH`` rebuilds the same data, preprocessing and
callbacks from them. On a resume an option of :data:`FIXED` (what decides the weights
trained) given must agree with the checkpoint, else a DensennError names it; the others
(``--epochs``, which only extends the run, ``--engine``, ``--out``, ``--checkpoint``,
``--data-dir`` where the same MNIST files are now, ``--download``, ``--no-progress``,
``--json``) may be given freely.
"""
from __future__ import annotations

import os
import shlex

from densenn.cli.common import CLI_FORMAT, DEFAULT_LR, PROG, TRAIN_DEFAULTS
from densenn.errors import DensennError
from densenn.files import check_writable_folder

#: ``args`` attribute, its option, and the settings key it decides: what a resume must keep
FIXED = (("data", "--data", "data"), ("layers", "--layers", "layers"), ("activation", "--activation", "activation"),
         ("norm", "--norm", "norm"), ("dropout", "--dropout", "dropout"), ("cost", "--cost", "cost"),
         ("optimizer", "--optimizer", "optimizer_name"), ("lr", "--lr", "lr"),
         ("weight_decay", "--weight-decay", "weight_decay"), ("clipnorm", "--clipnorm", "clipnorm"),
         ("schedule", "--schedule", "schedule"),
         ("batch_size", "--batch-size", "batch_size"), ("seed", "--seed", "seed"), ("dtype", "--dtype", "dtype"),
         ("standardize", "--standardize", "standardize"), ("val_split", "--val-split", "val_split"),
         ("early_stopping", "--early-stopping", "early_stopping"), ("save_best", "--save-best", "save_best"),
         ("checkpoint_every", "--checkpoint-every", "checkpoint_every"))
CHECKPOINT_NAME = "train.ckpt"
DEFAULT_OUT = "runs"


def new_settings(args) -> dict:
    """The settings of a new run: the options given, the data set's defaults for the rest.
    ``cost``, ``weight_decay`` (the optimizer's), ``optimizer`` (its config), ``engine`` and
    ``out`` are filled in once known."""
    data_name = args.data or "digits"
    defaults = TRAIN_DEFAULTS[data_name]
    if args.data_dir is not None and data_name != "mnist":
        raise DensennError("--data-dir is for --data mnist; the digits ship with scikit-learn")
    optimizer = args.optimizer or "adam"
    return {
        "data": data_name, "data_dir": os.path.abspath(args.data_dir) if args.data_dir else None,
        "layers": defaults["layers"] if args.layers is None else args.layers,
        "activation": args.activation or "relu", "norm": args.norm or "none",
        "dropout": float(args.dropout or 0.0), "cost": args.cost,
        "optimizer_name": optimizer, "lr": args.lr if args.lr is not None else DEFAULT_LR[optimizer],
        "weight_decay": args.weight_decay, "clipnorm": args.clipnorm,
        "schedule": args.schedule or defaults["schedule"],
        "epochs": args.epochs or defaults["epochs"], "batch_size": args.batch_size or defaults["batch_size"],
        "seed": 0 if args.seed is None else args.seed, "dtype": args.dtype or "float32",
        "standardize": defaults["standardize"] if args.standardize is None else args.standardize,
        # early stopping and --save-best choose weights: they must choose them on data carved
        # from the training set, never on the test set
        "val_split": args.val_split if args.val_split is not None else
        (0.1 if args.early_stopping is not None or args.save_best else None),
        "save_best": bool(args.save_best),
        "early_stopping": args.early_stopping, "checkpoint_every": args.checkpoint_every,
        "engine": None, "out": None,
    }


def checkpoint_block(settings: dict, data_block: dict, standardizer, n_classes: int) -> dict:
    """What a checkpoint keeps for ``--resume``: the ``cli`` block of the fit's ``extra``."""
    return {"cli": {"format": CLI_FORMAT, "data": data_block,
                    "standardizer": standardizer.to_dict() if standardizer is not None else None,
                    "n_classes": n_classes, "train": settings}}


def read_resume(args):
    """(the Checkpoint, its ``cli`` block, the settings of the resumed run) for ``--resume``;
    DensennError naming the option for a file that is not a checkpoint of ``densenn train``,
    or an option that disagrees with it."""
    from densenn.training import checkpoint as ckpt

    path = args.resume
    try:
        state = ckpt.read(path)
    except DensennError as exc:
        raise DensennError(f"--resume: {exc}") from None
    extra = state.training["extra"]
    block = extra.get("cli") if isinstance(extra, dict) else None
    if not isinstance(block, dict):
        block = {}
    settings = block.get("train")
    if not isinstance(settings, dict) or block.get("format") != CLI_FORMAT \
            or not all(key in settings for _, _, key in FIXED) or not isinstance(block.get("data"), dict):
        raise DensennError(f"--resume: checkpoint {path!r} was not written by '{PROG} train' (it holds no "
                           "command-line options); continue it in Python with densenn.resume(path, x, y)")
    for attr, flag, key in FIXED:
        given = getattr(args, attr, None)
        if given is not None and given != settings[key]:
            raise DensennError(f"--resume: {_as_option(flag, given)} differs from the run of checkpoint {path!r} "
                               f"({_as_option(flag, settings[key])}); a resumed run keeps the options it was "
                               f"started with: leave {flag} out, or start a new run without --resume")
    if args.checkpoint is not None and args.checkpoint.lower() == "none":
        raise DensennError(f"--checkpoint none cannot be used with --resume: a resumed run goes on writing its "
                           f"checkpoint (to {path!r}, or to --checkpoint PATH)")
    settings = dict(settings)
    tr = state.training
    # the fit's own epochs, not the stored option: an earlier resume may have extended them
    reached = int(tr["epoch"]) + (1 if tr["step"] else 0)
    if args.epochs is not None:
        if args.epochs < reached:
            raise DensennError(f"--epochs {args.epochs} ends before where checkpoint {path!r} stands "
                               f"({tr['epoch']} epochs done{', and part of the next' if tr['step'] else ''}): "
                               f"give --epochs {reached} or more")
        settings["epochs"] = args.epochs
    else:
        settings["epochs"] = int(tr["fit"]["epochs"])
    if args.data_dir is not None:
        if settings["data"] != "mnist":
            raise DensennError("--data-dir is for --data mnist; the digits ship with scikit-learn")
        settings["data_dir"] = os.path.abspath(args.data_dir)
    settings["engine"] = args.engine or tr["engine"]
    return state, block, settings


def _as_option(flag: str, value) -> str:
    """``value`` as the command line would give it: ``--layers 256,128``, ``--no-standardize``."""
    if value is None:
        return f"no {flag}"
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    if isinstance(value, list):
        return f"{flag} {','.join(str(v) for v in value) or 'none'}"
    if isinstance(value, float):
        return f"{flag} {value:g}"
    return f"{flag} {value}"


def checkpoint_path(args, out_dir: str) -> str | None:
    """Where the run writes its checkpoint (None: nowhere), checked writable before any training."""
    text = args.checkpoint
    if text is not None and text.lower() == "none":
        if args.checkpoint_every is not None:
            raise DensennError("--checkpoint-every needs a checkpoint to write, but --checkpoint is none")
        return None
    if text is None:
        text = args.resume if args.resume is not None else os.path.join(out_dir, CHECKPOINT_NAME)
    if os.path.abspath(text) == os.path.abspath(os.path.join(out_dir, "model.dn")):
        raise DensennError(f"--checkpoint {text!r} is the model file this run writes; choose another path")
    if os.path.isdir(text):
        raise DensennError(f"--checkpoint {text!r} is a folder; give a file path, e.g. "
                           f"{os.path.join(text, CHECKPOINT_NAME)!r}")
    check_writable_folder(text, "--checkpoint")
    return text


def validation_rows(settings: dict, y):
    """(train_rows, val_rows) of the split ``fit`` will hold out (None: no split), or a
    DensennError naming --val-split when it leaves an empty set."""
    from densenn.training.split import validation_split

    fraction = settings["val_split"]
    if fraction is None:
        return None
    n = len(y)
    n_val = round(fraction * n)
    if n_val in (0, n):
        raise DensennError(f"--val-split {fraction:g} of the {n} training samples leaves "
                           f"{'no validation' if n_val == 0 else 'no training'} sample; choose a fraction "
                           f"between {1 / n:.3g} and {1 - 1 / n:.3g}")
    # fit draws the split from the network's seed and the labels: the same rows as here
    return validation_split(fraction, n, y, settings["seed"])


def stamp(path: str | None):
    """What tells whether ``path`` was (re)written since: None when there is no file."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def resume_hint(path: str | None) -> str:
    """The end of the Ctrl-C message: how to continue, or why one cannot."""
    if path is None:
        return "; no checkpoint was written, so it cannot be resumed"
    return f"; resume with: {PROG} train --resume {shlex.quote(path)}"


def resumed_callbacks(dn, state) -> list:
    """The callbacks of the checkpoint's fit, rebuilt from their config (the CLI gives only
    EarlyStopping and ModelCheckpoint), so that the resumed run's early stopping can be asked
    for its best epoch."""
    callbacks = []
    for saved in state.training["callbacks"]:
        kind = {"EarlyStopping": dn.EarlyStopping, "ModelCheckpoint": dn.ModelCheckpoint}.get(saved["type"])
        if kind is None or not isinstance(saved["config"], dict):
            raise DensennError(f"--resume: checkpoint {state.path!r} was written with a {saved['type']} "
                               f"callback, which '{PROG} train' does not use; continue it with densenn.resume")
        callbacks.append(kind(**saved["config"]))
    return callbacks


def network_from_checkpoint(dn, path: str, engine):
    """(network, history) as of the checkpoint at ``path``: what a resumed run that stopped
    before its network existed leaves (otherwise densenn.resume hands the network over with
    the exception). With early stopping's best weights in the checkpoint, those, as a run
    never resumed keeps them."""
    from densenn.training import checkpoint as ckpt
    from densenn.training.history import History

    state = ckpt.read(path)
    net = dn.load(path, engine=engine)
    for j, saved in enumerate(state.training["callbacks"]):
        best = state.prefixed(f"callbacks.{j}")
        if saved["type"] == "EarlyStopping" and (saved["config"] or {}).get("restore_best_weights") and best:
            net.set_tensors(best)
    history = History()
    history.history = {k: list(v) for k, v in state.training["history"].items()}
    return net, history
