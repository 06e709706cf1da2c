"""Train the embedded default model: MobileNetV1 (alpha 0.25, 32x32) on scikit-learn's digits.

    pip install -e ".[train]" && python scripts/train_digits.py

Writes npmobile/data/digits_mobilenet.npz (the native weight file, labels "0".."9") and a few
test-split digits as npmobile/data/samples.npz (uint8 RGB arrays), so that `npmobile demo` shows
real predictions on a machine with no network and no image decoder. The data set ships inside
scikit-learn (1,797 8x8 grayscale digits with values 0..16); each is drawn dark-on-white and upsampled to 32x32 with Pillow.

torch trains the network, but the network it trains is npmobile's own graph: its torch twin
(npmobile.measure.torch_twin, the same one the benchmarks time) runs `npmobile.mobilenet_v1(...)`
node by node with torch ops, and `twin.export()` turns the trained tensors back into npmobile's
layout (HWIO, HWC, IO) with the importers' transposes. The held-out accuracy printed at the
end is measured by npmobile's engine on the saved file, not by torch.
"""

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import npmobile
from npmobile.data import digit_images
from npmobile.model import Model
from npmobile.graph import Graph
from npmobile.measure import torch_twin
from npmobile.weights import save

DATA = Path(__file__).resolve().parents[1] / "npmobile" / "data"
RESOLUTION = 32


def initial_params(graph, seed):
    """He-initialised weights (npmobile.architectures.random_params) with BN reset to the identity."""
    params = npmobile.architectures.random_params(graph, seed)
    for key, shape in graph.param_shapes().items():
        kind = key.rsplit(".", 1)[1]
        if kind in ("gamma", "var"):
            params[key] = np.ones(shape, np.float32)
        elif kind in ("beta", "mean", "b"):
            params[key] = np.zeros(shape, np.float32)
    return params


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DATA / "digits_mobilenet.npz")
    ap.add_argument("--samples", type=Path, default=DATA / "samples.npz")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    digits = load_digits()
    images = digit_images(digits.data, RESOLUTION)
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=0.25, random_state=args.seed,
                                           stratify=digits.target)
    graph = npmobile.mobilenet_v1(0.25, RESOLUTION, classes=10)
    # a digit fills its frame: resize the whole image
    graph.config = graph.config.replace(preprocess=replace(graph.config.preprocess, crop=1.0))
    probe = Model(graph, initial_params(graph, args.seed), labels=[str(d) for d in range(10)])
    x_all = torch.tensor(probe.preprocess(np.repeat(images[..., None], 3, axis=-1))).permute(0, 3, 1, 2)
    y_all = torch.tensor(digits.target)

    # the graph's torch twin without its softmax: cross_entropy takes logits
    net = torch_twin(Graph(graph.nodes[:-1], graph.input_shape), probe.params)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    steps = args.epochs * -(-len(idx_train) // args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        net.train()
        order = torch.tensor(idx_train)[torch.randperm(len(idx_train), generator=gen)]
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            batch = order[start:start + args.batch_size]
            loss = F.cross_entropy(net(x_all[batch]), y_all[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
        if epoch % 10 == 9 or epoch == args.epochs - 1:
            print(f"epoch {epoch + 1}: train loss {total / len(idx_train):.4f}")

    net.eval()
    model = Model(graph, net.export(), labels=[str(d) for d in range(10)], source="scripts/train_digits.py")
    save(args.out, model)

    # Held-out accuracy, measured by npmobile on the file just written.
    saved = npmobile.load(args.out)
    rgb = np.repeat(images[idx_test][..., None], 3, axis=-1)
    probs = saved.predict(saved.preprocess(rgb))
    with torch.no_grad():
        torch_probs = torch.softmax(net(x_all[idx_test]), dim=1).numpy()
    accuracy = float((probs.argmax(1) == digits.target[idx_test]).mean())
    print(f"max |npmobile - torch| on the test split: {np.abs(probs - torch_probs).max():.2e}")
    print(f"held-out accuracy (npmobile, {len(idx_test)} test digits): {accuracy:.4f}")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")

    # Samples: the first test digit of each class, keyed after its true label and its index in
    # scikit-learn's data set, as uint8 RGB arrays (the demo then needs no image decoder).
    samples = {}
    for d in range(10):
        i = next(i for i in idx_test if digits.target[i] == d)
        samples[f"digit{d}_sklearn{i:04d}"] = np.repeat(images[i][..., None], 3, axis=-1)
    np.savez_compressed(args.samples, **samples)
    print(f"wrote 10 samples to {args.samples}")


if __name__ == "__main__":
    main()
