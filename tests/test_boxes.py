"""BoxTracker on synthetic detection sequences: stable ids, new ids after the buffer, several objects."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import supervision as sv

from turncrop.tracking.boxes import BoxTracker

FPS = 30.0
PRODUCT = np.array([300.0, 120.0, 520.0, 400.0], dtype=np.float32)


def dets(*boxes, confidence=None, **data) -> sv.Detections:
    xyxy = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    conf = None if confidence is None else np.asarray(confidence, dtype=np.float32)
    return sv.Detections(xyxy=xyxy, confidence=conf, data={k: np.asarray(v) for k, v in data.items()})


def run(tracker: BoxTracker, frames: list[sv.Detections], timestamps: bool) -> list[sv.Detections]:
    return [tracker.update(d, timestamp=i / FPS if timestamps else None) for i, d in enumerate(frames)]


def test_steady_id_with_jitter_from_the_first_frame():
    rng = np.random.default_rng(0)
    tracker = BoxTracker(frame_rate=FPS)
    for i in range(50):
        box = PRODUCT + rng.normal(0, 3, 4).astype(np.float32)
        out = tracker.update(dets(box, confidence=[0.9]), timestamp=i / FPS)
        assert out.tracker_id.tolist() == [0], f"frame {i}"
        np.testing.assert_array_equal(out.xyxy[0], box)  # the detection's own box, not the filtered one
        assert out.data["track_xyxy"].shape == (1, 4)
    # the filtered box stays close to the true box while single detections wander by ~3 px
    assert np.abs(out.data["track_xyxy"][0] - PRODUCT).max() < 6


@pytest.mark.parametrize("timestamps", [False, True])
def test_id_kept_through_a_gap_up_to_the_buffer_and_renewed_after(timestamps):
    buffer = 10
    for gap, expected in [(3, 0), (buffer, 0), (buffer + 1, 1), (buffer + 20, 1)]:
        tracker = BoxTracker(frame_rate=FPS, lost_track_buffer=buffer)
        frames = [dets(PRODUCT)] * 20 + [dets()] * gap + [dets(PRODUCT)] * 5
        outs = run(tracker, frames, timestamps)
        assert all(o.tracker_id.tolist() == [0] for o in outs[:20])
        assert all(len(o) == 0 for o in outs[20 : 20 + gap])
        after = [o.tracker_id.tolist() for o in outs[20 + gap :]]
        assert after == [[expected]] * 5, f"gap {gap}: {after}"


def test_buffer_is_in_frames_of_the_given_rate():
    """At 10 fps a 5-frame buffer is half a second; ByteTrack alone would count 30 fps frames."""
    for gap, expected in [(5, 0), (6, 1)]:
        tracker = BoxTracker(frame_rate=10.0, lost_track_buffer=5)
        frames = [dets(PRODUCT)] * 5 + [dets()] * gap + [dets(PRODUCT)]
        outs = [tracker.update(d, timestamp=i / 10.0) for i, d in enumerate(frames)]
        assert outs[-1].tracker_id.tolist() == [expected], f"gap {gap}"


def test_new_product_after_empty_stage_gets_new_id_and_old_one_is_forgotten():
    tracker = BoxTracker(frame_rate=FPS, lost_track_buffer=5)
    other = np.array([250.0, 150.0, 450.0, 420.0], dtype=np.float32)
    for _ in range(10):
        tracker.update(dets(PRODUCT))
    for _ in range(10):
        tracker.update(dets())
    assert len(tracker.tracks()) == 0
    out = tracker.update(dets(other))
    assert out.tracker_id.tolist() == [1]


def test_two_objects_keep_separate_ids_whatever_the_input_order():
    tracker = BoxTracker(frame_rate=FPS)
    left0 = np.array([50, 100, 200, 300], dtype=np.float32)
    right0 = np.array([500, 100, 650, 300], dtype=np.float32)
    ids_left, ids_right = set(), set()
    for i in range(40):
        left = left0 + np.float32(2 * i) * np.array([1, 0, 1, 0], np.float32)  # drifting right
        right = right0 - np.float32(2 * i) * np.array([1, 0, 1, 0], np.float32)  # drifting left
        frame = dets(left, right, name=["L", "R"]) if i % 2 else dets(right, left, name=["R", "L"])
        out = tracker.update(frame, timestamp=i / FPS)
        assert len(out) == 2
        assert out.data["name"].tolist() == frame.data["name"].tolist()  # input order, fields carried
        for name, track_id in zip(out.data["name"], out.tracker_id):
            (ids_left if name == "L" else ids_right).add(int(track_id))
    assert len(ids_left) == 1 and len(ids_right) == 1 and ids_left != ids_right


def test_masks_and_other_fields_are_carried_and_untracked_detections_dropped():
    tracker = BoxTracker(frame_rate=FPS, track_activation_threshold=0.5, high_conf_det_threshold=0.5)
    mask = np.zeros((2, 480, 854), dtype=bool)
    mask[0, 120:400, 300:520] = True
    first = dets(PRODUCT, [10, 10, 60, 60], confidence=[0.9, 0.2])
    first.mask = mask
    first.class_id = np.array([3, 7])
    out = tracker.update(first)
    # the low-confidence box matches no track and may not start one
    assert out.tracker_id.tolist() == [0]
    assert out.class_id.tolist() == [3]
    np.testing.assert_array_equal(out.mask[0], mask[0])


def test_low_confidence_detection_extends_an_existing_track_but_never_starts_one():
    tracker = BoxTracker(frame_rate=FPS)
    assert len(tracker.update(dets(PRODUCT, confidence=[0.3]))) == 0
    assert tracker.update(dets(PRODUCT, confidence=[0.9])).tracker_id.tolist() == [0]
    for _ in range(5):
        assert tracker.update(dets(PRODUCT, confidence=[0.3])).tracker_id.tolist() == [0]


def test_min_hits_withholds_new_tracks_until_confirmed():
    tracker = BoxTracker(frame_rate=FPS, min_hits=3)
    outs = run(tracker, [dets(PRODUCT)] * 5, timestamps=False)
    assert [o.tracker_id.tolist() for o in outs] == [[], [], [0], [0], [0]]
    # a one-frame false positive never gets an id
    out = tracker.update(dets(PRODUCT, [600, 300, 700, 400]))
    assert out.tracker_id.tolist() == [0]


def test_single_frame_track_that_misses_a_frame_keeps_its_provisional_id():
    tracker = BoxTracker(frame_rate=FPS)
    assert tracker.update(dets(PRODUCT)).tracker_id.tolist() == [0]
    assert len(tracker.update(dets())) == 0
    assert tracker.update(dets(PRODUCT)).tracker_id.tolist() == [0]
    assert tracker.update(dets(PRODUCT)).tracker_id.tolist() == [0]


def test_predict_extrapolates_motion_without_changing_the_tracker():
    tracker = BoxTracker(frame_rate=FPS)
    velocity = np.array([3, 1, 3, 1], dtype=np.float32)  # px per frame
    for i in range(30):
        tracker.update(dets(PRODUCT + i * velocity), timestamp=i / FPS)
    nxt = tracker.predict(timestamp=30 / FPS)
    assert nxt.tracker_id.tolist() == [0]
    np.testing.assert_allclose(nxt.xyxy[0], PRODUCT + 30 * velocity, atol=1.0)
    later = tracker.predict(timestamp=35 / FPS)
    np.testing.assert_allclose(later.xyxy[0], PRODUCT + 35 * velocity, atol=2.0)
    # predicting is side-effect free: same answer twice, and tracks() still at the last update
    np.testing.assert_array_equal(tracker.predict(timestamp=30 / FPS).xyxy, nxt.xyxy)
    np.testing.assert_allclose(tracker.tracks().xyxy[0], PRODUCT + 29 * velocity, atol=1.0)
    assert tracker.update(dets(PRODUCT + 30 * velocity), timestamp=30 / FPS).tracker_id.tolist() == [0]


def test_tracks_lists_coasting_tracks_with_their_miss_count():
    tracker = BoxTracker(frame_rate=FPS, lost_track_buffer=10)
    tracker.update(dets(PRODUCT))
    tracker.update(dets(PRODUCT))
    tracker.update(dets())
    tracker.update(dets())
    alive = tracker.tracks()
    assert alive.tracker_id.tolist() == [0]
    assert alive.data["frames_since_update"].tolist() == [2]


def test_reset_restarts_ids():
    tracker = BoxTracker(frame_rate=FPS)
    tracker.update(dets(PRODUCT), timestamp=5.0)
    tracker.update(dets(PRODUCT, [600, 300, 700, 400]), timestamp=5.1)
    tracker.reset()
    assert len(tracker.tracks()) == 0
    assert tracker.update(dets([600, 300, 700, 400]), timestamp=0.0).tracker_id.tolist() == [0]


def test_backwards_timestamp_returns_nothing_and_keeps_state():
    tracker = BoxTracker(frame_rate=FPS)
    tracker.update(dets(PRODUCT), timestamp=1.0)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert len(tracker.update(dets(PRODUCT), timestamp=0.5)) == 0
    assert tracker.update(dets(PRODUCT), timestamp=1.0 + 1 / FPS).tracker_id.tolist() == [0]


def test_empty_input_and_bad_arguments():
    tracker = BoxTracker(frame_rate=FPS)
    out = tracker.update(sv.Detections.empty())
    assert len(out) == 0 and out.tracker_id.shape == (0,) and out.data["track_xyxy"].shape == (0, 4)
    with pytest.raises(TypeError, match="sv.Detections"):
        tracker.update(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="frame_rate"):
        BoxTracker(frame_rate=0)
    with pytest.raises(ValueError, match="min_hits"):
        BoxTracker(frame_rate=FPS, min_hits=0)
    with pytest.raises(ValueError, match="lost_track_buffer"):
        BoxTracker(frame_rate=FPS, lost_track_buffer=-1)
