"""The network: layers (Dense: inference and training forms), activations, costs,
initialisers, the training network that runs one step, and the user-facing Network.

The modules import each other, never this package: import what you need from them
(``densenn.nn.dense``, ``densenn.nn.network``, ...) or use the names densenn exports.
"""
