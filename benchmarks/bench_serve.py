"""Serve benchmark: aiortc peers on 127.0.0.1 send the bundled turntable at 30 fps through `turncrop serve`.

Each peer is a Python client in this process (so its VP8 encode and the preview's decode share the CPU
with the server: a conservative figure). Per run it reports, per session and in total: connect time
(offer -> connected), frames in/out per second at the server, dropped frames, added latency p50/p95
(slot arrival -> frame path done), the pipeline's lag behind the camera (camera frames sent minus the
newest processed index, sampled at each stats message), preview frames per second received back, and
the event loop's worst stall (a 10 ms ticker), which shows that nothing heavy runs on the loop. Usage:

    python benchmarks/bench_serve.py [--sessions 1] [--size 640x480] [--seconds 20] [--out FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from aiohttp import ClientSession

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from webrtc_helpers import Client, loopback_ice, serving  # noqa: E402

from turncrop.stream.config import load_config  # noqa: E402
from turncrop.stream.serve import STATE, create_app  # noqa: E402
from turncrop.stream.sources import open_source  # noqa: E402

SAMPLE = ROOT / "recordings" / "mic_turntable" / "video.mp4"


class LoopedTurntable:
    """The whole bundled session (empty stage, one turn, empty stage) looped as a 30 fps camera track."""

    def __init__(self, size: tuple[int, int]) -> None:
        from aiortc import VideoStreamTrack

        with open_source(SAMPLE) as source:
            images = [cv2.resize(f.image, size, interpolation=cv2.INTER_AREA) for f in source]

        class Track(VideoStreamTrack):
            sent = 0

            async def recv(self):
                import av

                pts, time_base = await self.next_timestamp()
                frame = av.VideoFrame.from_ndarray(images[self.sent % len(images)], format="rgb24")
                frame.pts, frame.time_base = pts, time_base
                self.sent += 1
                return frame

        self.track = Track()


class Patch:
    def setattr(self, obj, name, value) -> None:
        setattr(obj, name, value)


async def _loop_stall(stop: asyncio.Event, samples: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        samples.append((time.perf_counter() - start - 0.01) * 1000)


async def bench(sessions: int, size: tuple[int, int], seconds: float, backend: str) -> dict:
    loopback_ice(Patch())
    config = load_config("default", {"backend": backend})
    cameras = [LoopedTurntable(size).track for _ in range(sessions)]
    with tempfile.TemporaryDirectory() as out:
        app = create_app(out, config)
        stop, stalls = asyncio.Event(), []
        ticker = asyncio.create_task(_loop_stall(stop, stalls))
        async with serving(app) as base, ClientSession() as http:
            clients = [Client(base, camera) for camera in cameras]
            connected: list[float] = []
            for client in clients:
                started = time.perf_counter()
                await client.connect(http)
                while client.pc.connectionState != "connected":
                    await asyncio.sleep(0.01)
                connected.append(time.perf_counter() - started)
            # Wait until every session's pipeline is up (its encoder process started), then measure.
            while not all(app[STATE].sessions[c.session].live is not None and
                          app[STATE].sessions[c.session].live.stats.frames_processed > 0 for c in clients):
                await asyncio.sleep(0.1)
            lags = [[] for _ in clients]
            seen = [len(c.messages) for c in clients]
            before = [(c.preview_count, cam.sent) for c, cam in zip(clients, cameras)]
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                await asyncio.sleep(0.25)
                for i, (client, camera) in enumerate(zip(clients, cameras)):
                    for m in client.messages[seen[i]:]:
                        if m["type"] == "stats" and m.get("frame_index") is not None:
                            lags[i].append(camera.sent - 1 - m["frame_index"])
                    seen[i] = len(client.messages)
            elapsed = time.perf_counter() - t0
            rows = []
            for i, (client, camera) in enumerate(zip(clients, cameras)):
                session = app[STATE].sessions[client.session]
                stats = session.live.stats.as_dict()
                rows.append({
                    "session": i, "connect_s": round(connected[i], 3), "fps_in": stats["fps_in"],
                    "fps_out": stats["fps_out"], "frames_dropped": stats["frames_dropped"],
                    "latency_ms_p50": stats["latency_ms_p50"], "latency_ms_p95": stats["latency_ms_p95"],
                    "lag_frames_median": round(float(np.median(lags[i])), 1) if lags[i] else None,
                    "lag_frames_p95": round(float(np.percentile(lags[i], 95)), 1) if lags[i] else None,
                    "preview_fps": round((client.preview_count - before[i][0]) / elapsed, 2),
                    "camera_fps": round((camera.sent - before[i][1]) / elapsed, 2),
                    "products": stats["products"],
                })
            for client in clients:
                await client.close()
        stop.set()
        await ticker
    return {"backend": backend, "sessions": sessions, "size": f"{size[0]}x{size[1]}", "seconds": seconds,
            "loop_stall_ms_p99": round(float(np.percentile(stalls, 99)), 1),
            "loop_stall_ms_max": round(float(np.max(stalls)), 1), "per_session": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--size", default="640x480", help="camera WxH (default 640x480)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--backend", default="graphcut")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    result = asyncio.run(bench(args.sessions, (width, height), args.seconds, args.backend))
    print(f"backend {result['backend']}, {result['sessions']} session(s) at {result['size']}, "
          f"{result['seconds']:g} s; event loop stall p99 {result['loop_stall_ms_p99']} ms, "
          f"max {result['loop_stall_ms_max']} ms")
    header = ["session", "connect_s", "camera_fps", "fps_in", "fps_out", "frames_dropped", "latency_ms_p50",
              "latency_ms_p95", "lag_frames_median", "lag_frames_p95", "preview_fps", "products"]
    print(" ".join(f"{h:>17}" for h in header))
    for row in result["per_session"]:
        print(" ".join(f"{str(row[h]):>17}" for h in header))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
