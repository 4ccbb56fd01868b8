"""uWSGI's hook actions (uwsgirouter.hooks): the syntax checked when the configuration is read, and what each
action does to files, the environment and the log when a phase runs it."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from uwsgirouter.config import load_config
from uwsgirouter.errors import ConfigError
from uwsgirouter.hooks import Hook, HookFailed, check_hook_users, parse_hook, run_hooks


def run(*hooks: str, phase: str = "as-gateway") -> None:
    run_hooks([parse_hook(text) for text in hooks], phase)


# --- syntax, checked when the configuration is read ---------------------------------------------------------


def test_action_arguments_and_private_mark_are_read_as_uwsgi_reads_them() -> None:
    assert parse_hook("chmod:/run/sub 666") == Hook("chmod", "/run/sub 666")
    assert parse_hook("exec:echo a:b") == Hook("exec", "echo a:b")  # split at the first colon only
    assert parse_hook("!print:token=s3cret") == Hook("print", "token=s3cret", private=True)
    assert str(parse_hook("!print:x")) == "!print:x"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("chmod /run/sub 666", "no ':' between the action and its arguments"),
        ("chmodd:/run/sub 666", "no hook action 'chmodd'"),
        ("mount:proc /proc proc", "uWSGI's hook action 'mount' is not supported by uwsgirouter"),
        ("chmod:/run/sub", "chmod: invalid syntax, must be <file> <mode>"),
        ("chmod:/run/sub rw", "chmod: invalid mode 'rw': 3 or 4 octal digits"),
        ("chown:/run/sub www-data", "chown: invalid syntax, must be <file> <uid> <gid>"),
        ("write:/tmp/flag", "write: invalid syntax, must be <file> <string>"),
    ],
)
def test_a_broken_hook_is_one_configuration_error_naming_option_and_reason(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(["--hook-as-gateway", value], {})
    message = str(caught.value)
    assert message.startswith(f"invalid value {value!r} for --hook-as-gateway: expected ACTION:ARGUMENTS")
    assert message.endswith(f"({reason})") and "\n" not in message


def test_every_phase_is_an_option_of_its_own_in_ini_files_too(tmp_path: Path) -> None:
    ini = tmp_path / "h.ini"
    ini.write_text(
        "[uwsgi]\nhook-as-root = print:r\nhook-as-user = print:u\nhook-pre-app = print:p\n"
        "hook-master-start = print:m\nhook-as-gateway = chmod:/run/sub 666\nhook-as-gateway = print:g\n"
    )
    warnings: list[str] = []
    config = load_config([str(ini)], {}, warn=warnings.append)
    assert warnings == []  # no longer "not implemented by uwsgirouter"
    assert [str(h) for h in config.hook_as_gateway] == ["chmod:/run/sub 666", "print:g"]
    assert [len(h) for h in (config.hook_as_root, config.hook_as_user, config.hook_pre_app)] == [1, 1, 1]
    assert config.hook_master_start == (Hook("print", "m"),)


def test_chown_to_a_user_or_group_this_host_lacks_is_found_before_start() -> None:
    good = ("as-root", parse_hook("chown:/run/sub root root"))
    assert check_hook_users([good]) is None
    bad_user = ("as-gateway", parse_hook("chown:/run/sub no-such-user-x root"))
    assert check_hook_users([good, bad_user]) == (
        "--hook-as-gateway \"chown:/run/sub no-such-user-x root\": no user 'no-such-user-x' on this host"
    )
    bad_group = ("pre-app", parse_hook("!chown:/run/sub root no-such-group-x"))
    assert (
        check_hook_users([bad_group])
        == "--hook-pre-app a private hook (chown): no group 'no-such-group-x' on this host"
    )


# --- the actions ----------------------------------------------------------------------------------------------


def test_chmod_sets_the_mode_even_a_socket_s(tmp_path: Path) -> None:
    target = tmp_path / "sub"
    target.touch(mode=0o600)
    run(f"chmod:{target} 666")
    assert stat.S_IMODE(target.stat().st_mode) == 0o666
    run(f"chmod:{target} 0640")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    run(f"sticky:{tmp_path}")
    assert tmp_path.stat().st_mode & stat.S_ISVTX


def test_chown_by_names_and_chown2_by_numbers(tmp_path: Path) -> None:
    import grp
    import pwd

    target = tmp_path / "f"
    target.touch()
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    run(f"chown:{target} {user} {group}", f"chown2:{target} {os.getuid()} {os.getgid()}")
    assert (target.stat().st_uid, target.stat().st_gid) == (os.getuid(), os.getgid())
    with pytest.raises(HookFailed, match="uid and gid must be numbers"):
        run(f"chown2:{target} {user} {group}")


def test_write_writen_append_appendn_create_and_unlink(tmp_path: Path) -> None:
    target = tmp_path / "f"
    run(f"write:{target} one two")  # the text keeps its spaces
    assert target.read_text() == "one two"
    run(f"writen:{target} three")  # truncates
    assert target.read_text() == "three\n"
    run(f"append:{target} four", f"appendn:{target} five", f"appendn:{target}")
    assert target.read_text() == "three\nfourfive\n\n"
    created = tmp_path / "empty"
    run(f"create:{target}", f"creat:{created}")
    assert (target.read_text(), created.read_text()) == ("", "")
    run(f"unlink:{target}", f"mkdir:{tmp_path / 'd'}")
    assert not target.exists() and (tmp_path / "d").is_dir()


def test_writefifo_with_nobody_reading_is_not_a_failure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with caplog.at_level(logging.INFO, "uwsgirouter.hooks"):
        run(f"writefifo:{fifo} r")
    assert f"writefifo: nobody reads {fifo}: nothing written" in caplog.messages
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        run(f"writefifo:{fifo} r")
        assert os.read(reader, 10) == b"r"
    finally:
        os.close(reader)


def test_exec_runs_a_shell_and_fails_on_a_non_zero_status_safeexec_never(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    run(f"exec:echo ran > {out}; exit 0")
    assert out.read_text() == "ran\n"
    with pytest.raises(HookFailed) as caught:
        run("exec:exit 3", phase="master-start")
    assert str(caught.value) == '--hook-master-start "exec:exit 3" failed: command exited with non-zero code: 3'
    with caplog.at_level(logging.WARNING, "uwsgirouter.hooks"):
        run("safeexec:exit 4")
    assert caplog.messages == ['command "exit 4" exited with non-zero code: 4']


def test_cd_and_putenv_change_the_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    monkeypatch.setenv("HOOK_GONE", "1")
    monkeypatch.delenv("HOOK_SET", raising=False)
    run(f"cd:{tmp_path}", "putenv:HOOK_SET=a=b", "putenv:HOOK_GONE")
    assert os.getcwd() == str(tmp_path)
    assert os.environ["HOOK_SET"] == "a=b" and "HOOK_GONE" not in os.environ
    monkeypatch.delenv("HOOK_SET")


def test_each_hook_is_logged_as_uwsgi_logs_it_and_a_private_one_hides_its_arguments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, "uwsgirouter.hooks"):
        run("print:hello there", "!log:s3cret", phase="pre-app")
    assert caplog.messages == [
        'running "print:hello there" (pre app)...',
        "hello there",
        "running --- PRIVATE HOOK --- (pre app)...",
        "s3cret",  # printing is what the hook was asked to do
    ]


def test_the_first_failure_stops_the_phase_and_names_option_hook_and_reason(tmp_path: Path) -> None:
    later = tmp_path / "later"
    with pytest.raises(HookFailed) as caught:
        run(f"chmod:{tmp_path / 'nope'} 666", f"create:{later}")
    assert str(caught.value) == (
        f'--hook-as-gateway "chmod:{tmp_path / "nope"} 666" failed: No such file or directory: {tmp_path / "nope"}'
    )
    assert not later.exists()
    with pytest.raises(HookFailed) as private:
        run(f"!unlink:{tmp_path / 'secret-name'}", phase="as-user")
    assert str(private.value) == "--hook-as-user a private hook (unlink) failed: No such file or directory"
