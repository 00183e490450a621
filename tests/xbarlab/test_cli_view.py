"""`xbarlab plot`, `xbarlab watch`, `--watch` on a campaign, and `db plot` on a raw-run file."""

import socket
from pathlib import Path

import pytest
import yaml

from xbarlab.cli import main

PMU = str(Path(__file__).resolve().parents[2] / "xbarlab" / "stations" / "sim-pmu.yaml")


@pytest.fixture(autouse=True)
def _single_thread_blas():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


def _cli(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _iv(tmp_path, capsys, *extra):
    cfg = tmp_path / "iv.yaml"
    cfg.write_text(yaml.safe_dump({"v_step": 0.4}))
    out = tmp_path / "iv.h5"
    code, stdout, err = _cli(["run", "iv-pulsed", "--station", PMU, "-o", str(out), "--config",
                              str(cfg), "--device", "1,2", "--no-progress", *extra], capsys)
    assert code == 0, err
    return out, stdout, err


def test_plot_writes_figures_next_to_the_data(tmp_path, capsys):
    h5, _, _ = _iv(tmp_path, capsys)
    code, out, _ = _cli(["plot", str(h5)], capsys)
    assert code == 0
    png = tmp_path / "iv-run0-loops.png"
    assert f"wrote {png}" in out and png.stat().st_size > 10_000
    assert "devices swept: 1" in out and "conductance range:" in out and " uS" in out
    code, out, _ = _cli(["plot", str(h5), "--out", str(tmp_path / "figs")], capsys)
    assert code == 0 and (tmp_path / "figs" / "iv-run0-loops.png").exists()


def test_plot_bad_input_is_one_line(tmp_path, capsys):
    code, _, err = _cli(["plot", str(tmp_path / "missing.h5")], capsys)
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    code, _, err = _cli(["plot", str(junk)], capsys)
    assert code == 2 and "not a readable HDF5 file" in err
    h5, _, _ = _iv(tmp_path, capsys)
    code, _, err = _cli(["plot", str(h5), "--run", "run7"], capsys)
    assert code == 2 and "run7" in err


def test_db_plot_points_raw_runs_to_xbarlab_plot(tmp_path, capsys):
    h5, _, _ = _iv(tmp_path, capsys)
    code, _, err = _cli(["db", "plot", str(h5)], capsys)
    assert code == 2 and f"xbarlab plot {h5}" in err


def test_watch_refuses_a_busy_port(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = _cli(["watch", str(tmp_path / "x.h5"), "--port", str(port)], capsys)
    assert code == 2 and f"127.0.0.1:{port}" in err and "--port" in err


def test_run_with_watch_serves_while_running_and_stops_after(tmp_path, capsys):
    _, out, err = _iv(tmp_path, capsys, "--watch")
    url = next(w for w in err.split() if w.startswith("http://127.0.0.1:"))
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    assert "iv-pulsed:" in out and "live view stopped" in err
    with socket.socket() as s:  # the server went with the command
        assert s.connect_ex(("127.0.0.1", port)) != 0
