"""Length-grouped training order (sft/sampling.py): groups of similar length, steps in random order."""

import random

import pytest

from medner.sft.sampling import ShuffledLengthGroupedSampler, shuffled_length_groups


def _groups(order, size):
    return [order[i : i + size] for i in range(0, len(order), size)]


def _hf_order(lengths, group_size, seed):
    """transformers' get_length_grouped_indices, the order this module replaces (mega-batches sorted long to short)."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    return get_length_grouped_indices(lengths, group_size, generator=torch.Generator().manual_seed(seed))


def _falling_share(lengths, order, size):
    means = [sum(lengths[i] for i in g) / len(g) for g in _groups(order, size)]
    return sum(b < a for a, b in zip(means, means[1:])) / (len(means) - 1)


@pytest.mark.parametrize("n,size", [(0, 8), (1, 8), (7, 8), (800, 8), (1001, 8), (100, 1)])
def test_a_permutation_of_every_example(n, size):
    lengths = [random.Random(n).randint(5, 700) for _ in range(n)]
    order = shuffled_length_groups(lengths, size, seed=3)
    assert sorted(order) == list(range(n))


def test_each_group_is_a_contiguous_slice_of_a_sorted_stretch():
    rng = random.Random(0)
    lengths = [rng.randint(5, 700) for _ in range(1000)]
    order = shuffled_length_groups(lengths, 8, seed=1, mega_steps=10)
    spread = [max(lengths[i] for i in g) - min(lengths[i] for i in g) for g in _groups(order, 8)]
    # 80 examples sorted together then cut in 10: a group spans ~1/10 of the range, not all of it
    assert sum(spread) / len(spread) < 0.15 * 695
    unsorted = [max(lengths[i] for i in g) - min(lengths[i] for i in g) for g in _groups(list(range(1000)), 8)]
    assert sum(spread) < 0.3 * sum(unsorted)


def test_the_longest_group_comes_first():
    rng = random.Random(5)
    lengths = [rng.randint(5, 700) for _ in range(500)]
    lengths[321] = 5000
    assert 321 in shuffled_length_groups(lengths, 8, seed=9)[:8]


def test_no_long_to_short_schedule():
    """The failure this module exists for: transformers' grouping runs every stretch from long to short, so the
    shortest examples (on NCBI-disease mostly mention-less sentences) come in runs at the end of each stretch."""
    rng = random.Random(2)
    lengths = [rng.randint(5, 700) for _ in range(2000)]
    assert _falling_share(lengths, _hf_order(lengths, 8, 0), 8) > 0.9  # the schedule it replaces
    share = _falling_share(lengths, shuffled_length_groups(lengths, 8, seed=0), 8)
    assert 0.35 < share < 0.65
    # the shortest tenth of the groups is spread over the run, not bunched at the stretch ends
    groups = _groups(shuffled_length_groups(lengths, 8, seed=0), 8)
    means = sorted(range(len(groups)), key=lambda g: sum(lengths[i] for i in groups[g]))
    shortest = sorted(means[: len(groups) // 10])
    longest_run = max(len(list(run)) for run in _runs(shortest))
    assert longest_run <= 4


def _runs(positions):
    run = [positions[0]]
    for p in positions[1:]:
        if p == run[-1] + 1:
            run.append(p)
        else:
            yield run
            run = [p]
    yield run


def test_order_depends_on_seed_and_epoch_only():
    lengths = list(range(300))
    s = ShuffledLengthGroupedSampler(lengths, 8, seed=42)
    first = list(s)
    assert list(ShuffledLengthGroupedSampler(lengths, 8, seed=42)) == first  # a resumed run sees the same order
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == sorted(first) and len(s) == 300


def test_bad_group_size():
    with pytest.raises(ValueError, match="group_size"):
        shuffled_length_groups([1, 2], 0, seed=0)


@pytest.mark.slow
def test_sft_trainer_draws_its_batches_from_the_shuffled_groups(tiny_model):
    """The real SFTTrainer with group_by_length=true: micro-batches of similar length, steps not sorted."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from medner.sft.train import _length_grouped

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rng = random.Random(0)
    rows = []
    for _ in range(160):
        words = " ".join(f"w{rng.randint(0, 99)}" for _ in range(rng.choice([2, 10, 40, 80])))
        rows.append({"prompt": [{"role": "user", "content": words}], "completion": [{"role": "assistant", "content": '{"entities":[]}'}]})
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    ds = Dataset.from_list(rows)

    def step_widths(trainer_cls, strategy):
        args = SFTConfig(
            output_dir="/tmp/unused",
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            use_cpu=True,
            report_to=[],
            completion_only_loss=True,
            train_sampling_strategy=strategy,
            seed=7,
        )
        batches = list(trainer_cls(model=model, args=args, train_dataset=ds, processing_class=tok).get_train_dataloader())
        assert sum(len(b["input_ids"]) for b in batches) == 160
        pad = sum(int((b["attention_mask"] == 0).sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)
        widths = [b["input_ids"].shape[1] for b in batches]
        return pad, [max(widths[i : i + 2]) for i in range(0, len(widths), 2)]  # one per optimizer step

    def falling(w):
        return sum(b < a for a, b in zip(w, w[1:])) / (len(w) - 1)

    pad, widths = step_widths(_length_grouped(SFTTrainer, 8, 7), "random")
    assert pad < 0.1, pad  # four length classes, randomly mixed: ungrouped batches would be mostly padding
    assert widths[0] == max(widths) and falling(widths) < 0.7, widths
    # what it replaces: transformers' grouping, long to short in every stretch
    _, hf = step_widths(SFTTrainer, "group_by_length")
    assert falling(hf) > 0.75, hf
