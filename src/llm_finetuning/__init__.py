"""llm-finetuning: fine-tune and align open language models from one validated YAML file."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llm-finetuning")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
