"""Errors that mean "this input cannot be used"; the entry points show them as one line.

Everything here names its culprit (file and line, directory, flag or config key), so that the
message alone says what to fix; `jbert.training.cli.usage_errors` turns them into `error: ...` and
exit status 2.
"""


class InputError(ValueError):
    """A file, directory, flag or value given by the user that cannot be used."""


class ConfigError(InputError):
    """A bad config file, override or config value given by the user; names the culprit."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint whose contents are not what was saved (or no readable checkpoint at all)."""


def check_ranges(section: str, config: object, rules: dict[str, str]) -> None:
    """Raises `ValueError("section.key=value: must be ...")` for the first field of `config`
    outside its rule: `">= 1"`, `"> 0"` or an interval such as `"[0, 1)"`. `None` (an optional
    field left unset) passes; NaN never does. Config classes call this in `__post_init__`, so a
    bad size, count or rate is refused, its key named, before a run writes anything."""
    for key, rule in rules.items():
        value = getattr(config, key)
        if value is None:
            continue
        if rule[0] in "[(":
            low, high = (float(x) for x in rule[1:-1].split(","))
            ok = ((low <= value if rule[0] == "[" else low < value)
                  and (value <= high if rule[-1] == "]" else value < high))
            why = f"be in {rule}"
        else:
            op, bound = rule.split()
            ok = value >= float(bound) if op == ">=" else value > float(bound)
            why = f"be {rule}"
        if not ok:
            raise ValueError(f"{section}.{key}={value!r}: must {why}")
