"""UDP combined (offset) target: golden values by hand, mmpose's loops restated, its loss, flip test,
decoding, and the encode -> decode round trip on the real COCO sample."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from psa_jax.data.pose_pipeline import build_coco_keypoints, flip_joints_in_crop, make_eval_data, visualize_sample
from psa_jax.data.pose_targets import UDP_RADIUS_FACTOR, PoseCodec, channels_per_joint, udp_combined_targets
from psa_jax.evaluation import keypoint_decoding as D
from psa_jax.evaluation.flip_averaging import average_with_flipped, default_shift_heatmap, flip_back
from psa_jax.evaluation.pose_evaluator import evaluate_ground_truth
from psa_jax.tasks.pose_losses import combined_target_mse_loss, joints_mse_loss


# ---------------------------------------------------------------- targets
def test_disk_and_offsets_golden_values_by_hand():
    """Input 32x24 -> heatmap 8x6, UDP stride (23 / 5, 31 / 7); radius factor 0.25 -> r = 0.25 * 8 = 2.

    Joint at input (2.5 * 23 / 5, 3 * 31 / 7) -> heatmap mu = (2.5, 3.0). Disk (2.5 - x)^2 + (3 - y)^2 <= 4:
    row y = 3: x = 1..4 (d^2 = 2.25, 0.25, 0.25, 2.25); rows y = 2, 4: x = 1..4 (d^2 = 3.25, 1.25);
    rows y = 1, 5: dy^2 = 4 leaves no room for |dx| >= 0.5. 12 pixels in all.
    """
    sx, sy = 23 / 5, 31 / 7
    joints = np.array([[2.5 * sx, 3.0 * sy], [0.0, 0.0]])
    maps, weight = udp_combined_targets(joints, np.array([1, 0]), (24, 32), (6, 8), radius_factor=0.25)
    assert maps.shape == (8, 6, 6) and maps.dtype == np.float32
    np.testing.assert_array_equal(weight, [1, 0])
    disk = np.zeros((8, 6), np.float32)
    disk[2:5, 1:5] = 1
    np.testing.assert_array_equal(maps[..., 0], disk)
    # offsets (mu - p) / r inside the disk, 0 outside
    assert maps[3, 1, 1] == pytest.approx((2.5 - 1) / 2)  # 0.75
    assert maps[3, 4, 1] == pytest.approx((2.5 - 4) / 2)  # -0.75
    assert maps[2, 2, 2] == pytest.approx((3.0 - 2) / 2)  # y offset 0.5
    assert maps[4, 3, 2] == pytest.approx((3.0 - 4) / 2)  # -0.5
    assert maps[3, 2, 2] == 0.0 and maps[3, 2, 1] == pytest.approx(0.25)
    assert maps[1, 2, 1] == 0.0 and maps[1, 2, 2] == 0.0  # outside the disk
    np.testing.assert_array_equal(maps[..., 3:], 0)  # unlabelled joint: all zero


def test_default_radius_and_channel_layout_at_256x192():
    codec = PoseCodec("udp_combined", (256, 192))
    assert codec.radius == pytest.approx(0.0546875 * 64) == pytest.approx(3.5)
    assert codec.num_channels(17) == 51 and channels_per_joint("udp") == 1 and codec.warp_name == "udp"
    stride = (np.array(codec.input_wh) - 1) / (np.array(codec.heatmap_wh) - 1)
    joints = np.array([[20.0, 30.0], [10.0, 50.0], [40.0, 12.0]]) * stride  # integer heatmap pixels
    maps, weight = codec.encode(joints, np.ones(3))
    assert maps.shape == (64, 48, 9) and weight.tolist() == [1, 1, 1]
    for k, (x, y) in enumerate([(20, 30), (10, 50), (40, 12)]):
        cls = maps[..., 3 * k]
        # integer centre, r = 3.5: integers dx^2 + dy^2 <= 12.25 -> 37 pixels; (1, 3) in (10), (2, 3) out (13)
        assert cls.sum() == 37 and cls[y, x] == 1 and cls[y, x + 3] == 1
        assert cls[y + 3, x + 1] == 1 and cls[y + 3, x + 2] == 0 and cls[y, x + 4] == 0
        assert maps[y, x + 2, 3 * k + 1] == pytest.approx(-2 / 3.5)
        assert maps[y - 3, x, 3 * k + 2] == pytest.approx(3 / 3.5)


def test_codec_object_compares_the_radius_and_rejects_bad_values():
    a = PoseCodec("udp_combined", (256, 192))
    assert a == PoseCodec("udp_combined", (256, 192)) and hash(a) == hash(PoseCodec("udp_combined", (256, 192)))
    assert a != PoseCodec("udp_combined", (256, 192), radius_factor=0.1) and a != PoseCodec("udp", (256, 192))
    assert "radius_factor=0.0546875" in repr(a)
    with pytest.raises(ValueError, match="radius_factor must be positive"):
        PoseCodec("udp_combined", (256, 192), radius_factor=0.0)
    with pytest.raises(ValueError, match="udp_combined"):  # the error lists the codecs
        PoseCodec("combined", (256, 192))
    # the warp is UDP's: same matrix as the 'udp' codec
    np.testing.assert_array_equal(a.warp([100.0, 120.0], [150.0, 200.0], 30.0),
                                  PoseCodec("udp", (256, 192)).warp([100.0, 120.0], [150.0, 200.0], 30.0))


def _mmpose_combined_target(joints, vis, image_size, heatmap_size, factor):
    """mmpose 0.x TopDownGenerateTarget._udp_generate_target('CombinedTarget'), restated (CHW)."""
    k = len(joints)
    target = np.zeros((k, 3, heatmap_size[1] * heatmap_size[0]), np.float32)
    fx, fy = np.meshgrid(np.arange(heatmap_size[0]), np.arange(heatmap_size[1]))
    fx, fy = fx.flatten(), fy.flatten()
    radius = factor * heatmap_size[1]
    stride = (np.asarray(image_size, float) - 1.0) / (np.asarray(heatmap_size, float) - 1.0)
    for j in range(k):
        mx, my = joints[j][0] / stride[0], joints[j][1] / stride[1]
        xo, yo = (mx - fx) / radius, (my - fy) / radius
        keep = np.where(xo ** 2 + yo ** 2 <= 1)[0]
        if vis[j] > 0.5:
            target[j, 0, keep] = 1
            target[j, 1, keep] = xo[keep]
            target[j, 2, keep] = yo[keep]
    return target.reshape(k * 3, heatmap_size[1], heatmap_size[0]).transpose(1, 2, 0), np.asarray(vis, np.float32)


@pytest.mark.parametrize("input_hw", [(256, 192), (384, 288)])
def test_targets_match_mmpose_loop(input_hw):
    rng = np.random.default_rng(1)
    joints = rng.uniform(-20, [input_hw[1] + 20, input_hw[0] + 20], size=(17, 2))
    vis = (rng.random(17) > 0.2).astype(np.float32)
    codec = PoseCodec("udp_combined", input_hw)
    ours, w = codec.encode(joints, vis)
    ref, ref_w = _mmpose_combined_target(joints, vis, codec.input_wh, codec.heatmap_wh, UDP_RADIUS_FACTOR)
    np.testing.assert_array_equal(w, ref_w)
    np.testing.assert_array_equal(ours[..., 0::3], ref[..., 0::3])
    np.testing.assert_allclose(ours, ref, atol=1e-7)


# ---------------------------------------------------------------- loss
class _CombinedTargetMSELoss(torch.nn.Module):
    """mmpose models/losses/mse_loss.py::CombinedTargetMSELoss (NCHW), restated."""

    def __init__(self, use_target_weight):
        super().__init__()
        self.criterion = torch.nn.MSELoss(reduction="mean")
        self.use_target_weight = use_target_weight

    def forward(self, output, target, target_weight):
        b, c = output.shape[:2]
        pred = output.reshape((b, c, -1)).split(1, 1)
        gt = target.reshape((b, c, -1)).split(1, 1)
        loss, k = 0.0, c // 3
        for idx in range(k):
            hp, hg = pred[idx * 3].squeeze(1), gt[idx * 3].squeeze(1)
            if self.use_target_weight:
                hp, hg = hp * target_weight[:, idx], hg * target_weight[:, idx]
            loss += 0.5 * self.criterion(hp, hg)
            loss += 0.5 * self.criterion(hg * pred[idx * 3 + 1].squeeze(1), hg * gt[idx * 3 + 1].squeeze(1))
            loss += 0.5 * self.criterion(hg * pred[idx * 3 + 2].squeeze(1), hg * gt[idx * 3 + 2].squeeze(1))
        return loss / k


def test_loss_golden_value_by_hand():
    """B = 1, 1 x 2 map, K = 1, weight 0.5. Target: pixel 0 in the disk (cls 1, offsets (0.2, -0.4)),
    pixel 1 outside (all 0). Prediction: cls (0.6, 0.3), x (1.2, 5.0), y (0.6, -7.0).
    cls term: mean((0.5 * 0.6 - 0.5)^2, (0.5 * 0.3)^2) = (0.04 + 0.0225) / 2 = 0.03125
    x term: weighted disk 0.5 at pixel 0 only: (0.5 * (1.2 - 0.2))^2 / 2 = 0.125
    y term: (0.5 * (0.6 + 0.4))^2 / 2 = 0.125
    loss = 0.5 * (0.03125 + 0.125 + 0.125) = 0.140625."""
    target = jnp.array([[[[1.0, 0.2, -0.4], [0.0, 0.0, 0.0]]]])
    pred = jnp.array([[[[0.6, 1.2, 0.6], [0.3, 5.0, -7.0]]]])
    assert float(combined_target_mse_loss(pred, target, jnp.array([[0.5]]))) == pytest.approx(0.140625)
    # without weights: 0.5 * ((0.16 + 0.09) / 2 + 1 / 2 + 1 / 2) = 0.5625
    assert float(combined_target_mse_loss(pred, target)) == pytest.approx(0.5625)
    with pytest.raises(ValueError, match="3 channels per joint"):
        combined_target_mse_loss(pred[..., :2], target[..., :2])


@pytest.mark.parametrize("use_weight", [True, False])
def test_loss_matches_mmpose(use_weight):
    rng = np.random.default_rng(0)
    codec = PoseCodec("udp_combined", (64, 48))
    maps = []
    for _ in range(3):
        m, _ = codec.encode(rng.uniform(0, [48, 64], size=(17, 2)), np.ones(17))
        maps.append(m)
    target = np.stack(maps)
    pred = rng.normal(size=target.shape).astype(np.float32)
    weight = (rng.random((3, 17)) > 0.3).astype(np.float32)
    ref = _CombinedTargetMSELoss(use_weight)(torch.from_numpy(pred).permute(0, 3, 1, 2),
                                             torch.from_numpy(target).permute(0, 3, 1, 2),
                                             torch.from_numpy(weight)[..., None]).item()
    ours = combined_target_mse_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(weight) if use_weight else None)
    assert float(ours) == pytest.approx(ref, rel=1e-5)
    # masked mean over examples, as joints_mse_loss
    masked = combined_target_mse_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(weight),
                                      mask=jnp.array([True, False, False]))
    first = combined_target_mse_loss(jnp.asarray(pred[:1]), jnp.asarray(target[:1]), jnp.asarray(weight[:1]))
    assert float(masked) == pytest.approx(float(first), rel=1e-6)
    assert float(joints_mse_loss(jnp.asarray(pred), jnp.asarray(target))) != pytest.approx(float(ours))


# ---------------------------------------------------------------- decoding
def _mmpose_decode(maps_nchw, kernel=11, factor=UDP_RADIUS_FACTOR):
    """mmpose 0.x keypoints_from_heatmaps(use_udp=True, target_type='CombinedTarget'), restated per sample."""
    hm = maps_nchw.copy()
    n, c, h, w = hm.shape
    for person in hm:
        for i, m in enumerate(person):
            kt = 2 * kernel + 1 if i % 3 == 0 else kernel
            m[:] = __import__("cv2").GaussianBlur(m, (kt, kt), 0)
    radius = factor * h
    coords = np.zeros((n, c // 3, 2))
    scores = np.zeros((n, c // 3))
    for i in range(n):
        for k in range(c // 3):
            cls = hm[i, 3 * k]
            idx = int(np.argmax(cls))
            y, x = divmod(idx, w)
            scores[i, k] = cls.reshape(-1)[idx]
            coords[i, k] = [x + hm[i, 3 * k + 1, y, x] * radius, y + hm[i, 3 * k + 2, y, x] * radius]
    return coords, scores


def test_decoding_matches_mmpose_on_noisy_maps():
    rng = np.random.default_rng(5)
    codec = PoseCodec("udp_combined", (256, 192))
    maps = np.stack([codec.encode(rng.uniform(10, [182, 246], size=(17, 2)), np.ones(17))[0] for _ in range(2)])
    maps = (maps + rng.normal(scale=0.05, size=maps.shape)).astype(np.float32)
    ours, s = D.decode_heatmaps(maps, codec)
    ref, rs = _mmpose_decode(np.ascontiguousarray(maps.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(s, rs, atol=1e-6)


def test_encode_decode_round_trip_subpixel():
    """Without the offset blur (mmpose 1.x) the round trip is exact; with it (0.x, the default) the
    zeros outside the disk pull the offset towards 0: error below 0.3 heatmap px (r = 3.5)."""
    codec = PoseCodec("udp_combined", (256, 192))
    rng = np.random.default_rng(2)
    joints = rng.uniform([30, 30], [162, 226], size=(17, 2))
    maps, _ = codec.encode(joints, np.ones(17))
    stride = (np.array(codec.input_wh) - 1) / (np.array(codec.heatmap_wh) - 1)
    exact, _ = D.decode_udp_combined(maps[None], blur_offsets=False)
    np.testing.assert_allclose(exact[0], joints / stride, atol=1e-5)
    coords, scores = D.decode_heatmaps(maps[None], codec)
    err = np.abs(coords[0] - joints / stride)
    assert err.max() < 0.3 and err.mean() < 0.15
    assert np.all(scores > 0.3)  # blurred disk maximum
    # the argmax pixel of the blurred disk is the joint's nearest pixel
    np.testing.assert_array_equal(np.abs(coords[0] - joints / stride).max(-1) < 0.5, True)
    with pytest.raises(ValueError, match="3 channels per joint"):
        D.decode_heatmaps(maps[None, ..., :50], codec)


def test_heatmaps_to_image_uses_the_udp_inverse_warp():
    c, s = np.array([[100.0, 200.0]]), np.array([[96.0, 128.0]])
    pts = np.array([[[0.0, 0.0], [47.0, 63.0]]])
    np.testing.assert_allclose(D.heatmaps_to_image(pts, c, s, PoseCodec("udp_combined", (256, 192)))[0],
                               [[52, 136], [148, 264]])


# ---------------------------------------------------------------- flip test
def test_flip_back_negates_x_offsets_and_swaps_joint_groups():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 8, 6, 51)).astype(np.float32)
    back = flip_back(maps, codec="udp_combined")
    np.testing.assert_array_equal(flip_back(back, codec="udp_combined"), maps)
    mirrored = maps[:, :, ::-1]
    np.testing.assert_array_equal(back[..., 3:6] * [1, -1, 1], mirrored[..., 6:9])  # left eye <- right eye
    np.testing.assert_array_equal(back[..., 0:3] * [1, -1, 1], mirrored[..., 0:3])  # nose stays
    assert default_shift_heatmap("udp_combined") is False
    with pytest.raises(ValueError, match="3 channels per joint"):
        flip_back(maps[..., :50], codec="udp_combined")


def test_mirrored_targets_flipped_back_equal_the_targets():
    """UDP's flip is exact: the targets of the mirrored crop, flipped back, are the crop's targets,
    and their flip-test average decodes where the targets decode."""
    codec = PoseCodec("udp_combined", (256, 192))
    rng = np.random.default_rng(3)
    joints = np.concatenate([rng.uniform([10, 10], [182, 246], size=(17, 2)), np.ones((17, 1))], -1)
    joints[4, 2] = 0
    joints[4, :2] = 0
    maps, _ = codec.encode(joints[:, :2], joints[:, 2])
    mirrored = flip_joints_in_crop(joints, codec.input_wh[0])
    maps_f, _ = codec.encode(mirrored[:, :2], mirrored[:, 2])
    back = flip_back(maps_f[None], codec="udp_combined")[0]
    inside = maps[..., 0::3] == back[..., 0::3]
    assert inside.mean() > 0.999  # disk borders may differ by float rounding of d^2 <= 1
    both = np.repeat(inside & (maps[..., 0::3] > 0), 3, axis=-1)
    np.testing.assert_allclose(back[both], maps[both], atol=1e-5)
    avg = average_with_flipped(maps[None], maps_f[None], shift_heatmap=False, codec="udp_combined")
    np.testing.assert_allclose(D.decode_heatmaps(avg, codec)[0], D.decode_heatmaps(maps[None], codec)[0], atol=1e-3)


# ---------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def sample_data_dir(tmp_path_factory, coco_sample_dir):
    data_dir = tmp_path_factory.mktemp("coco_keypoints")
    build_coco_keypoints(coco_sample_dir, data_dir)
    return data_dir


def test_encode_decode_round_trip_on_the_coco_sample(sample_data_dir):
    """Targets of the 12 annotated people fed to the decoder as predictions: pycocotools AP >= 0.99."""
    stats = evaluate_ground_truth(sample_data_dir, boxes="gt", codec="udp_combined", input_size=(256, 192),
                                  progress=False)
    assert stats["num_instances"] == 12
    assert stats["AP"] >= 0.99, stats


def test_training_sample_picture_draws_the_disks(sample_data_dir):
    from psa_jax.data.pose_pipeline import PoseAugmentConfig, make_train_data

    source, transform = make_train_data(sample_data_dir, split="validation", codec="udp_combined",
                                        input_size=(256, 192), augment=PoseAugmentConfig.none(), progress=False)
    example = transform(source[0], np.random.default_rng(0))
    assert example["target"].shape == (64, 48, 51) and example["target_weight"].shape == (17,)
    picture = visualize_sample(example)
    assert picture.shape == (256, 192, 3) and picture.dtype == np.uint8
    data = make_eval_data(sample_data_dir, codec="udp_combined", progress=False)
    assert data.codec.warp_name == "udp"


# ---------------------------------------------------------------- task wiring
@pytest.mark.usefixtures("tiny_hrnet")
def test_pose_task_builds_3k_outputs_and_selects_the_combined_loss(tmp_path):
    import jax
    from flax import nnx

    from psa_jax.tasks.pose import PoseTask
    from psa_jax.training.config_schema import pose_config

    def task(codec):
        config = pose_config()
        config.model.width = "w8_tiny"
        config.data.codec = codec
        config.data.input_size = (64, 64)
        return PoseTask(config, tmp_path)

    for codec, channels in (("udp_combined", 51), ("udp", 17)):
        t = task(codec)
        model = nnx.eval_shape(lambda t=t: t.build_model(nnx.Rngs(0), platform="cpu"))
        shapes = {leaf.shape for leaf in jax.tree.leaves(nnx.state(model.final_layer, nnx.Param))}
        assert shapes == {(1, 1, 8, channels), (channels,)}, (codec, shapes)
    rng = np.random.default_rng(0)
    target = jnp.asarray(rng.random((2, 16, 16, 51)), jnp.float32)
    pred = jnp.asarray(rng.normal(size=(2, 16, 16, 51)), jnp.float32)
    weight = jnp.ones((2, 17))
    batch = {"target": target, "target_weight": weight}
    loss, _ = task("udp_combined").loss_fn(pred, batch)
    assert float(loss) == pytest.approx(float(combined_target_mse_loss(pred, target, weight)))
    loss, _ = task("udp").loss_fn(pred[..., :17], {"target": target[..., :17], "target_weight": weight})
    assert float(loss) == pytest.approx(float(joints_mse_loss(pred[..., :17], target[..., :17], weight)))
