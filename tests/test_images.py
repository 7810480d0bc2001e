"""Safe image loading: real files (valid, truncated, fake, bombs) and a real local HTTP server for URLs."""

from __future__ import annotations

import http.server
import struct
import threading
import time
import zlib
from io import BytesIO
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image, ImageFile

import vitrina.images as images
from vitrina.config import IndexerConfig
from vitrina.errors import BadInput, ImageError, PayloadTooLarge
from vitrina.images import FetchError, decode_image, fetch_url, load_image


def jpeg_bytes(size: tuple[int, int] = (120, 90), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (a decompression bomb that costs nothing to build)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- decode_image


def test_decode_valid_jpeg_is_rgb_and_loaded() -> None:
    img = decode_image(jpeg_bytes((120, 90)), max_pixels=1_000_000)
    assert img.mode == "RGB" and img.size == (120, 90)
    assert np.asarray(img).shape == (90, 120, 3)


def test_a_large_jpeg_decodes_at_the_smallest_scale_that_still_fits() -> None:
    """fit: 1600x1200 with fit 128 decodes at 1/8 (200x150, both sides still >= 128) and looks like the whole
    decode shrunk; fit 300 needs 1/4; a PNG, a small JPEG and an EXIF-rotated one decode as they are / upright."""
    y, x = np.mgrid[0:1200, 0:1600]
    smooth = np.stack([x / 1600 * 255, y / 1200 * 255, (x + y) / 2800 * 255], -1).astype(np.uint8)
    buf = BytesIO()
    Image.fromarray(smooth).save(buf, "JPEG", quality=92)
    big = buf.getvalue()
    small = decode_image(big, 4_000_000, fit=128)
    assert small.size == (200, 150) and small.mode == "RGB"
    assert decode_image(big, 4_000_000, fit=300).size == (400, 300)
    whole = decode_image(big, 4_000_000).resize((64, 48), Image.Resampling.BICUBIC)
    diff = np.abs(np.asarray(small.resize((64, 48), Image.Resampling.BICUBIC), float) - np.asarray(whole, float))
    assert diff.mean() < 2.0
    assert decode_image(jpeg_bytes((120, 90)), 1_000_000, fit=128).size == (120, 90)
    png = BytesIO()
    Image.fromarray(smooth).save(png, "PNG")
    assert decode_image(png.getvalue(), 4_000_000, fit=128).size == (1600, 1200)
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = BytesIO()
    Image.fromarray(smooth).save(turned, "JPEG", exif=exif)
    assert decode_image(turned.getvalue(), 4_000_000, fit=128).size == (150, 200)


def test_decode_grey_and_palette_become_rgb() -> None:
    for mode in ("L", "P", "CMYK"):
        buf = BytesIO()
        Image.new(mode, (10, 10)).save(buf, "TIFF" if mode == "CMYK" else "PNG")
        assert decode_image(buf.getvalue(), 10_000).mode == "RGB"


def test_transparent_pixels_become_white() -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    buf = BytesIO()
    rgba.save(buf, "PNG")
    img = decode_image(buf.getvalue(), 10_000)
    assert img.getpixel((5, 5)) == (255, 255, 255)
    assert img.getpixel((0, 0)) == (255, 0, 0)


def test_exif_orientation_applied() -> None:
    img = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert decode_image(buf.getvalue(), 10_000).size == (20, 40)


def test_truncated_jpeg_rejected() -> None:
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    data = jpeg_bytes((200, 200))
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2], max_pixels=1_000_000)


@pytest.mark.parametrize("data", [b"hello, this is a text file\n", b"", b"\x89PNG\r\n\x1a\n garbage"])
def test_non_images_rejected(data: bytes) -> None:
    with pytest.raises(ImageError):
        decode_image(data, max_pixels=1_000_000)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_declared_size_over_limit_rejected_before_decoding() -> None:
    bomb = png_declaring(12_000, 12_000)  # 144 Mpx declared (under Pillow's own error limit), ~60 bytes
    assert len(bomb) < 200
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(bomb, max_pixels=40_000_000)
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(ImageError, match="over the limit"):
        decode_image(jpeg_bytes((100, 100)), max_pixels=9_999)
    assert decode_image(jpeg_bytes((100, 100)), max_pixels=10_000).size == (100, 100)


def test_pillow_own_bomb_limit_also_mapped() -> None:
    with pytest.raises(ImageError):
        decode_image(png_declaring(200_000, 200_000), max_pixels=0)  # 0 = no limit of ours; Pillow's still holds


