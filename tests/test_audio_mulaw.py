"""Mu-law and linear 8-bit quantisation against float64 references."""
import math

import pytest
import torch

from audio.mulaw import dequantize, quantize

MU = 255.0


def mulaw_encode_ref(x: torch.Tensor) -> torch.Tensor:
    x = x.double().clamp(-1, 1)
    y = torch.sign(x) * torch.log1p(MU * x.abs()) / math.log1p(MU)
    return torch.floor((y + 1) / 2 * MU + 0.5).long()


def mulaw_decode_ref(codes: torch.Tensor) -> torch.Tensor:
    y = codes.double() / MU * 2 - 1
    return torch.sign(y) * ((1 + MU) ** y.abs() - 1) / MU


def test_mulaw_codes_match_float64_reference():
    x = torch.rand(200_000, generator=torch.Generator().manual_seed(1)) * 2.2 - 1.1  # includes clipped values
    got, ref = quantize(x), mulaw_encode_ref(x)
    assert got.dtype == torch.int64 and int(got.min()) >= 0 and int(got.max()) <= 255
    # float32 vs float64 may round a value lying on a code boundary differently, never by more than one code
    assert (got - ref).abs().max() <= 1
    assert (got != ref).float().mean() < 1e-3


def test_mulaw_decode_matches_reference_and_round_trips_every_code():
    codes = torch.arange(256)
    wave = dequantize(codes)
    assert wave.dtype == torch.float32
    torch.testing.assert_close(wave.double(), mulaw_decode_ref(codes), atol=1e-6, rtol=0)
    assert torch.equal(quantize(wave), codes)


def test_mulaw_round_trip_error_within_half_a_step():
    x = torch.rand(50_000, generator=torch.Generator().manual_seed(2)) * 2 - 1
    err = (dequantize(quantize(x)).double() - x.double()).abs()
    # half a code (1/255 in the companded domain) times the slope of the expansion at |x|
    bound = (1 / MU) * math.log1p(MU) * (1 + MU * x.double().abs()) / MU
    assert torch.all(err <= bound * 1.02 + 1e-6)
    # quiet samples are resolved much more finely than loud ones: the point of mu-law
    assert err[x.abs() < 0.01].max() < 4e-4 and err[x.abs() > 0.5].max() > 5e-3


def test_linear_round_trip():
    codes = torch.arange(256)
    assert torch.equal(quantize(dequantize(codes, quantization="linear"), quantization="linear"), codes)
    x = torch.rand(10_000, generator=torch.Generator().manual_seed(3)) * 2 - 1
    err = (dequantize(quantize(x, quantization="linear"), quantization="linear") - x).abs()
    assert err.max() <= 1 / 255 + 1e-6
    assert dequantize(torch.tensor([0, 255]), quantization="linear").tolist() == [-1.0, 1.0]


def test_other_bit_depths_and_bad_arguments():
    assert int(quantize(torch.tensor([1.0]), bits=4)) == 15
    assert torch.equal(quantize(dequantize(torch.arange(16), bits=4), bits=4), torch.arange(16))
    with pytest.raises(ValueError, match="mode"):
        quantize(torch.zeros(3), quantization="alaw")
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        dequantize(torch.tensor([256]))
    with pytest.raises(TypeError):
        dequantize(torch.zeros(3))
