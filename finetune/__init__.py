"""ft: config-driven fine-tuning and alignment. `finetune` holds recipes, model loading,
adapters, SFT and the run pipeline.

The Python API is one import (nothing heavy is loaded until a function is called):

    from finetune import Recipe, run, generate, smoke, export, evaluate
"""

import importlib
import logging
import sys
import types
from typing import Any

# bitsandbytes' CPU backend tries to fetch an optional 4-bit kernel from the Hugging Face Hub at
# import and warns when it cannot; its built-in kernel is correct, and ft never downloads code.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"

# public name -> module that defines it; imported on first use so `import finetune` stays light.
_API = {
    "Recipe": "finetune.api", "run": "finetune.api", "generate": "finetune.api", "smoke": "finetune.api",
    "RunResult": "finetune.pipeline", "FtError": "finetune.errors",
    "export": "finetune.export", "evaluate": "finetune.evaluate",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'finetune' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise AttributeError(f"finetune.{name} is not available in this version of ft") from None


class _Package(types.ModuleType):
    """`finetune.generate` and `finetune.smoke` are both API functions and submodules. Importing a
    submodule binds it on its package (Python's import system does `setattr(package, name, module)`),
    which would make `from finetune import generate` return the module once anything imported
    `finetune.generate`. The API name wins: the submodule stays reachable as `import finetune.generate`
    / `from finetune.generate import ...` (through sys.modules), just not as a package attribute."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
