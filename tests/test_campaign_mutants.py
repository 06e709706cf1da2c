"""Mutants the fuzz campaign (scripts/fuzz.py --run, seed 0) found failing, as regression tests:
each real file from ../shared/assets with the campaign's bytes xor-ed in, refused at load with
one WeightFileError (the campaign counted each as an exception at the first call).
The .h5 mutants that allocated gigabytes are in test_h5_attributes.py."""

import numpy as np
import pytest

import npmobile
from npmobile import WeightFileError


@pytest.mark.parametrize("name, flips, node", [
    # .tflite mutant 656: a legacy uint8 weight zero point flipped to 738,197,593
    ("mobilenet_v1_0.25_128_quant.tflite", [(14828, 150), (254460, 69), (493875, 44)], "Conv2d_5_pointwise"),
    # .tflite mutant 748: another to 1,627,390,054
    ("mobilenet_v1_0.25_128_quant.tflite",
     [(53442, 147), (147239, 187), (211596, 120), (351138, 66), (449581, 185), (494451, 97)], "Conv2d_5_depthwise"),
    # .tflite mutant 1055: to -1,342,177,146
    ("mobilenet_v2_1.0_224_quant.tflite",
     [(23340, 63), (411530, 7), (1234371, 68), (1277560, 112), (3563260, 97), (3567043, 176)], "expanded_conv_8"),
])
def test_tflite_weight_zero_point_out_of_range_is_refused_at_load(assets, tmp_path, name, flips, node):
    data = bytearray((assets / "models" / name).read_bytes())
    for at, xor in flips:
        data[at] ^= xor
    path = tmp_path / name
    path.write_bytes(bytes(data))
    with pytest.raises(WeightFileError) as info:
        npmobile.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and node in message and "w_zero: expected values" in message, message


def test_the_same_files_unmutated_load_and_run(assets):
    for name in ("mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v2_1.0_224_quant.tflite"):
        model = npmobile.load(assets / "models" / name)
        assert np.isfinite(model(np.zeros((1, *model.graph.input_shape), np.float32))).all()
