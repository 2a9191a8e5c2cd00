"""Shared by the `turncrop serve` tests: a turntable camera made from the bundled session, ICE kept on
127.0.0.1, the app served on a free loopback port, and an aiortc client that talks to the page's protocol."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import av
import cv2
import numpy as np
from aiohttp import ClientSession, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

from data_paths import RECORDINGS
from turncrop.stream.sources import open_source

SAMPLE = RECORDINGS / "mic_turntable" / "video.mp4"
SIZE = (240, 320)  # (H, W) of the test camera: small, so graph cut keeps up on the 2-core build machine
EMPTY_FRAMES = range(0, 10)  # of `turntable_frames()`: the empty stage ...
PRODUCT_FRAMES = range(10, 60)  # ... then one full turn of the microphone


@functools.lru_cache(maxsize=1)
def turntable_frames() -> tuple[np.ndarray, ...]:
    """Every 2nd frame of the bundled 30 fps session at 320x240 RGB: 10 empty, 50 with the product, 10 empty."""
    frames = []
    with open_source(SAMPLE) as source:
        for frame in source:
            if frame.index % 2 == 0:
                frames.append(cv2.resize(frame.image, SIZE[::-1], interpolation=cv2.INTER_AREA))
    return tuple(frames)


def overlay_contrast(preview: np.ndarray, box: list[float]) -> tuple[float, float]:
    """How far `preview` is from the nearest camera frame inside the product's box and outside it (median)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    inside = np.zeros(preview.shape[:2], bool)
    inside[y0:y1, x0:x1] = True
    best = None
    for shot in turntable_frames():
        diff = np.abs(preview.astype(np.int16) - shot.astype(np.int16)).max(axis=2)
        outside = float(np.median(diff[~inside]))
        if best is None or outside < best[1]:
            best = (float(diff[inside].mean()), outside)
    return best


def loopback_ice(monkeypatch) -> None:
    """aioice gathers host candidates on every address but 127.0.0.1; here only on 127.0.0.1, so that
    all test media stays on loopback (server and client in this process)."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


class TurntableCamera(VideoStreamTrack):
    """A camera over the turntable: the empty stage, or the product turning (set `scene`); 30 fps."""

    def __init__(self, scene: str = "empty") -> None:
        super().__init__()
        self.scene = scene
        self.sent = 0
        self._frames = turntable_frames()
        self._position = {"empty": 0, "product": 0}

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        shots = EMPTY_FRAMES if self.scene == "empty" else PRODUCT_FRAMES
        i = self._position[self.scene]
        self._position[self.scene] = i + 1
        frame = av.VideoFrame.from_ndarray(self._frames[shots[i % len(shots)]], format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        self.sent += 1
        return frame


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 at a free port; yields its base URL. Shutting down closes its sessions."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


class Client:
    """A page in Python: sends a camera, receives the preview, speaks JSON on the "control" channel."""

    def __init__(self, base: str, camera: VideoStreamTrack) -> None:
        self.base, self.camera = base, camera
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.messages: list[dict] = []
        self.previews: list[np.ndarray] = []  # the newest few preview frames
        self.preview_count = 0
        self.session: str | None = None
        self._reader: asyncio.Task | None = None
        self.channel = self.pc.createDataChannel("control")
        self.channel.on("message", lambda m: self.messages.append(json.loads(m)))
        self.pc.addTrack(camera)
        self.pc.on("track", self._on_track)

    def _on_track(self, track) -> None:
        async def read() -> None:
            with contextlib.suppress(Exception):
                while True:
                    frame = await track.recv()
                    self.previews.append(frame.to_ndarray(format="rgb24"))
                    self.preview_count += 1
                    del self.previews[:-5]

        self._reader = asyncio.ensure_future(read())

    async def connect(self, http: ClientSession) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}
        async with http.post(self.base + "offer", json=offer) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
        self.session = answer["session"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

    def send(self, message: dict) -> None:
        self.channel.send(json.dumps(message))

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]

    def masked_frames(self) -> set[int]:
        """Indices of processed frames that the stats messages reported with a product mask (a sample of
        them: stats come at their own pace). Six or more mean the product is no transient."""
        return {m["frame_index"] for m in self.of_type("stats") if m["mask_area"] > 500}

    async def wait_for(self, what: str, predicate: Callable[[], object], timeout: float) -> object:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; "
                                     f"messages: {[m['type'] for m in self.messages][-30:]}")
            await asyncio.sleep(0.05)

    async def stage_learnt(self, timeout: float = 30) -> None:
        """Wait until the server has processed enough frames of the empty stage to learn it."""
        await self.wait_for("empty frames processed",
                            lambda: any(m["frames_processed"] >= 6 for m in self.of_type("stats")), timeout)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        await self.pc.close()


async def offer_sdp(camera: bool = True) -> str:
    """A real browser-like SDP offer with a video track, or only asking for video back (`camera=False`);
    gathered on loopback, nothing is connected."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if camera:
        pc.addTrack(VideoStreamTrack())
    else:
        pc.addTransceiver("video", direction="recvonly")
    pc.createDataChannel("control")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def out_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()
