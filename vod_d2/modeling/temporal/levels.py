"""
One temporal aggregation over several backbone maps, e.g. the levels of an FPN: an instance of
the module per map, all computing with the weights of the first one.

**Why shared weights.** The levels of an FPN have one width and one semantic space: that is what
lets detectron2's RPN and ROI heads use one set of weights on every level, and the aggregation
follows them. It also sees at every level the displacement it learns: objects are assigned to
the level where they are about the same size in cells, so their motion is about the same in
cells too. Per-level copies would multiply the module's parameters by the number of levels
(STSN at the paper's widths has 28.3 M parameters on a 256-channel map: 142 M on p2-p6, against
41.7 M for the whole R50-FPN detector) and train each copy on a fifth of the objects.

**Why an instance per map.** A module may keep state from frame to frame (STMN's test stream of
memories), which must not mix levels, and is built for its map's :class:`ShapeSpec` (stride).
So every map gets its own instance, whose parameters and buffers *are* the first instance's
tensors: :class:`SharedWeightModules` holds them. The instances register none of them, so the
model's parameters, state dict and checkpoints are those of a single-map model, and a
checkpoint's missing weights are reported once. A module needs to know nothing about levels.
"""

from typing import Dict

from torch import nn

__all__ = ["SharedWeightModules"]

_TENSORS = ("_parameters", "_buffers")


class SharedWeightModules(nn.ModuleDict):
    """
    Named modules that compute with the parameters and buffers of ``source``, a module of the
    same structure registered elsewhere in the model, before this one (so that a conversion
    such as ``model.to(device)`` converts ``source`` first; these modules then follow it). Each
    keeps its own attributes (recurrent state). Their attributes ``weight``, ``bias``,
    ``running_mean`` ... are the source's tensors, which they do not register: the model's
    ``parameters()``, ``state_dict()`` and ``load_state_dict`` see them once, in ``source``.
    """

    def __init__(self, source: nn.Module, modules: Dict[str, nn.Module], source_name: str):
        """
        Args:
            source: the module whose weights every module uses.
            modules: the modules, by name (e.g. the FPN level each one aggregates); each must
                have the parameters and buffers of ``source``, with the same shapes.
            source_name: what ``source`` is, for error messages (e.g. its level).
        """
        super().__init__(modules)
        # In a list, so that the source is not registered (and saved) a second time.
        self._source = [source]
        for name, module in self.items():
            mismatch = _mismatch(module, source)
            if mismatch:
                raise ValueError(
                    f"the {type(source).__name__} of {name!r} has {mismatch}, but it shares the "
                    f"weights of the one of {source_name!r}: every aggregated map must have the "
                    "same width (an FPN's levels have)"
                )
            for submodule in module.modules():
                submodule._parameters.clear()
                submodule._buffers.clear()
                submodule._non_persistent_buffers_set.clear()
        self.tie()

    def tie(self):
        """Point every module's tensor attributes at the source's current tensors."""
        for module in self.values():
            own = dict(module.named_modules(remove_duplicate=False))
            for path, submodule in self._source[0].named_modules(remove_duplicate=False):
                for kind in _TENSORS:
                    for key, tensor in getattr(submodule, kind).items():
                        own[path].__dict__[key] = tensor

    def _apply(self, fn, recurse=True):
        # The modules hold no tensor of their own; a conversion may have replaced the source's.
        self.tie()
        return self


def _mismatch(module: nn.Module, source: nn.Module) -> str:
    """What of ``module``'s submodules, parameters and buffers differs from ``source``'s."""
    own = dict(module.named_modules(remove_duplicate=False))
    theirs = dict(source.named_modules(remove_duplicate=False))
    if own.keys() != theirs.keys():
        return f"submodules {sorted(set(own) ^ set(theirs))}"
    for path, submodule in own.items():
        for kind in _TENSORS:
            mine, reference = getattr(submodule, kind), getattr(theirs[path], kind)
            for key in [*reference, *(k for k in mine if k not in reference)]:
                a, b = mine.get(key), reference.get(key)
                if (a is None) != (b is None) or (a is not None and a.shape != b.shape):
                    shapes = [None if t is None else tuple(t.shape) for t in (a, b)]
                    return f"{path}.{key}".lstrip(".") + f" of shape {shapes[0]} (not {shapes[1]})"
    return ""
