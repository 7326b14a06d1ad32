"""bench/samplers.py: perf's report read into groups, and both samplers covering a real step's window."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
import samplers  # noqa: E402

# What `perf report --sort dso --stdio` printed for the server at 200 calls on 2026-12-03 (trimmed).
REPORT = """\
# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 9K of event 'cpu-clock'
# Overhead  Shared Object
# ........  .................................................
#
    50.79%  libpython3.11.so.1.0
    20.60%  [kernel.kallsyms]
     6.58%  libc.so.6
     4.80%  _multiarray_umath.cpython-311-x86_64-linux-gnu.so
     4.25%  loop.cpython-311-x86_64-linux-gnu.so
     3.73%  libcrypto.so.3
     1.77%  binascii.cpython-311-x86_64-linux-gnu.so
     1.73%  libscipy_openblas64_-32a4b2a6.so
     1.70%  libssl.so.3
     1.20%  reader_c.cpython-311-x86_64-linux-gnu.so
     0.21%  libm.so.6
     0.13%  [vdso]


#
# (Tip: ...)
#
"""


def test_the_report_is_read_into_groups_largest_first() -> None:
    split = samplers.split(REPORT)
    assert list(split)[:3] == ["Python interpreter", "kernel", "libc"]
    assert split["Python interpreter"] == pytest.approx(0.5079)
    assert split["OpenSSL"] == pytest.approx(0.0373 + 0.0170)
    assert split["numpy + BLAS"] == pytest.approx(0.0480 + 0.0173)
    assert split["libc"] == pytest.approx(0.0658 + 0.0021 + 0.0013)
    assert split[samplers.OTHER] == pytest.approx(0.0177 + 0.0120)  # binascii, aiohttp's reader
    assert sum(split.values()) == pytest.approx(0.9749)  # the trimmed list: what perf printed, summed


def test_a_report_with_no_samples_gives_no_groups() -> None:
    assert samplers.split("# Samples: 0\n#\n") == {}


def test_the_split_shows_as_rows_of_the_sampled_step() -> None:
    rows = report.perf_rows({"calls": 2, "asked": 2, "perf_split": samplers.split(REPORT)}, "@2")
    assert rows[0] == ("server CPU in Python interpreter @2", "50.8% of samples", "INFO", "INFO")
    assert report.perf_rows({"calls": 2}, "@2") == []


@pytest.mark.timeout(90)
def test_a_step_samples_the_server_through_its_window(tmp_path: Path) -> None:
    """perf (and py-spy, with the bench extra) on a real tiny step: the server's interpreter is in the split."""
    if shutil.which("perf") is None:
        pytest.skip("perf (Debian's linux-perf, in .ci/packages.txt) is not installed")
    import steps

    profile = tmp_path / "profile.txt" if samplers.py_spy_path() is not None else None
    result = steps.run_step(2, 2.0, profile=profile, perf=tmp_path / "perf.data")
    assert result["calls"] == 2
    split = result["perf_split"]
    assert split["Python interpreter"] > 0.2 and split["kernel"] > 0.0
    assert sum(split.values()) == pytest.approx(1.0, abs=0.02)
    if profile is not None:
        stacks = profile.read_text()
        assert "phonebridge/" in stacks
        assert "AsyncLive.connect" not in stacks  # the calls were up before the window: no setup in it


def test_a_sampler_asked_for_but_not_installed_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(samplers, "py_spy_path", lambda: None)
    monkeypatch.setattr(samplers.shutil, "which", lambda name: None)
    assert samplers.start(1, 1.0, str(tmp_path / "profile.txt"), str(tmp_path / "perf.data")) == []
    err = capsys.readouterr().err
    assert "py-spy (the bench extra) is not installed" in err and "perf (linux-perf) is not installed" in err
    assert samplers.start(1, 1.0, None, None) == [] and capsys.readouterr().err == ""
