"""Loading the WSGI callable from --wsgi-file / --module, with errors a user can act on."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from uwsgirouter.config import Config, load_config
from uwsgirouter.workers.app_loader import AppLoadError, load_app, module_name_for_file, run_file

pytestmark = pytest.mark.usefixtures("clean_process")

APP = """
def application(environ, start_response):
    start_response("200 OK", [])
    return [b"hi"]

def other(environ, start_response):
    return []

not_callable = 42
"""


def config(*argv: str) -> Config:
    return load_config(list(argv), {})


def call(app: object) -> list[bytes]:
    return list(app({}, lambda status, headers, exc_info=None: None))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("app.py", "uwsgi_file_app"),
        ("/tmp/uwt/sub/dump.py", "uwsgi_file__tmp_uwt_sub_dump"),  # checked against uWSGI 2.0.31
        ("./site/wsgi.py", "uwsgi_file___site_wsgi"),
        ("project.wsgi", "uwsgi_file_project_wsgi"),
        ("sym://x.py", "uwsgi_file_x"),
    ],
)
def test_module_name_like_uwsgi(path: str, name: str) -> None:
    assert module_name_for_file(path) == name


def test_wsgi_file_relative_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "app.py").write_text("import helper\n" + APP)
    (tmp_path / "helper.py").write_text("")
    monkeypatch.chdir(tmp_path)
    app = load_app(config("--wsgi-file", "app.py"))
    assert call(app) == [b"hi"]
    assert app.__module__ == "uwsgi_file_app"
    assert sys.modules["uwsgi_file_app"].__file__ == "app.py"
    assert sys.path[0] == "."  # like uWSGI


def test_wsgi_file_directory_is_on_sys_path(tmp_path: Path) -> None:
    sub = tmp_path / "site"
    sub.mkdir()
    (sub / "app.py").write_text("import sibling_mod_x\napplication = sibling_mod_x.application\n")
    (sub / "sibling_mod_x.py").write_text(APP)
    app = load_app(config("--file", str(sub / "app.py")))
    assert call(app) == [b"hi"]
    assert str(sub) in sys.path


def test_env_is_applied_before_the_file_runs(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("import os\nSEEN = os.environ['FOO']\n" + APP)
    load_app(config("--env", "FOO=first", "--env", "FOO=bar=baz", "--wsgi-file", str(tmp_path / "app.py")))
    module = sys.modules[module_name_for_file(str(tmp_path / "app.py"))]
    assert module.SEEN == "bar=baz"
    assert os.environ["FOO"] == "bar=baz"


def test_callable_option(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    app = load_app(config("--wsgi-file", str(tmp_path / "app.py"), "--callable", "other"))
    assert app.__name__ == "other"


def test_uwsgi_module_is_importable_while_loading(tmp_path: Path) -> None:
    sys.modules.pop("uwsgi", None)
    (tmp_path / "app.py").write_text("import uwsgi\nVERSION = uwsgi.version\n" + APP)
    load_app(config("--wsgi-file", str(tmp_path / "app.py")))
    assert sys.modules[module_name_for_file(str(tmp_path / "app.py"))].VERSION == b"2.0.31"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AppLoadError) as info:
        load_app(config("--wsgi-file", str(tmp_path / "nope.py")))
    assert str(info.value) == f"unable to load app from {tmp_path / 'nope.py'}: file not found"


def test_missing_and_not_callable(tmp_path: Path) -> None:
    path = str(tmp_path / "app.py")
    (tmp_path / "app.py").write_text(APP)
    with pytest.raises(AppLoadError, match=rf"^unable to load app: no callable named 'nope' in {path}$"):
        load_app(config("--wsgi-file", path, "--callable", "nope"))
    with pytest.raises(AppLoadError, match=r"'not_callable' in .* is not callable \(int\)"):
        load_app(config("--wsgi-file", path, "--callable", "not_callable"))


def test_exception_in_the_file_comes_with_its_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text("x = 1\n\ndef f():\n    raise RuntimeError('kaput')\n\nf()\n")
    with pytest.raises(AppLoadError) as info:
        load_app(config("--wsgi-file", str(path)))
    message = str(info.value)
    assert message.startswith(f"unable to load app from {path}: error while running it:\nTraceback")
    assert f'File "{path}", line 6, in <module>' in message
    assert "raise RuntimeError('kaput')" in message
    assert message.endswith("RuntimeError: kaput")
    assert "app_loader.py" not in message
    assert module_name_for_file(str(path)) not in sys.modules


def test_syntax_error_and_sys_exit(tmp_path: Path) -> None:
    (tmp_path / "syn.py").write_text("def broken(:\n")
    with pytest.raises(AppLoadError, match=r"(?s)syn\.py.*SyntaxError"):
        load_app(config("--wsgi-file", str(tmp_path / "syn.py")))
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(AppLoadError, match="SystemExit: 3"):
        load_app(config("--wsgi-file", str(tmp_path / "exits.py")))


def test_module_with_callable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "mypkg_wsgi_t"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "web.py").write_text(APP)
    monkeypatch.chdir(tmp_path)
    assert call(load_app(config("--module", "mypkg_wsgi_t.web"))) == [b"hi"]
    assert load_app(config("-w", "mypkg_wsgi_t.web:other")).__name__ == "other"
    assert load_app(config("--wsgi", "mypkg_wsgi_t.web", "--callable", "other")).__name__ == "other"


def test_module_given_as_a_file_path(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    assert call(load_app(config("--module", str(tmp_path / "app.py")))) == [b"hi"]


def test_module_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AppLoadError, match=r"^unable to load app: no module named 'no_such_mod_q' \(--module"):
        load_app(config("--module", "no_such_mod_q"))
    (tmp_path / "imports_missing_q.py").write_text("import also_missing_q\n")
    with pytest.raises(AppLoadError) as info:
        load_app(config("--module", "imports_missing_q"))
    assert "import failed:\nTraceback" in str(info.value)
    assert "ModuleNotFoundError: No module named 'also_missing_q'" in str(info.value)
    assert "<frozen importlib" not in str(info.value)
    (tmp_path / "no_app_q.py").write_text("")
    with pytest.raises(AppLoadError, match="no callable named 'application' in module no_app_q"):
        load_app(config("--module", "no_app_q"))


def test_nothing_to_load() -> None:
    with pytest.raises(AppLoadError, match="give --wsgi-file FILE or --module"):
        load_app(config())


def test_run_file_returns_globals(tmp_path: Path) -> None:
    (tmp_path / "fill.py").write_text("import uwsgi\nCOUNT = 3\n")
    from uwsgirouter import uwsgi_module

    uwsgi_module.install(config())
    env = run_file(str(tmp_path / "fill.py"))
    assert env["COUNT"] == 3
    with pytest.raises(AppLoadError, match=r"^unable to run .*missing\.py: file not found$"):
        run_file(str(tmp_path / "missing.py"))
    (tmp_path / "raises.py").write_text("1/0\n")
    with pytest.raises(AppLoadError, match="ZeroDivisionError"):
        run_file(str(tmp_path / "raises.py"))
