"""`mimkit report RUN`: the page's content, and the page in a real headless browser."""

import functools
import json
import re
import shutil
import subprocess

import pytest
from eval_helpers import save_tiny_checkpoint
from test_cli import assert_one_line_error
from test_train import run_cfg

from mimkit.cli import main
from mimkit.inspect.reconstructions import training_picture
from mimkit.inspect.report_html import build_report, table_html
from mimkit.train.loop import pretrain

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch tiny run with pictures, a kNN result, and its report."""
    tmp = tmp_path_factory.mktemp("report")
    cfg = run_cfg(tmp, "run", "train.epochs=2", "data.limit=16")
    pretrain(cfg, picture=functools.partial(training_picture, mean=cfg.data.mean, std=cfg.data.std))
    folder = tmp / "run"
    assert main(["eval", "knn", str(folder), "-k", "3"]) == 0
    assert main(["report", str(folder), "--attention-items", "2"]) == 0
    return folder


def browse(page, tmp_path):
    """(body attributes, console lines) of `page` loaded in headless chromium."""
    profile = tmp_path / "chromium-profile"  # a fresh profile: nothing from earlier runs
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        "--dump-dom", page.resolve().as_uri(),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    body = re.search(r"<body([^>]*)>", done.stdout)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return (body.group(1) if body else None), console


@pytest.mark.slow  # a tiny run, a kNN and the report: ~10 s on a busy 2-core CPU
def test_report_holds_every_section_and_embeds_its_pictures(run):
    page = (run / "report.html").read_text()
    for heading in (
        "Training curves",
        "Reconstructions",
        "Masks",
        "Attention",
        "Results",
        "Config",
    ):
        assert f"<h2>{heading}</h2>" in page
    assert "after step 2" in page and "after step 4" in page  # one reconstruction per epoch
    assert "eval/eval_knn_k-3.json" in page and "top1" in page  # RUN/eval/, named by -k 3
    assert "model:" in page and "embed_dim: 32" in page  # the config as saved
    assert re.search(r'src="(?!data:)', page) is None  # self-contained: no file or web links
    assert page.count("<img ") >= 5


@pytest.mark.slow  # the run fixture, then chromium (~5 s)
@needs_chromium
def test_report_loads_in_a_browser_with_no_console_errors(run, tmp_path):
    body, console = browse(run / "report.html", tmp_path)
    count = (run / "report.html").read_text().count("<img ")
    assert body is not None and f'data-images="{count}/{count}"' in body
    assert console == []


@needs_chromium
def test_the_browser_check_sees_a_broken_picture(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        build_page_with(
            '<img alt="broken" src="data:image/png;base64,AAAA">'
            '<img alt="fine" src="data:image/png;base64,'
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
            '">'
        )
    )
    body, console = browse(page, tmp_path)
    assert 'data-images="1/2"' in body
    assert any("picture did not decode: broken" in line for line in console)


def build_page_with(body):
    from mimkit.inspect.report_html import CHECK_SCRIPT

    return f"<!DOCTYPE html><html><head><script>{CHECK_SCRIPT}</script></head><body>{body}</body></html>"


def test_tables_render_records_and_nested_results():
    html = table_html({"top1": 0.8125, "results": [{"shots": 1, "top1": 0.5}, {"shots": 5}]})
    assert "<th>top1</th><td>0.8125</td>" in html
    assert "<th>shots</th><th>top1</th>" in html and "<td>5</td><td></td>" in html


def test_report_without_pictures_reads_no_data_and_tolerates_a_torn_line(tmp_path):
    folder, _, _ = save_tiny_checkpoint(tmp_path, tmp_path / "no-data-here")
    run = folder.parent
    lines = [{"event": "train", "step": s, "loss": 1.0 / s, "lr": 1e-3} for s in (1, 2)]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"event": "tra'  # killed mid-write
    (run / "metrics.jsonl").write_text(text)
    (run / "results.json").write_text(json.dumps({"knn_pretrained": 0.5}))
    page = build_report(run, attention_items=0).read_text()
    assert "<h2>Training curves</h2>" in page and "knn_pretrained" in page
    assert "<h2>Attention</h2>" not in page


def test_report_of_a_folder_without_a_run_is_one_line_error(tmp_path, capsys):
    code = main(["report", str(tmp_path)])
    assert_one_line_error(capsys, code, "not a mimkit checkpoint")
