"""synthseg.metrics against an independent re-statement of mmsegmentation's IoUMetric, against scikit-learn's
confusion matrix (when installed), and on a real CamVid label map."""
import numpy as np
import pytest
import torch
from PIL import Image

from synthseg.core import ParameterError
from synthseg.metrics import ConfusionMatrix, confusion_matrix, iou_table, mean_iou, pixel_accuracy

# --- reference: mmsegmentation's IoUMetric ----------------------------------------------------------------------
# Re-stated from open-mmlab/mmsegmentation, mmseg/evaluation/metrics/iou_metric.py (commit 01c96235),
# IoUMetric.intersect_and_union (per image, torch.histc on float values) and IoUMetric.total_area_to_metrics
# ('mIoU' branch), plus compute_metrics' summary (nanmean over classes, before its rounding to percent).


def mmseg_intersect_and_union(pred_label: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int):
    mask = label != ignore_index
    pred_label, label = pred_label[mask], label[mask]
    intersect = pred_label[pred_label == label]

    def area(x):
        return torch.histc(x.float(), bins=num_classes, min=0, max=num_classes - 1).cpu()

    area_intersect, area_pred_label, area_label = area(intersect), area(pred_label), area(label)
    return area_intersect, area_pred_label + area_label - area_intersect, area_pred_label, area_label


def mmseg_scores(pairs, num_classes: int, ignore_index: int = 255) -> dict:
    """mmseg's IoUMetric over (pred, label) (H,W) tensors: per-class IoU and Acc, and aAcc, mIoU, mAcc (fractions)."""
    results = [mmseg_intersect_and_union(p, t.to(p), num_classes, ignore_index) for p, t in pairs]
    total_intersect, total_union, _, total_label = (sum(r[i] for r in results) for i in range(4))
    iou = (total_intersect / total_union).numpy()
    acc = (total_intersect / total_label).numpy()
    return {"IoU": iou, "Acc": acc, "aAcc": float((total_intersect.sum() / total_label.sum()).numpy()),
            "mIoU": float(np.nanmean(iou)), "mAcc": float(np.nanmean(acc))}


def assert_same_as_mmseg(metric: ConfusionMatrix, ref: dict):
    table, summary = metric.table(), metric.summary()
    for col in ("IoU", "Acc"):
        ours = table[col].to_numpy()
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref[col]))
        np.testing.assert_allclose(ours, ref[col], rtol=1e-6, atol=0)
    for key in ("mIoU", "mAcc", "aAcc"):
        np.testing.assert_allclose(summary[key], ref[key], rtol=1e-6, atol=0)


