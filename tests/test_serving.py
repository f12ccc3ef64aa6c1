"""The logged model: portable (code + safe requirements), verified on load, served over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from rfdist import ModelSpec, build_model

from .s3_server import free_port

NAME = "serve-test"
PROJECT_DEPENDENCIES = {"torch", "zuko", "numpy", "mlflow"}  # third-party projects rfdist uses


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A small von Mises-shaped flow (D=2, d=1) registered as NAME@champion in a tmp sqlite store."""
    import mlflow

    from rfdist.tracking.models import log_flow_model

    root = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("serve", artifact_location=str(root / "artifacts"))
    spec = ModelSpec(data_shape=(2,), latent_dim=1, flow_layers=2, flow_hidden=(8,), density_layers=1,
                     density_hidden=(8,))  # fmt: skip
    torch.manual_seed(3)
    model = build_model(spec).eval()
    with torch.no_grad():  # away from the (deterministic) initialisation: a fresh build must differ
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    with mlflow.start_run(experiment_id=experiment):
        info = log_flow_model(model, spec, registered_model_name=NAME)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", str(info.registered_model_version))
    return uri, model, root


def _model_dir(uri: str, tmp_path: Path) -> Path:
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(tmp_path)))


def test_model_dir_carries_code_and_no_foreign_requirement(registered, tmp_path) -> None:
    from rfdist.tracking.models import verify_model_code

    uri, _, _ = registered
    local = _model_dir(uri, tmp_path)
    assert (local / "code" / "rfdist" / "mlflow_model.py").is_file()
    assert verify_model_code(local)
    names = set()
    for line in (local / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            names.add(line.split("==")[0].split(">")[0].split("<")[0].strip().lower())
    assert "rfdist" not in names  # the index's `rfdist` is another project
    assert names <= PROJECT_DEPENDENCIES, names
    mlmodel = (local / "MLmodel").read_text()
    checkout = str(Path(__file__).resolve().parents[1])
    assert checkout not in mlmodel  # no absolute path of the checkout (model-from-code did this)
    assert '"shape": [-1, 2]' in mlmodel  # signature from the data's width


def test_load_model_runs_no_code_from_the_artifact_store(registered, tmp_path) -> None:
    """Plant code in the stored model's code/ and pickle: rfdist's loader must execute neither."""
    import pickle

    from rfdist.tracking.models import ModelIntegrityError, load_model

    uri, model, root = registered
    marker = tmp_path / "executed"
    stored = next(root.glob("artifacts/models/*/artifacts"))
    payload = f"open({str(marker)!r}, 'w').write('pwned')\n"
    init = stored / "code" / "rfdist" / "__init__.py"
    pkl = stored / "python_model.pkl"
    saved_init, saved_pkl = init.read_text(), pkl.read_bytes()

    class Planted:
        def __reduce__(self):
            return (exec, (payload,))

    try:
        init.write_text(payload + saved_init)
        pkl.write_bytes(pickle.dumps(Planted()))
        loaded = load_model(f"models:/{NAME}@champion", tracking_uri=uri)
        x = torch.randn(7, 2)
        assert torch.allclose(loaded.log_prob(x), model.log_prob(x))
        assert not marker.exists()
    finally:
        init.write_text(saved_init)
        pkl.write_bytes(saved_pkl)
    state = stored / "artifacts" / "state.pt"
    saved_state = state.read_bytes()
    try:  # swapped weights are refused (digest on the registered version)
        torch.save({k: v + 1 for k, v in model.state_dict().items()}, state)
        with pytest.raises(ModelIntegrityError, match=r"state\.pt"):
            load_model(f"models:/{NAME}@champion", tracking_uri=uri)
    finally:
        state.write_bytes(saved_state)


def test_pyfunc_wrong_width_is_a_clear_error(registered) -> None:
    import mlflow

    from rfdist.tracking.pyfunc import InputWidthError, rows_to_tensor

    uri, _, _ = registered
    mlflow.set_registry_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"\(-1, 2\)"):
        pyfunc.predict(np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(InputWidthError, match=r"must have 2 values.*got 3"):
        rows_to_tensor(np.zeros((4, 3)), 2)


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read(), parse_constant=_not_json)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}", parse_constant=_not_json)


def _not_json(constant: str):
    raise AssertionError(f"the response holds {constant}, which is not JSON")


