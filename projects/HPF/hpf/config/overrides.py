"""train_net.py's command-line overrides of a LazyConfig, refusing unknown keys."""
import difflib

from detectron2.config import LazyConfig
from omegaconf import OmegaConf

_MISSING = object()


def _all_keys(cfg, prefix=""):
    # keys() and _get_node(): values that must still be given ("???") have keys too.
    for k in cfg.keys() if OmegaConf.is_dict(cfg) else []:
        key = f"{prefix}{k}"
        yield key
        node = cfg._get_node(k)
        if OmegaConf.is_dict(node):
            yield from _all_keys(node, key + ".")


def has_key(cfg, key) -> bool:
    """Whether the dotted ``key`` exists in ``cfg`` (also when its value is None or "???",
    a value the config asks the user to give)."""
    parent, _, last = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=_MISSING) if parent else cfg
    if OmegaConf.is_list(node):
        return last.isdigit() and int(last) < len(node)
    return OmegaConf.is_dict(node) and last in node.keys()


def apply_overrides(cfg, overrides):
    """
    Like ``LazyConfig.apply_overrides``, but an override of a key that the config does not
    have raises ``KeyError`` naming it (and the closest existing keys) instead of silently
    adding it: a typo such as ``train.max_itr=10`` must not train 90k iterations.
    Prefix a key with ``+`` (``+model.new_arg=1``) to add it on purpose.
    """
    overrides = list(overrides or [])
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override '{item}' is not of the form key=value.")
        key = item.split("=", 1)[0].strip()
        if key.startswith("+"):
            continue
        if not has_key(cfg, key):
            close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise KeyError(
                f"Unknown config key '{key}' in override '{item}'.{hint} "
                f"Use '+{item}' to add a new key."
            )
    return LazyConfig.apply_overrides(cfg, overrides)
