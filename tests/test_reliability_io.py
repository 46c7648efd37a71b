"""The model file under stress: concurrent saves, crafted and broken files, edits the
checksum must catch, file hygiene, and the old format (version 1) that must still load.

Every file here is a real file written with the real safetensors library; the broken
ones are written byte by byte, the way a truncated copy or a hostile file would be.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

import densenn as dn
from densenn import io as dn_io


def small_net(seed=0, hidden=16, activation="relu", dtype="float32"):
    return dn.Network(8, [dn.Dense(hidden, activation), dn.Dense(3, "softmax")], engine="cpu",
                      dtype=dtype, seed=seed)


def same_weights(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(wa, wb) and np.array_equal(ba, bb)
                                    for (wa, ba), (wb, bb) in zip(a, b))


def tensors_of(net) -> dict:
    out = {}
    for i, (w, b) in enumerate(net.get_weights()):
        out[f"layers.{i}.w"], out[f"layers.{i}.b"] = w, b
    return out


def v1_digest(tensors) -> str:
    """The version-1 checksum, as densenn 0.1.0 computed it: the tensors alone."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(str(tensors[name].dtype).encode())
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    return h.hexdigest()


def write_v1(path, config, tensors, extra="{}", changes=None) -> None:
    """A version-1 file exactly as densenn 0.1.0's ``save`` wrote one, its metadata then
    updated with ``changes`` (None: that key left out). Its checksum covers the tensors only,
    so a lying config can be written."""
    meta = {"format": "densenn", "format_version": "1", "config": json.dumps(config),
            "extra": extra, "sha256": v1_digest(tensors)}
    meta.update(changes or {})
    path.write_bytes(st_save(tensors, metadata={k: v for k, v in meta.items() if v is not None}))


def header_of(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n])


def rewrite(path, tensors=None, **metadata) -> None:
    """Rewrite the file at ``path`` with some metadata (and optionally tensors) changed, the
    rest as it was."""
    data = path.read_bytes()
    meta = header_of(data)["__metadata__"]
    meta.update(metadata)
    path.write_bytes(st_save(tensors if tensors is not None else st_load(data), metadata=meta))


def framed(header, data: bytes = b"") -> bytes:
    """A safetensors-like file: 8-byte little-endian header length, header, data."""
    if not isinstance(header, bytes):
        header = json.dumps(header).encode()
    return len(header).to_bytes(8, "little") + header + data


def assert_refused(path, *fragments) -> str:
    """Every reader refuses the file at ``path`` with one DensennError naming it (and
    ``fragments``); returns the message."""
    for reader in (dn_io.read, dn_io.load, dn_io.load_extra, dn.load):
        with pytest.raises(dn.DensennError) as info:
            reader(path)
        message = str(info.value)
        assert str(path) in message, (reader.__name__, message)
        for fragment in fragments:
            assert fragment in message, (reader.__name__, fragment, message)
    return message


# -- defect 1: torn reads ------------------------------------------------------------------------
WRITER = """
import sys, time
import densenn as dn
path, deadline = sys.argv[1], time.monotonic() + 60      # never outlives a lost parent long
nets = [dn.load(sys.argv[2]), dn.load(sys.argv[3])]
i = 0
while time.monotonic() < deadline:
    nets[i % 2].save(path)
    i += 1
    if i == 2:
        print("ready", flush=True)
"""


def test_load_while_another_process_saves_the_path_never_sees_a_mix(tmp_path):
    nets = [small_net(seed=1, hidden=16, activation="relu"), small_net(seed=2, hidden=12, activation="tanh")]
    sources = [nets[0].save(tmp_path / "a.dn"), nets[1].save(tmp_path / "b.dn")]
    expected = [n.get_weights() for n in nets]
    path = tmp_path / "shared.dn"
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), *sources],
                              stdout=subprocess.PIPE, env=env)
    try:
        assert writer.stdout.readline().strip() == b"ready"
        seen, loads, stop = set(), 0, time.monotonic() + 8
        while loads < 300 and time.monotonic() < stop:
            weights = dn.load(path, engine="cpu").get_weights()     # any DensennError fails the test
            matches = [k for k in (0, 1) if same_weights(weights, expected[k])]
            assert matches, f"load {loads} gave weights of neither saved network"
            seen.update(matches)
            loads += 1
        assert writer.poll() is None, "the writer stopped while the test was loading"
        assert seen == {0, 1}, "the writer did not alternate while the test loaded"
    finally:
        writer.kill()
        writer.wait(10)
        writer.stdout.close()


