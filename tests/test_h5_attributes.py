"""Variable-length HDF5 attributes (Keras' model_config, layer_names, weight_names): their stored
lengths are read from the file's bytes (npmobile/io/_hdf5.py) and refused above 16 MiB before
libhdf5 allocates them. The campaign's mutants that reached 1.9 and 3.0 GB RSS are regression
tests here, loaded in a child process under a memory cap."""

import re
import struct

import numpy as np
import pytest

from npmobile.io import _hdf5

h5py = pytest.importorskip("h5py")
MiB = 1 << 20


def _write(path, libver, attrs):
    with h5py.File(path, "w", libver=libver) as f:
        g = f.create_group("model_weights")
        for name, value in attrs.items():
            g.attrs[name] = value
        return g.name


def _measure(path, group, name):
    with h5py.File(path, "r") as f, _hdf5.RawFile(path) as raw:
        return _hdf5.vlen_bytes(raw, h5py.h5o.get_info(f[group].id).addr, name)


@pytest.mark.parametrize("libver", ["earliest", "latest"])  # object header version 1 / version 2
def test_the_stored_lengths_are_what_h5py_wrote(tmp_path, libver):
    names = [f"layer_{i}" * (i % 4 + 1) for i in range(91)]
    attrs = {"model_config": '{"class_name": "Functional"}' * 300, "layer_names": np.array(names, dtype=object),
             "fixed": np.array([b"abc", b"de"]), "numbers": np.arange(5)}
    path = tmp_path / "a.h5"
    group = _write(path, libver, attrs)
    assert _measure(path, group, "model_config") == [len(attrs["model_config"])]
    assert _measure(path, group, "layer_names") == [sum(len(n) for n in names)]
    with pytest.raises(_hdf5.Unmeasurable, match="not a variable-length"):
        _measure(path, group, "fixed")


def test_attributes_behind_a_continuation_chunk(tmp_path):
    """Attributes added after the first chunk is full go to a continuation chunk (version 1)."""
    path = tmp_path / "c.h5"
    group = _write(path, "earliest", {f"a{i}": "x" * i for i in range(1, 40)})
    assert _measure(path, group, "a39") == [39]


def test_dense_attribute_storage_is_unmeasurable(tmp_path):
    """Past 8 attributes a version 2 header keeps them in a fractal heap, which is not read here:
    refused (Keras writes version 1 headers, which have no dense storage)."""
    path = tmp_path / "d.h5"
    group = _write(path, "latest", {f"a{i}": "x" * i for i in range(1, 20)})
    with pytest.raises(_hdf5.Unmeasurable, match="not stored in its object's header"):
        _measure(path, group, "a5")


def _heap_object(data, text):
    """Offset in `data` of the header (index, references, reserved, size) of the global heap
    object that holds the string `text`."""
    at = data.find(text)
    while struct.unpack("<HHIQ", data[at - 16:at])[3] != len(text):
        at = data.find(text, at + 1)
    return at - 16


def _descriptor(data, text):
    """Offset in `data` of the stored descriptor (length, heap collection address, object index)
    of the variable-length string `text`."""
    at = _heap_object(data, text)
    index, collection = struct.unpack("<H", data[at:at + 2])[0], data.rfind(b"GCOL", 0, at)
    return data.index(struct.pack("<IQI", len(text), collection, index))


@pytest.fixture(scope="module")
def keras_h5(tmp_path_factory):
    """The campaign's seed: MobileNet(alpha=0.25, 32x32, 10 classes) written by Keras."""
    keras = pytest.importorskip("keras")
    path = tmp_path_factory.mktemp("h5") / "keras_v1_0.25_32.h5"
    keras.applications.MobileNet(alpha=0.25, input_shape=(32, 32, 3), weights=None, classes=10).save(path)
    return path


@pytest.mark.parametrize("text, xor, attribute, declared", [
    # scripts/fuzz.py --seed 0, .h5 mutant 350: byte 3 of a layer name's length, 3.0 GB RSS before
    (b"conv_dw_1", 0xB3, "'layer_names' of /model_weights", 0xB3000009),
    # .h5 mutant 752: byte 3 of the length of conv_dw_9's weight name, 1.9 GB RSS before
    (b"conv_dw_9/kernel", 0x6F, "'weight_names' of /model_weights/conv_dw_9", 0x6F000010),
])
def test_a_flipped_string_length_is_refused_before_libhdf5_allocates_it(keras_h5, worker, tmp_path, text, xor,
                                                                       attribute, declared):
    data = bytearray(keras_h5.read_bytes())
    assert worker.load(keras_h5).kind == "ok"
    data[_descriptor(data, text) + 3] ^= xor
    path = tmp_path / "m.h5"
    path.write_bytes(bytes(data))
    outcome = worker.load(path)
    assert outcome.kind == "refused", outcome
    found = re.search(f"attribute {attribute}: its variable-length values declare ([0-9,]+) bytes", outcome.detail)
    assert found and declared <= int(found[1].replace(",", "")) < declared + 4096, outcome.detail  # + the other names
    assert outcome.peak_rss < 512 * MiB, outcome


def test_a_flipped_heap_object_size_stays_small(keras_h5, worker, tmp_path):
    """The other length of a stored string, in the global heap: libhdf5 checks it against its
    collection before allocating (ran off the end of the input buffer)."""
    data = bytearray(keras_h5.read_bytes())
    data[_heap_object(data, b"conv_dw_9/kernel") + 11] ^= 0xB3  # byte 3 of the object's size
    path = tmp_path / "m.h5"
    path.write_bytes(bytes(data))
    outcome = worker.load(path)
    assert outcome.kind == "refused" and outcome.peak_rss < 512 * MiB, outcome


def test_any_header_bytes_give_a_size_or_unmeasurable(tmp_path):
    """The parser reads untrusted bytes too: flipped bytes anywhere in a small file's headers
    give a list of sizes or Unmeasurable, never another exception."""
    path = tmp_path / "a.h5"
    group = _write(path, "earliest", {"model_config": "x" * 1000, "layer_names": np.array(["ab", "cde"], dtype=object)})
    with h5py.File(path, "r") as f:
        addr = h5py.h5o.get_info(f[group].id).addr
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    for _ in range(3000):
        mutant = bytearray(data)
        for i in rng.integers(0, min(len(data), 4096), int(rng.integers(1, 6))):
            mutant[i] ^= int(rng.integers(1, 256))
        try:
            _hdf5.vlen_bytes(_hdf5.RawFile(bytes(mutant)), addr, "layer_names")
        except _hdf5.Unmeasurable:
            pass
