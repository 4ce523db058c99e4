"""turbocast.channels: channel names, and the ids and prefixes they refuse."""

from __future__ import annotations

import pytest

from turbocast.channels import (
    DEFAULT_PREFIX,
    broadcast_channel,
    channel_for,
    valid_session_id,
)
from turbocast.errors import InvalidChannelError, TurboError
from turbocast.helpers import new_session_id

SID = "abcdefghijklmnopqrstuvwxyzABCDEF"


def test_channel_for_a_session_id_uses_the_default_prefix():
    assert channel_for(SID) == f"turbo:session:{SID}"
    assert DEFAULT_PREFIX == "turbo"


@pytest.mark.parametrize(
    "sid",
    [
        "a" * 16,  # shortest
        "z" * 128,  # longest
        "AZaz09_-AZaz09_-",  # every allowed character class
    ],
)
def test_channel_for_accepts_well_formed_session_ids(sid):
    assert channel_for(sid) == f"turbo:session:{sid}"
    assert valid_session_id(sid)


def test_channel_for_accepts_what_new_session_id_makes():
    sid = new_session_id()

    assert channel_for(sid).endswith(sid)


@pytest.mark.parametrize(
    "sid",
    [
        "",
        "a" * 15,  # too short
        "a" * 129,  # too long
        "a" * 15 + ":",
        "a" * 15 + "*",
        "a" * 15 + "/",
        "a" * 15 + " ",
        "aaaaaaaa aaaaaaaa",
        "a" * 16 + "\n",  # a trailing newline must not slip past the match
        "a" * 15 + "é",
        "a" * 15 + "=",
        "a" * 15 + "?",
    ],
)
def test_channel_for_refuses_malformed_session_ids(sid):
    assert not valid_session_id(sid)
    with pytest.raises(InvalidChannelError, match="is not a session id"):
        channel_for(sid)


@pytest.mark.parametrize("sid", [None, 12345678901234567890, b"a" * 32, ["a" * 32]])
def test_channel_for_refuses_non_strings(sid):
    assert not valid_session_id(sid)
    with pytest.raises(InvalidChannelError):
        channel_for(sid)


def test_invalid_channel_error_is_a_turbo_error_and_a_value_error():
    with pytest.raises(InvalidChannelError) as info:
        channel_for("short")

    assert isinstance(info.value, TurboError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("prefix", ["app", "my.app-1_x", "a", "p" * 32])
def test_custom_prefixes_name_both_channels(prefix):
    assert channel_for(SID, prefix) == f"{prefix}:session:{SID}"
    assert broadcast_channel(prefix) == f"{prefix}:broadcast"


@pytest.mark.parametrize("prefix", ["", "p" * 33, "a:b", "a*", "a b", "a/b", "préfixe", "a\n"])
def test_bad_prefixes_are_refused_by_both_channels(prefix):
    with pytest.raises(InvalidChannelError, match="channel prefix"):
        channel_for(SID, prefix)
    with pytest.raises(InvalidChannelError, match="channel prefix"):
        broadcast_channel(prefix)


def test_broadcast_channel_uses_the_default_prefix():
    assert broadcast_channel() == "turbo:broadcast"


def test_session_and_broadcast_channels_never_collide():
    # "broadcast" is a valid-looking word but far too short to be a session id.
    with pytest.raises(InvalidChannelError):
        channel_for("broadcast")


def test_a_history_key_is_in_its_channels_hash_slot():
    # Redis Cluster hashes only what is between the first { and }: the channel's own name,
    # which has no braces, so key and channel land on the same shard.
    from turbocast.channels import history_key, stream_channel

    channel = stream_channel("board:42", "shop")
    key = history_key(channel, "shop")
    assert key == "shop:history:{shop:stream:board:42}"
    assert key[key.index("{") + 1 : key.index("}")] == channel