# -- defect 2: crafted and broken files ------------------------------------------------------------
@pytest.fixture
def good(tmp_path) -> bytes:
    """The bytes of a valid file (version 2, as save writes it)."""
    small_net(seed=3).save(tmp_path / "good.dn", extra={"note": "good"})
    return (tmp_path / "good.dn").read_bytes()


def malformed_files(good: bytes):
    """(label, bytes) of broken files of every kind a reader can meet."""
    n = int.from_bytes(good[:8], "little")
    header = header_of(good)
    tensor = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    meta = header["__metadata__"]
    cases = [("empty", b""), ("7 bytes", good[:7]),
             ("header length beyond the file", (len(good)).to_bytes(8, "little") + good[8:]),
             ("header length 2**64 - 1", b"\xff" * 8 + good[8:]),
             ("header length 0", b"\0" * 8 + good[8:]),
             ("header not JSON", framed(b"{not json}" + b" " * 6)),
             ("header not UTF-8", framed(b"\xff\xfe{}  ")),
             ("header JSON a list", framed([1, 2, 3])),
             ("header JSON a string", framed("densenn")),
             ("header nested 100000 deep", framed(b"[" * 100000 + b"]" * 100000)),
             ("metadata a list", framed({"__metadata__": ["format", "densenn"]})),
             ("metadata values not strings", framed({"__metadata__": {**meta, "format_version": 2}})),
             ("metadata value null", framed({"__metadata__": {**meta, "config": None}})),
             ("tensor offsets beyond the data", framed({"__metadata__": meta, "x": tensor}, b"\0" * 4)),
             ("tensor of an unknown dtype", framed({"__metadata__": meta, "x": {**tensor, "dtype": "Q9"}}, b"\0" * 8)),
             ("tensor of a negative shape", framed({"__metadata__": meta, "x": {**tensor, "shape": [-2]}}, b"\0" * 8)),
             ("only the header", good[:8 + n]),
             ("data appended", good + b"\0" * 8)]
    cases += [(f"truncated at {cut}", good[:cut]) for cut in range(0, len(good))]
    rng = np.random.default_rng(0)
    cases += [(f"random {k}", rng.bytes(int(rng.integers(0, 3000)))) for k in range(100)]
    # random bytes behind a header length that fits the file
    cases += [(f"random framed {k}", framed(rng.bytes(int(rng.integers(1, 200))), rng.bytes(64))) for k in range(50)]
    return cases


def test_every_malformed_file_gives_one_densenn_error_naming_the_file(tmp_path, good):
    path = tmp_path / "model.dn"
    for label, data in malformed_files(good):
        path.write_bytes(data)
        for reader in (dn_io.read, dn_io.load, dn_io.load_extra):
            try:
                reader(path)
            except dn.DensennError as exc:
                assert str(path) in str(exc), (label, reader.__name__, str(exc))
                continue
            except BaseException as exc:        # noqa: BLE001 - any other type is the failure
                pytest.fail(f"{label}: {reader.__name__} raised {type(exc).__name__}: {exc}")
            if label != "data appended":        # trailing bytes after the tensors mean nothing
                pytest.fail(f"{label}: {reader.__name__} accepted the file")


def _layer(cfg, **change):
    cfg = json.loads(json.dumps(cfg))
    cfg["layers"][0].update(change)
    return cfg


def _without(cfg, key):
    return {k: v for k, v in cfg.items() if k != key}


