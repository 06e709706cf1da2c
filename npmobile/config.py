"""`Config`: what a graph is and what it expects, beside its nodes; frozen, JSON in the native file.

The nodes say how to compute; the config says what for: the architecture (a label for people),
the input the network expects (resolution, preprocessing, the layout the source file took) and
what its output is (`output`). Each fact is recorded once: a batch norm's epsilon is an
attribute of its node, not of the config; whether the output is softmax probabilities is
`output`, which the graph's last node must agree with (`Graph` checks).
"""

from dataclasses import asdict, dataclass, field, replace

OUTPUTS = ("probabilities", "logits", "features")


@dataclass(frozen=True)
class Preprocess:
    """input = (pixel - mean) / std per channel, pixels 0..255, after keeping the central `crop`
    fraction of the shorter side and resizing it to the resolution."""
    mean: tuple = (127.5, 127.5, 127.5)
    std: tuple = (127.5, 127.5, 127.5)
    crop: float = 0.875

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "crop", float(self.crop))
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            raise ValueError(f"preprocess: expected 3 means and 3 positive stds, found {self.mean}, {self.std}")
        if not 0 < self.crop <= 1:
            raise ValueError(f"preprocess: expected a crop fraction in (0, 1], found {self.crop}")


@dataclass(frozen=True)
class Config:
    """arch: "mobilenet_v1", "mobilenet_v2" or "imported" (a label; the nodes are what runs).
    output: "probabilities" (the graph ends in softmax), "logits" (a classifier without it) or
    "features" (no classifier: the pooled vector or the last feature map)."""
    arch: str
    resolution: int
    classes: int
    output: str
    convention: str = "keras"
    alpha: float = None  # None for an imported graph: its widths are in its nodes
    depth_multiplier: int = 1
    pooling: str = None  # without a classifier: None (the feature map), "avg" or "max"
    preprocess: Preprocess = field(default_factory=Preprocess)
    input_layout: str = "NHWC"  # what the source file took; npmobile always takes NHWC
    source_format: str = "npmobile"

    def __post_init__(self):
        if self.output not in OUTPUTS:
            raise ValueError(f"output: expected one of {OUTPUTS}, found {self.output!r}")
        if isinstance(self.preprocess, dict):
            object.__setattr__(self, "preprocess", Preprocess(**self.preprocess))

    @property
    def include_top(self):
        return self.output != "features"

    def replace(self, **changes):
        return replace(self, **changes)

    def to_json(self):
        return asdict(self)

    @classmethod
    def from_json(cls, data):
        """The inverse of to_json; unknown keys are an error naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"config: expected a JSON object, found {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"config: unknown keys {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as e:
            raise ValueError(f"config: {e}") from None
