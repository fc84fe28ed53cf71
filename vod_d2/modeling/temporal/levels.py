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
So every map gets its own instance, whose parameters and buffers *are* the first instance's:
:class:`SharedWeightModules` holds them, keeps them out of the state dict (the weights are saved
once, under the first instance's names, as in a single-map model) and fills them through the
first instance when a state dict is loaded. A module needs to know nothing about levels.
"""

from typing import Dict

from torch import nn

__all__ = ["SharedWeightModules"]


class SharedWeightModules(nn.ModuleDict):
    """
    Named modules whose parameters and buffers are those of ``source``, a module of the same
    structure registered elsewhere in the model (before this one, so that it is converted
    first: ``model.to(device)`` converts ``source`` and these modules follow it). Each keeps its
    own attributes (recurrent state); ``state_dict`` has none of their entries, and
    ``load_state_dict`` fills them from ``source``.
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
        self._source_name = source_name
        self.tie()
        self.register_state_dict_post_hook(_drop_own_entries)
        self.register_load_state_dict_pre_hook(_fill_own_entries)

    def tie(self):
        """Point every module's parameters and buffers at the source's."""
        source = dict(self._source[0].named_modules(remove_duplicate=False))
        for name, module in self.items():
            own = dict(module.named_modules(remove_duplicate=False))
            if own.keys() != source.keys():
                self._mismatch(name, f"submodules {sorted(set(own) ^ set(source))}")
            for path, submodule in own.items():
                for kind in ("_parameters", "_buffers"):
                    mine, theirs = getattr(submodule, kind), getattr(source[path], kind)
                    for key in [*theirs, *(k for k in mine if k not in theirs)]:
                        a, b = mine.get(key), theirs.get(key)
                        if (a is None) != (b is None) or (a is not None and a.shape != b.shape):
                            where = f"{path}.{key}".lstrip(".")
                            shapes = [None if t is None else tuple(t.shape) for t in (a, b)]
                            self._mismatch(name, f"{where} of shape {shapes[0]} (not {shapes[1]})")
                        mine[key] = b

    def _mismatch(self, name: str, what: str):
        raise ValueError(
            f"the {type(self._source[0]).__name__} of {name!r} has {what}, but it shares the "
            f"weights of the one of {self._source_name!r}: every aggregated map must have the "
            "same width (an FPN's levels have)"
        )

    def _apply(self, fn, recurse=True):
        # Every tensor here is the source's, which its parent converts first: converting them
        # again would apply fn twice. Conversions may replace tensors, so point at the new ones.
        self.tie()
        return self


def _drop_own_entries(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _fill_own_entries(module, state_dict, prefix, *args):
    # Loaded again from themselves: the source's entries, loaded before or after, set the values.
    for name, child in module.items():
        for key, value in child.state_dict().items():
            state_dict.setdefault(f"{prefix}{name}.{key}", value)
