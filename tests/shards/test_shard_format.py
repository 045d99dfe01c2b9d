import io
import os
import string
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shards.errors import InvalidKey
from shards.format import (
    KEY_MAX_LEN,
    MEMBERS,
    index_path_for,
    member_header,
    member_name,
    name_from_path,
    split_member_name,
    validate_key,
)

ALLOWED = set(string.ascii_letters + string.digits + "_-")


@given(st.from_regex(r"[A-Za-z0-9_-]{1,160}", fullmatch=True))
def test_valid_keys_give_member_names_that_split_back_and_stay_in_their_folder(key):
    assert validate_key(key) == key
    for member in MEMBERS:
        name = member_name(key, member)
        assert name.split(".", 1)[0] == key  # webdataset's rule: key ends at the first dot
        assert os.path.basename(name) == name and os.path.normpath(name) == name
        assert split_member_name(name) == (key, member)


@given(st.text(max_size=200))
def test_validate_key_accepts_exactly_the_allowed_alphabet_and_length(text):
    should_pass = 1 <= len(text) <= KEY_MAX_LEN and set(text) <= ALLOWED
    if should_pass:
        assert validate_key(text) == text
    else:
        with pytest.raises(InvalidKey):
            validate_key(text)


@pytest.mark.parametrize(
    "key",
    [
        "../x",
        "a/b",
        "a.b",
        "",
        "é",
        "ключ",
        "a" * (KEY_MAX_LEN + 1),
        "a\n",
        " a",
        "a b",
        "..",
        "/abs",
        "a\\b",
    ],
)
def test_invalid_keys_are_rejected_with_the_key_and_the_rule_in_the_message(key):
    with pytest.raises(InvalidKey) as err:
        validate_key(key)
    assert repr(key) in str(err.value)
    assert "A-Z" in str(err.value)


@pytest.mark.parametrize("key", [None, 5, b"abc"])
def test_non_string_keys_are_rejected(key):
    with pytest.raises(InvalidKey, match="not a str"):
        validate_key(key)


@pytest.mark.parametrize("name", ["k.frames.zst", "a" * KEY_MAX_LEN + ".frames.zst"])
def test_member_header_is_deterministic_and_its_length_does_not_depend_on_size(name):
    small = member_header(name, 0)
    huge = member_header(name, 20 * 2**30)  # above USTAR's 8 GiB limit: GNU base-256 size
    assert len(small) == len(huge) and len(small) % 512 == 0
    assert member_header(name, 0) == small
    assert tarfile.TarInfo.frombuf(huge[-512:], "utf-8", "strict").size == 20 * 2**30


@pytest.mark.parametrize("name", ["k.frames.zst", "a" * KEY_MAX_LEN + ".frames.zst"])
def test_member_header_parses_with_tarfile(name):
    data = os.urandom(700)
    archive = member_header(name, len(data)) + data + b"\0" * (-len(data) % 512) + b"\0" * 1024
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        (info,) = tar.getmembers()
        assert tar.extractfile(info).read() == data
    assert info.name == name and info.size == len(data) and info.isreg()
    assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (0, 0, 0, "", "", 0o644)


def test_split_member_name_rejects_foreign_names():
    for name in ("k.txt", "k", "k.frames", "k.json.gz"):
        with pytest.raises(ValueError, match=repr(name)):
            split_member_name(name)


def test_paths_and_names():
    assert index_path_for("/d/shards/shard-000001.tar").as_posix() == "/d/shards/shard-000001.parquet"
    with pytest.raises(ValueError, match="does not end in .tar"):
        index_path_for("/d/shard.tgz")
    assert name_from_path("/tmp/x/shard-000003.tar.tmp-99") == "shard-000003"
