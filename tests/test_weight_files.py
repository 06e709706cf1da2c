"""Weight files that are wrong: each gives one WeightFileError naming the file and the tensors at
fault, none runs code from the file, none crashes. And the native .npz round trip and
`npmobile convert` for .h5 / .keras / .pth.

The files are written by the frameworks themselves (Keras, torch.save), then damaged.
"""

import os
import zipfile

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
h5py = pytest.importorskip("h5py")

import npmobile  # noqa: E402
from npmobile import WeightFileError, cli  # noqa: E402
from npmobile.weights import META_KEY  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small real files: Keras V1 0.25 and 0.5 (.h5, .keras), torchvision V2 0.35 and 0.5 (.pth), and
    the native .npz of each alpha of V1."""
    d = tmp_path_factory.mktemp("weights")
    out = {}
    for alpha in (0.25, 0.5):
        m = keras.applications.MobileNet(alpha=alpha, input_shape=(128, 128, 3), weights=None)
        m.save(d / f"v1_{alpha}.h5")
        m.save(d / f"v1_{alpha}.keras")
        out[f"v1_{alpha}.h5"], out[f"v1_{alpha}.keras"] = d / f"v1_{alpha}.h5", d / f"v1_{alpha}.keras"
        npmobile.save(d / f"v1_{alpha}.npz", npmobile.load(d / f"v1_{alpha}.h5"))
        out[f"v1_{alpha}.npz"] = d / f"v1_{alpha}.npz"
    for alpha in (0.35, 0.5):
        torch.save(torchvision.models.mobilenet_v2(width_mult=alpha).state_dict(), d / f"v2_{alpha}.pth")
        out[f"v2_{alpha}.pth"] = d / f"v2_{alpha}.pth"
    return out


def error_of(path, **options):
    """The WeightFileError that loading `path` raises; it must name the file."""
    with pytest.raises(WeightFileError) as info:
        npmobile.load(path, **options)
    message = str(info.value)
    assert str(path) in message, f"the error does not name the file: {message}"
    return message


def npz_arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write_npz(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def pth_state(path):
    return torch.load(path, weights_only=True)


def copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


# --- tensors that do not fit --------------------------------------------------------------------

def test_other_alpha_h5(files):
    message = error_of(files["v1_0.5.h5"], alpha=0.25)  # V1 0.5 weights forced into the 0.25 graph
    assert "conv1.w: expected shape (3, 3, 3, 8), found (3, 3, 3, 16)" in message
    assert "conv_dw_1.w: expected shape (3, 3, 8), found (3, 3, 16)" in message


def test_other_alpha_pth(files):
    message = error_of(files["v2_0.5.pth"], alpha=0.35)
    assert "block_1_expand" not in message  # the same at both alphas
    assert "block_1_project.w: expected shape (48, 8), found (48, 16)" in message  # the first at fault
    assert "block_1_project.w = features.2.conv.2.weight" in message  # and torch's own name for it
    assert "... and " in message and " more" in message


def test_other_alpha_npz(tmp_path, files):
    """A native file whose metadata describes the 0.25 graph but holds the 0.5 tensors."""
    arrays = npz_arrays(files["v1_0.5.npz"])
    arrays[META_KEY] = npz_arrays(files["v1_0.25.npz"])[META_KEY]
    message = error_of(write_npz(tmp_path / "mixed.npz", arrays))
    assert "conv1.w: expected shape (3, 3, 3, 8), found (3, 3, 3, 16)" in message
    assert "conv_pw_1.w: expected shape (8, 16), found (16, 32)" in message


def test_other_resolution_is_an_input_error(files):
    """No tensor depends on the input size, so a 128 file fits any resolution (Keras itself loads it
    at any size); feeding the 128 model another size is refused with the sizes named."""
    model = npmobile.load(files["v1_0.25.h5"])
    with pytest.raises(ValueError, match=r"expected shape \(n, 128, 128, 3\), found \(1, 96, 96, 3\)"):
        model(np.zeros((1, 96, 96, 3), np.float32))
    assert npmobile.load(files["v1_0.25.h5"], resolution=96).config.resolution == 96


def test_missing_tensor(tmp_path, files):
    arrays = npz_arrays(files["v1_0.25.npz"])
    del arrays["conv_dw_3_bn.var"]
    assert "missing (1): conv_dw_3_bn.var" in error_of(write_npz(tmp_path / "m.npz", arrays))

    h5 = copy(files["v1_0.25.h5"], tmp_path / "m.h5")
    with h5py.File(h5, "r+") as f:
        group = f["model_weights/conv_dw_3_bn"]
        del group["conv_dw_3_bn/moving_variance"]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        group.attrs["weight_names"] = np.array([n for n in names if "moving_variance" not in n], dtype="S")
    assert "missing (1): conv_dw_3_bn.var" in error_of(h5)

    sd = pth_state(files["v2_0.35.pth"])
    del sd["features.3.conv.1.1.running_var"]
    torch.save(sd, tmp_path / "m.pth")
    assert "missing (1): block_2_depthwise_BN.var" in error_of(tmp_path / "m.pth", alpha=0.35)


def test_extra_tensor(tmp_path, files):
    arrays = npz_arrays(files["v1_0.25.npz"])
    arrays["conv_dw_3.b"] = np.zeros(16, np.float32)
    assert "unexpected (1): conv_dw_3.b" in error_of(write_npz(tmp_path / "x.npz", arrays))

    h5 = copy(files["v1_0.25.h5"], tmp_path / "x.h5")
    with h5py.File(h5, "r+") as f:  # conv1 gains a bias the graph has no place for
        group = f["model_weights/conv1"]
        group.create_dataset("conv1/bias", data=np.zeros(8, np.float32))
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        group.attrs["weight_names"] = np.array(names + ["conv1/bias"], dtype="S")
    assert "unexpected (1): conv1.b" in error_of(h5)

    sd = pth_state(files["v2_0.35.pth"])
    sd["features.19.0.weight"] = torch.zeros(8, 8, 1, 1)
    torch.save(sd, tmp_path / "x.pth")
    assert "unexpected (1): features.19.0.weight" in error_of(tmp_path / "x.pth")


def test_wrong_shape(tmp_path, files):
    arrays = npz_arrays(files["v1_0.25.npz"])
    arrays["conv_pw_2.w"] = arrays["conv_pw_2.w"].T.copy()
    assert "conv_pw_2.w: expected shape (16, 32), found (32, 16)" in error_of(write_npz(tmp_path / "s.npz", arrays))

    sd = pth_state(files["v2_0.35.pth"])
    sd["classifier.1.weight"] = sd["classifier.1.weight"][:, :640]
    torch.save(sd, tmp_path / "s.pth")
    message = error_of(tmp_path / "s.pth")
    assert "predictions.w: expected shape (1280, 1000), found (640, 1000)" in message
    assert "predictions.w = classifier.1.weight" in message


def test_nan_tensor(tmp_path, files):
    arrays = npz_arrays(files["v1_0.25.npz"])
    arrays["conv1_bn.gamma"][3] = np.nan
    assert "conv1_bn.gamma: expected finite values" in error_of(write_npz(tmp_path / "n.npz", arrays))


# --- files that are not what they should be -----------------------------------------------------

SOURCES = ["v1_0.25.h5", "v1_0.25.keras", "v2_0.35.pth", "v1_0.25.npz"]


@pytest.mark.parametrize("name", SOURCES)
def test_truncated(tmp_path, files, name):
    data = files[name].read_bytes()
    for keep in (len(data) // 2, len(data) - 100):
        path = tmp_path / f"t{keep}{files[name].suffix}"
        path.write_bytes(data[:keep])
        error_of(path)


@pytest.mark.parametrize("name", SOURCES)
def test_corrupted(tmp_path, files, name):
    """Bytes flipped. Zip members (.keras, .pth, .npz) carry a CRC-32; HDF5 data does not, so for
    .h5 the flips go into its metadata (an HDF5 file with flipped *weights* reads as other weights:
    no format can tell, short of a checksum the file lacks)."""
    data = bytearray(files[name].read_bytes())
    where = [600, 2000, 5000] if name.endswith(".h5") else [len(data) // 3, len(data) // 2]
    for at in where:
        data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    path = tmp_path / f"c{files[name].suffix}"
    path.write_bytes(bytes(data))
    error_of(path)


@pytest.mark.parametrize("suffix", [".h5", ".keras", ".pth", ".npz"])
def test_not_what_the_extension_says(tmp_path, suffix):
    path = tmp_path / f"photo{suffix}"
    path.write_bytes(PNG)
    assert "not what its extension says" in error_of(path)


def test_hdf5_that_is_not_keras(tmp_path):
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["x"] = np.zeros(3)
    assert "not a Keras weights file" in error_of(tmp_path / "data.h5")


def test_zip_that_is_not_keras_or_npmobile(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.keras", "w") as z:
        z.writestr("readme.txt", "hello")
    assert "expected config.json and model.weights.h5" in error_of(tmp_path / "a.keras")
    write_npz(tmp_path / "a.npz", {"x": np.zeros(3)})
    assert "not an npmobile weight file" in error_of(tmp_path / "a.npz")


def test_keras_file_of_another_model(tmp_path):
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="dense")])
    m.save(tmp_path / "other.h5")
    assert "not a Keras MobileNet" in error_of(tmp_path / "other.h5")


# --- pickles: refused, never run ---------------------------------------------------------------

class Payload:
    """Unpickling this creates the marker file: the proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pth_with_pickle_payload(tmp_path, files):
    marker = tmp_path / "PWNED"
    sd = pth_state(files["v2_0.35.pth"])
    sd["features.0.0.weight"] = Payload(marker)
    torch.save(sd, tmp_path / "evil.pth")
    assert "weights_only" in error_of(tmp_path / "evil.pth")
    assert not marker.exists()
    # the old (pre-zip) torch format is a bare pickle: refused before anything reads it
    torch.save({"w": Payload(marker)}, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    assert "not what its extension says" in error_of(tmp_path / "old.pth")
    assert not marker.exists()


def test_npz_with_pickle_payload(tmp_path, files):
    marker = tmp_path / "PWNED"
    arrays = npz_arrays(files["v1_0.25.npz"])
    arrays["conv1.w"] = np.array([Payload(marker)], dtype=object)
    with open(tmp_path / "evil.npz", "wb") as f:
        np.savez(f, **arrays)  # np.savez pickles object arrays
    assert "refused" in error_of(tmp_path / "evil.npz")
    with open(tmp_path / "evil2.npz", "wb") as f:
        np.savez(f, **{META_KEY: np.array([Payload(marker)], dtype=object)})
    error_of(tmp_path / "evil2.npz")
    assert not marker.exists()


# --- round trips ------------------------------------------------------------------------------

def test_native_round_trip(tmp_path, files):
    x = np.random.default_rng(0).uniform(-1, 1, (2, 128, 128, 3)).astype(np.float32)
    model = npmobile.load(files["v1_0.25.keras"])
    npmobile.save(tmp_path / "m.npz", model)
    again = npmobile.load(tmp_path / "m.npz")
    assert again.config == model.config
    assert np.array_equal(again(x), model(x))
    assert np.array_equal(again.run(x, oracle=True), model.run(x, oracle=True))


@pytest.mark.parametrize("name", ["v1_0.25.h5", "v1_0.25.keras", "v2_0.35.pth"])
def test_convert_cli(tmp_path, files, name, capsys):
    out = tmp_path / "out.npz"
    assert cli.main(["convert", str(files[name]), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    src, native = npmobile.load(files[name]), npmobile.load(out)
    r = src.config.resolution
    x = np.random.default_rng(1).uniform(-1, 1, (1, r, r, 3)).astype(np.float32)
    assert np.array_equal(native(x), src(x))


def test_convert_cli_reports_a_bad_file(tmp_path, capsys):
    (tmp_path / "bad.h5").write_bytes(PNG)
    assert cli.main(["convert", str(tmp_path / "bad.h5"), "-o", str(tmp_path / "o.npz")]) == 1
    assert "bad.h5" in capsys.readouterr().err and not (tmp_path / "o.npz").exists()
