"""Write npmobile/data/imagenet_classes.tsv: the 1000 ImageNet classes as "synset<TAB>name" lines,
in the class-index order of Keras and torchvision outputs.

The names come from torchvision (MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]), the
WordNet synset ids from timm's bundled timm/data/_info/imagenet_synsets.txt; both are public
facts about ImageNet, read from packages on PyPI:

    pip download --no-deps -d /tmp/timm timm
    python scripts/make_imagenet_labels.py /tmp/timm/timm-*.whl
"""

import sys
import zipfile
from pathlib import Path

import torchvision

OUT = Path(__file__).resolve().parents[1] / "npmobile" / "data" / "imagenet_classes.tsv"


def main(timm_wheel):
    with zipfile.ZipFile(timm_wheel) as z:
        synsets = z.read("timm/data/_info/imagenet_synsets.txt").decode().split()
    names = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(synsets) == len(names) == 1000, (len(synsets), len(names))
    assert synsets == sorted(synsets), "the class index order is the sorted synset order"
    OUT.write_text("".join(f"{s}\t{n}\n" for s, n in zip(synsets, names)), encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
