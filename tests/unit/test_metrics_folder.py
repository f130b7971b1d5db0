"""The metrics folder of a deployment: one name for all its processes, cleared between runs.

`flock` locks belong to open files, not processes, so two `open_metrics_dir` calls in this one
process behave as two processes would.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.metrics_dir import ENV, MetricsDir, deployment_metrics_dir, open_metrics_dir


@pytest.fixture(autouse=True)
def _own_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A temp directory of this test's own, and no folder inherited from a parent process."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # gettempdir() caches; read TMPDIR again
    monkeypatch.delenv(ENV, raising=False)


def _process_joins(folder: Path) -> MetricsDir:
    """What a `jobgate api` or `jobgate worker` started by hand does (it sets ENV for its children)."""
    os.environ.pop(ENV, None)
    return open_metrics_dir(None, folder, default_is_private=True)


def test_processes_of_one_deployment_derive_one_folder_whatever_driver_or_password_they_name() -> None:
    folder = deployment_metrics_dir("postgresql://jobgate:a@db:5432/jobgate", "jobgate")
    assert deployment_metrics_dir("postgresql+asyncpg://jobgate:b@db:5432/jobgate", "jobgate") == folder
    assert deployment_metrics_dir("postgresql://jobgate:a@db:5432/other", "jobgate") != folder
    assert deployment_metrics_dir("postgresql://jobgate:a@db:5432/jobgate", "staging") != folder


def test_a_relative_sqlite_path_names_the_file_it_resolves_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    monkeypatch.chdir(tmp_path / "one")
    relative_in_one = deployment_metrics_dir("sqlite:///./var/jobgate.db", "jobgate")
    absolute = deployment_metrics_dir(f"sqlite:///{tmp_path}/one/var/jobgate.db", "jobgate")
    monkeypatch.chdir(tmp_path / "two")
    assert relative_in_one == absolute
    assert deployment_metrics_dir("sqlite:///./var/jobgate.db", "jobgate") != absolute


def test_the_first_process_clears_what_a_previous_run_left_and_later_ones_keep_it(tmp_path: Path) -> None:
    folder = deployment_metrics_dir("sqlite:///x.db", "jobgate")
    folder.mkdir(mode=0o700)
    (folder / "counter_4242.db").write_bytes(b"previous run")
    (folder / "notes.txt").write_text("not ours")

    first = _process_joins(folder)
    assert not (folder / "counter_4242.db").exists()
    assert (folder / "notes.txt").exists(), "only prometheus-client's files are removed"

    (folder / "counter_1.db").write_bytes(b"this run")
    second = _process_joins(folder)
    assert (folder / "counter_1.db").exists(), "a folder in use is joined as it is"
    second.close()
    first.close()


def test_the_last_process_to_leave_the_deployments_folder_removes_it() -> None:
    folder = deployment_metrics_dir("sqlite:///x.db", "jobgate")
    first = _process_joins(folder)
    second = _process_joins(folder)
    assert first.path == second.path == folder and folder.stat().st_mode & 0o777 == 0o700

    first.close()
    assert folder.exists()
    second.close()
    assert not folder.exists()


def test_a_configured_folder_is_cleared_between_runs_but_never_removed(tmp_path: Path) -> None:
    configured = tmp_path / "metrics"
    configured.mkdir()
    (configured / "histogram_4242.db").write_bytes(b"previous run")
    folder = open_metrics_dir(
        configured, deployment_metrics_dir("sqlite:///x.db", "j"), default_is_private=True
    )
    assert folder.path == configured and not (configured / "histogram_4242.db").exists()
    folder.close()
    assert configured.is_dir()


def test_a_child_joins_the_folder_its_parent_chose(tmp_path: Path) -> None:
    parent = _process_joins(deployment_metrics_dir("sqlite:///x.db", "jobgate"))
    assert os.environ[ENV] == str(parent.path)
    child = open_metrics_dir(None, tmp_path / "elsewhere", default_is_private=True)
    assert child.path == parent.path
    child.close()
    assert parent.path.exists(), "a child never removes its parent's folder"
    parent.close()
    assert not parent.path.exists()


def test_a_folder_of_that_name_someone_else_made_is_refused(tmp_path: Path) -> None:
    folder = deployment_metrics_dir("sqlite:///x.db", "jobgate")
    (tmp_path / "planted").mkdir()
    folder.symlink_to(tmp_path / "planted")
    with pytest.raises(ConfigError, match="JOBGATE_METRICS_DIR"):
        _process_joins(folder)
