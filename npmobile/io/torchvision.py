"""A torchvision `mobilenet_v2` state_dict -> Model (convention="torch": symmetric padding, BN eps
1e-5, logits out).

torchvision's module tree, and the graph node (Keras' layer name) each of its layers becomes:

    features.0.0 / .0.1                 Conv1 / bn_Conv1                     3x3 conv, stride 2
    features.1.conv.0.0 / .0.1          expanded_conv_depthwise / _BN        block 0 (t = 1)
    features.1.conv.1 / .2              expanded_conv_project / _BN
    features.{b+1}.conv.0.0 / .0.1      block_{b}_expand / _BN               blocks 1..16 (t = 6)
    features.{b+1}.conv.1.0 / .1.1      block_{b}_depthwise / _BN
    features.{b+1}.conv.2 / .3          block_{b}_project / _BN
    features.18.0 / .18.1               Conv_1 / Conv_1_bn                   last 1x1 conv
    classifier.1                        predictions                          Linear (classifier.0 is dropout)

The same tensors under the same names are read from a torch.export archive (.pt2,
torch_export.load_pt2), without torch. A state_dict holds neither alpha nor the input size: alpha
is the one whose graph needs exactly these shapes (_widths.fit_alpha), the resolution defaults to
224 (resolution= to change it).
"""

import pickle
import zipfile

import numpy as np

from ..errors import WeightFileError, needs, reading
from ..graph import Imported, check_params
from ..architectures import mobilenet_v2
from ..validate import max_weight_bytes
from ._common import check_zip_sizes, from_torch
from ._widths import fit_alpha

_BLOCKS = 17
# torch parameter name -> graph parameter name, for a BN node and for a conv / linear node.
_BN = {"weight": "gamma", "bias": "beta", "running_mean": "mean", "running_var": "var"}
_LINEAR = {"weight": "w", "bias": "b"}


def _module_names():
    """{torchvision module path: graph node name}, the table in the module docstring."""
    names = {"features.0.0": "Conv1", "features.0.1": "bn_Conv1"}
    for b in range(_BLOCKS):
        prefix = f"block_{b}_" if b else "expanded_conv_"
        layers = (["expand", "expand_BN"] if b else []) + ["depthwise", "depthwise_BN", "project", "project_BN"]
        paths = ["0.0", "0.1", "1.0", "1.1", "2", "3"] if b else ["0.0", "0.1", "1", "2"]
        names.update({f"features.{b + 1}.conv.{p}": prefix + layer for p, layer in zip(paths, layers)})
    names.update({"features.18.0": "Conv_1", "features.18.1": "Conv_1_bn", "classifier.1": "predictions"})
    return names


_MODULES = _module_names()


def _as_numpy(t):
    if hasattr(t, "detach"):  # a torch.Tensor, without importing torch
        t = t.detach().cpu()
        if hasattr(t, "float") and not t.is_floating_point():
            return t.numpy()
        return t.float().numpy()
    return np.asarray(t)


def _params(graph, sd):
    """{"{node}.{param}": array} in the graph's layout, and {graph key: state_dict key}. A key
    with no place in the graph is kept under its own name, so it shows as unexpected."""
    nodes = {n.name: n for n in graph.nodes}
    params, origin = {}, {}
    for key, value in sd.items():
        module, _, pname = key.rpartition(".")
        if pname == "num_batches_tracked":  # BN's training counter: not used at inference
            continue
        node = nodes.get(_MODULES.get(module))
        p = (_BN if node is not None and node.op == "batchnorm" else _LINEAR).get(pname)
        if node is None or p is None:
            params[key] = value
        else:
            params[f"{node.name}.{p}"] = from_torch(node.op, value)
            origin[f"{node.name}.{p}"] = key
    return params, origin


def from_state_dict(sd, *, resolution=224, alpha=None, source="<state_dict>"):
    """A torchvision mobilenet_v2 state_dict (tensors or numpy arrays) as a Model."""
    if not hasattr(sd, "items"):
        raise WeightFileError(f"{source}: expected a state_dict (a mapping of tensor names to tensors), "
                              f"found {type(sd).__name__}")
    sd = {str(k): _as_numpy(v) for k, v in sd.items()}
    if "features.0.0.weight" not in sd:
        raise WeightFileError(f"{source}: not a torchvision mobilenet_v2 state_dict: expected the key "
                              f"features.0.0.weight, found {sorted(sd)[:12]}")
    head = sd.get("classifier.1.weight")
    classes = int(head.shape[0]) if head is not None and head.ndim == 2 else 1000

    def build(a):
        return mobilenet_v2(a, resolution, classes, convention="torch")

    if alpha is not None:
        graph = build(alpha)
    else:
        last = sd.get(f"features.{_BLOCKS}.conv.2.weight")
        estimate = last.shape[0] / 320 if last is not None and last.ndim >= 1 else 1.0
        shapes = {k: tuple(a.shape) for k, a in _params(build(1.0), sd)[0].items()}
        graph = fit_alpha(build, shapes, "mobilenet_v2", estimate)
    params, origin = _params(graph, sd)
    try:
        return Imported(graph, check_params(graph, params, source), None, source)
    except WeightFileError as e:  # add the state_dict's own names for the graph keys at fault
        named = [f"{k} = {origin[k]}" for k in origin if f" {k}" in str(e) or f"{k}:" in str(e)]
        raise WeightFileError(str(e) + ("\n  (state_dict names: " + ", ".join(named[:20]) + ")" if named else "")) from None


def load_pth(path, **options):
    """A state_dict saved with torch.save (.pth / .pt) as a Model. Reading the file needs torch;
    it is loaded with weights_only=True, so no code in it runs. options: resolution=, alpha=."""
    with needs("torch", "reading a .pth file (or convert it once where torch is installed: "
               "npmobile convert model.pth -o model.npz)"):
        import torch
    # torch's reader skips the zip's CRC-32s, so flipped bytes would load as other weights
    with reading(path, "torch zip file", (zipfile.BadZipFile, OSError, EOFError)), zipfile.ZipFile(path) as z:
        check_zip_sizes(z, max_weight_bytes() + (64 << 20))
        bad = z.testzip()
    if bad is not None:
        raise WeightFileError(f"{path}: corrupted: member {bad!r} fails its CRC-32 check")
    # torch raises RuntimeError, EOFError, ... by cause; weights_only=True refuses (UnpicklingError)
    # a pickle of anything but tensors and containers, as torch.save(model) writes
    with reading(path, "torch state_dict"):
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise WeightFileError(f"{path}: holds pickled Python objects, not only tensors (torch.save(model) saves "
                                  "the whole module so), which torch.load(weights_only=True) refuses to run; npmobile "
                                  "reads state_dicts: torch.save(model.state_dict(), 'model.pth')") from None
    if isinstance(sd, dict) and "state_dict" in sd and hasattr(sd["state_dict"], "items"):
        sd = sd["state_dict"]  # a training checkpoint that wraps the state_dict
    return from_state_dict(sd, source=str(path), **options)
