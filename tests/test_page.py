"""The clinic page, as a real server process on 127.0.0.1: token, traversal, upload limits,
non-images, a model swapped after start; and a real browser (Debian's chromium, headless, driven
by Playwright) uploading a chest X-ray and a photo and reading the verdicts off the page."""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from decision_fixtures import BLOCK, toy_onnx
from helpers import COVID, ROOT

from edgecxr.models.signing import keygen, sign_artifact

RUNNER = str(ROOT / "device" / "edgecxr_runner.py")
TOKEN = "s3cret-token-for-tests"
CHROMIUM = "/usr/bin/chromium"
# what /work/.library/env/machines/python.md lists as known to work here (as root, closed network)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
# the toy model with a "not a chest X-ray" cut: max_logit score -max(8m, 0) > -1 (dark and mid images) is refused
OOD_BLOCK = {**BLOCK, "ood": {"method": "max_logit", "threshold": -1.0}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    """``edgecxr_runner.py page`` in a subprocess, waited for until it says where it serves."""

    def __init__(self, tmp: Path, model: str, *extra: str) -> None:
        self.port = _free_port()
        self.log = tmp / f"page_{self.port}.log"
        self.proc = subprocess.Popen([sys.executable, RUNNER, "page", "--model", model, "--http", f"127.0.0.1:{self.port}",
                                      "--state", str(tmp / "state"), *extra], stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        for _ in range(300):
            if "page on http" in self.log.read_text() or self.proc.poll() is not None:
                break
            time.sleep(0.1)
        for _ in range(100):  # the line comes just before uvicorn binds
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, str, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.putrequest(method, path, skip_accept_encoding=True)  # the path is sent as is: no client-side normalising
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        out = r.status, r.read().decode("utf-8", "replace"), dict(r.getheaders())
        conn.close()
        return out

    def upload(self, data: bytes, name: str, headers: dict | None = None) -> tuple[int, str, dict]:
        boundary = "edgecxr-test-boundary"
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return self.request("POST", "/classify", body, {"Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})})

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        return self.log.read_text()


def _png(value: int, size: int = 64) -> bytes:
    from edgecxr.device._npimage import encode_png

    yy, xx = np.mgrid[0:size, 0:size]
    return encode_png(np.clip(value + 20 * np.sin(xx / 5.0) * np.cos(yy / 7.0), 0, 255).astype(np.uint8))


@pytest.fixture
def signed_model(tmp_path) -> tuple[str, str]:
    (tmp_path / "model").mkdir()
    model = toy_onnx(str(tmp_path / "model" / "m.onnx"), OOD_BLOCK)
    priv, pub = keygen(str(tmp_path / "keys" / "release"))
    sign_artifact(model, priv)
    return model, pub


def test_tokens_traversal_limits_non_images_and_a_swapped_model_on_a_running_server(signed_model, tmp_path):
    model, pub = signed_model
    page = Page(tmp_path, model, "--token", TOKEN, "--trust", pub, "--max-upload-mb", "0.05")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert page.request("GET", "/")[0] == 401
        assert page.request("GET", "/", headers={"Authorization": "Bearer wrong"})[0] == 401
        status, body, _ = page.request("GET", "/", headers=auth)
        assert status == 200 and "signed, verified with key" in body
        status, _, headers = page.request("GET", f"/?token={TOKEN}")  # the browser way: a cookie, the token out of the URL
        assert status == 303 and "edgecxr_token=" in headers.get("set-cookie", "") and "HttpOnly" in headers["set-cookie"]
        for path in ("/thumbs/../../../etc/passwd", "/thumbs/..%2f..%2fstate.py", "/../../etc/passwd", "/thumbs/%2e%2e/%2e%2e/m.onnx",
                     "/thumbs/0123456789abcdef.png", "/state/thumbs", "/thumbs/../uploads"):
            assert page.request("GET", path, headers=auth)[0] == 404, path
        status, _, headers = page.upload(_png(200), "../../../../tmp/evil.png", auth)  # a traversal in the upload's name
        assert status == 303, status
        assert not os.path.exists("/tmp/evil.png") and not (tmp_path / "evil.png").exists()
        listed = json.loads(page.request("GET", "/status.json", headers=auth)[1])["decisions"]
        assert listed[0]["source"] == "evil.png" and listed[0]["action"] == "answer"
        thumb = listed[0]["thumb"]
        assert page.request("GET", thumb, headers=auth)[0] == 200 and page.request("GET", thumb)[0] == 401
        assert page.upload(os.urandom(80_000), "big.png", auth)[0] == 413
        status, body, _ = page.upload(b"GIF89a not what we take", "photo.png", auth)
        assert status == 415 and "not an image" in body
        with open(model, "ab") as fh:  # the model swapped on the SD card after start
            fh.write(b"\0")
        status, body, _ = page.upload(_png(200), "after.png", auth)
        assert status == 503 and "model refused: m.onnx: changed since it was signed" in body
    finally:
        log = page.stop()
    lines = log.splitlines()
    assert "every request needs the token" in log
    refused = [x for x in lines if "refused GET / from 127.0.0.1" in x]
    assert len(refused) == 2 and TOKEN not in log and "wrong" not in refused[0] and "wrong token" in refused[1]
    assert any("model refused at reload: m.onnx: changed since it was signed" in x for x in lines)
    assert "Traceback" not in log


def test_a_non_localhost_address_needs_a_token_and_says_so(tmp_path):
    model = toy_onnx(str(tmp_path / "m.onnx"), OOD_BLOCK)
    proc = subprocess.run([sys.executable, RUNNER, "page", "--model", model, "--http", "0.0.0.0:8080", "--state", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and err[-1].startswith("edgecxr-runner: error: --http 0.0.0.0:8080 is not localhost: give --token")
    from edgecxr.device.page.app import PageServer
    from edgecxr.device.page.model import ModelHolder
    from edgecxr.device.page.state import PageState

    said = []
    PageServer(PageState(ModelHolder(model, None), str(tmp_path / "s"), log=said.append), "0.0.0.0", 8080, TOKEN)  # not started
    assert said == ["page on http://0.0.0.0:8080/ (reachable from the network; every request needs the token)"]


def _photo(path: Path) -> str:
    """A colour photograph stand-in: a saturated gradient scene with shapes (no chest X-ray in it)."""
    import cv2

    yy, xx = np.mgrid[0:240, 0:320].astype(np.float32)
    img = np.stack([60 + 40 * np.sin(xx / 30), 120 + 60 * np.cos(yy / 25), 30 + 0.3 * xx], axis=2)
    cv2.circle(img, (200, 120), 50, (20, 40, 220), -1)
    cv2.rectangle(img, (30, 150), (120, 230), (40, 200, 60), -1)
    cv2.imwrite(str(path), np.clip(img, 0, 255).astype(np.uint8))
    return str(path)


def _cxr(tmp_path: Path) -> str:
    if COVID.is_dir():
        return str(sorted((COVID / "Normal").glob("*.png"))[0])
    from edgecxr.data.synthetic import write_dataset  # no real CXRs here: a synthetic one

    root = Path(write_dataset(str(tmp_path / "syn"), n_per_class=1, size=128, seed=0))
    return str(sorted(root.rglob("*.png"))[0])


def test_a_real_browser_uploads_a_chest_xray_and_a_photo_and_reads_the_verdicts(signed_model, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements.txt)")
    model, pub = signed_model
    cxr, photo = _cxr(tmp_path), _photo(tmp_path / "holiday_photo.jpg")
    page_proc = Page(tmp_path, model, "--trust", pub)
    shot = tmp_path / "page.png"
    verdicts = {}
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
            tab = browser.new_page(viewport={"width": 1100, "height": 900})
            tab.goto(f"http://127.0.0.1:{page_proc.port}/")
            assert "signed, verified with key" in tab.inner_text("#signature")
            for name, path in (("cxr", cxr), ("photo", photo)):
                tab.set_input_files("input[name=image]", path)
                tab.click("button[type=submit]")
                tab.wait_for_selector("#last-result")
                verdicts[name] = (tab.inner_text("#last-result .verdict"), tab.inner_text("#last-result .reason"))
            tab.screenshot(path=str(shot), full_page=True)
            rows = tab.locator("tr.decision").count()
            browser.close()
    finally:
        page_proc.stop()
    print(f"verdicts read off the page: {verdicts}; screenshot {shot}")
    assert rows == 2 and verdicts["photo"][0] == "refuse" and "not a chest X-ray" in verdicts["photo"][1]
    assert verdicts["cxr"][0] in ("answer", "refer", "refuse") and verdicts["cxr"][1]
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("EDGECXR_PAGE_SHOT")  # where to keep the screenshot (docs), if asked
    if keep:
        shutil.copyfile(shot, keep)


def test_serve_with_trust_audit_log_and_the_page_as_listeners(signed_model, tmp_path):
    """serve --inbox --trust --audit-log --http: a dropped image is answered, audited and shown on the page."""
    pytest.importorskip("pynetdicom", reason="serve needs pynetdicom (install.sh --service)")
    from serve_procs import ServeProcess, free_port, wait_for

    from edgecxr.device.audit import device_keygen
    from edgecxr.device.audit_verify import OK, verify_log

    model, pub = signed_model
    _priv, dev_pub = device_keygen(str(tmp_path / "state"))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    port = free_port()
    audit = tmp_path / "state" / "audit.log"
    serve = ServeProcess(tmp_path / "svc", model, None, "--inbox", str(inbox), "--trust", pub, "--audit-log", str(audit),
                         "--device-key", str(tmp_path / "state" / "device_ed25519.key"), "--http", f"127.0.0.1:{port}")
    try:
        serve.wait_ready()
        (inbox / "chest.png").write_bytes(_png(200))
        wait_for(lambda: len(serve.results()) == 1, 120, "one result")
        page = Page.__new__(Page)
        page.port = port
        wait_for(lambda: '"source":"chest.png"' in page.request("GET", "/status.json")[1].replace(" ", ""), 60, "the page's listener")
        status = json.loads(page.request("GET", "/status.json")[1])
        assert status["model"]["signature"].startswith("signed") and status["decisions"][0]["origin"] == "service"
    finally:
        serve.stop()
    log = serve.log()
    assert "signature: signed, verified with key" in log and "page on http://127.0.0.1" in log
    assert serve.results()[0]["signature"] == "signed"
    rep = verify_log(str(audit), dev_pub)
    assert rep.status == OK and rep.decisions == 1, rep.text()
    tampered = tmp_path / "tampered"
    shutil.copytree(tmp_path / "model", tampered)
    with open(tampered / "m.onnx", "ab") as fh:
        fh.write(b"\0")
    refused = subprocess.run([sys.executable, RUNNER, "serve", "--model", str(tampered / "m.onnx"), "--inbox", str(inbox),
                              "--outbox", str(tmp_path / "o2"), "--trust", pub], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.startswith("edgecxr-runner: error: m.onnx: changed since it was signed"), refused.stderr
