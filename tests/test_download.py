"""Downloading the Keras ImageNet weights, against an HTTP server on 127.0.0.1 started here.

The "good file" is a real Keras weights file: keras.applications.MobileNetV2 with random weights
(and randomised BN statistics), written in the layout of the files Keras publishes (Keras 2
save_weights: one group per layer, no model config)."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")

from npmobile import download  # noqa: E402
from npmobile.data import imagenet_classes  # noqa: E402
from npmobile.download import DownloadError, fetch, imagenet_model, keras_file  # noqa: E402
from npmobile.weights import WeightFileError  # noqa: E402

ALPHA, RESOLUTION = 0.35, 96
V2_PATH = "/mobilenet_v2/" + keras_file("mobilenet_v2", ALPHA, RESOLUTION)[0]


class _Handler(BaseHTTPRequestHandler):
    timeout = 10  # a stuck client cannot hold a server thread for long

    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path.removeprefix("/short"))
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # /short/...: announce the whole file, send half of it, close the connection.
        self.wfile.write(body[: len(body) // 2] if self.path.startswith("/short/") else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A loopback HTTP server in a thread: server.files maps URL paths to bytes."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests = {}, []
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def keras_v2():
    """(keras model, bytes of its weights in the layout of Keras' published .h5 files)."""
    import h5py
    import keras
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    model = keras.applications.MobileNetV2(alpha=ALPHA, input_shape=(RESOLUTION, RESOLUTION, 3), weights=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), 0.1 * rng.standard_normal(beta.shape),
                               0.1 * rng.standard_normal(mean.shape), rng.uniform(0.5, 1.5, var.shape)])
    import io
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        save_weights_to_hdf5_group(f, model)
    return model, buf.getvalue()


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NPMOBILE_CACHE", str(cache))
    monkeypatch.setenv("NPMOBILE_WEIGHTS_URL", server.url + "/")
    return cache


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*")) if Path(folder).exists() else []


# --- fetch ------------------------------------------------------------------------------------

def test_fetch_good_file(server, tmp_path):
    body = os.urandom(3 * download.CHUNK + 17)
    server.files["/w.bin"] = body
    dest = fetch(server.url + "/w.bin", tmp_path / "sub" / "w.bin", sha256=hashlib.sha256(body).hexdigest())
    assert dest.read_bytes() == body
    assert _files(tmp_path / "sub") == ["w.bin"]


def test_fetch_interrupted_transfer_never_lands(server, tmp_path):
    server.files["/w.bin"] = os.urandom(100_000)
    with pytest.raises(DownloadError, match=r"cut short: received 50000 of 100000 bytes"):
        fetch(server.url + "/short/w.bin", tmp_path / "w.bin")
    assert _files(tmp_path) == []


def test_fetch_wrong_hash_never_lands(server, tmp_path):
    server.files["/w.bin"] = b"substituted content"
    with pytest.raises(DownloadError, match="wrong sha256: expected 0{64}, found"):
        fetch(server.url + "/w.bin", tmp_path / "w.bin", sha256="0" * 64)
    assert _files(tmp_path) == []


def test_fetch_404(server, tmp_path):
    with pytest.raises(DownloadError, match=r"/missing.h5: HTTP 404 Not Found"):
        fetch(server.url + "/missing.h5", tmp_path / "w.h5")
    assert _files(tmp_path) == []