# ---------------------------------------------------------------- load_image (local)


def test_load_local_relative_and_absolute(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(jpeg_bytes())
    cfg = IndexerConfig()
    assert load_image("images/a.jpg", tmp_path, cfg).size == (120, 90)
    assert load_image(str(tmp_path / "images" / "a.jpg"), Path("/nonexistent"), cfg).size == (120, 90)


def test_load_local_errors(tmp_path: Path) -> None:
    cfg = IndexerConfig()
    (tmp_path / "fake.jpg").write_text("I am text, not a JPEG")
    data = jpeg_bytes((200, 200))
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "bomb.png").write_bytes(png_declaring(30_000, 30_000))
    with pytest.raises(ImageError, match="not an image"):
        load_image("fake.jpg", tmp_path, cfg)
    with pytest.raises(ImageError, match="truncated"):
        load_image("cut.jpg", tmp_path, cfg)
    with pytest.raises(ImageError, match="bomb"):
        load_image("bomb.png", tmp_path, cfg)
    with pytest.raises(ImageError, match="not found"):
        load_image("missing.jpg", tmp_path, cfg)
    with pytest.raises(ImageError, match="no image"):
        load_image("  ", tmp_path, cfg)
    (tmp_path / "ok.jpg").write_bytes(data)
    with pytest.raises(PayloadTooLarge):
        load_image("ok.jpg", tmp_path, IndexerConfig(max_image_bytes=len(data) - 1))


def test_local_paths_refused_when_not_allowed(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
    with pytest.raises(BadInput, match="only http"):
        load_image(str(tmp_path / "a.jpg"), tmp_path, IndexerConfig(), allow_local=False)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "http://", "http://host:99999/x",
                                 "gopher://127.0.0.1/"])
def test_bad_urls_rejected(url: str) -> None:
    with pytest.raises(FetchError):
        fetch_url(url, 1.0, 1000, allow_private=True)
    with pytest.raises(FetchError):
        load_image(url, Path("."), IndexerConfig(allow_private_urls=True))


# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize("addr", ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254",
                                  "224.0.0.1", "0.0.0.0", "100.64.0.1", "240.0.0.1", "::1", "fe80::1", "fc00::1",
                                  "::ffff:127.0.0.1", "::ffff:10.0.0.1", "ff02::1", "::"])
def test_private_addresses_refused(addr: str) -> None:
    import ipaddress

    assert images._address_refused(ipaddress.ip_address(addr)) is not None


@pytest.mark.parametrize("addr", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_allowed(addr: str) -> None:
    import ipaddress

    assert images._address_refused(ipaddress.ip_address(addr)) is None


def test_any_private_address_among_several_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_getaddrinfo(host: str, port: int, **kw: object) -> list:
        return [(2, 1, 6, "", ("93.184.216.34", port)), (2, 1, 6, "", ("10.0.0.5", port))]

    monkeypatch.setattr(images.socket, "getaddrinfo", fake_getaddrinfo)
    with pytest.raises(FetchError, match="private address 10.0.0.5"):
        fetch_url("http://mixed.test/a.jpg", 1.0, 1000)


def test_unresolvable_host() -> None:
    with pytest.raises(FetchError, match="cannot resolve"):
        fetch_url("http://no-such-host.invalid/a.jpg", 2.0, 1000, allow_private=True)


# ---------------------------------------------------------------- URLs against a real local server

IMAGE = jpeg_bytes((64, 48), seed=3)
BIG = b"\xff" * 300_000


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              length: bool = True) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        port = self.server.server_address[1]
        if self.path == "/img.jpg":
            self._send(200, IMAGE, {"Content-Type": "image/jpeg"})
        elif self.path == "/big-declared":
            self._send(200, BIG)
        elif self.path == "/big-undeclared":
            self.close_connection = True
            self._send(200, BIG, length=False)
        elif self.path == "/to-img":
            self._send(302, headers={"Location": "/img.jpg"})
        elif self.path == "/to-loopback":
            self._send(302, headers={"Location": f"http://127.0.0.1:{port}/img.jpg"})
        elif self.path.startswith("/loop"):
            n = int(self.path[5:] or 0)
            self._send(302, headers={"Location": f"/loop{n + 1}"})
        elif self.path == "/slow":
            time.sleep(1.5)
            self._send(200, IMAGE)
        elif self.path == "/text":
            self._send(200, b"<html>not an image</html>", {"Content-Type": "text/html"})
        else:
            self._send(404, b"nope")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_loopback_refused_by_default(server: str) -> None:
    with pytest.raises(FetchError, match="loopback"):
        fetch_url(f"{server}/img.jpg", 2.0, 1_000_000)
    with pytest.raises(FetchError, match="loopback"):
        load_image(f"{server}/img.jpg", Path("."), IndexerConfig())
    with pytest.raises(FetchError, match="loopback"):
        fetch_url(f"http://localhost:{server.rsplit(':', 1)[1]}/img.jpg", 2.0, 1_000_000)


