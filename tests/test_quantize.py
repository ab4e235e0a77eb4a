import pytest

from tokenforget.errors import TokenforgetError
from tokenforget.quantize import group_size_for, quantization_config


@pytest.mark.parametrize(
    ("widths", "wanted", "expected"),
    [
        ([576, 1536, 576], 128, 64),  # SmolLM2-135M: 576 = 9 x 64
        ([4096, 11008, 4096], 128, 128),  # Llama-2-7B
        ([96, 256], 128, 32),
        ([576], 100, 64),  # a group size that is not a power of two starts at the one below it
        ([7], 128, 1),
    ],
)
def test_group_size_is_the_largest_power_of_two_every_width_divides(widths, wanted, expected):
    size = group_size_for(widths, wanted)
    assert size == expected and all(w % size == 0 for w in widths)


def test_only_4_and_8_bits_are_offered():
    with pytest.raises(TokenforgetError, match="--bits 3: expected one of 4, 8"):
        quantization_config(3, 64)
    assert quantization_config(4, 64).quant_type.granularity.group_size == 64
