import json

from tasklift.report import markdown_table, merge_reports, write_report


def test_write_report_writes_markdown_json_and_csv(tmp_path):
    rows = [{"method": "a", "accuracy": 0.5}, {"method": "b", "accuracy": 0.75, "extra": 1}]
    sections = [("S", markdown_table(rows, ["method"]))]
    write_report(
        tmp_path / "run", title="T", intro="hello", sections=sections, settings={"seed": 0},
        results={"rows": rows},
    )  # fmt: skip
    md = (tmp_path / "run" / "report.md").read_text()
    assert md.startswith("# T\n\nhello") and "## S" in md and '"seed": 0' in md
    assert json.loads((tmp_path / "run" / "results.json").read_text())["rows"] == rows
    assert (tmp_path / "run" / "results.csv").read_text().splitlines()[0] == "method,accuracy,extra"


def test_merged_runs_of_the_same_folder_name_keep_their_own_plots(tmp_path):
    for k in (1, 2):
        run = tmp_path / f"exp{k}" / "sweep"
        run.mkdir(parents=True)
        (run / "plot.png").write_bytes(b"\x89PNG" + bytes([k]))
        (run / "report.md").write_text(f"# run {k}\n\n![p](plot.png)\n")
    merge_reports([tmp_path / "exp1" / "sweep", tmp_path / "exp2" / "sweep"], tmp_path / "out",
                  title="both")  # fmt: skip
    md = (tmp_path / "out" / "report.md").read_text()
    assert "](sweep_plot.png)" in md and "](sweep-2_plot.png)" in md
    assert (tmp_path / "out" / "sweep_plot.png").read_bytes()[-1] == 1
    assert (tmp_path / "out" / "sweep-2_plot.png").read_bytes()[-1] == 2
    assert (tmp_path / "out" / "report.html").read_text().count("data:image/png;base64,") == 2
