"""Tracked product boxes with stable ids: a thin layer over ByteTrack from Roboflow's `trackers`.

The pipeline feeds one `sv.Detections` per frame (usually the box of the product mask, from SAM or a
detector) and gets back the same detections with a `tracker_id` that stays put while the product
stays on the turntable, and a fresh id when a product appears after the stage has been empty for
longer than the lost-track buffer.

What this layer adds to `trackers.ByteTrackTracker`:

- Ids from the first frame. ByteTrack gives a brand-new track `tracker_id = -1` on the frame that
  creates it (whatever `minimum_consecutive_frames` is) and a real id only from its next matched
  frame. A keyframe segmentation is too costly to drop, so with `min_hits=1` (the default) the new
  track is given its id at once; the id belongs to the track, and ByteTrack's own id, when it comes,
  is mapped onto it. With `min_hits >= 2` a track is reported only once ByteTrack confirms it after
  that many consecutive detections (for noisy detectors: a one-frame false positive gets no id).
- Lost-track buffer in frames of the caller's `frame_rate` (ByteTrack counts 30 fps frames), and the
  same survival rule with and without timestamps: a track keeps its id through up to
  `lost_track_buffer` frames without a matching detection.
- Output in input order, only the detections that belong to a reported track.
- Kalman boxes: the filtered box of each matched detection (`data["track_xyxy"]`), the alive tracks
  (`tracks()`), and a non-mutating prediction for a later time (`predict()`), the box prompt for a
  frame that has not been segmented yet.

Limits: matching is by IoU only (no appearance), so a different product put down at the same spot
within the buffer inherits the id; call `reset()` when the pipeline knows the product changed.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import supervision as sv
from trackers import ByteTrackTracker

__all__ = ["FRAMES_SINCE_UPDATE", "TRACK_XYXY", "BoxTracker"]

TRACK_XYXY = "track_xyxy"  # data key: (N, 4) float32 Kalman-filtered box of each returned detection's track
FRAMES_SINCE_UPDATE = "frames_since_update"  # data key of tracks() / predict(): (K,) int


class BoxTracker:
    """Stable ids for per-frame boxes, for one video at a time.

    Args:
      frame_rate: nominal frames per second of the stream (> 0).
      lost_track_buffer: frames (at `frame_rate`) a track may go without a matching detection and
        still keep its id (>= 0). With timestamps: seen again within `(lost_track_buffer + 1.5) /
        frame_rate` seconds of its last sighting (the same rule, with slack for capture jitter).
      min_hits: consecutive detections before a track is reported; 1 = from its first frame.
      track_activation_threshold: minimum confidence for a detection to start a track. Lower than
        ByteTrack's crowd-scene default (0.7) because here detections are few and mostly genuine.
        Detections without confidence count as 1.0.
      high_conf_det_threshold: detections below this confidence are only used to extend existing
        tracks (ByteTrack's second association stage), never to start one.
      minimum_iou_threshold: minimum IoU between a track's predicted box and a detection to match.
    """

    def __init__(
        self,
        frame_rate: float,
        lost_track_buffer: int = 30,
        min_hits: int = 1,
        track_activation_threshold: float = 0.5,
        high_conf_det_threshold: float = 0.5,
        minimum_iou_threshold: float = 0.1,
    ) -> None:
        if not frame_rate > 0:
            raise ValueError(f"frame_rate must be positive, got {frame_rate}")
        if lost_track_buffer < 0:
            raise ValueError(f"lost_track_buffer must be >= 0 frames, got {lost_track_buffer}")
        if min_hits < 1:
            raise ValueError(f"min_hits must be >= 1, got {min_hits}")
        self.frame_rate = float(frame_rate)
        self.lost_track_buffer = int(lost_track_buffer)
        self.min_hits = int(min_hits)
        self._bt = ByteTrackTracker(
            lost_track_buffer=self.lost_track_buffer,
            frame_rate=self.frame_rate,
            track_activation_threshold=track_activation_threshold,
            minimum_consecutive_frames=self.min_hits,
            minimum_iou_threshold=minimum_iou_threshold,
            high_conf_det_threshold=high_conf_det_threshold,
        )
        # ByteTrack counts its buffer in 30 fps frames, and with timestamps it prunes before matching,
        # so a track seen again after exactly `buffer` missed frames would keep its id without
        # timestamps but lose it with them. Set both budgets so that the rule is "up to
        # `lost_track_buffer` missed frames" in both modes: seen again within buffer + 1 frame periods
        # of the last sighting, plus half a period of slack for timestamp jitter.
        self._bt.maximum_frames_without_update = self.lost_track_buffer
        self._bt.maximum_time_without_update = (self.lost_track_buffer + 1.5) / self.frame_rate
        self._ids: dict[Any, int] = {}  # ByteTrack tracklet (hashed by identity) -> our id
        self._next_id = 0
        self._last_timestamp: float | None = None

    def update(self, detections: sv.Detections, timestamp: float | None = None) -> sv.Detections:
        """Associate this frame's detections with the tracks and return the tracked ones.

        Args:
          detections: this frame's boxes, (N, 4) XYXY pixels, optional (N,) confidence and any other
            fields (mask, class_id, data), which are carried through.
          timestamp: the frame's time in seconds (`Frame.timestamp`), non-decreasing; or None for a
            fixed frame rate. Use one mode for a whole video. An earlier timestamp than the last one
            is ignored by ByteTrack (with a warning) and nothing is returned for that frame.

        Returns:
          The detections that belong to a reported track, in input order, with `tracker_id` (M,) int
          >= 0 and `data["track_xyxy"]` (M, 4) float32, the Kalman-filtered box of the track. Dropped:
          low-confidence detections that extend no track, detections below the activation threshold
          that start none, and, with `min_hits > 1`, tracks not yet confirmed.
        """
        if not isinstance(detections, sv.Detections):
            raise TypeError(f"detections must be sv.Detections, got {type(detections).__name__}")
        n = len(detections)
        # ByteTrack only needs boxes and scores; a light copy keeps masks out of its internal slicing.
        light = sv.Detections(
            xyxy=np.asarray(detections.xyxy, dtype=np.float32).reshape(n, 4),
            confidence=detections.confidence,
            data={"index": np.arange(n)},
        )
        skipped = timestamp is not None and not (
            np.isfinite(timestamp) and (self._last_timestamp is None or timestamp >= self._last_timestamp)
        )
        before = set(self._bt.tracks)
        result = self._bt.update(light, timestamp=timestamp)  # warns itself about a skipped timestamp
        if skipped:
            return _select(detections, [], [], [])
        self._last_timestamp = timestamp

        tracklet_by_bt_id = {t.tracker_id: t for t in self._bt.tracks if t.tracker_id >= 0}
        newborn = [t for t in self._bt.tracks if t not in before]

        kept_index: list[int] = []
        kept_ids: list[int] = []
        kept_boxes: list[np.ndarray] = []
        for row, bt_id in enumerate(result.tracker_id):
            if bt_id >= 0:
                tracklet = tracklet_by_bt_id[int(bt_id)]
            elif self.min_hits == 1:
                tracklet = _pop_newborn(newborn, result.xyxy[row])
                if tracklet is None:  # a detection that started no track
                    continue
            else:
                continue
            if tracklet not in self._ids:
                self._ids[tracklet] = self._allocate_id()
            kept_index.append(int(result.data["index"][row]))
            kept_ids.append(self._ids[tracklet])
            kept_boxes.append(tracklet.get_state_bbox())

        # Forget tracklets ByteTrack has dropped.
        alive = set(self._bt.tracks)
        self._ids = {t: i for t, i in self._ids.items() if t in alive}
        return _select(detections, kept_index, kept_ids, kept_boxes)

    def tracks(self) -> sv.Detections:
        """Every reported track still alive, matched this frame or coasting through a gap.

        Returns:
          `sv.Detections` with xyxy (K, 4) float32 Kalman boxes at the last update's time (filtered for
          tracks matched then, predicted for coasting ones), tracker_id (K,) int and
          `data["frames_since_update"]` (K,) int (0 = matched in the last update).
        """
        return _as_detections(
            [t.get_state_bbox() for t in self._ids],
            list(self._ids.values()),
            [t.time_since_update for t in self._ids],
        )

    def predict(self, timestamp: float | None = None) -> sv.Detections:
        """Where the alive tracks will be at `timestamp` (or one frame after the last update), without
        changing the tracker: the Kalman constant-velocity extrapolation of each track.

        Returns:
          The same fields as `tracks()`, with the extrapolated boxes.
        """
        timed = timestamp is not None and self._last_timestamp is not None
        frame_step = (timestamp - self._last_timestamp) * self.frame_rate if timed else 1.0
        boxes, ids, missed = [], [], []
        for tracklet, track_id in self._ids.items():
            if frame_step > 0:
                estimator = copy.deepcopy(tracklet.state_estimator)
                # The frame rate only tunes process noise, as ByteTrack passes it: in timestamp mode only.
                estimator.predict(frame_step, self.frame_rate if timed else None)
                boxes.append(estimator.state_to_bbox())
            else:
                boxes.append(tracklet.get_state_bbox())
            ids.append(track_id)
            missed.append(tracklet.time_since_update)
        return _as_detections(boxes, ids, missed)

    def reset(self) -> None:
        """Forget every track and restart ids from 0 (a new video, or the product has changed)."""
        self._bt.reset()
        self._ids.clear()
        self._next_id = 0
        self._last_timestamp = None

    def _allocate_id(self) -> int:
        track_id = self._next_id
        self._next_id += 1
        return track_id


def _pop_newborn(newborn: list[Any], xyxy: np.ndarray) -> Any | None:
    """Remove and return the tracklet created from the box `xyxy` this update, or None.

    A newborn tracklet's state is exactly the box it was created from; newborns from identical boxes
    are interchangeable.
    """
    for k, tracklet in enumerate(newborn):
        if np.allclose(tracklet.get_state_bbox(), xyxy, atol=1e-3):
            return newborn.pop(k)
    return None


def _select(
    detections: sv.Detections, index: list[int], ids: list[int], boxes: list[np.ndarray]
) -> sv.Detections:
    """Rows `index` of `detections`, put back in input order, with their track ids and Kalman boxes."""
    order = np.argsort(np.asarray(index, dtype=int), kind="stable")
    out = detections[np.asarray(index, dtype=int)[order]]
    out.tracker_id = np.asarray(ids, dtype=int)[order]
    out.data[TRACK_XYXY] = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[order]
    return out


def _as_detections(boxes: list[np.ndarray], ids: list[int], missed: list[int]) -> sv.Detections:
    order = np.argsort(np.asarray(ids, dtype=int), kind="stable")
    det = sv.Detections(xyxy=np.asarray(boxes, dtype=np.float32).reshape(-1, 4)[order])
    det.tracker_id = np.asarray(ids, dtype=int)[order]
    det.data[FRAMES_SINCE_UPDATE] = np.asarray(missed, dtype=int)[order]
    return det