def random_batches(seed: int, num_classes: int = 19, n_batches: int = 3):
    """Batches of a 'model' that is right on ~70% of pixels, with ignore regions, a class only ever predicted
    (never in the target) and a class absent from both."""
    rng = np.random.default_rng(seed)
    only_predicted, absent = 3, 7
    target_classes = [c for c in range(num_classes) if c not in (only_predicted, absent)]
    pred_classes = [c for c in range(num_classes) if c != absent]
    batches = []
    for _ in range(n_batches):
        b, h, w = int(rng.integers(1, 4)), int(rng.integers(20, 60)), int(rng.integers(20, 60))
        target = rng.choice(target_classes, (b, h, w)).astype(np.uint8)
        target[rng.random((b, h, w)) < 0.1] = 255
        target[:, : h // 5, : w // 3] = 255  # a void block
        pred = np.where(rng.random((b, h, w)) < 0.7, target, rng.choice(pred_classes, (b, h, w)))
        pred = np.where(target == 255, rng.integers(0, 256, (b, h, w)), pred)  # anything at ignored pixels
        batches.append((torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(target)))
    return batches


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_same_numbers_as_mmseg_iou_metric(seed):
    batches = random_batches(seed)
    metric = ConfusionMatrix(19)
    for pred, target in batches:
        metric.update(pred, target)
    ref = mmseg_scores([(p, t) for pred, target in batches for p, t in zip(pred, target)], 19)
    assert np.isnan(ref["IoU"][7]) and ref["IoU"][3] == 0 and np.isnan(ref["Acc"][3])  # the cases are exercised
    assert_same_as_mmseg(metric, ref)
    np.testing.assert_allclose(mean_iou(metric.matrix), ref["mIoU"], rtol=1e-6)
    np.testing.assert_allclose(pixel_accuracy(metric.matrix), ref["aAcc"], rtol=1e-6)


def test_same_numbers_as_mmseg_with_ignore_index_inside_the_classes():
    # ADE20K-style: ignore_index 0 is dropped even though it is a class id
    pred, target = random_batches(5, num_classes=6, n_batches=1)[0]
    target = torch.where(target == 255, torch.zeros_like(target), target)
    metric = ConfusionMatrix(6, ignore_index=0)
    metric.update(pred, target)
    assert metric.matrix[0].sum() == 0
    assert_same_as_mmseg(metric, mmseg_scores(list(zip(pred, target)), 6, ignore_index=0))


def test_confusion_matrix_matches_sklearn():
    sk_metrics = pytest.importorskip("sklearn.metrics")
    for pred, target in random_batches(11):
        keep = (target != 255).numpy()
        expected = sk_metrics.confusion_matrix(target.numpy()[keep], pred.numpy()[keep], labels=np.arange(19))
        np.testing.assert_array_equal(confusion_matrix(pred, target, 19).numpy(), expected)


def test_real_camvid_label_against_a_perturbed_copy(realdata):
    files = sorted((realdata / "camvid" / "CamVid" / "valannot").glob("*.png"))
    assert len(files) == 101
    im = Image.open(files[0])
    assert im.mode == "L"
    raw = np.asarray(im)
    assert raw.max() <= 11 and 11 in raw
    target = np.where(raw == 11, 255, raw).astype(np.uint8)  # 11 = void
    valid = target != 255

    perfect = ConfusionMatrix(11)
    perfect.update(torch.from_numpy(target.copy()), torch.from_numpy(target))  # void in pred sits on ignored pixels
    present = np.unique(target[valid])
    assert perfect.summary() == {"mIoU": 1.0, "mAcc": 1.0, "aAcc": 1.0}
    assert perfect.table()["IoU"].notna().sum() == len(present)

    rng = np.random.default_rng(0)
    pred = np.roll(np.where(raw == 11, 0, raw), 6, axis=1)  # boundaries off by 6 px; void predicted as sky
    noise = rng.random(pred.shape) < 0.05
    pred[noise] = rng.integers(0, 11, int(noise.sum()))
    metric = ConfusionMatrix(11)
    metric.update(pred, target)  # NumPy inputs
    s = metric.summary()
    assert s["aAcc"] == pytest.approx((pred[valid] == target[valid]).mean(), rel=1e-12)
    assert 0.5 < s["mIoU"] < 0.95 and s["mIoU"] < s["aAcc"]
    assert metric.matrix.sum() == valid.sum()
    assert_same_as_mmseg(metric, mmseg_scores([(torch.from_numpy(pred).long(), torch.from_numpy(target))], 11))


# --- behaviour ----------------------------------------------------------------------------------------------------

def test_hand_computed_two_class_example():
    target = torch.tensor([[0, 0, 0], [1, 1, 255]])
    pred = torch.tensor([[0, 0, 1], [1, 0, 1]])
    cm = confusion_matrix(pred, target, 2)
    assert cm.tolist() == [[2, 1], [1, 1]] and cm.dtype == torch.int64
    table = iou_table(cm, ["a", "b"])
    assert list(table.columns) == ["IoU", "Acc", "pixels"] and list(table.index) == ["a", "b"]
    np.testing.assert_allclose(table["IoU"], [1 / 2, 1 / 3])
    np.testing.assert_allclose(table["Acc"], [2 / 3, 1 / 2])
    assert mean_iou(cm) == pytest.approx(5 / 12) and pixel_accuracy(cm) == pytest.approx(3 / 5)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32, np.uint64])
def test_numpy_inputs_of_any_integer_dtype(dtype):
    pred, target = random_batches(3, n_batches=1)[0]
    expected = confusion_matrix(pred, target, 19)
    got = confusion_matrix(np.where(target.numpy() == 255, 0, pred.numpy()).astype(dtype), target.numpy(), 19)
    assert isinstance(got, np.ndarray) and got.dtype == np.int64
    np.testing.assert_array_equal(got, expected.numpy())
    # a single (H,W) map equals its slice of the batch
    single = confusion_matrix(pred[0], target[0], 19)
    assert single.shape == (19, 19) and single.sum() == (target[0] != 255).sum()


