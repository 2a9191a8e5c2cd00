"""Never lose the object off the studio path (issue 15, items 1 and 2), on the weight-free backend.

With a box prompt and no empty-stage model the product's own masks are the only evidence of it. The box
prompt is an anchor moved by the object's flow that does not shrink with a failing mask, an appearance
memory judges every mask, and a lost object is re-keyed until it is found again (`tracking.recovery`).

- car-roundabout from a family of boxes (tight, padded by 5/10/20 % of its size, shifted by 3 px): the
  same segmentation, J >= 0.82 and no frame below 0.5 after frame 5;
- blackswan from the same family: J >= 0.85 (the box's own GrabCut takes the wall behind the swan for swan;
  the reading that starts the colours commoner outside the box as background follows the swan's outline);
- frames blanked to grey mid-clip: the loss and the recovery are logged, the object is back within 10
  frames, and it stays one product;
- a fast ball half hidden by a leg: found again by the search over the frame;
- photographs taken walking round an object: where the frames jump, the anchor goes out to the object's
  colours that the box prompt cut.
"""
from __future__ import annotations

import logging
import re

import cv2
import numpy as np
import pytest
from data_paths import load_masks, require_data

from turncrop.models.base import Prompt
from turncrop.models.graphcut import GraphCutSegmenter
from turncrop.stream.config import load_config
from turncrop.stream.evaluate import evaluate
from turncrop.tracking.recovery import ObjectWatch, RecoveryOptions


def box_family(tight: list[float]) -> dict[str, list[float]]:
    """The tight box, the box padded by 5, 10 and 20 % of its size (half each side) and shifted by ±3 px."""
    x0, y0, x1, y1 = tight
    family = {"tight": list(tight)}
    for pad in (5, 10, 20):
        dx, dy = (x1 - x0) * pad / 200, (y1 - y0) * pad / 200
        family[f"pad{pad}"] = [x0 - dx, y0 - dy, x1 + dx, y1 + dy]
    for name, (sx, sy) in {"x+3": (3, 0), "x-3": (-3, 0), "y+3": (0, 3), "y-3": (0, -3)}.items():
        family[name] = [x0 + sx, y0 + sy, x1 + sx, y1 + sy]
    return family


def _tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _evaluate(frames, masks, box: list[float]) -> tuple[float, list[float], dict]:
    report = evaluate(frames, masks, load_config(None, {"backend": "graphcut", "prompt.box": box}))
    return report["J_mean"], [d["J"] for d in report["frames_detail"]], report


# -- the watch on its own ---------------------------------------------------------------------------------


