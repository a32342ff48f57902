"""Length-grouped training order without a hidden curriculum.

``transformers``' own length grouping sorts each mega-batch (up to 50 optimizer steps) longest first and
keeps that order, so every stretch of training runs from long examples to short ones. On a corpus mixture
that is a schedule nobody asked for: cMedQANER's longer system prompt puts all its examples at the start of
each stretch, and NCBI-disease's shortest sentences, mostly without a mention, end it in runs of pure
``{"entities":[]}`` batches. Measured on the NCBI-disease + cMedQANER mixture (BENCHMARKS.md, "mixture"):
the adapter trained that way answered ``{"entities":[]}`` to every NCBI-disease sentence.

Here the examples are still grouped by length (the padding saving is the same), but the *groups* are then
put in a seeded random order, so long and short, empty and non-empty steps interleave as they would
without grouping.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler

# examples sorted together before they are cut into groups, in optimizer steps (transformers uses 50 too)
MEGA_STEPS = 50


def shuffled_length_groups(lengths: Sequence[int], group_size: int, seed: int, mega_steps: int = MEGA_STEPS) -> list[int]:
    """A permutation of ``range(len(lengths))`` whose consecutive ``group_size`` slices hold examples of
    similar length, with the slices in random order; the group holding the longest example comes first, so
    that running out of memory happens at step 1 rather than hours in."""
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = group_size * max(1, mega_steps)
    groups: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: lengths[i], reverse=True)
        groups.extend(chunk[g : g + group_size] for g in range(0, len(chunk), group_size))
    rng.shuffle(groups)
    if groups:
        longest = max(range(len(groups)), key=lambda g: max(lengths[i] for i in groups[g]))
        groups[0], groups[longest] = groups[longest], groups[0]
    return [i for group in groups for i in group]


class ShuffledLengthGroupedSampler(Sampler[int]):
    """``shuffled_length_groups`` as a sampler; the order depends on the seed and the epoch only, so a
    resumed run skips exactly the examples it had already trained on."""

    def __init__(self, lengths: Sequence[int], group_size: int, seed: int) -> None:
        self.lengths = list(lengths)
        self.group_size = group_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(shuffled_length_groups(self.lengths, self.group_size, self.seed + self.epoch))
