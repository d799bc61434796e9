"""CPU-sized random-field augmentation cases for pytest-benchmark (`pytest benchmarks/
--benchmark-only`; not part of the default test run). The full comparison with ratios is
benchmarks/bench_augment.py."""
import pytest
import torch

from sslfast import dispatch
from sslfast.augment import IMAGENET_MEAN, IMAGENET_STD, PRESETS, RandomFieldAugment

BACKENDS = ["reference"] + (["numba"] if dispatch.numba_unavailable_reason() is None else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch,size", [(64, 64), (16, 224)])
def test_random_field_apply_cpu(benchmark, backend, batch, size):
    images = torch.randint(0, 256, (batch, 3, size, size), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    aug = RandomFieldAugment(**PRESETS["medium"], generator=0, mean=IMAGENET_MEAN, std=IMAGENET_STD, backend=backend)
    params = aug.sample_params(images)
    aug.apply(images, params)  # compile / warm up
    benchmark(aug.apply, images, params)
