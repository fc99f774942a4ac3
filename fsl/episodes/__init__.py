"""Class splits, near-duplicate groups, the batched sampler, frozen episode sets and shifted sets."""