def _square(size: int, x0: int, y0: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[y0:y0 + side, x0:x0 + side] = True
    return mask


def test_the_anchor_does_not_shrink_with_a_collapsing_mask():
    image = np.full((200, 200, 3), 90, np.uint8)
    image[50:150, 50:150] = (200, 40, 40)
    watch = ObjectWatch(RecoveryOptions())
    watch.observe(0, image, _square(200, 50, 50, 100), keyframe=True, first=True)
    # The mask loses 8 px a frame on its left side: a healthy mask, but the box may not follow that fast.
    for i in range(1, 6):
        mask = _square(200, 50, 50, 100)
        mask[:, :50 + 8 * i] = False
        assert watch.observe(i, image, mask, keyframe=False, first=False).healthy
    assert watch.anchor[0] <= 50 + 5 * RecoveryOptions().shrink_rate * 100 + 1e-3, watch.anchor


def _jumped_view(right: int, size: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A gold object on grey, seen first at [60, 60, 160, 160]; in the next view it spans [60, 60, right, 160]
    and the box prompt (the first mask's box) cuts it at x = 163: the image, the first mask, the cut mask."""
    first = _square(size, 60, 60, 100)
    image = np.full((size, size, 3), 90, np.uint8)
    image[60:160, 60:right] = (200, 160, 40)
    cut = np.zeros((size, size), bool)
    cut[60:160, 60:163] = True
    return image, first, cut


@pytest.mark.parametrize("jumped", [True, False])
def test_where_the_frame_jumped_the_anchor_goes_out_to_the_colours_the_box_cut(jumped):
    image, first, cut = _jumped_view(180)
    watch = ObjectWatch(RecoveryOptions())
    watch.observe(0, image, first, keyframe=True, first=True)
    assert watch.observe(1, image, cut, keyframe=True, first=False, jumped=jumped).healthy
    if jumped:  # out to the object's right edge
        assert 177 <= watch.anchor[2] <= 183, watch.anchor
    else:  # a video frame the flow explains: the anchor follows its mask at a bounded rate
        assert watch.anchor[2] <= 163 + 1e-3, watch.anchor
    np.testing.assert_allclose(watch.anchor[[0, 1, 3]], [60, 60, 160], atol=2)  # uncut sides stay


def test_a_jump_goes_no_further_than_the_remembered_size_allows():
    image, first, cut = _jumped_view(290)  # the object's colours run on (a leak's would too)
    watch = ObjectWatch(RecoveryOptions())
    watch.observe(0, image, first, keyframe=True, first=True)
    watch.observe(1, image, cut, keyframe=True, first=False, jumped=True)
    width = watch.anchor[2] - watch.anchor[0]
    assert 1.1 * 100 <= width <= RecoveryOptions().jump_growth * 100 + 1e-3, watch.anchor


def test_a_jumped_frame_whose_box_cut_only_backdrop_keeps_the_anchor():
    image, first, cut = _jumped_view(163)  # beyond the box: the backdrop's colours, not the object's
    watch = ObjectWatch(RecoveryOptions())
    watch.observe(0, image, first, keyframe=True, first=True)
    watch.observe(1, image, cut, keyframe=True, first=False, jumped=True)
    assert watch.anchor[2] <= 163 + 1e-3, watch.anchor


def test_an_anchor_carried_out_of_the_frame_gives_no_box():
    image = np.full((200, 200, 3), 90, np.uint8)
    watch = ObjectWatch(RecoveryOptions())
    watch.observe(0, image, _square(200, 150, 50, 40), keyframe=True, first=True)
    watch.move(np.array([30.0, 0.0]))
    assert watch.box((200, 200))[2] == 200  # half out: clipped to the frame
    watch.move(np.array([40.0, 0.0]))
    assert watch.box((200, 200)) is None  # wholly out: no box prompt, not an inverted one


def test_a_collapsed_mask_is_lost_and_a_whole_one_recovers(caplog):
    image = np.full((200, 200, 3), 90, np.uint8)
    image[50:150, 50:150] = (200, 40, 40)
    watch = ObjectWatch(RecoveryOptions())
    whole = _square(200, 50, 50, 100)
    watch.observe(0, image, whole, keyframe=True, first=True)
    with caplog.at_level(logging.INFO, logger="turncrop.tracking.recovery"):
        lost = watch.observe(1, image, _square(200, 90, 90, 20), keyframe=False, first=False)
        assert lost.lost and "collapsed" in lost.reason and watch.searching
        assert watch.observe(2, image, np.zeros_like(whole), keyframe=True, first=False).lost
        back = watch.observe(3, image, whole, keyframe=True, first=False)
    assert back.recovered and not watch.searching
    assert "frame 1: object lost: area collapsed" in caplog.text
    assert "frame 3: object re-acquired after 2 frames" in caplog.text


def test_a_mask_fading_keyframe_after_keyframe_comes_to_look_collapsed():
    image = np.full((200, 200, 3), 90, np.uint8)
    image[20:180, 20:180] = (200, 40, 40)
    watch = ObjectWatch(RecoveryOptions())
    watch.observe(0, image, _square(200, 20, 20, 160), keyframe=True, first=True)
    verdicts = []
    for i, side in enumerate(range(150, 90, -10), start=1):  # loses 10 px of its side a keyframe
        verdicts.append(watch.observe(i, image, _square(200, 20, 20, side), keyframe=True, first=False))
    lost = [v for v in verdicts if v.lost]
    assert lost and "collapsed" in lost[0].reason, [v.reason for v in verdicts]
    # Learnt at the full rate the memory would follow the fading down and never see it.
    follower = ObjectWatch(RecoveryOptions(memory_shrink_rate=0.3))
    follower.observe(0, image, _square(200, 20, 20, 160), keyframe=True, first=True)
    assert all(follower.observe(i, image, _square(200, 20, 20, side), keyframe=True, first=False).healthy
               for i, side in enumerate(range(150, 90, -10), start=1))


def test_a_lost_object_is_looked_for_at_its_remembered_size():
    image = np.full((300, 300, 3), 90, np.uint8)
    image[100:200, 100:200] = (200, 40, 40)
    watch = ObjectWatch(RecoveryOptions())
    watch.observe(0, image, _square(300, 100, 100, 100), keyframe=True, first=True)
    watch.anchor = np.array([140, 140, 160, 160], np.float32)  # shrunk with the failing masks
    watch.search(image)
    assert np.allclose(watch.anchor, [100, 100, 200, 200], atol=3), watch.anchor


def test_a_mask_of_other_colours_is_lost():
    image = np.full((200, 200, 3), 90, np.uint8)
    image[50:150, 50:150] = (200, 40, 40)
    watch = ObjectWatch(RecoveryOptions())
    watch.observe(0, image, _square(200, 50, 50, 100), keyframe=True, first=True)
    elsewhere = np.zeros((200, 200), bool)
    elsewhere[:, :100] = True
    elsewhere[50:150, 50:100] = False  # as large as the object, all backdrop
    verdict = watch.observe(1, image, elsewhere, keyframe=False, first=False)
    assert verdict.lost and "colours unlike memory" in verdict.reason


def test_the_search_moves_the_anchor_onto_the_remembered_colours():
    image = np.full((300, 300, 3), 90, np.uint8)
    image[50:150, 50:150] = (200, 40, 40)
    watch = ObjectWatch(RecoveryOptions())
    watch.observe(0, image, _square(300, 50, 50, 100), keyframe=True, first=True)
    moved = np.full_like(image, 90)
    moved[90:190, 110:210] = (200, 40, 40)  # the object moved while it was lost
    watch.search(moved)
    assert np.allclose(watch.anchor, [110, 90, 210, 190], atol=3), watch.anchor


# -- end to end on real video ---------------------------------------------------------------------------

SWAN_J = 0.85  # issue 15's goal; measured 0.89-0.90 over FAMILY_SAMPLE (0.37-0.38 before the box readings)
FAMILY_SAMPLE = ("tight", "pad20", "x-3", "y-3")  # the whole family is measured in the closing note of issue 15


@pytest.fixture(scope="module")
def car():
    folder = require_data("davis_car_roundabout")
    return folder / "frames", folder / "masks", _tight_box(load_masks(folder / "masks")[0])


@pytest.mark.slow
@pytest.mark.parametrize("member", FAMILY_SAMPLE)
def test_car_roundabout_from_every_box_of_the_family(car, member):
    frames, masks, tight = car
    j, per_frame, report = _evaluate(frames, masks, box_family(tight)[member])
    assert j >= 0.82, f"{member}: mean J {j:.4f}"
    assert min(per_frame[6:]) >= 0.5, f"{member}: frame {int(np.argmin(per_frame[6:])) + 6} J {min(per_frame[6:]):.3f}"
    assert report["products"] == 1


def test_a_swan_before_a_wall_is_cut_from_every_box_of_the_family():
    """The first frame alone, the whole family: the box holds the swan, the water and a pale wall that also
    lies outside it. The box's own GrabCut kept the wall (J 0.43-0.52 over the family); measured 0.85-0.93."""
    folder = require_data("davis_blackswan")
    truth = load_masks(folder / "masks")[0]
    image = cv2.cvtColor(cv2.imread(str(sorted((folder / "frames").iterdir())[0])), cv2.COLOR_BGR2RGB)
    segmenter = GraphCutSegmenter()
    for member, box in box_family(_tight_box(truth)).items():
        found = segmenter.decode(segmenter.encode(image), Prompt(box=np.array(box, np.float32)), image)
        mask = found.masks[int(np.argmax(found.scores))]
        j = (mask & truth).sum() / (mask | truth).sum()
        assert j >= 0.82, f"{member}: first-frame J {j:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("member", FAMILY_SAMPLE)
def test_blackswan_from_every_box_of_the_family(member):
    folder = require_data("davis_blackswan")
    tight = _tight_box(load_masks(folder / "masks")[0])
    j, per_frame, report = _evaluate(folder / "frames", folder / "masks", box_family(tight)[member])
    assert j >= SWAN_J, f"{member}: mean J {j:.4f}"
    assert min(per_frame) >= 0.7 and report["products"] == 1, per_frame


def _blanked_clip(folder, out, frames: int, blank: range):
    """The first `frames` frames of a DAVIS clip with the frames in `blank` made uniform grey, and its masks."""
    (out / "frames").mkdir(parents=True)
    (out / "masks").mkdir()
    sources = sorted((folder / "frames").iterdir())[:frames]
    for i, (image, mask) in enumerate(zip(sources, sorted((folder / "masks").iterdir()))):
        picture = cv2.imread(str(image))
        if i in blank:
            picture[:] = 128
        cv2.imwrite(str(out / "frames" / f"{i:05d}.png"), picture)
        cv2.imwrite(str(out / "masks" / f"{i:05d}.png"), cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE))
    return out / "frames", out / "masks"


@pytest.mark.slow
def test_an_object_lost_to_blank_frames_is_re_acquired_and_logged(tmp_path, car, caplog):
    blank = range(20, 24)
    frames, masks = _blanked_clip(require_data("davis_car_roundabout"), tmp_path, 40, blank)
    with caplog.at_level(logging.INFO, logger="turncrop.tracking"):
        j, per_frame, report = _evaluate(frames, masks, box_family(car[2])["pad10"])
    lost = [int(m) for m in re.findall(r"frame (\d+): object lost: ", caplog.text)]
    found = [int(m) for m in re.findall(r"frame (\d+): object re-acquired", caplog.text)]
    assert lost and lost[0] in blank, caplog.text
    assert found and found[0] - blank.stop < 10, caplog.text
    assert min(per_frame[found[0]:]) >= 0.7, per_frame
    assert report["products"] == 1 and "left the stage" not in caplog.text



@pytest.mark.slow
def test_a_fast_ball_half_hidden_by_a_leg_is_found_again_over_the_frame(caplog):
    """davis_soccerball: the ball rolls ~25 px a frame and a leg hides half of it at frame 4; the anchor lags
    and the mask is lost. A local mean shift from the lagging anchor never found it again (J 0.07); the
    search over the frame near where it was finds it (measured J 0.53, one product, four re-acquisitions)."""
    folder = require_data("davis_soccerball")
    tight = _tight_box(load_masks(folder / "masks")[0])
    with caplog.at_level(logging.INFO, logger="turncrop.tracking"):
        j, per_frame, report = _evaluate(folder / "frames", folder / "masks", tight)
    found = [int(m) for m in re.findall(r"frame (\d+): object re-acquired", caplog.text)]
    assert found and found[0] <= 10, caplog.text
    assert j >= 0.45 and report["products"] == 1, (j, per_frame)
    assert np.mean(per_frame[-10:]) >= 0.3, per_frame  # still held at the end, not given up


def _photos(folder, out, count: int, scale: float):
    """The first `count` photos of a set and their masks, resized by `scale` (full size costs 4x the time)."""
    for kind in ("frames", "masks"):
        (out / kind).mkdir(parents=True)
        for i, path in enumerate(sorted((folder / kind).iterdir())[:count]):
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(out / kind / f"{i:05d}.png"), small)
    return out / "frames", out / "masks"


def test_a_box_padded_past_the_frame_is_the_box_clipped_to_it(tmp_path):
    """A padded box may run past the frame's edge (the cape fills the frame): there are no pixels beyond it, and
    the anchor and remembered size measured off the unclipped box cost 0.04 J over the set."""
    frames, masks = _photos(require_data("real_gold_cape_views"), tmp_path, 6, 0.25)
    h, w = load_masks(masks)[0].shape
    x0, y0, x1, y1 = box_family(_tight_box(load_masks(masks)[0]))["pad20"]
    assert x0 < 0 and x1 > w, "the padded box must run past the frame for this test to say anything"
    clipped = [max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))]
    assert _evaluate(frames, masks, [x0, y0, x1, y1])[1] == _evaluate(frames, masks, clipped)[1]


@pytest.mark.slow
def test_photos_taken_walking_round_an_object_keep_it_whole(tmp_path):
    """real_gold_cape_views (real photos, a cluttered storeroom behind): between views the object jumps and
    grows by up to half its size, no flow carries it, and the box prompt cut it, keyframe after keyframe
    (first 40 photos at half size, padded box: J 0.665, worst frame 0.27; the whole set at full size 0.583).
    Going out to its colours where the frame jumped: 0.855, worst 0.60 (whole set 0.829); the carried mask no
    longer saying where the object is not, where the frames jumped: 0.895, worst 0.73 (whole set 0.898)."""
    frames, masks = _photos(require_data("real_gold_cape_views"), tmp_path, 40, 0.5)
    j, per_frame, report = _evaluate(frames, masks, box_family(_tight_box(load_masks(masks)[0]))["pad20"])
    assert j >= 0.86 and min(per_frame) >= 0.6, (j, per_frame)
    assert report["products"] == 1
