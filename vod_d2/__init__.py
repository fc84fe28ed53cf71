"""vod_d2: video object detection for detectron2. ``import vod_d2`` registers everything."""

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "vod_d2 needs detectron2, which is not installed: see "
        "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
    ) from e

from . import data, engine, evaluation, modeling, postprocessing  # noqa: F401  (registration)
from .config import add_vod_config, make_online

__version__ = "0.1.0"
__all__ = ["add_vod_config", "make_online"]
