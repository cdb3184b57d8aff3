"""Pure parsing of a job's dataset request from its comment and SPANK option."""

from __future__ import annotations

from scratch_stage.core.records import record

# A name is [A-Za-z0-9][A-Za-z0-9._+-]{0,127}, checked without `re` (a prolog imports this).
_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_LATER = _FIRST | frozenset("._+-")
_TOKEN_PREFIX = "datasets:"
# A job asking for more than this is a mistake, not a workload: refuse the excess.
MAX_DATASETS_PER_JOB = 32


@record(frozen=True)
class Rejection:
    """One requested entry that cannot be served, and why."""

    entry: str
    reason: str


@record(frozen=True)
class Request:
    """The valid dataset names a job asked for, in order, and what was rejected."""

    names: tuple[str, ...]
    rejected: tuple[Rejection, ...]


def is_valid_name(name: str) -> bool:
    """True when NAME is a legal dataset name (docs/design.md)."""
    return (
        0 < len(name) <= 128
        and name[0] in _FIRST
        and all(c in _LATER for c in name)
        and name not in (".", "..")
    )


def describe_bad_name(entry: str) -> str:
    """A one-line reason why ENTRY is not a dataset name, printable whatever it holds."""
    if entry == "":
        return "empty dataset name"
    return f"malformed dataset name {shorten(entry)} (allowed: [A-Za-z0-9][A-Za-z0-9._+-]{{0,127}})"


def shorten(text: str, limit: int = 40) -> str:
    """repr() of TEXT cut to LIMIT characters, safe for one log line."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def comment_entries(comment: str) -> list[str]:
    """Raw entries of every `datasets:` token in a job comment; other text is ignored."""
    entries: list[str] = []
    for word in comment.split():
        if word.startswith(_TOKEN_PREFIX):
            entries.extend(word[len(_TOKEN_PREFIX) :].split(","))
    return entries


def spank_entries(value: str) -> list[str]:
    """Raw entries of the SPANK `--datasets=` value (SPANK_DATASETS)."""
    return [entry.strip() for entry in value.split(",")]


def parse_request(comment: str, spank: str = "") -> Request:
    """The union of comment and SPANK requests: duplicates collapse, bad entries rejected."""
    entries = comment_entries(comment)
    if spank.strip():
        entries += spank_entries(spank)
    names: list[str] = []
    rejected: list[Rejection] = []
    for entry in entries:
        if not is_valid_name(entry):
            rejected.append(Rejection(entry, describe_bad_name(entry)))
        elif entry in names:
            continue
        elif len(names) >= MAX_DATASETS_PER_JOB:
            rejected.append(Rejection(entry, f"more than {MAX_DATASETS_PER_JOB} datasets"))
        else:
            names.append(entry)
    return Request(tuple(names), tuple(rejected))
