"""The importable ``uwsgi`` module, with values as uWSGI 2.0.31 gives them to a Python 3 app."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

import uwsgirouter
from uwsgirouter import uwsgi_module
from uwsgirouter.config import Config, Entry, load_config

pytestmark = pytest.mark.usefixtures("clean_process")


def test_install_and_values(tmp_path: Path) -> None:
    ini = tmp_path / "a.ini"
    ini.write_text("[uwsgi]\nmaster = true\nvacuum\nenv = A=1\nenv = B=2\nmy-custom-key = hello\n")
    config = load_config(["--ini", str(ini), "--enable-threads", "--processes", "3", "-s", ":0"], {})
    module = uwsgi_module.install(config)
    import uwsgi

    assert uwsgi is module is sys.modules["uwsgi"]
    # bare command-line flag -> True; INI value -> bytes; repeated -> last value (uWSGI 2.0.31 on Python 3)
    assert uwsgi.opt == {
        "ini": str(ini).encode(),
        "master": b"true",
        "vacuum": b"",
        "env": b"B=2",
        "my-custom-key": b"hello",
        "enable-threads": True,
        "processes": b"3",
        "socket": b":0",
    }
    assert uwsgi.version == b"2.0.31"
    assert uwsgi.version_info == (2, 0, 31, 0, b"")
    assert module.uwsgirouter_version == uwsgirouter.__version__  # ours: not in uWSGI's module
    assert uwsgi.numproc == 3
    assert uwsgi.worker_id() == 0
    assert uwsgi.masterpid() == os.getpid()
    assert uwsgi.hostname == socket.gethostname().encode()
    assert uwsgi.buffer_size == 4096


def test_worker_id_changes_in_place() -> None:
    module = uwsgi_module.install(Config(), numproc=2)
    started = module.started_on
    uwsgi_module.set_worker_id(2)
    assert module.worker_id() == 2
    assert module.masterpid() == os.getppid()
    again = uwsgi_module.install(Config(), worker_id=1)
    assert again is module  # an app that imported uwsgi in the master keeps a live module
    assert module.worker_id() == 1
    assert module.started_on == started
    assert module.numproc == 1


def test_register_before_and_after_install() -> None:
    sys.modules.pop("uwsgi", None)
    assert not uwsgi_module.installed()
    uwsgi_module.register("cache_get_test", lambda key: b"v")
    module = uwsgi_module.install(Config())
    assert module.cache_get_test("k") == b"v"
    uwsgi_module.register("cache_set_test", len)
    assert module.cache_set_test("abc") == 3
    uwsgi_module._registered.pop("cache_get_test")
    uwsgi_module._registered.pop("cache_set_test")


def test_build_opt_encodes_surrogates_back_to_the_original_bytes() -> None:
    raw = b"caf\xe9"
    entry = Entry("x", raw.decode("utf-8", "surrogateescape"), "test")
    assert uwsgi_module.build_opt([entry]) == {"x": raw}
