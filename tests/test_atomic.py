"""Concurrent jobs on one run folder: two processes writing the same run files at once lose
nothing and leave no partial file (dermfuse.io's atomic writes)."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from dermfuse.io import atomic_path, atomic_write_text, temp_path

N_WRITES = 150


def _writer(folder: str, who: int) -> None:
    run = Path(folder)
    for i in range(N_WRITES):
        payload = json.dumps({"writer": who, "i": i, "pad": "x" * (2000 + 37 * i)})
        atomic_write_text(run / "summary.json", payload)  # both write the same file
        atomic_write_text(run / f"fold{who}" / "metrics.json", payload)  # each its own file


def test_two_processes_writing_one_run_folder_lose_nothing_and_leave_no_partial_file(tmp_path):
    for who in (0, 1):
        (tmp_path / f"fold{who}").mkdir()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), who)) for who in (0, 1)]
    for p in procs:
        p.start()
    seen = 0
    while any(p.is_alive() for p in procs):  # a reader during the writes sees whole files only
        path = tmp_path / "summary.json"
        if path.exists():
            json.loads(path.read_text())
            seen += 1
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    final = json.loads((tmp_path / "summary.json").read_text())
    assert final["i"] == N_WRITES - 1  # the last write of whichever writer finished last
    for who in (0, 1):
        mine = json.loads((tmp_path / f"fold{who}" / "metrics.json").read_text())
        assert mine == {"writer": who, "i": N_WRITES - 1, "pad": "x" * (2000 + 37 * (N_WRITES - 1))}
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name]
    assert leftovers == []
    assert seen > 0


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "history.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]


def test_temporary_names_differ_per_call_and_name_host_and_process(tmp_path):
    import os
    import socket

    a, b = temp_path(tmp_path / "x.json"), temp_path(tmp_path / "x.json")
    assert a != b and a.parent == tmp_path
    assert f".{socket.gethostname()}.{os.getpid()}." in a.name


def test_every_writer_goes_through_dermfuse_io():
    """No module renames its own temporary files: dermfuse.io's names are unique per host
    and process, hand-made ones (``.NAME.PID.tmp``) are not, and fold jobs on several
    machines share a run folder. The image cache renames a memmap it opened under
    `temp_path`'s name, so it counts as going through dermfuse.io."""
    import re
    from pathlib import Path

    import dermfuse

    root = Path(dermfuse.__file__).parent
    allowed = {root / "io.py", root / "data" / "cache.py"}
    offenders = [str(f.relative_to(root)) for f in sorted(root.rglob("*.py")) if f not in allowed
                 and re.search(r"os\.replace\(|os\.rename\(|\.rename\(|\.tmp\b[\"']", f.read_text())]
    assert offenders == []


def test_a_file_written_by_a_library_that_creates_it_0600_gets_the_usual_mode(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file  # creates its file with mode 0600

    with atomic_path(tmp_path / "model.safetensors") as tmp:
        save_file({"w": np.zeros(2, np.float32)}, str(tmp))
        assert tmp.stat().st_mode & 0o777 == 0o600  # what the library made
    with open(tmp_path / "plain.txt", "w") as fh:
        fh.write("x")
    plain = (tmp_path / "plain.txt").stat().st_mode & 0o777
    if plain == 0o600:
        pytest.skip("umask 077: a plain file is 0600 too, so the check could not fail")
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == plain

