"""The GoogLeNet paper's Table 1 as published (rounded figures; "ops" are multiply-adds).

Source: Szegedy et al., "Going deeper with convolutions", CVPR 2015, Table 1 (see shared/paper-table1.md).
"""

from __future__ import annotations

from dataclasses import dataclass

BUDGET_MACS = 1_500_000_000  # "a computational budget of 1.5 billion multiply-adds at inference time"


@dataclass(frozen=True)
class PaperRow:
    stage: str
    output: str
    params: int | None
    macs: int | None


PAPER_TABLE = (
    PaperRow("conv1", "112x112x64", 2_700, 34_000_000),
    PaperRow("maxpool1", "56x56x64", None, None),
    PaperRow("conv2", "56x56x192", 112_000, 360_000_000),
    PaperRow("maxpool2", "28x28x192", None, None),
    PaperRow("inception_3a", "28x28x256", 159_000, 128_000_000),
    PaperRow("inception_3b", "28x28x480", 380_000, 304_000_000),
    PaperRow("maxpool3", "14x14x480", None, None),
    PaperRow("inception_4a", "14x14x512", 364_000, 73_000_000),
    PaperRow("inception_4b", "14x14x512", 437_000, 88_000_000),
    PaperRow("inception_4c", "14x14x512", 463_000, 100_000_000),
    PaperRow("inception_4d", "14x14x528", 580_000, 119_000_000),
    PaperRow("inception_4e", "14x14x832", 840_000, 170_000_000),
    PaperRow("maxpool4", "7x7x832", None, None),
    PaperRow("inception_5a", "7x7x832", 1_072_000, 54_000_000),
    PaperRow("inception_5b", "7x7x1024", 1_388_000, 71_000_000),
    PaperRow("avgpool", "1x1x1024", None, None),
    PaperRow("fc", "1x1x1000", 1_000_000, 1_000_000),
)

STAGES = tuple(row.stage for row in PAPER_TABLE)

KNOWN_DIFFERENCES = (
    "The paper's conv1 figures (2.7K params, 34M ops) do not match a 7x7x3x64 convolution at 112x112 (9.4K params, 118M multiply-adds).",
    "The paper's printed figures are rounded and differ from its own layer shapes: ops within ~1% except (5a) (51.1M computed vs 54M), "
    "params by up to ~10% (e.g. (4c) 510K computed vs 463K).",
    "torchvision layout: 3x3 instead of 5x5 kernels in the '5x5' branch (fewer multiply-adds in every inception module), "
    "BatchNorm instead of LRN (folded into the convolutions after simplification: conv biases replace BN scale/shift), "
    "and a 2x2 instead of 3x3 max-pool before stage 5.",
    "Multiply-adds scale with the input area: the paper's figures are for 224x224 inputs.",
)