#: (label, config from the good one, what the message must name)
CONFIG_DEFECTS = [
    ("config a list", lambda c: [c], "config"),
    ("config a number", lambda c: 7, "config"),
    ("a layer an int", lambda c: {**c, "layers": [16, c["layers"][1]]}, "layers[0]"),
    ("layers a dict", lambda c: {**c, "layers": {"0": c["layers"][0]}}, "layers"),
    ("layers empty", lambda c: {**c, "layers": []}, "layers"),
    ("layers missing", lambda c: _without(c, "layers"), "layers"),
    ("relu with a param", lambda c: _layer(c, activation={"name": "relu", "param": 1}), "param"),
    ("leaky_relu slope 2", lambda c: _layer(c, activation={"name": "leaky_relu", "param": 2.0}), "slope"),
    ("leaky_relu slope a string", lambda c: _layer(c, activation={"name": "leaky_relu", "param": "0.1"}), "param"),
    ("elu alpha true", lambda c: _layer(c, activation={"name": "elu", "param": True}), "param"),
    ("activation unknown", lambda c: _layer(c, activation="gelu_erf_typo"), "gelu_erf_typo"),
    ("activation a list", lambda c: _layer(c, activation=["relu"]), "activation"),
    ("activation without a name", lambda c: _layer(c, activation={"param": 0.1}), "name"),
    ("activation with another key", lambda c: _layer(c, activation={"name": "relu", "slope": 1}), "slope"),
    ("units a string", lambda c: _layer(c, units="16"), "units"),
    ("units a float", lambda c: _layer(c, units=1.5), "units"),
    ("units true", lambda c: _layer(c, units=True), "units"),
    ("units negative", lambda c: _layer(c, units=-3), "units"),
    ("units missing", lambda c: {**c, "layers": [_without(c["layers"][0], "units"), c["layers"][1]]}, "units"),
    ("units not the tensors'", lambda c: _layer(c, units=17), "shape"),
    ("init unknown", lambda c: _layer(c, init="zeros"), "init"),
    ("init a number", lambda c: _layer(c, init=3), "init"),
    ("a layer with another key", lambda c: _layer(c, dropout=0.5), "dropout"),
    ("n_in missing", lambda c: _without(c, "n_in"), "n_in"),
    ("n_in a string", lambda c: {**c, "n_in": "8"}, "n_in"),
    ("n_in zero", lambda c: {**c, "n_in": 0}, "n_in"),
    ("n_in not the tensors'", lambda c: {**c, "n_in": 9}, "shape"),
    ("dtype int8", lambda c: {**c, "dtype": "int8"}, "dtype"),
    ("dtype missing", lambda c: _without(c, "dtype"), "dtype"),
    ("dtype not the tensors'", lambda c: {**c, "dtype": "float64"}, "dtype"),
    ("seed -1", lambda c: {**c, "seed": -1}, "seed"),
    ("seed a string", lambda c: {**c, "seed": "x"}, "seed"),
    ("another config key", lambda c: {**c, "engine": "cuda"}, "engine"),
]


@pytest.mark.parametrize("label, change, fragment", CONFIG_DEFECTS, ids=[c[0] for c in CONFIG_DEFECTS])
def test_a_config_defect_is_one_densenn_error_saying_what(tmp_path, label, change, fragment):
    net = small_net(seed=3)
    path = tmp_path / "model.dn"
    write_v1(path, net.config(), tensors_of(net))        # the control: this one loads
    assert same_weights(dn.load(path).get_weights(), net.get_weights())
    write_v1(path, change(net.config()), tensors_of(net))
    assert_refused(path, fragment)


def _nan_w(t):
    t = dict(t)
    t["layers.0.w"] = t["layers.0.w"].copy()
    t["layers.0.w"][1, 2] = np.nan
    return t


#: (label, tensors from the good ones, what the message must name)
TENSOR_DEFECTS = [
    ("a tensor missing", lambda t: _without(t, "layers.1.b"), "layers.1.b"),
    ("a tensor too many", lambda t: {**t, "layers.2.w": np.zeros((3, 3), np.float32)}, "layers.2.w"),
    ("a stray tensor", lambda t: {**t, "optimizer.m": np.zeros(3, np.float32)}, "optimizer.m"),
    ("float64 tensors, float32 config", lambda t: {k: v.astype(np.float64) for k, v in t.items()}, "dtype"),
    ("an int tensor", lambda t: {**t, "layers.0.b": t["layers.0.b"].astype(np.int32)}, "dtype"),
    ("w transposed", lambda t: {**t, "layers.0.w": np.ascontiguousarray(t["layers.0.w"].T)}, "shape"),
    ("b two-dimensional", lambda t: {**t, "layers.1.b": t["layers.1.b"].reshape(1, 3)}, "shape"),
    ("a NaN weight", _nan_w, "NaN"),
    ("an infinite bias", lambda t: {**t, "layers.1.b": np.full(3, np.inf, np.float32)}, "infinite"),
]


