"""Attention layers built after a DeepSpeed ZeRO-3 ``zero.Init`` that imported their module: put kernels' wrapper back.

transformers >= 5.25 decorates attention layers (``LlamaAttention``, ...) with ``kernels.use_kernelized_func``: the
decorator replaces the class's ``__init__`` (each instance gets ``_kernel_funcs``) and ``forward`` (which reads it).
DeepSpeed's ``zero.Init`` patches ``__init__`` of every ``nn.Module`` subclass while it is active, including classes
*created* inside it, and on exit sets ``cls.__init__ = cls._old_init``. A modeling module imported inside the context
(from_pretrained of a VLM imports its text model's module lazily, inside ``zero.Init``) records the bare ``__init__``
as ``_old_init`` before kernels' decorator wraps it: after the first ZeRO-3 load every *later* instance of that class
(a reference model, a teacher, the next run's policy) lacks ``_kernel_funcs`` and its first forward raises
``AttributeError: 'LlamaAttention' object has no attribute '_kernel_funcs'``.

``restore_kernelized_layers(*models)`` re-applies kernels' own decorator to each broken class of the models (so later
instances are whole) and gives each broken instance the wrappers the decorator would have made. It reads two names
of the decorator's closure (``decorator_args``, ``orig_forward``): the one private dependency, checked by
``tests/test_zero3_kernels.py``. A no-op without kernels or when nothing is broken.
"""

from __future__ import annotations

import inspect

from torch import nn

_WRAPPER = "use_kernelized_func"


def _installed_by_kernels(function, name: str) -> bool:
    """Whether ``function`` is the decorator's ``name`` (``new_init`` / ``new_forward``). By its code object: the
    decorator copies ``forward``'s name and qualname onto its wrapper (functools.wraps)."""
    code = getattr(function, "__code__", None)
    return code is not None and code.co_name == name and "kernels" in code.co_filename


def _decorated(cls: type) -> tuple[tuple, object] | None:
    """``(decorator_args, orig_forward)`` if ``cls`` itself was decorated by ``use_kernelized_func``, else None."""
    forward = cls.__dict__.get("forward")
    if not _installed_by_kernels(forward, "new_forward"):
        return None
    names = inspect.getclosurevars(forward).nonlocals
    if "decorator_args" not in names or "orig_forward" not in names:
        raise RuntimeError(f"kernels' {_WRAPPER} wrapper of {cls.__name__}.forward changed shape (no decorator_args / "
                           "orig_forward): hf_unlearn.integrations.zero3_kernels needs an update for this kernels "
                           "version.")
    return names["decorator_args"], names["orig_forward"]


def _kernel_name(fn) -> str:
    return getattr(fn, "__name__", None) or fn.kernel_layer_name


def restore_kernelized_layers(*models: nn.Module | None) -> list[str]:
    """Repair the classes and instances of ``models`` broken as the module docstring says; returns the repaired class
    names (empty when nothing was broken)."""
    repaired: dict[type, tuple] = {}
    for model in models:
        if model is None:
            continue
        for module in model.modules():
            for cls in type(module).__mro__:  # FSDP2 swaps in a dynamic subclass: the decorated class is a base
                found = _decorated(cls)
                if found is None:
                    continue
                if cls not in repaired and not _installed_by_kernels(cls.__dict__.get("__init__"), "new_init"):
                    from kernels import use_kernelized_func

                    decorator_args, orig_forward = found
                    cls.forward = orig_forward
                    use_kernelized_func(*decorator_args)(cls)
                    repaired[cls] = decorator_args
                if "_kernel_funcs" not in module.__dict__:
                    module.__dict__["_kernel_funcs"] = {_kernel_name(fn): type(fn)() for fn in found[0]}
                    repaired.setdefault(cls, found[0])
                break
    return sorted(cls.__name__ for cls in repaired)