def test_loopback_allowed_when_private_allowed(server: str) -> None:
    assert fetch_url(f"{server}/img.jpg", 2.0, 1_000_000, allow_private=True) == IMAGE
    img = load_image(f"{server}/img.jpg", Path("."), IndexerConfig(allow_private_urls=True))
    assert img.mode == "RGB" and img.size == (64, 48)


def test_size_cap_enforced(server: str) -> None:
    with pytest.raises(PayloadTooLarge, match="300,000 bytes"):
        fetch_url(f"{server}/big-declared", 2.0, 100_000, allow_private=True)
    with pytest.raises(PayloadTooLarge):
        fetch_url(f"{server}/big-undeclared", 2.0, 100_000, allow_private=True)
    assert len(fetch_url(f"{server}/big-undeclared", 2.0, 300_000, allow_private=True)) == 300_000
    with pytest.raises(PayloadTooLarge):
        load_image(f"{server}/img.jpg", Path("."), IndexerConfig(allow_private_urls=True, max_image_bytes=100))


def test_http_errors_and_non_images(server: str) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_url(f"{server}/missing", 2.0, 1000, allow_private=True)
    with pytest.raises(ImageError):
        load_image(f"{server}/text", Path("."), IndexerConfig(allow_private_urls=True))


def test_timeout(server: str) -> None:
    t0 = time.perf_counter()
    with pytest.raises(FetchError, match="timed out"):
        fetch_url(f"{server}/slow", 0.3, 1_000_000, allow_private=True)
    assert time.perf_counter() - t0 < 1.2


def test_redirects_followed_and_capped(server: str) -> None:
    assert fetch_url(f"{server}/to-img", 2.0, 1_000_000, allow_private=True) == IMAGE
    with pytest.raises(FetchError, match="more than 3 redirects"):
        fetch_url(f"{server}/loop0", 2.0, 1000, allow_private=True)
    with pytest.raises(FetchError, match="more than 1 redirects"):
        fetch_url(f"{server}/loop0", 2.0, 1000, allow_private=True, max_redirects=1)


def test_redirect_to_loopback_refused(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A public-looking first hop that redirects to loopback: the second hop must be re-checked and refused."""
    port = int(server.rsplit(":", 1)[1])
    real_resolve = images._resolve

    def resolve(host: str, p: int, allow_private: bool) -> str:
        if host == "public.test":  # pretend DNS said a public address; connect to our server instead
            return "127.0.0.1"
        return real_resolve(host, p, allow_private)

    monkeypatch.setattr(images, "_resolve", resolve)
    # redirect to a public host is followed
    assert fetch_url(f"http://public.test:{port}/to-img", 2.0, 1_000_000) == IMAGE
    # redirect to loopback is refused at the second hop
    with pytest.raises(FetchError, match="loopback"):
        fetch_url(f"http://public.test:{port}/to-loopback", 2.0, 1_000_000)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """HTTPS on loopback with a self-signed certificate for 'localhost' (made with the openssl CLI)."""
    import shutil
    import ssl
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not available")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://localhost:{httpd.server_address[1]}", cert
    httpd.shutdown()
    httpd.server_close()


def test_https_verifies_certificate(tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    url, cert = tls_server
    with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
        fetch_url(f"{url}/img.jpg", 5.0, 1_000_000, allow_private=True)  # self-signed: not trusted
    monkeypatch.setattr(images, "_tls_context", lambda: ssl.create_default_context(cafile=str(cert)))
    assert fetch_url(f"{url}/img.jpg", 5.0, 1_000_000, allow_private=True) == IMAGE
    with pytest.raises(FetchError, match="loopback"):
        fetch_url(f"{url}/img.jpg", 5.0, 1_000_000)
