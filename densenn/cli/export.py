"""``densenn export``: write a saved model as an ONNX graph (docs/onnx.md)."""
from __future__ import annotations

import sys

from densenn.cli.common import _print_json, _say, _standardizer_from


def cmd_export(args) -> int:
    from densenn.io import load, load_extra
    from densenn.onnxfile import DEFAULT_OPSET

    extra = load_extra(args.model)           # DensennError for a missing or broken file
    net = load(args.model, engine="cpu")
    path = net.to_onnx(args.output, opset=args.opset)
    standardized = _standardizer_from(extra) is not None
    if args.json:
        _print_json({"model": args.model, "onnx": path, "network": repr(net), "n_in": net.n_in,
                     "n_out": net.n_out, "dtype": net.dtype.name, "opset": args.opset or DEFAULT_OPSET,
                     "standardizer_in_graph": False if standardized else None})
    else:
        _say(args, f"wrote {path}: {net!r}, input 'input' (N, {net.n_in}), output 'output' (N, {net.n_out})")
    if standardized:
        print("note: the model's saved standardiser is not part of the ONNX graph: standardise the inputs "
              "(as 'densenn predict' does) before feeding them to it", file=sys.stderr)
    return 0
