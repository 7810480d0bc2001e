"""Safe image loading for the indexer and uploads: decode with bomb/truncation checks, fetch URLs without SSRF."""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from vitrina.config import IndexerConfig
from vitrina.errors import BadInput, ImageError, PayloadTooLarge

USER_AGENT = "vitrina-image-fetch/0.1"
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNK = 64 * 1024


class FetchError(BadInput):
    """An image URL cannot be fetched: bad URL, refused address, network failure or HTTP error."""

    status = 422


def decode_image(data: bytes, max_pixels: int, fit: int = 0) -> Image.Image:
    """Decode bytes into a fully loaded RGB image; ImageError for non-images, truncated files and bombs.

    The declared size is checked against max_pixels before any pixel is decoded. EXIF orientation
    is applied; transparent pixels become white. fit > 0: the caller shrinks the image to fit x fit or less, so
    a JPEG is decoded at the smallest of 1/2, 1/4, 1/8 scale whose sides still reach fit (a 12 MP phone photo
    decodes at 1/8 size, several times faster); other formats decode whole.
    """
    if not data:
        raise ImageError("the image is empty (0 bytes)")
    try:
        img = Image.open(BytesIO(data))
        width, height = img.size
        if max_pixels > 0 and width * height > max_pixels:
            raise ImageError(f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
                             f"{max_pixels:,} (possible decompression bomb)")
        if fit > 0:
            img.draft("RGB", (fit, fit))
        img.load()  # decode every pixel now, so a truncated file fails here and not later
        img = ImageOps.exif_transpose(img) or img
        return _to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError("image is over Pillow's pixel limit (decompression bomb)", detail=str(e)) from e
    except UnidentifiedImageError as e:
        raise ImageError("not an image, or an image format that cannot be read", detail=str(e)) from e
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise ImageError("the image is corrupt or truncated", detail=str(e)) from e


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _address_refused(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address must not be fetched from (private, loopback, ...), or None when it is public."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:
        return "non-global"
    return None


def _resolve(host: str, port: int, allow_private: bool) -> str:
    """The IP to connect to for host; FetchError if it does not resolve or any address is refused."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise FetchError(f"cannot resolve host {host!r}", detail=str(e)) from e
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise FetchError(f"host {host!r} has no address")
    if not allow_private:
        for addr in addresses:
            why = _address_refused(ipaddress.ip_address(addr.split("%", 1)[0]))
            if why:
                raise FetchError(f"refusing to fetch from {host!r}: it resolves to {why} address {addr} "
                                 "(set [indexer].allow_private_urls to allow)")
    return addresses[0]


def _tls_context() -> ssl.SSLContext:
    """TLS for https image URLs: the system trust store, certificate checked against the host name."""
    return ssl.create_default_context()


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP connection to an already vetted IP (no second DNS lookup that could answer differently)."""

    def __init__(self, host: str, ip: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPS(_PinnedHTTP):
    """HTTPS to a vetted IP; the certificate is checked against the host name."""

    default_port = 443

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = _tls_context().wrap_socket(sock, server_hostname=self.host)


def _split(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query) of an http(s) URL; FetchError otherwise."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise FetchError(f"not a valid URL: {url!r}", detail=str(e)) from e
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"only http and https image URLs are allowed, got {scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise FetchError(f"URL has no host: {url!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80), path


def fetch_url(url: str, timeout_s: float, max_bytes: int, allow_private: bool = False,
              max_redirects: int = 3) -> bytes:
    """GET an http(s) URL's body, at most max_bytes (else PayloadTooLarge), within timeout_s in total.

    Every hop (the URL and each redirect, at most max_redirects) is resolved and refused if any
    address is private, loopback, link-local, multicast or reserved, unless allow_private.
    """
    deadline = time.monotonic() + timeout_s
    current = url
    for _hop in range(max_redirects + 1):
        scheme, host, port, path = _split(current)
        ip = _resolve(host, port, allow_private)
        cls = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
        conn = cls(host, ip, port, timeout=max(0.1, deadline - time.monotonic()))
        try:
            conn.request("GET", path, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
            resp = conn.getresponse()
            if resp.status in _REDIRECTS:
                location = resp.getheader("Location")
                if not location:
                    raise FetchError(f"HTTP {resp.status} redirect without a Location from {current}")
                current = urllib.parse.urljoin(current, location)
                continue
            if resp.status != 200:
                raise FetchError(f"HTTP {resp.status} {resp.reason} from {current}")
            return _read_capped(resp, max_bytes, deadline, current)
        except (TimeoutError, socket.timeout) as e:
            raise FetchError(f"timed out after {timeout_s:g}s fetching {current}") from e
        except (OSError, http.client.HTTPException) as e:
            raise FetchError(f"cannot fetch {current}: {e}") from e
        finally:
            conn.close()
    raise FetchError(f"more than {max_redirects} redirects fetching {url}")


def _read_capped(resp: http.client.HTTPResponse, max_bytes: int, deadline: float, url: str) -> bytes:
    declared = resp.getheader("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"image at {url} is {int(declared):,} bytes, over the limit of {max_bytes:,}")
    body = bytearray()
    while True:
        if time.monotonic() > deadline:
            raise FetchError(f"timed out reading {url}")
        chunk = resp.read(min(_CHUNK, max_bytes + 1 - len(body)))
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"image at {url} is over the limit of {max_bytes:,} bytes")


def is_url(source: str) -> bool:
    """True when source names a remote image (has a scheme such as http://) rather than a local path."""
    return "://" in source.strip()[:16]


def load_image(source: str, base_dir: Path, indexer_cfg: IndexerConfig, allow_local: bool = True,
               fit: int = 0) -> Image.Image:
    """A catalogue image: a path (relative to base_dir) or an http(s) URL, fetched and decoded safely (`fit` as
    in decode_image).

    Pass allow_local=False for sources that come from web requests, so they can never read server files.
    """
    source = source.strip()
    if not source:
        raise ImageError("the item has no image")
    cap = indexer_cfg.max_image_bytes
    if is_url(source):
        data = fetch_url(source, indexer_cfg.url_timeout_s, cap, indexer_cfg.allow_private_urls,
                         indexer_cfg.max_redirects)
        return decode_image(data, indexer_cfg.max_image_pixels, fit)
    if not allow_local:
        raise BadInput("only http(s) image URLs are accepted here")
    path = Path(source).expanduser()
    path = path if path.is_absolute() else Path(base_dir) / path
    try:
        size = path.stat().st_size
        if cap > 0 and size > cap:
            raise PayloadTooLarge(f"image file {path} is {size:,} bytes, over the limit of {cap:,}")
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise ImageError(f"image file not found: {path}") from e
    except IsADirectoryError as e:
        raise ImageError(f"image path is a folder: {path}") from e
    except OSError as e:
        raise ImageError(f"cannot read image file {path}", detail=str(e)) from e
    return decode_image(data, indexer_cfg.max_image_pixels, fit)
