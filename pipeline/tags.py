"""Tags on runs: a few `key=value` labels a producer attaches at submit, stored on the run record,
shown by `legato status`/`runs`, the console and its API, and searched by (`legato runs --tag`).

    legato submit summarize --input @job.json --tag team=billing --tag ticket=T-1042
    legato.submit("summarize", {...}, tags={"team": "billing"})

Tags are labels, not data: short, plain ASCII (safe in a shell, a URL, a terminal and a page),
at most MAX_TAGS a run. Anything else is an InputError naming the tag, before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from legato.errors import InputError

MAX_TAGS = 16
MAX_KEY = 64
MAX_VALUE = 128
KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/]*")
VALUE = re.compile(r"[A-Za-z0-9_.:/@+\-=]*")
KEY_RULE = f"a letter or digit, then letters, digits and _ . - / (at most {MAX_KEY})"
VALUE_RULE = f"letters, digits and _ . : / @ + - = (at most {MAX_VALUE})"


def _shown(value: Any) -> str:
    return repr(value)[:80]


def check_tags(tags: Any) -> dict[str, str]:
    """`tags` checked: a mapping of at most MAX_TAGS string keys to string values, each within
    its length and charset. Raises InputError naming the first bad tag."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise InputError(f"tags: expected an object of key: value strings, got "
                         f"{type(tags).__name__}")
    if len(tags) > MAX_TAGS:
        raise InputError(f"tags: {len(tags)} given, at most {MAX_TAGS}")
    checked: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or len(key) > MAX_KEY or not KEY.fullmatch(key):
            raise InputError(f"tags: key {_shown(key)}: {KEY_RULE}")
        if not isinstance(value, str):
            raise InputError(f"tags.{key}: the value must be a string, got "
                             f"{type(value).__name__}")
        if len(value) > MAX_VALUE or not VALUE.fullmatch(value):
            raise InputError(f"tags.{key}: value {_shown(value)}: {VALUE_RULE}")
        checked[key] = value
    return checked


def parse_tags(pairs: Iterable[str], *, option: str = "--tag") -> dict[str, str]:
    """`key=value` strings (a command line's, a query string's) as checked tags. A key given
    twice is refused (it is surely a mistake)."""
    tags: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise InputError(f"{option} {_shown(pair)}: expected key=value")
        if key in tags:
            raise InputError(f"{option} {_shown(pair)}: tag {key!r} given twice")
        tags[key] = value
    return check_tags(tags)


def matches(have: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """Whether a run's tags hold every wanted key with its value."""
    return all(have.get(k) == v for k, v in wanted.items())
