"""The password file (``polybroker.auth.passwords``) and ``polybroker passwd``."""

import base64
import io
import stat

import pytest

from polybroker import cli
from polybroker.auth.passwords import (
    PasswordFileError,
    hash_password,
    load_password_file,
    parse_hash,
    parse_password_file,
    verify_password,
)

CHEAP = {"n": 16, "r": 1, "p": 1}  # fast parameters for tests that hash many times


def test_hash_has_the_documented_form_and_default_parameters():
    encoded = hash_password("s3cret")
    scheme, params, salt, digest = encoded.split("$")[1:]
    assert (scheme, params) == ("scrypt", "n=16384,r=8,p=1")
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32
    assert parse_hash(encoded)[:3] == (16384, 8, 1)


def test_verify_accepts_the_password_and_nothing_else():
    encoded = hash_password("s3cret", **CHEAP)
    assert verify_password(encoded, "s3cret")
    assert verify_password(encoded, b"s3cret")  # MQTT passwords are bytes
    assert not verify_password(encoded, "s3cret ")
    assert not verify_password(encoded, "")


def test_each_hash_has_its_own_salt():
    assert hash_password("same", **CHEAP) != hash_password("same", **CHEAP)


def test_hash_matches_scrypt_as_rfc_7914_defines_it():
    # RFC 7914 section 12, second test vector: P="password", S="NaCl", N=1024, r=8, p=16.
    encoded = hash_password("password", n=1024, r=8, p=16, salt=b"NaCl")
    digest = base64.b64decode(encoded.rsplit("$", 1)[1])
    assert digest.hex().startswith("fdbabe1c9d3472007856e7190d01e9fe")


@pytest.mark.parametrize("bad", [
    "$pbkdf2$n=16,r=1,p=1$AAAA$" + "A" * 24,
    "$scrypt$n=15,r=1,p=1$AAAA$" + "A" * 24,  # n not a power of two
    "$scrypt$n=16,r=1$AAAA$" + "A" * 24,  # p missing
    "$scrypt$n=16,r=1,p=1,x=2$AAAA$" + "A" * 24,
    "$scrypt$n=4194304,r=1,p=1$AAAA$" + "A" * 24,  # too costly
    "$scrypt$n=16,r=1,p=1$AA!A$" + "A" * 24,  # not base64
    "$scrypt$n=16,r=1,p=1$AAAA$AAAA",  # hash too short
    "$scrypt$n=16,r=1,p=1$AAAA",
])
def test_malformed_hashes_are_refused(bad):
    with pytest.raises(PasswordFileError):
        parse_hash(bad)


def test_file_parsing_skips_comments_and_names_the_faulty_line():
    good = hash_password("x", **CHEAP)
    users = parse_password_file(f"# users\n\nalice:{good}\n  bob:{good}  \n")
    assert users == {"alice": good, "bob": good}
    with pytest.raises(PasswordFileError, match="line 2"):
        parse_password_file(f"alice:{good}\nbob\n")
    with pytest.raises(PasswordFileError, match="line 2: user 'alice' listed twice"):
        parse_password_file(f"alice:{good}\nalice:{good}\n")
    with pytest.raises(PasswordFileError, match="line 1"):
        parse_password_file("carol:plaintext\n")


# -- polybroker passwd -------------------------------------------------------------------


def passwd(monkeypatch, *args: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return cli.main(["passwd", *args])


def test_passwd_creates_the_file_0600_and_adds_a_user(tmp_path, monkeypatch, capsys):
    path = tmp_path / "passwords"
    assert passwd(monkeypatch, str(path), "alice", "--password-stdin", stdin="pw1\n") == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users = load_password_file(path)
    assert list(users) == ["alice"]
    assert verify_password(users["alice"], "pw1")
    assert "added alice" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["passwords"]  # no temporary file left


def test_passwd_changes_a_password_and_keeps_the_other_users(tmp_path, monkeypatch, capsys):
    path = tmp_path / "passwords"
    passwd(monkeypatch, str(path), "alice", "--password-stdin", stdin="old\n")
    passwd(monkeypatch, str(path), "bob", "--password-stdin", stdin="bobs\n")
    path.chmod(0o640)  # a mode the operator chose is kept on rewrite
    assert passwd(monkeypatch, str(path), "alice", "--password-stdin", stdin="new\n") == 0
    users = load_password_file(path)
    assert list(users) == ["alice", "bob"]
    assert verify_password(users["alice"], "new") and not verify_password(users["alice"], "old")
    assert verify_password(users["bob"], "bobs")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert "changed the password of alice" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["-D", "--delete"])
def test_passwd_deletes_a_user(tmp_path, monkeypatch, flag):
    path = tmp_path / "passwords"
    for user in ("alice", "bob"):
        passwd(monkeypatch, str(path), user, "--password-stdin", stdin="pw\n")
    assert passwd(monkeypatch, str(path), "alice", flag) == 0
    assert list(load_password_file(path)) == ["bob"]
    assert passwd(monkeypatch, str(path), "alice", flag) == 1  # not there any more


def test_passwd_prompts_twice_and_refuses_a_mismatch(tmp_path, monkeypatch, capsys):
    path = tmp_path / "passwords"
    answers = iter(["one", "two"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert cli.main(["passwd", str(path), "alice"]) == 2
    assert "differ" in capsys.readouterr().err
    assert not path.exists()
    answers = iter(["same", "same"])
    assert cli.main(["passwd", str(path), "alice"]) == 0
    assert verify_password(load_password_file(path)["alice"], "same")


@pytest.mark.parametrize("user", ["", "a:b", " alice", "#alice", "al\nice"])
def test_passwd_refuses_bad_user_names(tmp_path, monkeypatch, user):
    path = tmp_path / "passwords"
    assert passwd(monkeypatch, str(path), user, "--password-stdin", stdin="pw\n") == 2
    assert not path.exists()


def test_passwd_refuses_an_empty_password_and_a_broken_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "passwords"
    assert passwd(monkeypatch, str(path), "alice", "--password-stdin", stdin="\n") == 2
    path.write_text("garbage\n")
    assert passwd(monkeypatch, str(path), "alice", "--password-stdin", stdin="pw\n") == 2
    assert "line 1" in capsys.readouterr().err
    assert path.read_text() == "garbage\n"  # left as it was
