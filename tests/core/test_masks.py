import pytest
import torch

from lightning_micro.core.masks import apply_masks_, global_magnitude_masks, magnitude_masks


def weights():
    torch.manual_seed(0)
    return {"a": torch.randn(30, 20), "b": torch.randn(10, 5) * 10, "c": torch.randn(7)}


def test_global_prunes_exactly_the_smallest_over_all_tensors():
    w = weights()
    masks = global_magnitude_masks(w, 0.5)
    total = sum(t.numel() for t in w.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.5 * total)
    kept_min = min(float(w[n][m].abs().min()) for n, m in masks.items())
    pruned_max = max(float(w[n][~m].abs().max()) for n, m in masks.items())
    assert pruned_max <= kept_min
    assert int((~masks["b"]).sum()) < int((~masks["a"]).sum())  # "b" is larger in magnitude: pruned less


def test_layerwise_prunes_each_tensor_to_the_target():
    w = weights()
    masks = magnitude_masks(w, 0.3, scope="layerwise")
    for name, m in masks.items():
        assert int((~m).sum()) == round(0.3 * w[name].numel())


def test_overrides_are_pruned_alone():
    w = weights()
    masks = magnitude_masks(w, 0.9, scope="global", overrides={"b": 0.2})
    assert int((~masks["b"]).sum()) == round(0.2 * 50)
    rest = w["a"].numel() + w["c"].numel()
    assert int((~masks["a"]).sum()) + int((~masks["c"]).sum()) == round(0.9 * rest)


def test_already_zero_weights_stay_pruned():
    w = weights()
    first = global_magnitude_masks(w, 0.4)
    for name in w:
        w[name] = w[name] * first[name]
    second = global_magnitude_masks(w, 0.6)
    for name in w:
        assert not bool((second[name] & ~first[name]).any())


def test_bad_scope():
    with pytest.raises(ValueError, match="scope must be"):
        magnitude_masks(weights(), 0.5, scope="per-channel")


def test_apply_masks_zeroes_in_place():
    tensors = [torch.ones(3, 3), torch.ones(4)]
    masks = [torch.eye(3), torch.tensor([1.0, 0.0, 1.0, 0.0])]
    apply_masks_(tensors, masks)
    assert torch.equal(tensors[0], torch.eye(3)) and tensors[1].tolist() == [1, 0, 1, 0]


def test_global_pruning_keeps_a_floor_of_every_tensor_and_never_removes_one_whole():
    weights = {"big": torch.arange(1.0, 1001.0), "small": torch.full((50,), 1e-3)}  # small: all below big's
    no_floor = global_magnitude_masks(weights, 0.9)
    assert int(no_floor["small"].sum()) == 0  # ranked together, the small layer is pruned whole
    floored = global_magnitude_masks(weights, 0.9, min_density=0.05)
    assert int(floored["small"].sum()) == 3  # ceil(5% of 50)
    assert int(sum(m.numel() - m.sum() for m in floored.values())) == round(0.9 * 1050)  # the target holds
    assert int(global_magnitude_masks(weights, 0.9, min_density=1e-9)["small"].sum()) == 1  # at least one weight


def test_floors_that_make_the_target_unreachable_prune_all_they_may():
    weights = {"a": torch.ones(10), "b": torch.ones(10)}
    masks = global_magnitude_masks(weights, 0.99, min_density=0.5)
    assert [int(m.sum()) for m in masks.values()] == [5, 5]