def test_inputs_are_left_unchanged_and_empty_maps_count_nothing():
    pred = torch.tensor([[0, 1], [1, 1]], dtype=torch.int32)
    target = torch.tensor([[0, 1], [255, 1]], dtype=torch.int32)
    before = pred.clone(), target.clone()
    confusion_matrix(pred, target, 2)
    assert (pred == before[0]).all() and (target == before[1]).all()
    assert confusion_matrix(torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, 5, dtype=torch.uint8), 3).sum() == 0


def test_targets_outside_the_classes_are_dropped():
    target = torch.tensor([[0, 1, 5, 200], [-1, 1, 0, 255]])
    pred = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 9]])
    assert confusion_matrix(pred, target, 2).tolist() == [[2, 0], [1, 1]]


def test_streaming_sums_batches_and_resets():
    batches = random_batches(4)
    metric = ConfusionMatrix(19, class_names=[f"c{i}" for i in range(19)])
    assert metric.matrix.sum() == 0 and np.isnan(metric.summary()["mIoU"])
    for pred, target in batches:
        metric.update(pred, target)
    assert (metric.matrix == sum(confusion_matrix(p, t, 19) for p, t in batches)).all()
    assert list(metric.table().index) == [f"c{i}" for i in range(19)]
    metric.matrix.zero_()  # a copy: the running counts are untouched
    assert metric.matrix.sum() > 0
    metric.reset()
    assert metric.matrix.sum() == 0


def test_update_takes_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 8, 9, generator=gen)
    target = torch.randint(0, 5, (2, 8, 9), generator=gen)
    metric = ConfusionMatrix(5)
    metric.update(logits, target)
    metric.update(logits[0], target[0])  # (C,H,W) with (H,W)
    expected = confusion_matrix(logits.argmax(1), target, 5) + confusion_matrix(logits[0].argmax(0), target[0], 5)
    assert (metric.matrix == expected).all()
    with pytest.raises(ParameterError, match="channels"):
        metric.update(torch.randn(2, 4, 8, 9), target)


def test_device_of_the_running_matrix():
    metric = ConfusionMatrix(3, device="cpu")
    assert metric.matrix.device.type == "cpu"
    metric.update(torch.tensor([[0, 1]]), torch.tensor([[0, 2]]))
    assert metric.matrix.device.type == "cpu" and metric.matrix.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_matches_cpu():
    pred, target = random_batches(6, n_batches=1)[0]
    cpu = confusion_matrix(pred, target, 19)
    gpu = confusion_matrix(pred.cuda(), target.cuda(), 19)
    assert gpu.device.type == "cuda" and (gpu.cpu() == cpu).all()
    metric = ConfusionMatrix(19)
    metric.update(pred.cuda(), target.cuda())
    assert metric.matrix.device.type == "cuda" and (metric.matrix.cpu() == cpu).all()


@pytest.mark.parametrize("call,match", [
    (lambda: confusion_matrix(torch.tensor([[0, 7]]), torch.tensor([[0, 1]]), 2), r"outside \[0, 2\)"),
    (lambda: confusion_matrix(torch.tensor([[0, -1]]), torch.tensor([[0, 1]]), 2), r"min -1"),
    (lambda: confusion_matrix(torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.long), 2), "integer class ids"),
    (lambda: confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 2), "same"),
    (lambda: confusion_matrix(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), 2), "same"),
    (lambda: confusion_matrix([[0]], [[0]], 2), "Tensor or a NumPy array"),
    (lambda: confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), 0), "num_classes"),
    (lambda: ConfusionMatrix(3, class_names=["a", "b"]), "class_names"),
    (lambda: iou_table(np.zeros((2, 3))), "square"),
    (lambda: iou_table(np.zeros((2, 2)), ["a"]), "class_names"),
])
def test_bad_arguments_raise_one_line(call, match):
    with pytest.raises(ParameterError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
