"""Shared fixtures: tiny random checkpoints (built once per session), loopback-only ROS settings."""

import os
import pathlib

import numpy as np
import pytest

# Every test session: DDS on loopback, its own domain, no hub.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 90 + 10))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("POP_ROS_CACHE", str(pathlib.Path(__file__).resolve().parents[1] / "build" / "test-cache"))
# Head files a user made with pop-find-heads (~/.local/share/pop_ros/heads) must not change what tests see.
os.environ["XDG_DATA_HOME"] = str(pathlib.Path(__file__).resolve().parents[1] / "build" / "test-data")


@pytest.fixture(scope="session")
def tiny_adapters():
    """One tiny random adapter per MLLM family, loaded through the real loader."""
    from pop_ros.models.loading import load_mllm
    from pop_ros.models.tiny import FAMILIES

    return {family: load_mllm(f"tiny:{family}", device="cpu", dtype="float32") for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_visual():
    from pop_ros.models.loading import load_visual

    return load_visual("tiny:dinov3", device="cpu", dtype="float32", resolution=224)


@pytest.fixture(scope="session")
def tiny_pointer():
    from pop_ros.pipeline import PartPointer

    return PartPointer.from_preset("tiny")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def heads_on(adapter, heads):
    """`heads` as given for a plain transformer; on a hybrid model (Qwen3.5) each moves to the first
    layer at or after it that can hold heads (its full-attention layers), else the last such layer:
    generic tests then run the same shape of head set on every family."""
    allowed = list(adapter.head_layers)
    moved = []
    for layer, head in heads:
        deeper = [candidate for candidate in allowed if candidate >= layer]
        moved.append((deeper[0] if deeper else allowed[-1], head))
    return moved


def random_image(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