@pytest.mark.slow
def test_mlflow_models_serve_answers_log_densities(registered, tmp_path) -> None:
    uri, model, _ = registered
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # uvicorn
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "server did not answer /ping"
            time.sleep(1)
        x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
        status, body = _post(f"{base}/invocations", {"inputs": x.tolist()})
        assert status == 200, body
        expected = model.log_prob(x).double().detach().numpy()
        np.testing.assert_allclose(np.asarray(body["predictions"]), expected, rtol=1e-4, atol=1e-4)

        status, body = _post(f"{base}/invocations", {"inputs": x.tolist(), "params": {"output": "latent"}})
        assert status == 200, body
        np.testing.assert_allclose(
            np.asarray(body["predictions"]).reshape(5, 1), model.encode(x).detach().numpy(), atol=1e-4
        )
        status, body = _post(
            f"{base}/invocations", {"inputs": x[:1].tolist(), "params": {"output": "sample", "count": 3}}
        )
        assert status == 200 and np.asarray(body["predictions"]).shape == (3, 2), body
        status, body = _post(f"{base}/invocations", {"inputs": [[0.0, 1.0, 2.0]]})
        assert status == 400 and "(-1, 2)" in body.get("message", ""), body
        refused = [
            ({"output": "sample", "count": 10**9}, "params.count must be between 1 and 100000"),
            ({"space": "bogus"}, "params.space must be one of data, model, got 'bogus'"),
            ({"output": "nope"}, "params.output must be one of"),
        ]
        for params, reason in refused:  # the reason on the message's last line, no stack trace
            status, body = _post(f"{base}/invocations", {"inputs": x[:1].tolist(), "params": params})
            assert status == 400 and reason in body["message"].splitlines()[-1], body
            assert "stack_trace" not in body and "Traceback" not in body["message"], body
            assert "site-packages" not in json.dumps(body) and str(tmp_path) not in json.dumps(body), body
        status, body = _post(f"{base}/invocations", {"inputs": [[float("nan"), 0.0], [0.5, -1.0]]})
        assert status == 200 and body["predictions"][0] is None, body  # null, not NaN
        assert isinstance(body["predictions"][1], float), body
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def test_model_dir_runs_without_an_installed_rfdist(registered, tmp_path) -> None:
    """A fresh interpreter that cannot import rfdist (no .pth editable finder) serves from code/."""
    uri, model, _ = registered
    local = _model_dir(uri, tmp_path / "model")
    site = [p for p in sys.path if p.endswith("site-packages")]
    script = f"""
import sys
sys.path.extend({site!r})
try:
    import rfdist
    raise SystemExit("rfdist importable before loading the model: " + rfdist.__file__)
except ImportError:
    pass
import mlflow, numpy as np
pyfunc = mlflow.pyfunc.load_model({str(local)!r})
import rfdist
print(rfdist.__file__)
print(pyfunc.predict(np.array([[0.5, -1.0]], dtype=np.float32)).tolist())
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-S", "-c", script], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout
    where, values = done.stdout.strip().splitlines()[-2:]
    assert where.startswith(str(local / "code" / "rfdist"))
    expected = model.log_prob(torch.tensor([[0.5, -1.0]])).detach().double().numpy()
    np.testing.assert_allclose(json.loads(values), expected, rtol=1e-4, atol=1e-4)


def test_rfdist_serve_refuses_bad_options_before_ray(monkeypatch) -> None:
    import ray
    from typer.testing import CliRunner

    from rfdist.cli.main import app

    def tripwire(*args, **kwargs):
        raise AssertionError("Ray was started (or joined) for a command refused on its options")

    monkeypatch.setattr(ray, "init", tripwire)
    result = CliRunner().invoke(app, ["serve", f"models:/{NAME}@champion", "--replicas", "2", "--max-replicas", "1"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: --replicas 2 / --max-replicas 1"), result.output


@pytest.mark.slow
def test_ray_serve_answers_labelled_json_on_loopback(registered, shared_ray) -> None:
    """The registered model on Ray Serve answers real HTTP requests: MLflow's request body,
    JSON objects labelled by the output, one-line 400s; concurrent default requests are batched."""
    from concurrent.futures import ThreadPoolExecutor

    import psutil
    from ray import serve

    from rfdist.recipes.serve import ServeOptions, deploy

    uri, model, _ = registered
    port = free_port()
    try:
        url = deploy(f"models:/{NAME}@champion", ServeOptions(port=port, max_batch_size=4), tracking_uri=uri)
        assert url == f"http://127.0.0.1:{port}/invocations"
        listening = {c.laddr.ip for c in psutil.net_connections("inet") if c.laddr.port == port and c.status == "LISTEN"}
        assert listening and listening <= {"127.0.0.1"}, listening
        x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
        expected = model.log_prob(x).double().detach().numpy()
        with ThreadPoolExecutor(4) as pool:  # several callers at once: one batched predict, each its own rows
            answers = list(pool.map(lambda i: _post(url, {"inputs": x[i : i + 1].tolist()}), range(5)))
        for i, (status, body) in enumerate(answers):
            assert status == 200 and list(body) == ["log_prob"], body
            np.testing.assert_allclose(body["log_prob"], expected[i : i + 1], rtol=1e-4, atol=1e-4)
        status, body = _post(url, {"inputs": x.tolist(), "params": {"output": "latent"}})
        assert status == 200 and list(body) == ["latent"], body
        np.testing.assert_allclose(np.asarray(body["latent"]).reshape(5, 1), model.encode(x).detach().numpy(), atol=1e-4)
        status, body = _post(url, {"params": {"output": "sample", "count": 3}})
        assert status == 200 and np.asarray(body["sample"]).shape == (3, 2), body
        for bad in ({"inputs": [[0.0, 1.0, 2.0]]}, {"inputs": x.tolist(), "params": {"output": "nope"}}, {"rows": []}):
            status, body = _post(url, bad)
            assert status == 400 and list(body) == ["error"] and "\n" not in body["error"], (bad, body)
            assert "Traceback" not in body["error"] and ".py" not in body["error"], body
        assert "got 3" in _post(url, {"inputs": [[0.0, 1.0, 2.0]]})[1]["error"]
        with urllib.request.urlopen(url.replace("/invocations", "/ping"), timeout=30) as response:
            assert response.status == 200
    finally:
        serve.shutdown()  # the shared Ray stays up
