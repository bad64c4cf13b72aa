"""The hsearch CLI end to end on real images, and its refusals (exit status 2, nothing changed)."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from plugin.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def store_dir(tmp_path):
    return str(tmp_path / "stores")


def test_ingest_search_info(capsys, store_dir, tmp_path):
    code, out, _ = run(capsys, "ingest", "fashion-mnist:test", "--limit", "60", "--store", store_dir,
                       "--collection", "fm", "-q")
    assert code == 0 and '"added": 60' in out
    code, out, _ = run(capsys, "ingest", "fashion-mnist:test", "--limit", "60", "--store", store_dir,
                       "--collection", "fm", "-q")
    assert code == 0 and '"added": 0' in out and '"existing": 60' in out
    code, out, _ = run(capsys, "search", "--store", store_dir, "--collection", "fm", "--sample",
                       "fashion-mnist:train:0", "-k", "5")
    assert code == 0 and "query: fashion-mnist:train:0  [boot]" in out
    rows = [l for l in out.splitlines() if l.strip()[:1].isdigit()]
    assert len(rows) == 5 and sum("boot" in r for r in rows) >= 3  # an ankle boot finds boots
    img = tmp_path / "q.png"
    Image.new("RGB", (50, 50), (120, 10, 10)).save(img)
    code, out, _ = run(capsys, "search", "--store", store_dir, "--collection", "fm", "--image", str(img), "-k", "3")
    assert code == 0 and len([l for l in out.splitlines() if l.strip()[:1].isdigit()]) == 3
    code, out, _ = run(capsys, "info", "--store", store_dir, "--collection", "fm")
    assert code == 0 and '"points": 60' in out and '"encoder": "mobilenet_v2"' in out


def test_refusals_exit_2_and_change_nothing(capsys, store_dir, tmp_path):
    code, _, err = run(capsys, "search", "--store", store_dir, "--collection", "nope", "--id", "1")
    assert code == 2 and "no collection" in err
    code, _, err = run(capsys, "ingest", "fashion-mnist:test", "--limit", "5", "--store", store_dir,
                       "--encoder", "vgg99", "-q")
    assert code == 2 and "unknown encoder 'vgg99'" in err
    assert run(capsys, "ingest", "fashion-mnist:test", "--limit", "10", "--store", store_dir,
               "--collection", "fm", "-q")[0] == 0
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    code, _, err = run(capsys, "search", "--store", store_dir, "--collection", "fm", "--image", str(bad))
    assert code == 2 and "bad.jpg" in err
    code, _, err = run(capsys, "search", "--store", store_dir, "--collection", "fm", "--image",
                       str(tmp_path / "missing.jpg"))
    assert code == 2 and "missing.jpg" in err
    code, _, err = run(capsys, "ingest", "fashion-mnist:test", "--limit", "5", "--store", store_dir,
                       "--collection", "fm", "--encoder", "efficientnet_lite0", "-q")
    assert code == 2 and "mobilenet_v2" in err  # collection built with another encoder
    code, out, _ = run(capsys, "info", "--store", store_dir, "--collection", "fm")
    assert '"points": 10' in out
