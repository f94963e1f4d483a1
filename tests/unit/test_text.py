"""Outgoing text: no CR/LF/NUL ever, no line over its budget, no split UTF-8 character (properties)."""

import pytest
from hypothesis import given, settings, strategies as st

from frontend.chat.irc_format import (LINE_LIMIT, fold, join_lines, message_lines, nick_candidates,
                                      prefix_len, reason_line, sasl_plain_lines, topic_line)
from frontend.text import assert_safe_line, irc_lines, split_utf8, xml_text

HOSTILE = st.text(alphabet=st.sampled_from(list("ab é€😀 \r\n\x00\x01\x02\x03\x07\x1b\x7f:#,")),
                  max_size=3000)


def test_crlf_injection_becomes_separate_messages():
    lines = message_lines("PRIVMSG", "#c", "a\r\nJOIN #other", prefix=30)
    assert lines == [b"PRIVMSG #c :a\r\n", b"PRIVMSG #c :JOIN #other\r\n"]


def test_lone_cr_nul_and_ctcp_are_neutralised():
    assert irc_lines("a\rb\x00c\x01VERSION\x01") == ["a", "bcVERSION"]
    assert irc_lines("\x02bold\x02 \x0304red") == ["\x02bold\x02 \x0304red"]
    assert irc_lines("\n\n  \n") == []


def test_action_is_wrapped_once():
    assert message_lines("PRIVMSG", "#c", "waves\x01", prefix=30, action=True) == [
        b"PRIVMSG #c :\x01ACTION waves\x01\r\n"]


def test_long_text_splits_at_spaces_within_512_bytes():
    text = " ".join(["word%04d" % i for i in range(250)])  # ~2,250 characters
    lines = message_lines("PRIVMSG", "#chan", text, prefix=prefix_len("bot", None))
    assert all(len(line) + prefix_len("bot", None) <= LINE_LIMIT for line in lines)
    rebuilt = " ".join(line[len(b"PRIVMSG #chan :"):-2].decode() for line in lines)
    assert rebuilt == text


@given(HOSTILE, st.integers(min_value=0, max_value=200), st.booleans())
@settings(max_examples=400, deadline=None)
def test_no_input_escapes_its_line(text, prefix, action):
    for line in message_lines("PRIVMSG", "#c", text, prefix=prefix, action=action):
        assert_safe_line(line)
        assert len(line) + prefix <= LINE_LIMIT
        line.decode("utf-8")  # never a split character
        body = line[len(b"PRIVMSG #c :"):-2]
        inner = body[8:-1] if action else body
        assert b"\x01" not in inner


@given(st.text(max_size=500), st.integers(min_value=4, max_value=300))
@settings(max_examples=400, deadline=None)
def test_split_utf8_keeps_every_character(line, budget):
    line = line.encode("utf-8", "replace").decode("utf-8")
    pieces = split_utf8(line, budget)
    assert all(len(p.encode()) <= budget for p in pieces)
    joined = "".join(pieces)
    # only the spaces chosen as split points disappear
    assert joined.replace(" ", "") == line.replace(" ", "")


def test_topic_and_reason_lines_are_single_and_safe():
    assert topic_line("#c", "a\r\nb", prefix=30) == b"TOPIC #c :a b\r\n"
    assert topic_line("#c", "\r\n", prefix=30) is None
    assert reason_line("QUIT", "bye\r\nJOIN #x") == b"QUIT :bye\r\n"
    assert len(reason_line("PART #c", "x" * 2000)) <= LINE_LIMIT


def test_join_lines_batch_channels_keyed_first():
    lines = join_lines([("#a", None), ("#k", "secret"), ("#b", None)])
    assert lines == [b"JOIN #k secret\r\n", b"JOIN #a,#b\r\n"]
    many = join_lines([(f"#channel{i:04d}", None) for i in range(200)])
    assert all(len(line) <= LINE_LIMIT for line in many) and len(many) > 1


