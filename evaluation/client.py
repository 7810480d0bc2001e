"""One small API client with two transports: the Flask app in-process, or a running service over HTTP."""

from __future__ import annotations

import io
import json as jsonlib
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Mapping, Protocol, Sequence

from vitrina.config import Config
from vitrina.errors import VitrinaError

Params = Mapping[str, Any]  # query-string or form values; a list/tuple value repeats the key
Files = Mapping[str, tuple[str, bytes]]  # form field -> (file name, bytes)


class ApiError(VitrinaError):
    """The service answered a request with an error status (4xx/5xx)."""

    def __init__(self, status: int, path: str, body: Any) -> None:
        err = body.get("error") if isinstance(body, dict) else None
        super().__init__(f"{path}: HTTP {status}: {err or str(body)[:200]}",
                         body.get("detail") if isinstance(body, dict) else None)
        self.status = status
        self.body = body


class ApiClient(Protocol):
    """What evaluation code calls (the shape of `requests`: params for GET, json or data + files for POST);
    every method returns the decoded JSON body or raises ApiError (status, body)."""

    def get(self, path: str, params: Params | None = None) -> Any: ...
    def post(self, path: str, json: Any = None, data: Params | None = None,
             files: Files | None = None, json_body: Any = None, form: Params | None = None) -> Any:
        """json_body and form are older spellings of json and data, still accepted."""
        ...
    def delete(self, path: str) -> Any: ...
    def close(self) -> None: ...


def _pairs(params: Params | None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        if value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else (value,):
            out.append((key, str(v)))
    return out


class InProcessClient:
    """Runs requests through `web.create_app(cfg).test_client()`: the exact service code, no socket."""

    def __init__(self, cfg: Config, api_key: str | None = None, app: Any = None) -> None:
        from web import create_app

        self.app = app if app is not None else create_app(cfg)
        self.client = self.app.test_client()
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _answer(self, response: Any, path: str) -> Any:
        body = response.get_json(silent=True)
        if body is None:
            body = response.get_data(as_text=True)
        if response.status_code >= 400:
            raise ApiError(response.status_code, path, body)
        return body

    def get(self, path: str, params: Params | None = None) -> Any:
        return self._answer(self.client.get(path, query_string=_pairs(params), headers=self.headers), path)

    def post(self, path: str, json: Any = None, data: Params | None = None,
             files: Files | None = None, json_body: Any = None, form: Params | None = None) -> Any:
        json, data = (json if json is not None else json_body), (data if data is not None else form)
        if files is not None or data is not None:
            from werkzeug.datastructures import MultiDict

            form = MultiDict(_pairs(data))
            for field, (name, blob) in (files or {}).items():
                form.add(field, (io.BytesIO(blob), name))
            response = self.client.post(path, data=form, content_type="multipart/form-data",
                                        headers=self.headers)
        else:
            response = self.client.post(path, json=json, headers=self.headers)
        return self._answer(response, path)

    def delete(self, path: str) -> Any:
        return self._answer(self.client.delete(path, headers=self.headers), path)

    def close(self) -> None:
        """Release what the app opened (the embedded store allows one opener per process at a time)."""
        traffic = self.app.extensions.get("vitrina_traffic")
        if traffic is not None:
            traffic.close()
        service = self.app.extensions.get("vitrina")
        if service is not None:
            service.close()


def _multipart(form: Params | None, files: Files | None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for key, value in _pairs(form):
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode())
        out.write(value.encode("utf-8") + b"\r\n")
    for field, (name, blob) in (files or {}).items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(blob + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


class HttpClient:
    """The same calls against a running service (`vitrina serve`) at base_url, standard library only."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 60.0) -> None:
        self.base = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _send(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
              params: Params | None = None) -> Any:
        url = self.base + path + (("?" + urllib.parse.urlencode(_pairs(params))) if params else "")
        headers = {**self.headers, "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        except (urllib.error.URLError, OSError) as e:
            raise VitrinaError(f"cannot reach {self.base}: {e}") from e
        try:
            decoded: Any = jsonlib.loads(raw) if raw else None
        except ValueError:
            decoded = raw.decode("utf-8", "replace")
        if status >= 400:
            raise ApiError(status, path, decoded)
        return decoded

    def get(self, path: str, params: Params | None = None) -> Any:
        return self._send("GET", path, params=params)

    def post(self, path: str, json: Any = None, data: Params | None = None,
             files: Files | None = None, json_body: Any = None, form: Params | None = None) -> Any:
        json, data = (json if json is not None else json_body), (data if data is not None else form)
        if files is not None or data is not None:
            body, content_type = _multipart(data, files)
            return self._send("POST", path, body, content_type)
        return self._send("POST", path, jsonlib.dumps(json).encode("utf-8"), "application/json")

    def delete(self, path: str) -> Any:
        return self._send("DELETE", path)

    def close(self) -> None:
        """Nothing to release: every request opens and closes its own connection."""


def api_key_for(cfg: Config, given: str | None = None) -> str | None:
    """The key to send with writes: the one given, else the first configured one, else none."""
    if given:
        return given
    keys = list(cfg.web.api_keys) + [k.strip() for k in os.environ.get(cfg.web.api_keys_env, "").split(",")]
    keys = [k for k in keys if k]
    return keys[0] if keys else None


def open_client(cfg: Config, url: str | None = None, api_key: str | None = None) -> ApiClient:
    """HTTP client for `url` when given, else the app built in-process from cfg."""
    key = api_key_for(cfg, api_key)
    return HttpClient(url, key) if url else InProcessClient(cfg, key)


def forget(client: ApiClient, users: Sequence[str]) -> None:
    """DELETE the evaluation shoppers' profiles (a 404 means there was nothing to forget)."""
    for user in users:
        try:
            client.delete(f"/api/users/{user}/profile")
        except ApiError as e:
            if e.status != 404:
                raise
