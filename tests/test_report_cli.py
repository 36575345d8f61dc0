"""`python -m bench report`: from a run's results folder to report/index.html; user errors in one line."""
from __future__ import annotations

import re

from bench.cli import main
from test_bench_fakes import protocol


def test_report_of_a_run_shows_its_rows_and_grid_images(tmp_path, capsys):
    proto = protocol(tmp_path, imports=[], solvers={"oracle_mean": {"label": "Mean"}, "oracle_sample": {"label": "Sample"}},
                     tasks={"sr4": {"label": "SR", "params": {"factor": 4}}})
    res = tmp_path / "res"
    assert main(["run", "--protocol", str(proto), "--results", str(res)]) == 0
    assert main(["table", "--protocol", str(proto), "--results", str(res)]) == 0
    capsys.readouterr()
    assert main(["report", "--protocol", str(proto), "--results", str(res)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"open .*res/report/index\.html in a browser", out)
    html = (res / "report" / "index.html").read_text()
    assert re.findall(r'data-method="([^"]+)"', html) == ["oracle_mean", "oracle_sample"]
    assert len(re.findall(r'class="img-row"', html)) == 4  # 4 images x 1 task
    # the first grid_images (2) images have their truth / measurement / outputs as files next to the report
    for image_id in ("astronaut", "coffee"):  # manifest order
        assert f"../images/demo/sr4/_gt/{image_id}.png" in html
        assert f"../images/demo/sr4/oracle_mean/{image_id}.png" in html
    assert '../images/demo/sr4/_gt/chelsea.png' not in html  # not a grid image: its numbers only
    assert '../grid_demo_sr4.png' in html


def test_report_without_records_is_one_line(tmp_path, capsys):
    proto = protocol(tmp_path, imports=[], solvers={"oracle_mean": {"label": "Mean"}})
    assert main(["report", "--protocol", str(proto), "--results", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no records in") and err.count("\n") == 1 and "bench run --protocol" in err
