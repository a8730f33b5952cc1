import pytest

# Note: torch 2.13's CPU oneDNN backward was seen to corrupt the heap with ONE intra-op thread on
# 4-channel supernets fed 8x8 digits (free(): invalid size); the tiny test nets use 8 channels and the
# default thread count.


@pytest.fixture
def tiny_overrides():
    """A digits search small enough to run in seconds."""
    return ["data.dataset=digits", "data.subset=null", "data.batch_size=32", "network.channels=8",
            "network.layers=2", "network.stem_multiplier=2", "optim.epochs=2", "search.steps_per_epoch=3",
            "search.val_batches=2", "network.channels_last=false"]
