"""`turncrop serve`: the live pipeline behind a web page, one WebRTC peer per browser session.

    turncrop serve --out DIR [--host 127.0.0.1] [--port 8080] [--token T] [--record DIR]

The page (`stream/web/`) sends the browser's camera. Each peer connection is a `Session` with its own
output folder `DIR/<session id>/`, its own `ProductPipeline` + `LivePipeline` + `ProductSink`, and sends
back an annotated preview track (mask, box and product id, keyframe marker, fps) and, on the data channel
the page opens, JSON messages:

  server -> page  {"type": "hello", "session"}, {"type": "stats", ...} (every `serve.stats_every` s),
                  {"type": "product_started" | "product_ended", "product_id", "frame_index", ...},
                  {"type": "still_exported", "product_id", "thumbnail_url", "files": {name: url}},
                  {"type": "command_applied", ...}, {"type": "error", "message"}
  page -> server  {"type": "point", "x", "y", "label": 1|0}, {"type": "box", "box": [x0, y0, x1, y1]}
                  (source-frame pixels), {"type": "next_product"}, {"type": "rekey"}

The camera never waits for the model: the track's receive loop only converts each frame and puts it into
the session's `PushSource` (newest wins); the live pipeline's workers take frames from there, and stale
ones are dropped and counted. The preview track re-sends the newest annotated image at its own pace.

HTTP: GET / (the page), POST /offer (SDP offer JSON -> answer), GET /sessions/{id}/gallery (the stills
exported so far), GET /sessions/{id}/files/{path} (only files inside that session's folder). The server
binds 127.0.0.1 by default; any other address needs a token, which every request must then carry
(`?token=` or the `X-Turncrop-Token` header; a cookie then carries it for relative links, such as a spin
set viewer's images). A peer that leaves, fails, or sends no frame for `serve.idle_timeout` seconds ends
its session: the product on stage is finished and exported. With `--record DIR` each session is also
recorded into `DIR/<session id>/` for `turncrop replay`.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import av
import cv2
import numpy as np
import supervision as sv
from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import MediaStreamError

from turncrop.models.base import Segmenter
from turncrop.stream.config import Config
from turncrop.stream.live import LivePipeline, LiveStats, PushSource
from turncrop.stream.recording import SessionRecorder
from turncrop.stream.runner import ProductSink, RunSummary, build_pipeline
from turncrop.tracking.frame import Frame
from turncrop.tracking.operator import CommandApplied, OperatorCommand
from turncrop.tracking.products import FrameResult, ProductEnded, ProductStarted

log = logging.getLogger(__name__)

WEB = Path(__file__).with_name("web")
TOKEN_HEADER = "X-Turncrop-Token"
TOKEN_COOKIE = "turncrop_token"
SESSION_ID = "[0-9a-f]{32}"

SegmenterFactory = Callable[[], Segmenter]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, port: int = 8080) -> None:
    """A TCP port, and a token for listening beyond this machine (ValueError otherwise)."""
    if not 0 <= port <= 65535:
        raise ValueError(f"serve: --port must be a TCP port, 0 to 65535, got {port}")
    if not is_loopback(host) and not token:
        raise ValueError(f"serve: listening on {host} (not a loopback address) needs --token; "
                         f"every request must then carry it (?token=... or the {TOKEN_HEADER} header)")


# -- messages from the page -------------------------------------------------------------------------------


def parse_command(message: str | bytes, size: tuple[int, int]) -> OperatorCommand:
    """A page message -> `OperatorCommand`; ValueError naming what is wrong. `size`: the frames' (H, W)."""
    try:
        data = json.loads(message)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("message is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ValueError('message must be an object with a "type"')
    kind = data["type"]
    height, width = size
    if kind in ("next_product", "rekey"):
        return OperatorCommand(kind)
    if kind == "point":
        x, y = _number(data, "x"), _number(data, "y")
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"point ({x:g}, {y:g}) is outside the {width}x{height} frame")
        label = data.get("label", 1)
        if label not in (0, 1) or isinstance(label, bool):
            raise ValueError(f"point label must be 1 (product) or 0 (not product), got {label!r}")
        return OperatorCommand("point", points=[[x, y]], labels=[label])
    if kind == "box":
        box = data.get("box")
        if not isinstance(box, list) or len(box) != 4:
            raise ValueError('box must be [x0, y0, x1, y1]')
        x0, y0, x1, y1 = (_number({"box": v}, "box") for v in box)
        x0, x1 = max(0.0, x0), min(float(width), x1)
        y0, y1 = max(0.0, y0), min(float(height), y1)
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"box {box} is empty inside the {width}x{height} frame")
        return OperatorCommand("box", box=[x0, y0, x1, y1])
    raise ValueError(f"unknown message type {kind!r} (point, box, next_product, rekey)")


