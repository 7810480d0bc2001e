"""vitrina: multimodal product search. Core: configuration and errors shared by every layer."""

from vitrina.config import Config, load_config
from vitrina.errors import VitrinaError

__version__ = "0.1.0"
__all__ = ["Config", "VitrinaError", "load_config", "__version__"]
