"""`turncrop serve`: a real aiortc peer on loopback, and the server's answers to bad input and faults."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest
from aiohttp import ClientSession
from yarl import URL

from turncrop.stream.cli import main
from turncrop.stream.config import ConfigError, load_config
from turncrop.stream.live import PushSource
from turncrop.stream.serve import STATE, check_bind, create_app, parse_command
from turncrop.tracking.frame import Frame
from turncrop.tracking.products import ProductPipeline
from webrtc_helpers import (PRODUCT_FRAMES, Client, TurntableCamera, loopback_ice, offer_sdp, out_files,
                            overlay_contrast, serving)


def _config(**overrides):
    return load_config("default", {"backend": "graphcut", "keyframes.max_interval": 4, "serve.stats_every": 0.25,
                                   **overrides})


@pytest.fixture(autouse=True)
def _loopback(monkeypatch):
    loopback_ice(monkeypatch)


def test_aiortc_client_session_end_to_end(tmp_path):
    """Frames in, annotated preview and events back, a bad message answered, next product -> still + gallery."""

    async def scenario():
        app = create_app(tmp_path, _config(**{"spin.views": 8}))
        camera = TurntableCamera("empty")
        async with serving(app) as base, ClientSession() as http:
            client = Client(base, camera)
            await client.connect(http)
            session = app[STATE].sessions[client.session]
            await client.wait_for("hello", lambda: client.of_type("hello"), 20)
            await client.stage_learnt()
            camera.scene = "product"
            await client.wait_for("product_started", lambda: client.of_type("product_started"), 20)
            on_stage = await client.wait_for(
                "a mask in the stats", lambda: [m for m in client.of_type("stats") if m["mask_area"] > 500][-3:], 20)

            client.send({"type": "rekey"})
            await client.wait_for("rekey applied", lambda: client.of_type("command_applied"), 10)
            client.send({"type": "point", "x": 1e6, "y": 5})  # outside the frame
            client.send({"type": "dance"})
            await client.wait_for("two errors", lambda: len(client.of_type("error")) >= 2, 10)

            stats = on_stage[-1]
            await asyncio.sleep(0.5)  # a few preview frames drawn from results with the product
            preview = client.previews[-1]
            inside, outside = overlay_contrast(preview, stats["box"])

            turned = camera.sent
            await client.wait_for("two turns of the product",
                                  lambda: camera.sent > turned + 2 * len(PRODUCT_FRAMES), 20)
            client.send({"type": "next_product"})
            still = await client.wait_for("still_exported", lambda: client.of_type("still_exported"), 20)
            async with http.get(base + still[0]["spin_url"]) as response:
                spin_viewer = response.status, await response.text()
            async with http.get(base + still[0]["thumbnail_url"]) as response:
                assert response.status == 200
                thumbnail = await response.read()
            async with http.get(base + f"sessions/{client.session}/gallery") as response:
                gallery = await response.json()
            camera.scene = "empty"
            await client.close()
            await asyncio.wait_for(session.closed.wait(), 15)
            return client, stats, preview, (inside, outside), still[0], thumbnail, gallery, session, spin_viewer

    client, stats, preview, (inside, outside), still, thumbnail, gallery, session, spin_viewer = asyncio.run(scenario())
    assert stats["frame_size"] == [320, 240] and stats["frames_in"] >= stats["frames_processed"] > 0
    assert preview.shape == (240, 320, 3)
    # The mask overlay: the preview departs from the camera image where the product is, not elsewhere.
    assert inside > 3 * outside + 5, (inside, outside)
    errors = [m["message"] for m in client.of_type("error")]
    assert "outside the 320x240 frame" in errors[0] and "unknown message type 'dance'" in errors[1]
    applied = client.of_type("command_applied")
    assert [m["command"]["kind"] for m in applied] == ["rekey", "next_product"]
    ended = client.of_type("product_ended")
    assert ended[0]["product_id"] == "product-001" and ended[0]["reason"] == "operator: next product"
    assert still["product_id"] == "product-001" and still["status"] == "ok"
    assert thumbnail[:2] == b"\xff\xd8"  # a JPEG
    assert [g["product_id"] for g in gallery] == ["product-001"]
    assert spin_viewer[0] == 200 and "<html" in spin_viewer[1].lower()  # the 360° set, linked from the gallery
    folder = tmp_path / client.session
    assert {"product-001.png", "product-001.jpg", "product-001.json", "manifest.json"} <= out_files(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["live"]["frames_processed"] == session.stats.frames_processed
    assert session.stats.frames_processed + session.stats.frames_dropped == session.stats.frames_in


def test_the_camera_and_preview_never_wait_for_a_slow_model(tmp_path, monkeypatch):
    """A frame path at ~4 fps under a 30 fps camera: every frame is still received, stale ones are dropped
    and counted, and the preview keeps its own frame rate."""
    process = ProductPipeline.process

    def slow_process(self, frame):
        time.sleep(0.25)
        return process(self, frame)

    monkeypatch.setattr(ProductPipeline, "process", slow_process)

    async def scenario():
        app = create_app(tmp_path, _config())
        camera = TurntableCamera("empty")
        async with serving(app) as base, ClientSession() as http:
            client = Client(base, camera)
            await client.connect(http)
            session = app[STATE].sessions[client.session]
            await client.wait_for("frames processed",
                                  lambda: any(m["frames_processed"] >= 3 for m in client.of_type("stats")), 30)
            sent, previews, stats = camera.sent, client.preview_count, session.live.stats.as_dict()
            await asyncio.sleep(3.0)
            window = {"sent": camera.sent - sent, "previews": client.preview_count - previews,
                      "in": session.live.stats.frames_in - stats["frames_in"],
                      "processed": session.live.stats.frames_processed - stats["frames_processed"],
                      "dropped": session.live.stats.frames_dropped - stats["frames_dropped"]}
            await client.close()
            await asyncio.wait_for(session.closed.wait(), 20)
            return window, session.stats

    window, stats = asyncio.run(scenario())
    assert 3 <= window["processed"] <= 3.0 / 0.25 + 2  # the frame path's pace
    assert window["in"] >= 0.8 * window["sent"]  # the camera's pace: every frame was taken off the wire
    assert window["dropped"] >= window["in"] - window["processed"] - 2  # stale frames dropped, and counted
    assert window["previews"] >= 0.5 * window["sent"]  # the preview does not wait for the model either
    assert stats.frames_processed + stats.frames_dropped == stats.frames_in


def test_vanished_peer_has_its_product_finished(tmp_path):
    """A peer that stops sending mid-product (no goodbye) is timed out; the product on stage is exported."""

    async def scenario():
        app = create_app(tmp_path, _config(**{"serve.idle_timeout": 1.5}))
        camera = TurntableCamera("empty")
        async with serving(app) as base, ClientSession() as http:
            client = Client(base, camera)
            await client.connect(http)
            session = app[STATE].sessions[client.session]
            await client.stage_learnt()
            camera.scene = "product"
            await client.wait_for("several frames of the product", lambda: len(client.masked_frames()) >= 6, 30)
            # Vanish: the client's sockets go away without DTLS/SCTP goodbyes (a crashed or unplugged peer).
            for transceiver in client.pc.getTransceivers():
                connection = transceiver.receiver.transport.transport._connection
                for protocol in list(connection._protocols):
                    protocol.transport.close()
            await asyncio.wait_for(session.closed.wait(), 20)
            await client.close()
            return client.session

    session_id = asyncio.run(scenario())
    folder = tmp_path / session_id
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [p["product_id"] for p in manifest["products"]] == ["product-001"]
    assert manifest["products"][0]["status"] == "ok"
    assert (folder / "product-001.jpg").stat().st_size > 0
    assert "source ended" in (folder / "product-001.json").read_text()


def test_two_sessions_at_once_are_isolated_and_recorded(tmp_path):
    """Two peers at once: own folders, own products; one's command does not touch the other; --record."""
    out, record = tmp_path / "out", tmp_path / "sessions"

    async def scenario():
        app = create_app(out, _config(), record=record)
        cameras = [TurntableCamera("empty"), TurntableCamera("empty")]
        async with serving(app) as base, ClientSession() as http:
            a, b = clients = [Client(base, camera) for camera in cameras]
            for client in clients:
                await client.connect(http)
            for client in clients:
                await client.stage_learnt(timeout=40)
            for camera in cameras:
                camera.scene = "product"
            for client in clients:
                await client.wait_for("several frames of the product", lambda c=client: len(c.masked_frames()) >= 6,
                                      30)
            a.send({"type": "next_product"})
            await a.wait_for("A's still", lambda: a.of_type("still_exported"), 20)
            b_ended_meanwhile = b.of_type("product_ended")
            async with http.get(f"{base}sessions/{b.session}/gallery") as response:
                b_gallery_meanwhile = await response.json()
            sessions = [app[STATE].sessions[c.session] for c in clients]
            for client in clients:
                await client.close()
            for session in sessions:
                await asyncio.wait_for(session.closed.wait(), 20)
            return [c.session for c in clients], b_ended_meanwhile, b_gallery_meanwhile

    (a_id, b_id), b_ended_meanwhile, b_gallery_meanwhile = asyncio.run(scenario())
    assert b_ended_meanwhile == [] and b_gallery_meanwhile == []  # A's "next product" did not touch B
    products = {}
    for session_id in (a_id, b_id):
        manifest = json.loads((out / session_id / "manifest.json").read_text())
        products[session_id] = [(p["product_id"], p["status"]) for p in manifest["products"]]
    assert products == {a_id: [("product-001", "ok")], b_id: [("product-001", "ok")]}
    assert "operator: next product" in (out / a_id / "product-001.json").read_text()
    assert "source ended" in (out / b_id / "product-001.json").read_text()
    # Each session was recorded on its own, with its own operator commands.
    commands = {}
    for session_id in (a_id, b_id):
        lines = [json.loads(line) for line in (record / session_id / "events.jsonl").read_text().splitlines()]
        commands[session_id] = [e["command"]["kind"] for e in lines if e.get("event") == "command"]
        assert sum("frame" in e and "event" not in e for e in lines) > 10  # frames arrived and were recorded
        assert (record / session_id / "session.json").is_file()
    assert commands == {a_id: ["next_product"], b_id: []}


