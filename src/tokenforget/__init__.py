"""tokenforget: token-level targeted unlearning for Hugging Face language models.

Every CLI command is a Python call too:

    from tokenforget import load_config, prepare
    prepared = prepare(load_config(overrides=["prepare.retain_epochs=1"]))
"""

from tokenforget.config import Config, load_config
from tokenforget.prepare import prepare
from tokenforget.version import __version__

__all__ = ["Config", "__version__", "load_config", "prepare"]
