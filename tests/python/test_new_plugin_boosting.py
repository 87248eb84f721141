"""`wasmserve new plugin --graph` on gradient-boosted trees exported by onnxmltools, as a user
brings them: a LightGBM classifier (tract hands its computed labels out as INT64, and the
scaffold declares its `label`, which the file fixes at `[1]`, one per row) and an XGBoost
regressor (tract lacks TreeEnsembleRegressor: ONNX Runtime). Each builds, passes `wasmserve
check`, serves, and answers what the library predicts. A graph that runs on neither backend is
refused with both reasons, nothing written."""

import os
import re
import subprocess

import lightgbm
import numpy as np
import onnx
import tritonclient.http as http
import xgboost
from conftest import BINARY, ROOT, Server
from onnx import TensorProto, helper
from onnxmltools import convert_lightgbm, convert_xgboost
from onnxmltools.convert.common.data_types import FloatTensorType
from sklearn.datasets import load_diabetes, load_iris

# The same target directory as the scikit-learn test's plugins: their crates are reused.
TARGET = ROOT / "target/sklearn-plugins"
LIBRARY = os.environ.get("ORT_DYLIB_PATH")


def wasmserve(*args, **kwargs):
    return subprocess.run([BINARY, *args], capture_output=True, text=True, timeout=120, **kwargs)


def scaffold(tmp, name, graph):
    env = {**os.environ, "CARGO_TARGET_DIR": str(TARGET)}
    project = tmp / name
    made = wasmserve("new", "plugin", name, "--graph", str(graph), "--dir", str(project), env=env)
    assert made.returncode == 0, made.stderr
    built = subprocess.run(["cargo", "build", "--release"], cwd=project, env=env, capture_output=True, text=True,
                           timeout=1200)
    assert built.returncode == 0, built.stderr
    checked = wasmserve("check", str(project / "models" / name))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert re.search(rf"ok\s+{name} version 1: ready", checked.stdout), checked.stdout
    return project / "models" / name


def test_boosted_trees_from_onnxmltools_serve_what_the_libraries_predict(tmp_path):
    iris_x, iris_y = load_iris(return_X_y=True)
    iris_x = iris_x.astype(np.float32)
    classifier = lightgbm.LGBMClassifier(n_estimators=10, verbose=-1).fit(iris_x, iris_y)
    lgbm = tmp_path / "lgbm.onnx"
    lgbm.write_bytes(convert_lightgbm(classifier, initial_types=[("input", FloatTensorType([None, 4]))],
                                      zipmap=False, target_opset=15).SerializeToString())
    diabetes_x, diabetes_y = load_diabetes(return_X_y=True)
    diabetes_x = diabetes_x.astype(np.float32)
    regressor = xgboost.XGBRegressor(n_estimators=10, max_depth=3).fit(diabetes_x, diabetes_y)
    xgb = tmp_path / "xgb.onnx"
    xgb.write_bytes(convert_xgboost(regressor, initial_types=[("input", FloatTensorType([None, 10]))],
                                    target_opset=15).SerializeToString())

    repository = tmp_path / "repository"
    repository.mkdir()
    for name, graph in [("lgbm", lgbm), ("xgb", xgb)]:
        (repository / name).symlink_to(scaffold(tmp_path, name, graph))
    lgbm_toml = (repository / "lgbm/model.toml").read_text()
    assert 'backend = "tract"' in lgbm_toml, lgbm_toml
    assert 'name = "label"\ndatatype = "INT64"\nshape = [-1]' in lgbm_toml, "one label per row, not [1]"
    xgb_toml = (repository / "xgb/model.toml").read_text()
    assert 'backend = "onnx"' in xgb_toml and "TreeEnsembleRegressor" in xgb_toml, xgb_toml

    server = Server(repository)
    try:
        client = server.wait_ready()
        rows = iris_x[::7]
        x = http.InferInput("input", list(rows.shape), "FP32")
        x.set_data_from_numpy(rows)
        answer = client.infer("lgbm", [x])
        assert answer.as_numpy("label").tolist() == classifier.predict(rows).tolist()
        np.testing.assert_allclose(answer.as_numpy("probabilities"), classifier.predict_proba(rows), atol=1e-4)

        rows = diabetes_x[::9]
        x = http.InferInput("input", list(rows.shape), "FP32")
        x.set_data_from_numpy(rows)
        predicted = client.infer("xgb", [x]).as_numpy("variable")
        np.testing.assert_allclose(predicted.ravel(), regressor.predict(rows), rtol=1e-4, atol=1e-2)
    finally:
        server.stop()


def test_a_graph_neither_backend_runs_is_refused_with_both_reasons(tmp_path):
    assert LIBRARY, "make test sets ORT_DYLIB_PATH (tests/onnxruntime_library.py)"
    # An operator of a domain no runtime knows.
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "odd.onnx"
    onnx.save(model, path)
    made = wasmserve("new", "plugin", "odd", "--graph", str(path), "--dir", str(tmp_path / "p"),
                     env={**os.environ, "ORT_DYLIB_PATH": LIBRARY})
    assert made.returncode != 0
    assert "runs on neither backend, so it would fail its warm-up" in made.stderr, made.stderr
    assert "tract:" in made.stderr and "ONNX Runtime:" in made.stderr and "Frobnicate" in made.stderr, made.stderr
    assert not (tmp_path / "p").exists(), "nothing is written"
