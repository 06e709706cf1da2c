"""The torch.export archive reader (.pt2, npmobile/io/torch_export.py) on crafted archives: each
is refused at load with one WeightFileError naming the file and the tensor or member at fault,
and the ones that could allocate are loaded in a child process under a memory cap (worker)."""

import json
import zipfile

import numpy as np
import pytest

import npmobile
from npmobile import WeightFileError
from npmobile.io.torchvision import from_state_dict
from crafted import pt2_bytes, tiny_torchvision_state_dict, zip_bytes

MiB = 1 << 20
KEY = "features.0.0.weight"


@pytest.fixture(scope="module")
def sd():
    return tiny_torchvision_state_dict()


def _pt2(tmp_path, sd, edit=None, **kwargs):
    path = tmp_path / "m.pt2"
    path.write_bytes(pt2_bytes(sd, edit, **kwargs))
    return path


def _meta(key, field, value):
    def edit(doc, members):
        doc["config"][key]["tensor_meta"][field] = value
    return edit


def refused(path, *fragments):
    with pytest.raises(WeightFileError) as info:
        npmobile.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for f in fragments:
        assert f in message, f"{f!r} not in: {message}"


def test_the_tiny_archive_loads_as_its_state_dict(tmp_path, sd):
    model = npmobile.load(_pt2(tmp_path, sd))
    twin = from_state_dict(sd)
    assert model.config.classes == 10 and model.config.alpha == 0.35
    x = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x), npmobile.Model(*twin)(x))


@pytest.mark.parametrize("field, value, fragment", [
    ("sizes", [{"as_int": 1 << 40}], "sizes [1099511627776], strides [0]"),  # with strides [0] below
    ("sizes", [{"as_int": float("inf")}] * 4, "sizes: expected {\"as_int\": an integer"),
    ("sizes", [{"as_int": -1}] * 4, "sizes: expected {\"as_int\": an integer"),
    ("sizes", [{"as_int": True}] * 4, "sizes: expected {\"as_int\": an integer"),
    ("sizes", [{"as_int": 1}] * 9, "9 sizes and 4 strides"),
    ("sizes", "16", "sizes: expected list"),
    ("storage_offset", {"as_int": 1 << 47}, "do not fit its 432 stored values"),
    ("strides", [{"as_int": 1 << 40}] * 4, "do not fit its 432 stored values"),
    ("dtype", 99, "unsupported dtype code 99"),
    ("dtype", [7], "unsupported dtype code [7]"),
])
def test_tensor_meta_out_of_range(tmp_path, sd, field, value, fragment):
    def edit(doc, members):
        meta = doc["config"][KEY]["tensor_meta"]
        meta[field] = value
        if value == [{"as_int": 1 << 40}]:
            meta["strides"] = [{"as_int": 0}]
    refused(_pt2(tmp_path, sd, edit), f"tensor '{KEY}'", fragment)


@pytest.mark.parametrize("edit, fragment", [
    (lambda doc, members: doc["config"][KEY].update(use_pickle=True), "stored as a pickle"),
    (lambda doc, members: doc["config"][KEY].update(path_name="nope"), "There is no item named"),
    (lambda doc, members: doc["config"][KEY].update(path_name=None), "path_name: expected str"),
    (lambda doc, members: doc["config"][KEY].pop("tensor_meta"), "tensor_meta: expected dict"),
    (lambda doc, members: doc["config"].update({KEY: []}), f"tensor '{KEY}': expected dict"),
    (lambda doc, members: doc.update(config=[1]), "its 'config': expected dict"),
    (lambda doc, members: members.update({"tiny/data/weights/model_weights_config.json": b"[" * 100_000}), "nested"),
    (lambda doc, members: members.update({"tiny/byteorder": b"middle"}), "byteorder: expected 'little' or 'big'"),
    (lambda doc, members: members.update({"tiny/byteorder": b"l" * 100}), "declares 100 bytes, expected at most 16"),
])
def test_archive_structure(tmp_path, sd, edit, fragment):
    refused(_pt2(tmp_path, sd, edit), fragment)


def test_no_weights_config_and_a_corrupted_member(tmp_path, sd):
    path = tmp_path / "m.pt2"
    path.write_bytes(zip_bytes({"tiny/data/model.json": b"{}"}))
    refused(path, "not a torch.export archive with raw weights")
    data = bytearray(pt2_bytes(sd))
    at = data.find(b"PK\x03\x04")  # the first member's data: one flipped byte fails its CRC-32
    data[at + 30 + len("tiny/byteorder") + 1] ^= 1
    path.write_bytes(bytes(data))
    refused(path, "fails its CRC-32 check")


def test_a_member_that_inflates_to_gigabytes_is_refused_from_its_header(tmp_path, sd, worker):
    """A deflated zero member of 2 GiB (2 MB in the file): refused from the zip headers before
    the CRC pass or any read, in a child capped at 3 GiB."""
    src = zipfile.ZipFile(_pt2(tmp_path, sd))
    path = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info))
        with z.open("tiny/data/weights/junk", "w", force_zip64=True) as f:
            for _ in range(2048):
                f.write(bytes(MiB))
    outcome = worker.load(path)
    assert outcome.kind == "refused" and "declare 2,149," in outcome.detail, outcome
    assert outcome.peak_rss < 512 * MiB, outcome


def test_a_config_member_that_inflates_beyond_its_cap(tmp_path, sd, worker):
    """model_weights_config.json of 64 MiB of spaces (deflated to 64 KB): refused from its header."""
    def edit(doc, members):
        members["tiny/data/weights/model_weights_config.json"] = json.dumps(doc).encode() + b" " * (64 * MiB)
    outcome = worker.load(_pt2(tmp_path, sd, edit, method=zipfile.ZIP_DEFLATED))
    assert outcome.kind == "refused" and "model_weights_config.json' declares" in outcome.detail, outcome
    assert outcome.peak_rss < 512 * MiB, outcome
