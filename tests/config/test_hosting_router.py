"""The production router file of the uwsgi.it hosting service (tests/config/data/hosting_router.ini) loads with
warnings for what uwsgirouter lacks only: its dgram-router lines."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

from uwsgirouter.config import load_config

DATA = Path(__file__).with_name("data")


def write_hosting_files(tmp_path: Path, port: int = 3017, stats_port: int = 5004) -> Path:
    (tmp_path / "subscribe").mkdir()
    (tmp_path / "domains").mkdir()
    (tmp_path / "local.ini").write_text((DATA / "hosting_local.ini").read_text())
    text = (
        (DATA / "hosting_router.ini")
        .read_text()
        .format(
            tmp=tmp_path,
            port=port,
            stats_port=stats_port,
            dgram_port=3022,
            user=pwd.getpwuid(os.getuid()).pw_name,
            group=grp.getgrgid(os.getgid()).gr_name,
        )
    )
    path = tmp_path / "fastrouter.ini"
    path.write_text(text)
    return path


def test_the_hosting_router_file_loads_with_only_what_is_missing_named(tmp_path: Path) -> None:
    path = write_hosting_files(tmp_path)
    warnings: list[str] = []
    config = load_config([str(path)], {}, warn=warnings.append)
    origin = f"{path} [uwsgi]"
    assert warnings == [
        f"uWSGI option --dgram-router ({origin}) is not implemented by uwsgirouter: ignored",
        f"uWSGI option --dgram-router-psk-in ({origin}) is not implemented by uwsgirouter: ignored",
        f"uWSGI option --dgram-router-to ({origin}) is not implemented by uwsgirouter: ignored",
        "uWSGI plugins not available in uwsgirouter, ignored: dgram_router",
    ]
    assert [str(a) for a in config.fastrouter] == ["127.0.0.1:3017"]  # %(public_ip) from the included file
    assert [str(hook) for hook in config.hook_as_gateway] == [f"chmod:{tmp_path}/subscribe/fastrouter 666"]
    assert config.subscriptions_use_credentials and config.subscriptions_sign_check == f"SHA1:{tmp_path}/domains"
