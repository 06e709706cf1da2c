"""Whole networks vs torchvision: mobilenet_v2(width_mult=alpha) with random weights and randomised
BN statistics, imported from its state_dict (in memory, and through a .pth saved by torch.save).

Bound: max |npmobile - torch| <= 1e-4 * max(1, max |torch|) on the logits (torchvision returns
logits), for the fast engine (fused graph), the oracle engine (the graph as built), and the
unfused graph on the fast kernels.
Why 1e-4: both sides compute in float32 but in different orders (sgemm blocks, im2col, BN folded
into the weights on the fast engine), so they differ by rounding only; measured on random V2 nets
that is about 1e-7 of the largest output, so 1e-4 leaves a wide margin for deeper or wider nets,
while a real bug (a wrong tap, pad, epsilon or clamp: scripts/mutations.py plants them) moves the
outputs by far more. torch's module is resolution-agnostic, so one net per alpha
serves every resolution.
"""

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import npmobile  # noqa: E402
from npmobile import engine  # noqa: E402
from npmobile.io.torchvision import from_state_dict  # noqa: E402

ALPHAS = [0.35, 0.5, 0.75, 1.0, 1.3, 1.4, 0.6]
RESOLUTIONS = [96, 128, 160, 192, 224]
FAST = [(0.35, 96), (0.6, 160), (1.4, 128)]


def assert_close(ours, ref, what):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != torch's {ref.shape}"
    err, bound = np.abs(ours - ref).max(), 1e-4 * max(1.0, np.abs(ref).max())
    assert err <= bound, f"{what}: max |npmobile - torch| = {err:.3g} > bound {bound:.3g}"


_NETS = {}


def random_net(alpha):
    """mobilenet_v2 in eval mode with conv/linear weights of variance 1/fan_in (the classifier's
    16/fan_in, so logits are not tiny) and BN weight/bias/running stats drawn away from the identity."""
    if alpha not in _NETS:
        gen = torch.Generator().manual_seed(int(alpha * 100))
        net = torchvision.models.mobilenet_v2(width_mult=alpha).eval()
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    c = m.num_features
                    m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                    m.bias.copy_(0.2 * torch.randn(c, generator=gen))
                    m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                    m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                    fan_in = m.weight[0].numel()
                    gain = 16.0 if isinstance(m, torch.nn.Linear) else 1.0
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (gain / fan_in) ** 0.5)
                    if m.bias is not None:
                        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
        _NETS[alpha] = net
    return _NETS[alpha]


def torch_run(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()  # NHWC -> NCHW at the boundary


def check_parity(ours, net, x):
    ref = torch_run(net, x)
    assert np.abs(ref).max() > 1.0, "random logits too small to test anything"
    assert_close(ours(x), ref, "fast engine")
    assert_close(ours.run(x, oracle=True), ref, "oracle engine")
    assert_close(engine.Plan(ours.graph, ours.params, len(x)).run(x), ours(x), "fused vs unfused graph")


def run_case(alpha, resolution):
    net = random_net(alpha)
    ours = npmobile.Model(*from_state_dict(net.state_dict(), resolution=resolution))
    assert (ours.config.alpha, ours.config.resolution, ours.config.convention) == (alpha, resolution, "torch")
    n = 2 if resolution <= 128 else 1
    check_parity(ours, net, np.random.default_rng(resolution).standard_normal((n, resolution, resolution, 3)).astype(np.float32))


@pytest.mark.parametrize("alpha,resolution", FAST)
def test_parity_fast_subset(alpha, resolution):
    run_case(alpha, resolution)


@pytest.mark.slow
def test_parity_full_grid():
    """Every alpha x every resolution (the grid's time is printed: pytest -s)."""
    start = time.perf_counter()
    for alpha in ALPHAS:
        for resolution in RESOLUTIONS:
            run_case(alpha, resolution)
    print(f"\ntorchvision grid: {len(ALPHAS) * len(RESOLUTIONS)} configurations in {time.perf_counter() - start:.1f} s")


def test_parity_through_pth_file(tmp_path):
    """torch.save(state_dict) read back with weights_only=True: the same numbers as torch."""
    net = random_net(0.75)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(net.state_dict(), path)
    ours = npmobile.load(path, resolution=128)
    assert ours.source == str(path) and ours.config.alpha == 0.75
    check_parity(ours, net, np.random.default_rng(1).standard_normal((2, 128, 128, 3)).astype(np.float32))


def test_numpy_state_dict_and_other_classes():
    """A state_dict of numpy arrays works too; the classes come from classifier.1."""
    net = torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10).eval()
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    ours = npmobile.Model(*from_state_dict(sd, resolution=96))
    assert ours.config.classes == 10
    x = np.random.default_rng(2).standard_normal((1, 96, 96, 3)).astype(np.float32)
    assert_close(ours(x), torch_run(net, x), "10 classes")
