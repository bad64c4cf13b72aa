"""The hsearch CLI end to end on real images, and its refusals (exit status 2, nothing changed)."""
from __future__ import annotations


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


def test_build_and_routed_search(capsys, store_dir):
    assert run(capsys, "ingest", "fashion-mnist:test", "--limit", "120", "--store", store_dir,
               "--collection", "fm", "-q")[0] == 0
    code, _, err = run(capsys, "search", "--store", store_dir, "--collection", "fm", "--sample",
                       "fashion-mnist:train:0", "--mode", "relaxed")
    assert code == 2 and "needs a router" in err
    code, out, _ = run(capsys, "build", "--store", store_dir, "--collection", "fm", "-k", "3", "-l", "3")
    assert code == 0 and '"leaves": ' in out
    code, out, _ = run(capsys, "build", "--store", store_dir, "--collection", "fm", "--if-missing")
    assert code == 0 and '"router": "exists"' in out
    for mode in ("exact", "intensive", "relaxed", "auto"):
        code, out, _ = run(capsys, "search", "--store", store_dir, "--collection", "fm", "--sample",
                           "fashion-mnist:train:0", "-k", "3", "--mode", mode)
        assert code == 0 and f'"mode": "{mode}"' in out and '"operands": ' in out
    # ingest after build goes through the router: new points get a leaf, counts follow
    assert run(capsys, "ingest", "fashion-mnist:test", "--limit", "160", "--store", store_dir,
               "--collection", "fm", "-q")[0] == 0
    code, out, _ = run(capsys, "info", "--store", store_dir, "--collection", "fm")
    assert '"points": 160' in out and '"router"' in out
    from plugin.store import Filter, open_store

    with open_store(store_dir, collection="fm") as s:
        assert s.count(Filter.of(leaf_in=[-1])) == 0
    code, _, err = run(capsys, "build", "--store", store_dir, "--collection", "fm", "-k", "1")
    assert code == 2 and "k must be" in err


def test_bench_hkm_writes_records(capsys, tmp_path):
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    code, out, _ = run(capsys, "bench", "hkm", "--limit", "600", "--queries", "20", "--tree", "3x3",
                       "--skip-incremental", "--json", str(out_json), "--plot", str(out_png))
    assert code == 0 and "hkm-router" in out
    import json

    recs = [json.loads(l) for l in out_json.read_text().splitlines()]
    need = {"mode", "k", "l", "s1", "s2", "n_db", "n_queries", "recall_at_1", "recall_at_1_exact", "retention",
            "recall_at_10", "operands_mean", "operands_frac", "ms_per_query", "exact_ms_per_query", "speedup"}
    assert all(need <= set(r) for r in recs)
    router = [r for r in recs if r["method"] == "hkm-router"]
    assert {r["mode"] for r in router} == {"intensive", "auto", "relaxed"}
    assert all(r["n_db"] == 600 and r["n_queries"] == 20 for r in recs)
    assert max(r["recall_at_10"] for r in router) == 1.0  # relaxed with the paper's s1=1 scores everything
    assert out_png.stat().st_size > 10_000


def test_info_plots_the_router_tree(capsys, store_dir, tmp_path):
    assert run(capsys, "ingest", "fashion-mnist:test", "--limit", "90", "--store", store_dir, "--collection", "fm",
               "-q")[0] == 0
    code, _, err = run(capsys, "info", "--store", store_dir, "--collection", "fm", "--plot-tree", str(tmp_path / "t.png"))
    assert code == 2 and "no router" in err
    assert run(capsys, "build", "--store", store_dir, "--collection", "fm", "-k", "3", "-l", "2")[0] == 0
    code, out, _ = run(capsys, "info", "--store", store_dir, "--collection", "fm", "--plot-tree", str(tmp_path / "t.png"))
    assert code == 0 and (tmp_path / "t.png").stat().st_size > 5_000