def test_offline_error_says_how_to_pass_a_local_file(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("NPMOBILE_CACHE", str(tmp_path))
    monkeypatch.setenv("NPMOBILE_WEIGHTS_URL", f"http://127.0.0.1:{port}/")
    with pytest.raises(DownloadError) as e:
        imagenet_model("mobilenet_v1", 0.25, 128)
    message = str(e.value)
    assert "could not connect" in message and "mobilenet_2_5_128_tf.h5" in message
    assert "--weights FILE" in message and "npmobile demo" in message
    assert [p for p in _files(tmp_path) if not p.startswith(".")] == []


# --- the Keras file names -----------------------------------------------------------------------

def test_keras_file_names_match_keras_applications(monkeypatch):
    monkeypatch.delenv("NPMOBILE_WEIGHTS_URL", raising=False)
    base = "https://storage.googleapis.com/tensorflow/keras-applications/"
    assert keras_file("mobilenet_v1", 0.25, 128) == ("mobilenet_2_5_128_tf.h5", base + "mobilenet/mobilenet_2_5_128_tf.h5")
    assert keras_file("mobilenet_v1", 1, 224)[0] == "mobilenet_1_0_224_tf.h5"
    assert keras_file("mobilenet_v2", 0.5, 160)[1] == (
        base + "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_160.h5")
    assert keras_file("mobilenet_v2", 1.4, 224)[0] == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.4_224.h5"
    with pytest.raises(ValueError, match="alpha in"):
        keras_file("mobilenet_v1", 0.35, 224)
    with pytest.raises(ValueError, match="resolution in"):
        keras_file("mobilenet_v2", 1.0, 200)


# --- imagenet_model: download, check by import, convert, cache --------------------------------

def test_imagenet_model_downloads_checks_converts_and_caches(server, env, keras_v2):
    keras_model, body = keras_v2
    server.files[V2_PATH] = body
    model = imagenet_model("mobilenet_v2", ALPHA, RESOLUTION)
    assert model.labels == [name for _, name in imagenet_classes()]
    x = np.random.default_rng(1).uniform(-1, 1, (2, RESOLUTION, RESOLUTION, 3)).astype(np.float32)
    expected = np.asarray(keras_model.predict(x, verbose=0))
    assert np.abs(model(x) - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    assert _files(env) == ["mobilenet_v2_0.35_96_imagenet.npz"]  # the .h5 and the .part are gone

    again = imagenet_model("mobilenet_v2", ALPHA, RESOLUTION)  # from the cache: no second request
    assert server.requests == [V2_PATH]
    np.testing.assert_array_equal(again(x), model(x))


def test_pinned_hash_is_checked(server, env, keras_v2, monkeypatch):
    server.files[V2_PATH] = keras_v2[1]
    name = V2_PATH.rsplit("/", 1)[1]
    monkeypatch.setitem(download.SHA256, name, "f" * 64)
    with pytest.raises(DownloadError, match="wrong sha256"):
        imagenet_model("mobilenet_v2", ALPHA, RESOLUTION)
    assert [p for p in _files(env) if p.endswith((".npz", ".h5", ".part"))] == []
    monkeypatch.setitem(download.SHA256, name, hashlib.sha256(keras_v2[1]).hexdigest())
    assert imagenet_model("mobilenet_v2", ALPHA, RESOLUTION).config.alpha == ALPHA


def test_a_download_for_another_architecture_is_refused(server, env, keras_v2):
    server.files[V2_PATH.replace(f"_{ALPHA}_", "_0.5_")] = keras_v2[1]  # alpha 0.35 served as 0.5
    with pytest.raises(WeightFileError, match="not the expected weights"):
        imagenet_model("mobilenet_v2", 0.5, RESOLUTION)
    assert [p for p in _files(env) if p.endswith((".npz", ".h5", ".part"))] == []


def test_cli_downloads_once_then_uses_the_cache(server, env, keras_v2, sample_pngs):
    server.files[V2_PATH] = keras_v2[1]
    cmd = [sys.executable, "-m", "npmobile", "classify", str(sample_pngs), "--arch", "mobilenet_v2",
           "--alpha", str(ALPHA), "--resolution", str(RESOLUTION), "--top", "2"]
    environ = {**os.environ, "NPMOBILE_CACHE": str(env), "NPMOBILE_WEIGHTS_URL": server.url + "/"}
    names = {name for _, name in imagenet_classes()}
    for attempt in range(2):
        run = subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=600)
        assert run.returncode == 0, run.stderr
        assert ("downloading" in run.stderr) == (attempt == 0)
        lines = run.stdout.strip().splitlines()
        assert len(lines) == 10
        assert all(json.JSONDecoder().raw_decode(line.split(": ", 1)[1])[0] in names for line in lines)
    assert server.requests == [V2_PATH]


def test_cli_offline_exits_1_with_the_hint(tmp_path, sample_pngs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environ = {**os.environ, "NPMOBILE_CACHE": str(tmp_path), "NPMOBILE_WEIGHTS_URL": f"http://127.0.0.1:{port}/"}
    run = subprocess.run([sys.executable, "-m", "npmobile", "classify", str(sample_pngs)], capture_output=True,
                         text=True, env=environ, timeout=300)
    assert run.returncode == 1
    assert "could not download the ImageNet weights for mobilenet_v2" in run.stderr
    assert "--weights FILE" in run.stderr and "Traceback" not in run.stderr
