import json
import math

from mistudy import demo


def test_demo_runs_every_part_and_writes_a_figure(tmp_path, capsys):
    results = demo.run(num_samples=2, size=48, figures_dir=tmp_path)
    out = capsys.readouterr().out
    assert "7,763" in out and "parameters" in out
    assert all(math.isfinite(v) for v in results.values())
    assert results["KL(p_unet || p_unet)"] == 0.0
    assert results["KL(p_deeplab || p_unet)"] > 0
    fig = tmp_path / "synthetic_samples.png"
    assert fig.stat().st_size > 10_000
    prov = json.loads((tmp_path / "synthetic_samples.png.provenance.json").read_text())
    assert prov["dataset"] == "synthetic" and "date" in prov and "package" in prov
