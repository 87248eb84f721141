"""`wasmserve new plugin --graph` on scikit-learn models exported by skl2onnx, the most common
models there are: each project builds, its model directory passes `wasmserve check`, and the
served model answers what scikit-learn predicts, on tract and on ONNX Runtime. An export
with skl2onnx's default ZipMap output is refused with the way out."""

import os
import re
import subprocess

import numpy as np
import pytest
import tritonclient.http as http
from conftest import BINARY, ROOT, Server
from sklearn.datasets import load_iris
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skl2onnx import to_onnx

X, Y = load_iris(return_X_y=True)
X = X.astype(np.float32)
MODELS = {
    "forest": RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0),
    "boosted": GradientBoostingClassifier(n_estimators=10, random_state=0),
    # StandardScaler is ONNX-ML's Scaler, which tract lacks: the scaffold picks ONNX Runtime.
    "scaled": make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
}
# The plugins build into one target directory: the second and third reuse the first's crates.
TARGET = ROOT / "target/sklearn-plugins"


def wasmserve(*args, **kwargs):
    return subprocess.run([BINARY, *args], capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sklearn")
    env = {**os.environ, "CARGO_TARGET_DIR": str(TARGET)}
    repository = tmp / "repository"
    repository.mkdir()
    for name, model in MODELS.items():
        model.fit(X, Y)
        graph = tmp / f"{name}.onnx"
        graph.write_bytes(to_onnx(model, X[:1], options={id(model): {"zipmap": False}}).SerializeToString())
        project = tmp / name
        made = wasmserve("new", "plugin", name, "--graph", str(graph), "--dir", str(project), env=env)
        assert made.returncode == 0, made.stderr
        built = subprocess.run(["cargo", "build", "--release"], cwd=project, env=env, capture_output=True,
                               text=True, timeout=1200)
        assert built.returncode == 0, built.stderr
        checked = wasmserve("check", str(project / "models" / name))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert re.search(rf"ok\s+{name} version 1: ready", checked.stdout), checked.stdout
        (repository / name).symlink_to(project / "models" / name)
        # The same model on the other backend.
        toml = (project / "models" / name / "model.toml").read_text()
        other = "onnx" if 'backend = "tract"' in toml else "tract"
        if other == "tract" and name == "scaled":
            continue
        twin = repository / f"{name}-{other}"
        twin.mkdir()
        (twin / "model.onnx").symlink_to(project / "models" / name / "model.onnx")
        (twin / "model.toml").write_text(toml.replace('backend = "tract"', 'backend = "onnx"'))
    return repository


def test_scaffolded_scikit_learn_models_answer_what_scikit_learn_predicts(repository):
    toml = (repository / "forest/model.toml").read_text()
    assert 'name = "X"\ndatatype = "FP32"\nshape = [-1, 4]' in toml, toml
    assert 'name = "probabilities"\ndatatype = "FP32"\nshape = [-1, 3]' in toml, toml
    assert 'shape = [1, 4], data = [0, 0, 0, 0]' in toml, "the warm-up has the declared shape"
    assert 'backend = "onnx"' in (repository / "scaled/model.toml").read_text()
    server = Server(repository)
    try:
        client = server.wait_ready()
        rows = X[::5]
        for name in sorted(p.name for p in repository.iterdir()):
            model = MODELS[name.split("-")[0]]
            x = http.InferInput("X", list(rows.shape), "FP32")
            x.set_data_from_numpy(rows)
            answer = client.infer(name, [x])
            assert answer.as_numpy("label").tolist() == model.predict(rows).tolist(), name
            np.testing.assert_allclose(answer.as_numpy("probabilities"), model.predict_proba(rows), atol=1e-4,
                                       err_msg=name)
    finally:
        server.stop()


def test_a_zipmap_export_is_refused_with_the_way_out(tmp_path):
    model = MODELS["forest"].fit(X, Y)
    graph = tmp_path / "zipmap.onnx"
    graph.write_bytes(to_onnx(model, X[:1]).SerializeToString())
    made = wasmserve("new", "plugin", "forest", "--graph", str(graph), "--dir", str(tmp_path / "p"))
    assert made.returncode != 0
    assert "output 'output_probability' is a list of maps (skl2onnx's ZipMap)" in made.stderr, made.stderr
    assert "options={'zipmap': False}" in made.stderr, made.stderr
    assert not (tmp_path / "p").exists(), "nothing is written"
