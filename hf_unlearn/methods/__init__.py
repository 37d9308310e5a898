"""The unlearning methods: one module (or package) each, holding its config, its trainer and its registration.

Importing this package imports every method in it, and each registers itself (``hf_unlearn.trainers.registry``): a new
method is one new module here (docs/methods/<name>.md and tests/test_<name>.py beside it; CONTRIBUTING.md).
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