@pytest.mark.parametrize("label, change, fragment", TENSOR_DEFECTS, ids=[c[0] for c in TENSOR_DEFECTS])
def test_tensors_that_do_not_match_the_config_are_refused(tmp_path, label, change, fragment):
    net = small_net(seed=3)
    path = tmp_path / "model.dn"
    write_v1(path, net.config(), change(tensors_of(net)))
    assert_refused(path, fragment)


@pytest.mark.parametrize("label, metadata, fragment", [
    ("config not JSON", {"config": "{not json"}, "architecture"),
    ("config NaN", {"config": "NaN"}, "architecture"),
    ("config nested 100000 deep", {"config": "[" * 100000 + "]" * 100000}, "architecture"),
    ("config missing", {"config": None}, "config"),
    ("extra not JSON", {"extra": "{oops"}, "extra"),
    ("extra a list", {"extra": "[1, 2]"}, "extra"),
    ("checksum missing", {"sha256": None}, "checksum"),
    ("format missing", {"format": None}, "not written by densenn"),
    ("format version 3", {"format_version": "3"}, "format version"),
])
def test_broken_metadata_is_refused(tmp_path, label, metadata, fragment):
    net = small_net(seed=3)
    path = tmp_path / "model.dn"
    write_v1(path, net.config(), tensors_of(net), changes=metadata)
    assert_refused(path, fragment)


@pytest.mark.parametrize("units", [20000, 200000])
def test_a_config_declaring_huge_layers_fails_fast_allocating_little(tmp_path, units):
    net = small_net(seed=3)
    path = tmp_path / "model.dn"
    cfg = net.config()
    cfg["n_in"] = units
    cfg["layers"][0]["units"] = units       # layer 0 claims a units × units matrix
    write_v1(path, cfg, tensors_of(net))
    assert path.stat().st_size < 4096
    write_v1(tmp_path / "warm.dn", net.config(), tensors_of(net))
    dn.load(tmp_path / "warm.dn")       # imports and caches warmed, so only the refusal is measured
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(dn.DensennError, match="shape") as info:
            dn.load(path)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    assert elapsed < 1.0
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB allocated to refuse a {path.stat().st_size}-byte file"


def test_a_folder_is_reported_as_a_folder(tmp_path):
    folder = tmp_path / "model.dn"
    folder.mkdir()
    message = assert_refused(folder, "is a folder")
    assert "does not exist" not in message
    assert_refused(tmp_path / "nope.dn", "does not exist")


@pytest.mark.parametrize("bad", [None, 3, 2.5, ["model.dn"], b"model.dn", "", "mo\0del.dn"])
def test_a_path_that_is_not_a_path_is_refused_naming_it(tmp_path, bad):
    net = small_net()
    for call in (lambda: dn_io.read(bad), lambda: dn_io.load(bad), lambda: dn_io.load_extra(bad),
                 lambda: dn.load(bad), lambda: net.save(bad), lambda: dn_io.save(net, bad)):
        with pytest.raises(dn.DensennError, match="path"):
            call()
    assert os.listdir(tmp_path) == []


def test_save_refuses_extra_that_does_not_load_back(tmp_path):
    net = small_net()
    path = tmp_path / "model.dn"
    net.save(path, extra={"kept": 1})
    for extra in ([1, 2], "note", {"mean": float("nan")}, {"x": object()}):
        with pytest.raises(dn.DensennError, match="extra"):
            net.save(path, extra=extra)
    assert dn_io.load_extra(path) == {"kept": 1}
    assert os.listdir(tmp_path) == ["model.dn"]


# -- defect 3: the checksum covers the whole file ------------------------------------------------
def test_edits_of_a_version_2_file_fail_its_checksum(tmp_path):
    net = small_net(seed=5)
    path = tmp_path / "model.dn"
    net.save(path, extra={"mean": [0.5]})
    pristine = path.read_bytes()
    assert header_of(pristine)["__metadata__"]["format_version"] == "2"
    cfg = net.config()
    cfg["layers"][0]["activation"] = {"name": "tanh"}
    tensors = st_load(pristine)
    reshaped = {**tensors, "layers.0.w": tensors["layers.0.w"].reshape(8, 16)}
    edits = {"activation relu to tanh": {"config": json.dumps(cfg)},
             "config reformatted": {"config": json.dumps(net.config(), indent=1)},
             "extra": {"extra": json.dumps({"mean": [0.25]})},
             "format version 2 to 1": {"format_version": "1"}}
    for label, metadata in edits.items():
        path.write_bytes(pristine)
        rewrite(path, **metadata)
        assert path.read_bytes() != pristine, label
        message = assert_refused(path, "checksum")
        assert "corrupted" in message, label
    path.write_bytes(pristine)
    rewrite(path, tensors=reshaped)
    assert_refused(path, "checksum")
    path.write_bytes(pristine)                           # the control: the untouched file loads
    assert same_weights(dn.load(path).get_weights(), net.get_weights())


