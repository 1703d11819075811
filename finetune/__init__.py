"""ft: config-driven fine-tuning and alignment. `finetune` holds recipes, model loading,
adapters, SFT and the run pipeline."""

import logging

# bitsandbytes' CPU backend tries to fetch an optional 4-bit kernel from the Hugging Face Hub at
# import and warns when it cannot; its built-in kernel is correct, and ft never downloads code.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"
