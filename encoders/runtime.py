"""Where models run: device choice, CPU thread count and bf16 autocast, shared by every encoder."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Sequence

from vitrina.config import RuntimeConfig
from vitrina.errors import ConfigError


def resolve_device(runtime: RuntimeConfig) -> Any:
    """torch.device for runtime.device: 'auto' takes CUDA when present, else CPU."""
    import torch

    if runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("[runtime].device is 'cuda' but no CUDA device is available")
    if runtime.device not in {"cpu", "cuda"}:
        raise ConfigError(f"[runtime].device must be auto, cpu or cuda, got {runtime.device!r}")
    return torch.device(runtime.device)


def surely_cpu(runtime: RuntimeConfig) -> bool:
    """True when models will run on the CPU, known without importing torch: device "cpu", or "auto" on a machine
    with no NVIDIA driver loaded (where torch finds no CUDA device either)."""
    return runtime.device == "cpu" or (runtime.device == "auto" and not os.path.exists("/proc/driver/nvidia/version"))


def configure_threads(runtime: RuntimeConfig) -> None:
    """Set torch's intra-op thread count from config (0 leaves torch's default)."""
    import torch

    if runtime.threads > 0 and torch.get_num_threads() != runtime.threads:
        torch.set_num_threads(runtime.threads)


def bf16_supported(device: Any) -> bool:
    """True on CUDA with bf16, and on CPUs with native bf16 (AVX-512 bf16 / AMX)."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@contextlib.contextmanager
def autocast(device: Any, enabled: bool) -> Iterator[None]:
    """bf16 autocast on `device` when enabled and supported; a no-op context otherwise."""
    import torch

    if enabled and bf16_supported(device):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def package_versions(names: Sequence[str]) -> str:
    """"name=version,..." of installed packages ("none" when missing): part of an exported model's cache key."""
    import importlib.metadata

    out = []
    for name in names:
        try:
            out.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name}=none")
    return ",".join(out)


def onnx_session(model_file: str | os.PathLike[str], threads: int) -> Any:
    """An ONNX Runtime CPU session for one exported model: `threads` intra-op threads, one inter-op thread, and no
    busy-waiting between calls (a service runs a call per request)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
