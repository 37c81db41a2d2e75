"""complexity(): hand-computed formulas, torch.utils.flop_counter and published anchors."""

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from src.structured import (
    StructuredConv2d,
    StructuredLinear,
    complexity,
    decompose,
    project,
    structurize,
)
from src.structured.complexity import window_sum_adds


def flop_counter_macs(model, input_size):
    model = model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_size))
    return counter.get_total_flops() // 2  # flop_counter counts 2 FLOPs per MAC


def test_dense_conv_and_linear_hand_formulas():
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1)
    c = complexity(conv, (16, 15, 17))
    outs = 32 * 8 * 9  # Ho = (15 + 2 - 3)//2 + 1 = 8, Wo = (17 + 2 - 3)//2 + 1 = 9
    assert c.params == 32 * 16 * 9 + 32
    assert c.mults == outs * 16 * 9
    assert c.adds == outs * (16 * 9 - 1 + 1)  # accumulations + bias
    assert (c.mults_decomposed, c.adds_decomposed, c.params_decomposed) == (c.mults, c.adds, c.params)
    lin = nn.Linear(20, 7, bias=False)
    c = complexity(lin, (5, 20))  # a sequence of 5 tokens per sample
    assert (c.params, c.mults, c.adds) == (140, 5 * 7 * 20, 5 * 7 * 19)


def test_structured_conv_hand_formulas():
    layer = StructuredConv2d(16, 32, 3, stride=2, padding=1, inner_channels=8, inner_kernel_size=2)
    c = complexity(layer, (16, 15, 17))
    outs = 32 * 8 * 9
    # as it runs in training: the dense conv
    assert (c.params, c.mults) == (32 * 16 * 9 + 32, outs * 16 * 9)
    # decomposed: pooled map has c = 8 channels, (15 + 2 - 1) x (17 + 2 - 1) = 16 x 18 positions
    pooled = 8 * 16 * 18
    assert c.params_decomposed == 32 * 8 * 4 + 32
    assert c.mults_decomposed == outs * 8 * 4
    window = (16 - 8 + 1) * 2 * 2
    assert c.adds_decomposed == outs * (8 * 4 - 1 + 1) + pooled * (window - 1)
    # running sums, channel axis first (15*17 lines of 16 -> 8 with window 9: 8 + 2*7 adds),
    # then H (8*19 lines of 17 -> 16, window 2: 16 adds), then W (8*16 lines of 19 -> 18: 18 adds)
    running_pool = 15 * 17 * 22 + 8 * 19 * 16 + 8 * 16 * 18
    assert c.adds_decomposed_running == outs * 32 + running_pool
    # the decomposed layer itself is counted identically
    d = complexity(decompose(layer, tol=1.0), (16, 15, 17))
    assert (d.params, d.mults, d.adds, d.adds_running) == (
        c.params_decomposed, c.mults_decomposed, c.adds_decomposed, c.adds_decomposed_running)


def test_structured_linear_hand_formulas():
    layer = StructuredLinear(64, 10, inner_features=16)
    c = complexity(layer, (64,))
    assert c.params_decomposed == 10 * 16 + 10
    assert c.mults_decomposed == 10 * 16
    assert c.adds_decomposed == 10 * 16 + 16 * (49 - 1)
    assert c.adds_decomposed_running == 10 * 16 + (48 + 2 * 15)


@pytest.mark.parametrize("length,window,dilation", [(10, 3, 1), (17, 2, 1), (20, 4, 2), (9, 9, 1), (30, 5, 3)])
def test_running_sum_count_matches_a_simulated_running_sum(length, window, dilation):
    outputs = length - dilation * (window - 1)
    adds = 0
    for r in range(dilation):
        idx = list(range(r, outputs, dilation))
        for j, _ in enumerate(idx):
            adds += (window - 1) if j == 0 else min(2, window - 1)
    assert window_sum_adds(length, window, dilation, running=True) == adds
    assert window_sum_adds(length, window, dilation) == outputs * (window - 1)


def test_torchvision_anchors():
    r18 = torchvision.models.resnet18()
    c = complexity(r18, (3, 224, 224))
    assert c.params == 11_689_512 and round(c.mults / 1e9, 2) == 1.81
    assert c.mults == flop_counter_macs(r18, (3, 224, 224)) == 1_814_073_344
    r50 = torchvision.models.resnet50()
    c = complexity(r50, (3, 224, 224))
    assert c.params == 25_557_032
    assert c.mults == flop_counter_macs(r50, (3, 224, 224))
    # The published 4,089,185,256 also counts the classifier's 1,000 bias additions as MACs;
    # our mults are multiplications only (flop_counter's convention), the bias is in `adds`.
    assert c.mults + r50.fc.out_features == 4_089_185_256


def test_mobilenet_v2_and_timm_efficientnet_match_flop_counter():
    mnv2 = torchvision.models.mobilenet_v2()
    c = complexity(mnv2, (3, 224, 224))
    assert c.params == 3_504_872
    assert round(c.mults / 1e9, 2) == 0.30
    assert c.mults == flop_counter_macs(mnv2, (3, 224, 224))
    eff = timm.create_model("efficientnet_b0", pretrained=False)
    c = complexity(eff, (3, 224, 224))
    assert round(c.params / 1e6, 2) == 5.29 and round(c.mults / 1e9, 2) == 0.39
    assert c.mults == flop_counter_macs(eff, (3, 224, 224))


def test_structured_model_counts_agree_with_its_decomposed_model():
    model = torchvision.models.resnet18(num_classes=10)
    structurize(model, {"rules": [{"kernel_size": 3, "c": 0.5, "n": 2}, {"kernel_size": 1, "c": 0.5},
                                  {"type": "linear", "c": 0.5}], "exclude": ["conv1"]})
    project(model)
    c = complexity(model, (3, 64, 64))
    assert c.mults == flop_counter_macs(model, (3, 64, 64))  # trains as a dense model
    dec = decompose(model)
    d = complexity(dec, (3, 64, 64))
    assert d.params == sum(p.numel() for p in dec.parameters()) == c.params_decomposed
    assert (d.mults, d.adds, d.adds_running) == (c.mults_decomposed, c.adds_decomposed, c.adds_decomposed_running)
    assert d.mults == flop_counter_macs(dec, (3, 64, 64))  # sum-pooling costs no multiplication
    assert c.mults_decomposed < 0.4 * c.mults
    assert "structured_conv" in c.table()
