"""Philox4x32-10 (ops.md §0.8): Random123 known answers, the tl.randint layout, and the reference
stream in integer torch against the C++ one."""

import pytest
import torch

from msa_fast.ops import philox

KNOWN_ANSWERS = [  # (c0, c1, c2, c3, k0, k1) -> output words, Random123's philox4x32_10 vectors
    ((0, 0, 0, 0, 0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 6, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
SEED_1234_R = [546353992, 2666454581, 1070188760, 3055983166]


@pytest.mark.parametrize("words, expected", KNOWN_ANSWERS)
def test_cpp_known_answers(words, expected):
    assert torch.ops.msa_fast.philox_block(torch.tensor(words)).tolist() == list(expected)


@pytest.mark.parametrize("words, expected", KNOWN_ANSWERS)
def test_reference_known_answers(words, expected):
    out = philox.philox_block(*(torch.tensor([w]) for w in words))
    assert [int(o) for o in out] == list(expected)


def test_randint_layout_seed_1234():
    assert torch.ops.msa_fast.philox_randint(torch.tensor(1234), 0, 4).tolist() == SEED_1234_R
    assert philox.randint(torch.tensor(1234), torch.arange(4)).tolist() == SEED_1234_R


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1, 2**32, 2**63 - 1, 987654321987])
def test_reference_stream_equals_cpp(seed):
    offset = 2**32 - 700 if seed % 2 else 12345
    cpp = torch.ops.msa_fast.philox_randint(torch.tensor(seed), offset, 600)
    ref = philox.randint(torch.tensor(seed), torch.arange(offset, offset + 600))
    assert torch.equal(cpp, ref)


def test_uniform_rule_is_exact_and_open():
    r = torch.tensor([0, 2**32 - 1, 546353992])
    u = philox.uniform(r)
    assert u[0].item() == 2.0**-24 and u[1].item() == 1 - 2.0**-24
    assert u[2].item() == pytest.approx(0.12721, abs=1e-5)  # ops.md §0.8: seed 1234, offset 0
    assert u[2].item() == (2 * (546353992 >> 9) + 1) * 2.0**-24


def test_index_rule_matches_unsigned_64_bit_arithmetic():
    g = torch.Generator().manual_seed(3)
    r = torch.randint(0, 2**32, (1000,), generator=g)
    n = torch.randint(1, 2**32, (1000,), generator=g)
    expected = [(a * b) >> 32 for a, b in zip(r.tolist(), n.tolist())]
    assert philox.index(r, n).tolist() == expected
    assert all(0 <= i < b for i, b in zip(expected, n.tolist()))


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (2**63, ValueError), (1.5, TypeError), (True, TypeError),
                                        (torch.tensor([1, 2]), TypeError), (torch.tensor(1.0), TypeError)])
def test_bad_seeds(bad, error):
    with pytest.raises(error, match="seed"):
        philox.seed_tensor(bad, "cutoff")


def test_seed_none_follows_torch_manual_seed():
    torch.manual_seed(7)
    a = philox.seed_tensor(None, "cutoff")
    torch.manual_seed(7)
    assert torch.equal(a, philox.seed_tensor(None, "cutoff"))