def _number(data: dict, key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return float(value)


# -- the preview ------------------------------------------------------------------------------------------


def preview_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(H, W) of the preview for frames of `size` (H, W): at most `max_side`, never upscaled, even sides."""
    height, width = size
    scale = min(1.0, max_side / max(height, width))
    return max(2, int(height * scale) // 2 * 2), max(2, int(width * scale) // 2 * 2)


class PreviewPainter:
    """Draws what the pipeline made of a frame: mask, box with product id and score, keyframe marker, fps."""

    def __init__(self, max_side: int) -> None:
        self.max_side = max_side
        by_product = sv.ColorLookup.TRACK  # one colour per product number
        self.masks = sv.MaskAnnotator(opacity=0.45, color_lookup=by_product)
        self.boxes = sv.BoxAnnotator(thickness=2, color_lookup=by_product)
        self.labels = sv.LabelAnnotator(text_scale=0.5, text_padding=4, color_lookup=by_product)

    def draw(self, result: FrameResult, fps: float) -> np.ndarray:
        """(h, w, 3) uint8 RGB preview image of `result` (h, w from `preview_size`)."""
        h, w = preview_size(result.frame.size, self.max_side)
        bgr = cv2.cvtColor(cv2.resize(result.frame.image, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
        detections = result.detections
        if len(detections) and detections.mask is not None:
            sy, sx = h / result.frame.size[0], w / result.frame.size[1]
            masks = np.stack([cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
                              for m in detections.mask])
            small = sv.Detections(xyxy=detections.xyxy * np.array([sx, sy, sx, sy], np.float32), mask=masks,
                                  confidence=detections.confidence, tracker_id=detections.tracker_id)
            labels = [f"#{int(i)} {c:.2f}" for i, c in zip(small.tracker_id, small.confidence)]
            bgr = self.masks.annotate(bgr, small)
            bgr = self.boxes.annotate(bgr, small)
            bgr = self.labels.annotate(bgr, small, labels=labels)
        if result.keyframe:
            cv2.circle(bgr, (w - 16, 16), 9, (0, 0, 255), -1)
            cv2.putText(bgr, "KEY", (w - 62, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 255), 1, cv2.LINE_AA)
        text = f"{fps:4.1f} fps  frame {result.frame.index}"
        cv2.putText(bgr, text, (8, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(bgr, text, (8, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class PreviewTrack(VideoStreamTrack):
    """Sends the newest preview image at 30 fps; never waits for the model (the same image is re-sent
    with a fresh timestamp until a new one is shown)."""

    def __init__(self) -> None:
        super().__init__()
        self._image = np.full((240, 320, 3), 64, np.uint8)  # until the first frame is processed

    def show(self, image: np.ndarray) -> None:
        self._image = image

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(self._image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


# -- one browser session ----------------------------------------------------------------------------------


class Session:
    """One peer connection: its camera through its own live pipeline into `out`, preview and events back."""

    def __init__(self, session_id: str, out: Path, config: Config, pc: RTCPeerConnection,
                 segmenter_factory: SegmenterFactory | None = None, *, record: Path | None = None,
                 record_codec: str = "ffv1") -> None:
        """`record`: also record the session (frames and events, for `turncrop replay`) into this new folder."""
        self.id, self.out, self.config, self.pc = session_id, out, config, pc
        self.segmenter_factory = segmenter_factory
        self.record, self.record_codec = record, record_codec
        self.preview = PreviewTrack()
        self.painter = PreviewPainter(config.serve.preview_max_side)
        self.channel = None
        self.source: PushSource | None = None
        self.live: LivePipeline | None = None
        self.summary: RunSummary | None = None  # what was exported; outlives the session, for the gallery
        self.stats: LiveStats | None = None
        self.error: str | None = None
        self.closed = asyncio.Event()
        self._run: asyncio.Task | None = None
        self._camera: MediaStreamTrack | None = None
        self._tasks: list[asyncio.Task] = []  # receiving media, waiting for it; cancelled on close
        self._closing: asyncio.Task | None = None
        self._announced = 0  # products of the sink already announced as still_exported
        self._latest: dict[str, Any] = {}  # the newest processed frame's figures, for the stats messages
        self._draw_pool = ThreadPoolExecutor(1, f"turncrop-preview-{session_id[:8]}")
        self._pending: tuple[FrameResult, float] | None = None
        self._drawing: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"sessions/{self.id}"

    # -- media in

    def expect_frames(self) -> None:
        """End the session if no camera frame arrives within `serve.idle_timeout` (a peer that never
        connects, or offers no camera to send, must not hold a session slot)."""
        async def watch() -> None:
            await asyncio.sleep(self.config.serve.idle_timeout)
            if self.source is None:
                self.close(f"no camera frame within {self.config.serve.idle_timeout:g} s of the answer")

        self._tasks.append(asyncio.ensure_future(watch()))

    def receive(self, track: MediaStreamTrack) -> None:
        if track.kind != "video" or self._camera is not None:
            blackhole = MediaBlackhole()  # audio, or a second camera: consumed and ignored
            blackhole.addTrack(track)
            self._tasks.append(asyncio.ensure_future(blackhole.start()))
            return
        self._camera = track
        self._tasks.append(asyncio.ensure_future(self._receive(track)))

    async def _receive(self, track: MediaStreamTrack) -> None:
        """The camera's frames into the push source (only conversion here, no model work)."""
        idle = self.config.serve.idle_timeout
        size: tuple[int, int] | None = None
        first_time: float | None = None
        index = 0
        reason = "the camera track ended"
        while True:
            try:
                video = await asyncio.wait_for(track.recv(), idle)
            except asyncio.TimeoutError:
                reason = f"no frame from the peer for {idle:g} s"
                break
            except MediaStreamError:
                break
            if size is None:
                size = (video.height // 2 * 2, video.width // 2 * 2)
                self._start(size)
            if video.time is not None:
                first_time = video.time if first_time is None else first_time
                timestamp = video.time - first_time
            else:
                timestamp = index / 30.0
            self.source.put((video, index, timestamp))  # converted by the source worker, if it gets read
            index += 1
        log.info("session %s: %s", self.id, reason)
        self.close(reason)

    def _start(self, size: tuple[int, int]) -> None:
        self.source = PushSource(f"webrtc session {self.id}", size, convert=self._to_frame)
        self._run = asyncio.ensure_future(self._run_pipeline())

    def _to_frame(self, received: tuple[av.VideoFrame, int, float]) -> Frame:
        """A received video frame as the pipeline's RGB `Frame` (on the source worker)."""
        video, index, timestamp = received
        height, width = self.source.size
        # A camera may change resolution mid-stream (WebRTC adapts it): keep the first size throughout.
        image = video.to_ndarray(format="rgb24", width=width, height=height)
        return Frame(image, index, timestamp, source=f"webrtc:{self.id}")

    async def _run_pipeline(self) -> None:
        loop = asyncio.get_running_loop()
        recorder: SessionRecorder | None = None
        try:
            segmenter = self.segmenter_factory() if self.segmenter_factory else None
            # Building loads model weights: off the event loop.
            pipeline = await loop.run_in_executor(None, lambda: build_pipeline(
                self.config, segmenter, frame_rate=self.source.fps, defer_keyframes=True))
            sink = ProductSink(self.out, self.config, self.source, pipeline)
            self.summary = sink.summary
            if self.record is not None:
                recorder = SessionRecorder(self.record, self.config, self.source.fps, self.source.size,
                                           source=self.source.name, backend=pipeline.segmenter.name,
                                           codec=self.record_codec)
            self.live = LivePipeline(self.source, pipeline, sink, on_result=self._on_result, recorder=recorder,
                                     working_size=self.config.live.working_size)
            self.stats = await self.live.run(stats_every=self.config.serve.stats_every, on_stats=self._on_stats)
        except Exception as exc:  # a session's failure must not take the server down
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("session %s failed", self.id)
            self.send({"type": "error", "message": f"the pipeline failed: {self.error}"})
        finally:
            if recorder is not None:
                stats = {"live": self.stats.as_dict()} if self.stats is not None else None
                await loop.run_in_executor(None, recorder.close, stats)
            self._announce_stills()
            self.close("the pipeline stopped" if self.error is None else "the pipeline failed")

    # -- results out

    def _on_result(self, result: FrameResult) -> None:
        """On the event loop after each processed frame: events, statistics, and a new preview to draw."""
        detections = result.detections
        scale = self.source.size[1] / result.frame.size[1]  # the pipeline may work on smaller frames
        self._latest = {  # in camera pixels, like the prompts
            "frame_index": result.frame.index,
            "frame_size": [self.source.size[1], self.source.size[0]],
            "product_id": f"product-{int(detections.tracker_id[0]):03d}" if len(detections) else None,
            "mask_area": round(float(detections.mask[0].sum()) * scale * scale)
            if len(detections) and detections.mask is not None else 0,
            "box": [round(float(v) * scale, 1) for v in detections.xyxy[0]] if len(detections) else None,
            "keyframe": bool(result.keyframe),
        }
        for event in result.events:
            if isinstance(event, ProductStarted):
                self.send({"type": "product_started", "product_id": event.product.product_id,
                           "frame_index": event.frame_index})
            elif isinstance(event, ProductEnded) and not event.transient:
                self.send({"type": "product_ended", "product_id": event.product.product_id,
                           "frame_index": event.frame_index, "reason": event.reason})
            elif isinstance(event, CommandApplied):
                self.send({"type": "command_applied", "frame_index": event.frame_index,
                           "command": event.command.as_dict()})
        self._announce_stills()
        fps = self.live.stats.fps_out if self.live is not None else 0.0
        self._pending = (result, fps)
        if self._drawing is None or self._drawing.done():
            self._drawing = asyncio.ensure_future(self._draw())

    async def _draw(self) -> None:
        """Draw the newest result on the preview worker; results arriving meanwhile replace each other."""
        loop = asyncio.get_running_loop()
        while self._pending is not None:
            (result, fps), self._pending = self._pending, None
            try:
                self.preview.show(await loop.run_in_executor(self._draw_pool, self.painter.draw, result, fps))
            except Exception:
                log.exception("session %s: drawing the preview failed", self.id)

    def _on_stats(self, stats: LiveStats) -> None:
        self.send({"type": "stats", **stats.as_dict(), **self._latest})

    def _announce_stills(self) -> None:
        if self.summary is None:
            return
        for entry in self.summary.products[self._announced:]:
            self.send({"type": "still_exported", **gallery_entry(self, entry)})
        self._announced = len(self.summary.products)

    def gallery(self) -> list[dict]:
        return [gallery_entry(self, e) for e in (self.summary.products if self.summary is not None else [])]

    # -- control channel

    def attach_channel(self, channel) -> None:
        self.channel = channel
        channel.on("message", self._on_message)
        if channel.readyState == "open":
            self.send({"type": "hello", "session": self.id})
        else:
            channel.on("open", lambda: self.send({"type": "hello", "session": self.id}))

    def _on_message(self, message: str | bytes) -> None:
        if self.source is None or self.live is None:
            self.send({"type": "error", "message": "the stream has not started yet: no camera frame processed"})
            return
        try:
            command = parse_command(message, self.source.size)
        except ValueError as exc:
            self.send({"type": "error", "message": f"bad message: {exc}"})
            return
        self.live.command(command)
        self.send({"type": "command_queued", "command": command.as_dict()})

    def send(self, message: dict) -> None:
        """Send to the page if its channel is open; a channel closing meanwhile is not the pipeline's problem."""
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            try:
                channel.send(json.dumps(message))
            except Exception as exc:  # e.g. InvalidStateError: the peer closed it just now
                log.info("session %s: could not send %s (%s)", self.id, message.get("type"), exc)

    # -- the end

    def close(self, reason: str) -> asyncio.Task:
        """End the session (idempotent): finish and export the product on stage, close the peer."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close(reason))
        return self._closing

    async def _close(self, reason: str) -> None:
        log.info("session %s: closing (%s)", self.id, reason)
        if self.source is not None:
            self.source.close()  # the end of the stream: the live pipeline finishes the product on stage
        if self._run is not None:
            await asyncio.gather(self._run, return_exceptions=True)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self._drawing is not None:
            await asyncio.gather(self._drawing, return_exceptions=True)
        await self.pc.close()
        self._draw_pool.shutdown(wait=False)
        self.live = None  # drop the pipeline and its models; the summary stays for the gallery
        self.closed.set()


def gallery_entry(session: Session, entry: dict) -> dict:
    """A product of the manifest with the URLs the page needs (relative to the page)."""
    files = {name: f"{session.url}/files/{name}" for name in entry["files"]}
    jpg = next((url for name, url in files.items() if name.endswith(".jpg")), None)
    spin = entry.get("spin") or {}
    return {"product_id": entry["product_id"], "status": entry["status"], "session": session.id,
            "frame_index": entry.get("frame_index"), "score": entry.get("score"), "reason": entry.get("reason"),
            "thumbnail_url": jpg if entry["status"] == "ok" else None, "files": files,
            "spin_url": f"{session.url}/files/{spin['folder']}/index.html" if spin.get("status") == "ok" else None}


# -- HTTP -------------------------------------------------------------------------------------------------


@dataclass
class ServerState:
    out: Path
    config: Config
    segmenter_factory: SegmenterFactory | None
    record: Path | None = None  # each session is recorded into record/<session id>/
    record_codec: str = "ffv1"
    sessions: dict[str, Session] = field(default_factory=dict)  # ended ones stay, for their galleries


STATE = web.AppKey("turncrop", ServerState)


def create_app(out_dir: str | Path, config: Config, *, token: str | None = None,
               segmenter_factory: SegmenterFactory | None = None, record: str | Path | None = None,
               record_codec: str = "ffv1") -> web.Application:
    """The web app; `segmenter_factory` builds each session's segmenter (default: from `config`);
    `record`: record every session into `record/<session id>/` (see `turncrop.stream.recording`)."""
    middlewares = [_token_middleware(token)] if token else []
    app = web.Application(client_max_size=config.serve.max_body_bytes, middlewares=middlewares)
    app[STATE] = ServerState(Path(out_dir), config, segmenter_factory,
                             Path(record) if record is not None else None, record_codec)
    app.router.add_get("/", _page)
    app.router.add_get("/app.js", _script)
    app.router.add_post("/offer", _offer)
    app.router.add_get(f"/sessions/{{sid:{SESSION_ID}}}/gallery", _gallery)
    app.router.add_get(f"/sessions/{{sid:{SESSION_ID}}}/files/{{path:.+}}", _file)
    app.on_shutdown.append(_close_sessions)
    return app


def _token_middleware(token: str):
    expected = token.encode()

    @web.middleware
    async def require_token(request: web.Request, handler):
        given = (request.query.get("token") or request.headers.get(TOKEN_HEADER)
                 or request.cookies.get(TOKEN_COOKIE) or "")
        if not hmac.compare_digest(given.encode(), expected):
            raise web.HTTPUnauthorized(text=f"missing or wrong token: add ?token=... or the {TOKEN_HEADER} header\n")
        response = await handler(request)
        if request.cookies.get(TOKEN_COOKIE) != token:
            # Pages the server did not write (a spin set's viewer) load their images by plain relative URLs.
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response

    return require_token


async def _page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB / "index.html", headers={"Cache-Control": "no-store"})


async def _script(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB / "app.js", headers={"Cache-Control": "no-store"})


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def _offer(request: web.Request) -> web.Response:
    """SDP offer JSON {"sdp", "type": "offer"} -> answer {"sdp", "type", "session"}; 400 on anything malformed."""
    state = request.app[STATE]
    limit = state.config.serve.max_body_bytes
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _bad(f"request body over {limit} bytes")
    try:
        params = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _bad("the body is not JSON: send {\"sdp\": ..., \"type\": \"offer\"}")
    if not isinstance(params, dict) or not isinstance(params.get("sdp"), str) or params.get("type") != "offer":
        return _bad('expected {"sdp": "<SDP text>", "type": "offer"}')
    if "\nm=video " not in params["sdp"].replace("\r\n", "\n"):
        return _bad("the offer has no video section: send the camera track")
    running = sum(not s.closed.is_set() for s in state.sessions.values())
    if running >= state.config.serve.max_sessions:
        return web.json_response({"error": f"{running} sessions are running, the most this server takes "
                                           "(serve.max_sessions): try again when one has ended"}, status=503)

    session_id = uuid.uuid4().hex
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    session = Session(session_id, state.out / session_id, state.config, pc, state.segmenter_factory,
                      record=state.record / session_id if state.record is not None else None,
                      record_codec=state.record_codec)
    pc.on("track", session.receive)
    pc.on("datachannel", session.attach_channel)

    @pc.on("connectionstatechange")
    def on_state() -> None:
        log.info("session %s: connection %s", session_id, pc.connectionState)
        if pc.connectionState in ("failed", "closed"):
            session.close(f"connection {pc.connectionState}")

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=params["sdp"], type="offer"))
        if not any(t.kind == "video" for t in pc.getTransceivers()):
            raise ValueError("no video transceiver")
        pc.addTrack(session.preview)
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:  # whatever the SDP parser makes of garbage, it is the client's input
        await pc.close()
        return _bad(f"cannot use this SDP offer: {type(exc).__name__}: {exc}")
    state.sessions[session_id] = session
    session.expect_frames()
    log.info("session %s: started", session_id)
    return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                              "session": session_id})


def _session(request: web.Request) -> Session:
    session = request.app[STATE].sessions.get(request.match_info["sid"])
    if session is None:
        raise web.HTTPNotFound(text="no such session\n")
    return session


async def _gallery(request: web.Request) -> web.Response:
    return web.json_response(_session(request).gallery())


async def _file(request: web.Request) -> web.FileResponse:
    session = _session(request)
    root = session.out.resolve()
    relative = request.match_info["path"]
    try:
        target = (root / relative).resolve()  # follows symlinks: a link out of the folder is refused too
    except (ValueError, OSError):  # a NUL byte, a name too long: no file has that name
        raise web.HTTPNotFound(text="no such file in this session\n") from None
    if not target.is_relative_to(root) or target == root:
        raise web.HTTPForbidden(text="outside this session's output folder\n")
    if not target.is_file():
        raise web.HTTPNotFound(text="no such file in this session\n")
    return web.FileResponse(target)


async def _close_sessions(app: web.Application) -> None:
    await asyncio.gather(*(s.close("server shutting down") for s in app[STATE].sessions.values()),
                         return_exceptions=True)


def serve(out_dir: str | Path, config: Config, *, host: str = "127.0.0.1", port: int = 8080,
          token: str | None = None, record: str | Path | None = None, record_codec: str = "ffv1") -> None:
    """Run the server until SIGINT/SIGTERM; sessions still open are finished (their products exported)."""
    check_bind(host, token, port)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    app = create_app(out_dir, config, token=token, record=record, record_codec=record_codec)
    query = f"?token={token}" if token else ""
    url_host = f"[{host}]" if ":" in host else host
    ready = f"turncrop serve: open http://{url_host}:{port}/{query} (outputs in {out_dir}); Ctrl-C to stop"
    web.run_app(app, host=host, port=port, print=lambda _: print(ready, flush=True))  # once listening
