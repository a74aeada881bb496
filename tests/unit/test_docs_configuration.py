"""docs/configuration.md is the configuration reference (issue 9 item 8): every setting of the daemon appears there
with its flag, its TOML key and its environment variable, and every flag the page names is one the daemon accepts."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from ipamd.config import DaemonConfig, parser

DOC = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()


def test_every_setting_is_documented_with_flag_key_and_variable():
    for f in fields(DaemonConfig):
        flag = "`--%s" % f.name.replace("_", "-")
        assert flag in DOC, flag
        assert "`%s`" % f.name in DOC, f.name
        assert "`IPAMD_%s`" % f.name.upper() in DOC, f.name


def test_every_documented_daemon_flag_exists():
    accepted = {a for action in parser()._actions for a in action.option_strings}
    table = DOC.split("| flag | TOML key")[1].split("## Deadlines")[0]
    for flag in re.findall(r"`(--[a-z-]+)", table):
        assert flag in accepted, flag
