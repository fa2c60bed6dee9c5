"""`distree export` and `distree eval --backend onnxruntime` from the command line."""

from __future__ import annotations

import json

import pytest

from distree.cli.main import main


@pytest.mark.slow  # an export, its int8 calibration and an evaluation
def test_int8_export_is_calibrated_on_validation_and_evaluated_as_shipped(trained, tmp_path, capsys):
    run, splits = trained
    data = str(run.path.parent / "data")
    out = tmp_path / "int8"
    assert main(["export", str(run.path), "--out", str(out), "--int8"]) == 2
    assert "give --data" in capsys.readouterr().err
    assert (
        main(["export", str(run.path), "--out", str(out), "--int8", "--data", data, "--calibration-samples", "8"]) == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "int8"
    # Its workers report the precision: a coordinator of the fp32 model refuses them by name.
    assert manifest["branch_fingerprints"] == [
        f"{run.branch_fingerprint(b)}-int8" for b in range(len(manifest["stages"]))
    ]
    assert manifest["int8_calibration"] == {"split": "validation", "samples": 8, "method": "MinMax"}
    assert all(s["file"].endswith(".int8.onnx") for per in manifest["stages"] for s in per)
    assert all((out / h["file"]).is_file() for h in manifest["heads"])  # heads stay fp32

    result = tmp_path / "eval.json"
    argv = ["eval", str(run.path), "--data", data, "--backend", "onnxruntime", "--export", str(out)]
    assert main([*argv, "--json", str(result)]) == 0
    r = json.loads(result.read_text())
    assert r["backend"] == f"onnxruntime int8 ({out})"
    assert not r["calibration_saved"]  # fitted again on the export's own validation vectors
    assert all(sum(p["exit_histogram"]) == len(splits.test) for p in r["policies"].values())
    assert "on this backend's vectors" in capsys.readouterr().out

    # An export of other weights is refused, by name.
    manifest["fingerprint"] = "0" * 16
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(argv) == 2
    assert "exported from other weights" in capsys.readouterr().err
    assert main(["eval", str(run.path), "--data", data, "--export", str(out)]) == 2
    assert "--backend onnxruntime" in capsys.readouterr().err
