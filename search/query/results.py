"""Results in the API's shape: the shown attributes, rounded scores and explain, and where an item's image lives."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from search.store.interface import ID_FIELD, Hit
from vitrina.config import CatalogueConfig
from vitrina.errors import NotFound

# Payload keys that are not shown as attributes in results.
HIDDEN = frozenset({ID_FIELD, "title", "image", "keywords", "text", "split", "description"})
IMAGE_ROUTE = "/api/items/{id}/image"  # where the web layer serves local product images


def rounded(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


def is_remote(source: Any) -> bool:
    return str(source).lower().startswith(("http://", "https://"))


def image_url(item_id: str, source: Any) -> str | None:
    """A remote image's own URL, the web layer's image route for a local one, None without an image."""
    if not source:
        return None
    if is_remote(source):
        return str(source)
    # quote leaves ASCII letters and digits as they are (most catalogues' ids): skip its ~2 us then
    return IMAGE_ROUTE.format(id=item_id if item_id.isascii() and item_id.isalnum() else quote(item_id, safe=""))


def api_result(hit: Hit, explain: dict[str, Any] | None = None, detail: bool = False) -> dict[str, Any]:
    """One result: id, score, title, image_url, attributes[, explain].

    `detail` (the single-item view) also shows the description among the attributes.
    """
    p = hit.payload
    hidden = HIDDEN - {"description"} if detail else HIDDEN
    out: dict[str, Any] = {
        "id": hit.id,
        "score": rounded(explain["final"] if explain else hit.score),
        "title": p.get("title"),
        "image_url": image_url(hit.id, p.get("image")),
        "attributes": {k: v for k, v in p.items() if k not in hidden},
    }
    if explain is not None:
        out["explain"] = {k: (rounded(v) if isinstance(v, float) else v) for k, v in explain.items()}
    return out


def local_image(catalogue: CatalogueConfig, item_id: str, source: Any) -> Path:
    """The local file behind an item's image field; NotFound when it has none, it is remote, or it is gone."""
    if not source or is_remote(source):
        raise NotFound(f"item {item_id!r} has no local image")
    base = Path(catalogue.image_base) if catalogue.image_base else Path(catalogue.path).parent
    path = Path(str(source))
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise NotFound(f"image file of item {item_id!r} is missing")
    return path