def test_nick_candidates_and_folding():
    gen = nick_candidates("bot")
    assert [next(gen) for _ in range(5)] == ["bot", "bot_", "bot__", "bot1", "bot2"]
    assert fold("Bot[A]\\~") == "bot{a}|^"


def test_sasl_plain_is_base64_in_chunks():
    lines = sasl_plain_lines("user", "pass")
    assert lines == [b"AUTHENTICATE dXNlcgB1c2VyAHBhc3M=\r\n"]
    long = sasl_plain_lines("u", "p" * 600)
    assert all(len(l) <= 400 + len(b"AUTHENTICATE \r\n") for l in long)


def test_xml_text_strips_forbidden_characters():
    assert xml_text("a\x00b\x0bc\r\nd\ud800e") == "abc\nde"


def test_assert_safe_line_refuses_injection():
    import pytest
    for bad in (b"PRIVMSG #c :a\rb\r\n", b"PRIVMSG #c :a\nb\r\n", b"PRIVMSG #c :a\x00\r\n", b"X"):
        with pytest.raises(ValueError):
            assert_safe_line(bad)


def _general_message_lines(verb, target, text, *, prefix, action=False):
    """``message_lines`` without its fast path: the general one, as it was before it."""
    head = f"{verb} {target} :".encode()
    budget = LINE_LIMIT - 2 - prefix - len(head) - (9 if action else 0)
    out = []
    for line in irc_lines(text):
        for piece in split_utf8(line, budget):
            body = piece.encode("utf-8")
            out.append(head + (b"\x01ACTION " + body + b"\x01" if action else body) + b"\r\n")
    return out


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.text(alphabet=st.sampled_from(list("ab ~\x7f\x01\r\n\t\x02é")), max_size=40),
                 st.text(alphabet=st.sampled_from(list("ab ")), min_size=400, max_size=520), st.text()),
       st.sampled_from([0, 50, 400, 480, 495]), st.booleans())
def test_the_short_ascii_fast_path_makes_what_the_general_path_makes(text, prefix, action):
    try:
        expected = _general_message_lines("PRIVMSG", "#c", text, prefix=prefix, action=action)
    except ValueError:
        expected = ValueError
    try:
        got = message_lines("PRIVMSG", "#c", text, prefix=prefix, action=action)
    except ValueError:
        got = ValueError
    assert got == expected


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_fold_is_the_case_mapping_also_from_its_cache(name):
    table = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ[]\\~", "abcdefghijklmnopqrstuvwxyz{}|^")
    assert fold(name) == name.translate(table)
    assert fold(name) == name.translate(table)  # from the cache the second time


def test_the_fold_cache_stays_bounded():
    from frontend.chat import irc_format
    for i in range(irc_format.FOLD_CACHE_MAX + 10):
        fold(f"N{i}")
    cache = fold.cache  # the cache fold uses (also when compiled)
    assert len(cache) <= irc_format.FOLD_CACHE_MAX
    fold("Zq[x]")
    assert cache.get("Zq[x]") == "zq{x}"


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=40), st.sampled_from([b"", b"\r", b"\n", b"\r\n", b"\n\r", b"\x00\r\n"]))
def test_the_last_guard_refuses_exactly_the_unsafe_lines(body, end):
    line = body + end
    unsafe = not line.endswith(b"\r\n") or any(c in line[:-2] for c in b"\r\n\x00")
    if unsafe:
        with pytest.raises(ValueError):
            assert_safe_line(line)
    else:
        assert assert_safe_line(line) is line


@given(st.binary(max_size=40).map(lambda b: b.replace(b"\x01", b"\r").replace(b"\x02", b"\n").replace(b"\x03", b"\0")),
       st.sampled_from([b"", b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\n\r\n", b"\0\r\n"]))
@settings(max_examples=600, deadline=None)
def test_assert_safe_line_takes_one_terminated_line_and_nothing_else(body, end):
    line = body + end
    safe = line.endswith(b"\r\n") and not any(c in line[:-2] for c in b"\r\n\0")
    if safe:
        assert assert_safe_line(line) is line
    else:
        with pytest.raises(ValueError, match="unsafe line"):
            assert_safe_line(line)