# -- bad input -------------------------------------------------------------------------------------------


async def _post(http: ClientSession, url: str, data: bytes) -> tuple[int, dict]:
    async with http.post(url, data=data, headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.json(content_type=None)


def test_garbage_and_oversized_offers_get_400_and_the_server_goes_on(tmp_path):
    async def scenario():
        app = create_app(tmp_path, _config(**{"serve.max_body_bytes": 4096}))
        sdp = await offer_sdp()
        async with serving(app) as base, ClientSession() as http:
            answers = {
                "not json": await _post(http, base + "offer", b"{not json"),
                "no type": await _post(http, base + "offer", json.dumps({"sdp": sdp}).encode()),
                "answer": await _post(http, base + "offer", json.dumps({"sdp": sdp, "type": "answer"}).encode()),
                "garbage sdp": await _post(http, base + "offer", json.dumps(
                    {"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nthis is not sdp\r\n", "type": "offer"}).encode()),
                "no video": await _post(http, base + "offer", json.dumps({"sdp": "hello", "type": "offer"}).encode()),
                "oversized": await _post(http, base + "offer",
                                         json.dumps({"sdp": "x" * 100_000, "type": "offer"}).encode()),
                "good": await _post(http, base + "offer", json.dumps({"sdp": sdp, "type": "offer"}).encode()),
            }
            assert len(app[STATE].sessions) == 1  # only the good offer made a session
        return answers

    answers = asyncio.run(scenario())
    for name, (status, body) in answers.items():
        if name != "good":
            assert status == 400, (name, status, body)
            assert body["error"], name
    assert "not JSON" in answers["not json"][1]["error"]
    assert "over 4096 bytes" in answers["oversized"][1]["error"]
    assert "cannot use this SDP offer" in answers["garbage sdp"][1]["error"]
    status, body = answers["good"]
    assert status == 200 and body["type"] == "answer" and "m=video" in body["sdp"] and len(body["session"]) == 32


def test_sessions_beyond_the_limit_are_refused_until_one_ends(tmp_path):
    async def scenario():
        app = create_app(tmp_path, _config(**{"serve.max_sessions": 1, "serve.idle_timeout": 0.5}))
        offer = json.dumps({"sdp": await offer_sdp(), "type": "offer"}).encode()
        no_camera = json.dumps({"sdp": await offer_sdp(camera=False), "type": "offer"}).encode()
        async with serving(app) as base, ClientSession() as http:
            first = await _post(http, base + "offer", no_camera)
            second = await _post(http, base + "offer", offer)
            # The first peer sends no camera (and never connects): its session ends after idle_timeout.
            await asyncio.wait_for(app[STATE].sessions[first[1]["session"]].closed.wait(), 10)
            third = await _post(http, base + "offer", offer)
        return first, second, third

    first, second, third = asyncio.run(scenario())
    assert first[0] == 200 and third[0] == 200
    assert second[0] == 503 and "serve.max_sessions" in second[1]["error"]


def test_gallery_files_outside_the_session_folder_are_refused(tmp_path):
    out = tmp_path / "out"
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")

    async def scenario():
        app = create_app(out, _config())
        sdp = await offer_sdp()
        async with serving(app) as base, ClientSession() as http:
            ids = []
            for _ in range(2):
                status, body = await _post(http, base + "offer", json.dumps({"sdp": sdp, "type": "offer"}).encode())
                assert status == 200
                ids.append(body["session"])
            mine, other = (out / i for i in ids)
            for folder in (mine, other):
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "product-001.jpg").write_bytes(b"\xff\xd8 a still")
            (mine / "link.txt").symlink_to(secret)
            files = f"{base}sessions/{ids[0]}/files/"
            attempts = {
                "dot-dot": files + "%2E%2E/%2E%2E/secret.txt",
                "dot-dot slash": files + "..%2F..%2Fsecret.txt",
                "absolute": files + "%2F" + str(secret).lstrip("/").replace("/", "%2F"),
                "symlink out": files + "link.txt",
                "other session": files + f"..%2F{ids[1]}%2Fproduct-001.jpg",
                "the folder itself": files + ".",
                "unknown session": f"{base}sessions/{'0' * 32}/files/product-001.jpg",
            }
            statuses = {}
            for name, url in attempts.items():
                async with http.get(URL(url, encoded=True)) as response:
                    statuses[name] = (response.status, await response.read())
            async with http.get(files + "product-001.jpg") as response:
                own = (response.status, await response.read())
        return statuses, own

    statuses, own = asyncio.run(scenario())
    assert own == (200, b"\xff\xd8 a still")
    for name, (status, body) in statuses.items():
        assert status in (403, 404), (name, status)
        assert b"not yours" not in body and b"a still" not in body, name


