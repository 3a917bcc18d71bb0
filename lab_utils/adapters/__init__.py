"""Adapter files, split by job the way diffusers splits its loaders:

- :mod:`~lab_utils.adapters.schemes` — the key names of the PEFT, diffusers and kohya schemes;
- :mod:`~lab_utils.adapters.write` — :func:`export_adapter` (../shared/reference/adapter-formats.md);
- :mod:`~lab_utils.adapters.load` — :func:`read_adapter_file`, :func:`read_adapter` (strict) and
  :func:`load_lora` (strict, then diffusers' ``load_lora_weights``);
- :mod:`~lab_utils.adapters.diagnose` — :func:`diagnose_adapter`.
"""

from lab_utils.adapters.diagnose import Diagnosis, diagnose_adapter
from lab_utils.adapters.load import AdapterFile, load_lora, match_modules, read_adapter, read_adapter_file
from lab_utils.adapters.schemes import DIFFUSERS_FILE, SCHEMES
from lab_utils.adapters.write import export_adapter, module_rank_alpha

__all__ = [
    "DIFFUSERS_FILE",
    "SCHEMES",
    "AdapterFile",
    "Diagnosis",
    "diagnose_adapter",
    "export_adapter",
    "load_lora",
    "match_modules",
    "module_rank_alpha",
    "read_adapter",
    "read_adapter_file",
]
