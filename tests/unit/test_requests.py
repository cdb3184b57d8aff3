from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratch_stage.core.requests import (
    MAX_DATASETS_PER_JOB,
    is_valid_name,
    parse_request,
    spank_entries,
)

NAME_CHARS = "ABCXYZabcxyz0189._+-"
valid_names = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from("Aaz09"),
    st.text(alphabet=NAME_CHARS, max_size=127),
).filter(lambda n: n not in (".", ".."))


def test_token_anywhere_in_comment_other_text_left_alone() -> None:
    request = parse_request("train resnet datasets:imagenet,coco for 90 epochs")
    assert request.names == ("imagenet", "coco")
    assert request.rejected == ()


def test_comment_without_token_requests_nothing() -> None:
    request = parse_request("just a comment mentioning datasets and imagenet")
    assert request.names == ()
    assert request.rejected == ()


def test_several_tokens_are_joined() -> None:
    request = parse_request("datasets:a,b run=3 datasets:c")
    assert request.names == ("a", "b", "c")


def test_token_must_start_a_word() -> None:
    assert parse_request("mydatasets:imagenet").names == ()


def test_spank_union_with_comment() -> None:
    request = parse_request("datasets:imagenet,coco", "coco,laion")
    assert request.names == ("imagenet", "coco", "laion")


def test_spank_alone() -> None:
    assert parse_request("", "imagenet, coco").names == ("imagenet", "coco")
    assert parse_request("", "   ").names == ()


def test_duplicates_collapse_preserving_first_order() -> None:
    request = parse_request("datasets:b,a,b datasets:a", "c,b")
    assert request.names == ("b", "a", "c")
    assert request.rejected == ()


def test_dots_are_part_of_names() -> None:
    request = parse_request("datasets:imagenet.v2,imagenet")
    assert request.names == ("imagenet.v2", "imagenet")
    assert parse_request("datasets:imagenet.v2").names != ("imagenet",)


@pytest.mark.parametrize(
    "entry",
    [
        "a/b",
        "/etc/passwd",
        "..",
        ".",
        "../imagenet",
        ".hidden",
        "-rf",
        "_x",
        "$(rm -rf /)",
        "a;reboot",
        "a|b",
        "`id`",
        "a$b",
        "a&b",
        "a>b",
        "imagénet",
        "данные",
        "a\x00b",
        "x" * 129,
    ],
)
def test_bad_names_are_rejected_not_requested(entry: str) -> None:
    request = parse_request("", entry)
    assert request.names == ()
    assert [r.entry for r in request.rejected] == [entry]
    assert "malformed dataset name" in request.rejected[0].reason


def test_name_of_128_chars_is_the_longest_allowed() -> None:
    assert is_valid_name("x" * 128)
    assert not is_valid_name("x" * 129)


def test_spaces_in_spank_value_reject_the_entry() -> None:
    request = parse_request("", "image net,coco")
    assert request.names == ("coco",)
    assert [r.entry for r in request.rejected] == ["image net"]


def test_shell_metacharacters_in_comment() -> None:
    request = parse_request("datasets:coco,$(rm,-rf,/) ; datasets:a;b datasets:`id`")
    assert request.names == ("coco",)
    assert [r.entry for r in request.rejected] == ["$(rm", "-rf", "/)", "a;b", "`id`"]


def test_empty_token_is_rejected() -> None:
    request = parse_request("datasets: imagenet")
    assert request.names == ()
    assert [r.reason for r in request.rejected] == ["empty dataset name"]


def test_empty_entries_between_commas_are_rejected() -> None:
    request = parse_request("datasets:a,,b")
    assert request.names == ("a", "b")
    assert [r.entry for r in request.rejected] == [""]


def test_more_than_max_datasets_rejects_the_excess() -> None:
    names = [f"ds{i}" for i in range(MAX_DATASETS_PER_JOB + 3)]
    request = parse_request("datasets:" + ",".join(names))
    assert request.names == tuple(names[:MAX_DATASETS_PER_JOB])
    assert [r.entry for r in request.rejected] == names[MAX_DATASETS_PER_JOB:]
    assert all(str(MAX_DATASETS_PER_JOB) in r.reason for r in request.rejected)


def test_duplicates_do_not_count_against_the_maximum() -> None:
    names = [f"ds{i}" for i in range(MAX_DATASETS_PER_JOB)]
    request = parse_request("datasets:" + ",".join(names + names))
    assert len(request.names) == MAX_DATASETS_PER_JOB
    assert request.rejected == ()


def test_hostile_10kb_comment_is_fast_and_reasons_are_short() -> None:
    hostile = "datasets:" + ",".join(["$(rm -rf /)" * 20] * 50 + ["x" * 200] * 10)
    hostile += " datasets:" + "," * 2000
    assert len(hostile) > 10_000
    started = time.perf_counter()
    request = parse_request(hostile, hostile)
    assert time.perf_counter() - started < 1.0
    assert request.names == ()
    assert request.rejected
    assert max(len(r.reason) for r in request.rejected) < 150
    assert all("\n" not in r.reason for r in request.rejected)


def test_rejection_reason_is_printable_for_control_characters() -> None:
    request = parse_request("", "a\nb\x1b[31m")
    assert "\n" not in request.rejected[0].reason
    assert "\x1b" not in request.rejected[0].reason


def test_spank_entries_are_stripped() -> None:
    assert spank_entries(" a , b,c ") == ["a", "b", "c"]


@given(st.lists(valid_names, min_size=1, max_size=MAX_DATASETS_PER_JOB))
def test_valid_names_round_trip_through_comment(names: list[str]) -> None:
    request = parse_request("job notes datasets:" + ",".join(names) + " more notes")
    assert request.names == tuple(dict.fromkeys(names))
    assert request.rejected == ()


@given(st.lists(valid_names, min_size=1, max_size=MAX_DATASETS_PER_JOB))
def test_valid_names_round_trip_through_spank(names: list[str]) -> None:
    assert parse_request("", ",".join(names)).names == tuple(dict.fromkeys(names))


@given(st.text(), st.text())
def test_parse_request_never_raises_and_returns_only_valid_names(comment: str, spank: str) -> None:
    request = parse_request(comment, spank)
    assert all(is_valid_name(n) for n in request.names)
    assert len(set(request.names)) == len(request.names)
    assert len(request.names) <= MAX_DATASETS_PER_JOB


@given(st.text(alphabet=st.characters(), min_size=1))
def test_is_valid_name_agrees_with_the_documented_rule(name: str) -> None:
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-")
    expected = (
        len(name) <= 128
        and name[0].isascii()
        and name[0].isalnum()
        and set(name) <= allowed
        and name not in (".", "..")
    )
    assert is_valid_name(name) == expected