def test_token_is_required_off_loopback_and_checked_on_every_request(tmp_path, capsys):
    with pytest.raises(ValueError, match="needs --token"):
        check_bind("0.0.0.0", None)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "s3cret")
    assert main(["serve", "--out", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "needs --token" in capsys.readouterr().err

    async def scenario():
        app = create_app(tmp_path, _config(), token="s3cret")
        async with serving(app) as base, ClientSession() as http:
            statuses, cookies = {}, {}
            for name, url, headers in [
                ("none", base, {}), ("wrong", base + "?token=guess", {}), ("query", base + "?token=s3cret", {}),
                ("header", base, {"X-Turncrop-Token": "s3cret"}), ("script", base + "app.js?token=s3cret", {}),
                ("offer without", base + "offer", {}),
                # The cookie the server set carries the token for relative links (a spin viewer's images).
                ("cookie", base + "app.js", {"Cookie": "turncrop_token=s3cret"}),
                ("wrong cookie", base + "app.js", {"Cookie": "turncrop_token=guess"}),
            ]:
                method = http.post if name.startswith("offer") else http.get
                async with method(url, headers=headers) as response:
                    statuses[name] = response.status
                    cookies[name] = response.cookies.get("turncrop_token")
        return statuses, cookies

    statuses, cookies = asyncio.run(scenario())
    assert statuses == {"none": 401, "wrong": 401, "query": 200, "header": 200, "script": 200, "offer without": 401,
                        "cookie": 200, "wrong cookie": 401}
    cookie = cookies["query"]
    assert cookie.value == "s3cret" and cookie["httponly"] and cookie["samesite"] == "Strict"
    assert cookies["wrong"] is None and cookies["cookie"] is None  # set only for a proven token, once


def test_push_source_keeps_the_newest_converts_only_what_is_read_and_ends_on_close():
    converted = []

    def convert(item):
        converted.append(item)
        return Frame(np.zeros((2, 2, 3), np.uint8), item, item / 30)

    source = PushSource("peer", (2, 2), convert=convert)
    frames = iter(source)
    for i in range(3):
        source.put(i)
    assert next(frames).index == 2 and source.dropped == 2 and converted == [2]
    got = []
    reader = threading.Thread(target=lambda: got.extend(f.index for f in frames))
    reader.start()  # waits for the next frame
    source.put(3)
    time.sleep(0.1)
    source.close()  # ends the reader's iteration
    reader.join(5)
    assert not reader.is_alive() and got == [3]
    source.put(4)  # after close: ignored
    assert converted == [2, 3] and list(source) == []
    gone = PushSource("a peer that left before the stream began", (2, 2))
    gone.close()
    assert list(gone) == []


def test_page_messages_become_operator_commands():
    size = (240, 320)
    point = parse_command(json.dumps({"type": "point", "x": 10, "y": 20.5, "label": 0}), size)
    assert point.kind == "point" and point.points.tolist() == [[10.0, 20.5]] and point.labels.tolist() == [0]
    box = parse_command(json.dumps({"type": "box", "box": [-5, 10, 400, 100]}), size)
    assert box.box.tolist() == [0.0, 10.0, 320.0, 100.0]  # clipped to the frame
    assert parse_command('{"type": "rekey"}', size).kind == "rekey"
    assert parse_command('{"type": "next_product"}', size).kind == "next_product"
    for message, error in [
        ("[1, 2]", "an object"), ("{", "not JSON"), ('{"type": "point", "x": "a", "y": 1}', "x must be"),
        ('{"type": "point", "x": 1, "y": NaN}', "y must be"),
        ('{"type": "point", "x": 1, "y": 1, "label": 2}', "label"),
        ('{"type": "box", "box": [1, 2, 3]}', "box must be"), ('{"type": "box", "box": [400, 0, 500, 10]}', "empty"),
        ('{"type": "point", "x": 1, "y": 1, "label": true}', "label"),
    ]:
        with pytest.raises(ValueError, match=error):
            parse_command(message, size)


def test_serve_settings_are_validated():
    assert load_config("default").serve.max_sessions == 4
    for key, value, error in [("serve.max_sessions", 0, "max_sessions must be >= 1"),
                              ("serve.preview_max_side", 10, "preview_max_side must be in"),
                              ("serve.idle_timeout", 0.1, "idle_timeout must be in"),
                              ("serve.max_body_bytes", 10, "max_body_bytes must be in"),
                              ("serve.listen", 1, "unknown key serve.listen")]:
        with pytest.raises(ConfigError, match=error):
            load_config("default", {key: value})