def test_version_1_files_still_load(tmp_path):
    net = small_net(seed=6, activation=dn.LeakyReLU(0.2), dtype="float64")
    path = tmp_path / "old.dn"
    write_v1(path, net.config(), tensors_of(net), extra=json.dumps({"mean": [1.5]}))
    assert header_of(path.read_bytes())["__metadata__"]["format_version"] == "1"
    loaded = dn.load(path)
    assert loaded.config() == net.config()
    assert same_weights(loaded.get_weights(), net.get_weights())
    x = np.random.default_rng(0).normal(size=(4, 8))
    np.testing.assert_array_equal(loaded.predict(x), net.predict(x))
    assert dn_io.load_extra(path) == {"mean": [1.5]}
    # a version-1 file's checksum still guards its tensors
    other = tensors_of(small_net(seed=7, dtype="float64"))
    write_v1(path, net.config(), tensors_of(net), changes={"sha256": v1_digest(other)})
    assert_refused(path, "checksum")


# -- defect 4: file hygiene -----------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_a_saved_model_gets_the_umask_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        small_net().save(tmp_path / "model.dn")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model.dn").stat().st_mode) == 0o666 & ~umask


def test_save_removes_stale_temporaries_of_dead_processes_only(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".model.dn.{dead.pid}.0.densenn-tmp"
    live = tmp_path / f".model.dn.{os.getppid()}.0.densenn-tmp"
    stale.write_bytes(b"half a model")
    live.write_bytes(b"a save in progress")
    small_net().save(tmp_path / "model.dn")
    assert sorted(os.listdir(tmp_path)) == sorted(["model.dn", live.name])


def test_save_into_a_missing_folder_or_onto_a_folder_is_refused(tmp_path):
    net = small_net()
    with pytest.raises(dn.DensennError, match="does not exist") as info:
        net.save(tmp_path / "missing" / "model.dn")
    assert "missing" in str(info.value)
    (tmp_path / "file").write_bytes(b"not a folder")
    with pytest.raises(dn.DensennError, match="path"):
        net.save(tmp_path / "file" / "model.dn")
    (tmp_path / "model.dn").mkdir()
    with pytest.raises(dn.DensennError, match="is a folder"):
        net.save(tmp_path / "model.dn")
    assert sorted(os.listdir(tmp_path)) == ["file", "model.dn"]
    assert os.listdir(tmp_path / "model.dn") == []


# -- defect 5: dn.load(path, engine, dtype) -------------------------------------------------------
def test_top_level_load_takes_a_dtype(tmp_path):
    net = small_net(seed=8)
    net.save(tmp_path / "model.dn")
    as64 = dn.load(tmp_path / "model.dn", dtype="float64")
    assert as64.dtype == np.float64
    assert dn.load(tmp_path / "model.dn", engine="cpu", dtype=None).dtype == np.float32
    x = np.random.default_rng(0).normal(size=(4, 8))
    np.testing.assert_allclose(as64.predict(x), net.predict(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(dn.DensennError, match="dtype"):
        dn.load(tmp_path / "model.dn", dtype="int8")


def test_save_refuses_weights_that_load_would_refuse(tmp_path):
    """A network whose weights went NaN was saved, and the file then refused by load."""
    net = dn.Network(3, [dn.Dense(2, "softmax")], seed=0)
    w, b = net.get_weights()[0]
    net.layers[0].w[0, 0] = np.nan          # as a diverged update leaves it (set_weights refuses NaN)
    path = tmp_path / "nan.dn"
    with pytest.raises(dn.DensennError, match=r"layers\.0\.w.*not saved to"):
        net.save(path)
    assert not path.exists() and os.listdir(tmp_path) == []
