"""Prompt configs for attribute deltas, in the YAML format of Baumann et al.'s attribute-control.

A config names an attribute (``tag``), lists contrastive prompt pairs and the prefixes (contexts)
to put them in::

    tag: 'people/age'
    prompts:
    - {prompt_target: 'man', prompt_positive: 'old man', prompt_negative: 'young man', pattern_target: 'man'}
    prefixes: ${combinations:'{,a photo of} a {,beautiful}'}   # or a plain list of strings

``prefixes`` may be a list or a brace pattern (the original's ``${combinations:'...'}``): every
choice of one alternative per ``{...}`` group, empty alternatives allowed. Whitespace is normalised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import yaml

from .checks import InputError

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(InputError):
    """A prompt config that is missing a key, has the wrong type somewhere, or cannot be found."""


def _norm(text: str) -> str:
    return " ".join(str(text).split())


@dataclass
class Pair:
    """One contrast: ``positive`` and ``negative`` differ only in the attribute; ``pattern`` is the subject word.

    ``pattern_positive``/``pattern_negative`` override ``pattern`` in the positive/negative prompt.
    """

    target: str
    positive: str
    negative: str
    pattern: str
    pattern_positive: str | None = None
    pattern_negative: str | None = None

    @property
    def patterns(self) -> tuple[str, str]:
        """(pattern in the positive prompt, pattern in the negative prompt)."""
        return self.pattern_positive or self.pattern, self.pattern_negative or self.pattern


@dataclass
class PromptConfig:
    """An attribute's prompt pairs and the prefixes they are placed after."""

    tag: str
    pairs: list[Pair]
    prefixes: list[str] = field(default_factory=lambda: [""])

    def combinations(self) -> list[tuple[str, Pair]]:
        """Every (prefix, pair), prefixes outermost."""
        return [(p, pair) for p in self.prefixes for pair in self.pairs]

    @staticmethod
    def join(prefix: str, text: str) -> str:
        """``prefix`` then ``text`` with single spaces ("a photo of a" + "old man")."""
        return _norm(f"{prefix} {text}")


# --- brace expansion -------------------------------------------------------------------------------


def _split_top(s: str) -> list[str]:
    """Split on commas that are not inside nested braces."""
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        depth += (ch == "{") - (ch == "}")
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def _expand(s: str) -> list[str]:
    start = s.find("{")
    if start < 0:
        if "}" in s:
            raise ConfigError(f"unbalanced '}}' in brace pattern {s!r}")
        return [s]
    depth = 0
    for end in range(start, len(s)):
        depth += (s[end] == "{") - (s[end] == "}")
        if depth == 0:
            break
    else:
        raise ConfigError(f"unbalanced '{{' in brace pattern {s!r}: every '{{' needs a matching '}}'")
    head, body, tail = s[:start], s[start + 1 : end], s[end + 1 :]
    if "}" in head:
        raise ConfigError(f"unbalanced '}}' in brace pattern {s!r}")
    options = [o for alt in _split_top(body) for o in _expand(alt)]
    return [head + o + t for o, t in product(options, _expand(tail))]


def expand_braces(s: str) -> list[str]:
    """All strings a brace pattern stands for, whitespace-normalised, in order.

    ``expand_braces("{,a photo of} a {,big}")`` → ``["a", "a big", "a photo of a", "a photo of a big"]``.
    Groups may nest; an empty alternative means "nothing here".
    """
    return [_norm(x) for x in _expand(str(s))]


_COMBINATIONS = re.compile(r"^\$\{combinations:\s*(['\"])(.*)\1\s*\}$", re.DOTALL)


def _prefixes(value) -> list[str]:
    if value is None:
        return [""]
    if isinstance(value, str):
        m = _COMBINATIONS.match(value.strip())
        if value.strip().startswith("${") and not m:
            raise ConfigError(
                f"prefixes {value!r}: the only interpolation understood is "
                "${combinations:'{a,b} c {,d}'}; or give a list of strings"
            )
        return expand_braces(m.group(2) if m else value)
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(
                "prefixes is an empty list, so no prompt would be made; omit it (one empty prefix) or list some"
            )
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"prefixes must be strings; got {[type(v).__name__ for v in value]}")
        return [_norm(v) for v in value]
    raise ConfigError(f"prefixes must be a list of strings or a brace pattern, not {type(value).__name__}")


# --- loading ---------------------------------------------------------------------------------------

_PAIR_KEYS = {
    "prompt_target": "target",
    "prompt_positive": "positive",
    "prompt_negative": "negative",
    "pattern_target": "pattern",
}
_OPTIONAL = {"pattern_positive": "pattern_positive", "pattern_negative": "pattern_negative"}


def _pair(item, i: int, where: str) -> Pair:
    if not isinstance(item, dict):
        raise ConfigError(
            f"{where}: prompts[{i}] must be a mapping with keys {list(_PAIR_KEYS)}, got {type(item).__name__}"
        )
    missing = [k for k in _PAIR_KEYS if k not in item]
    if missing:
        raise ConfigError(
            f"{where}: prompts[{i}] is missing the key(s) {missing} (each prompt needs {list(_PAIR_KEYS)})"
        )
    unknown = set(item) - set(_PAIR_KEYS) - set(_OPTIONAL)
    if unknown:
        raise ConfigError(
            f"{where}: prompts[{i}] has unknown key(s) {sorted(unknown)}; allowed: {list(_PAIR_KEYS) + list(_OPTIONAL)}"
        )
    kw = {ours: _norm(item[k]) for k, ours in _PAIR_KEYS.items()}
    kw.update({ours: _norm(item[k]) for k, ours in _OPTIONAL.items() if item.get(k)})
    if not kw["pattern"]:
        raise ConfigError(f"{where}: prompts[{i}].pattern_target is empty; name the subject word")
    return Pair(**kw)


def _from_dict(d, where: str) -> PromptConfig:
    if not isinstance(d, dict):
        raise ConfigError(
            f"{where}: a prompt config is a mapping with keys tag, prompts, prefixes; got {type(d).__name__}"
        )
    for key in ("tag", "prompts"):
        if key not in d:
            raise ConfigError(
                f"{where}: missing the key {key!r} (a config needs 'tag', 'prompts' and optionally 'prefixes')"
            )
    prompts = d["prompts"]
    if not isinstance(prompts, list) or not prompts:
        raise ConfigError(f"{where}: 'prompts' must be a non-empty list of prompt pairs")
    return PromptConfig(
        str(d["tag"]), [_pair(p, i, where) for i, p in enumerate(prompts)], _prefixes(d.get("prefixes"))
    )


def shipped_configs() -> list[str]:
    """Names of the configs that ship with reprolib ("people/age", "shapes/size", ...)."""
    return sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in CONFIG_DIR.rglob("*.yaml"))


def load_config(config) -> PromptConfig:
    """A :class:`PromptConfig` from a path, a shipped name ("shapes/size"), a parsed dict or a PromptConfig."""
    if isinstance(config, PromptConfig):
        return config
    if isinstance(config, dict):
        return _from_dict(config, "config dict")
    if not isinstance(config, (str, Path)):
        raise ConfigError(
            f"config must be a path, a shipped name, a dict or a PromptConfig; got {type(config).__name__}"
        )
    path = Path(config)
    if not path.is_file():
        shipped = CONFIG_DIR / f"{str(config).removesuffix('.yaml')}.yaml"
        if not shipped.is_file():
            raise ConfigError(
                f"no prompt config {str(config)!r}: not a file, and not one of the shipped configs {shipped_configs()}"
            )
        path = shipped
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    return _from_dict(d, str(path))
