"""Security and integrity: the cluster the user names, credentials, model files, serving, manifests.

Rows of the ``Security and integrity`` table in docs/guide/reliability.md name these tests.
Everything here runs without Ray (a tripwire fails a test that starts it) and without a
cluster: jobs commands are pointed at a port where nothing listens, beside a real listener on
the address the environment names, which must receive nothing.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rfdist.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
VM = ROOT / "rfdist" / "presets" / "von-mises.yaml"
DEAD_HTTP = "http://127.0.0.1:9"  # nothing listens on the discard port


@pytest.fixture(autouse=True)
def _no_ray(ray_tripwire, monkeypatch):
    """Every case here must stop before Ray starts; no cluster or store from the environment."""
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)


def _error_line(result) -> str:
    """The single ``error:`` line the command printed (fails on a traceback or several lines)."""
    lines = [line for line in result.stderr.strip().splitlines() if " INFO mlflow." not in line]
    assert "Traceback" not in result.output, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ------------------------------------------------------------------------ manifest paths
def _dataset(root: Path) -> Path:
    """A real rfdist dataset (manifest + shards): 40 train / 20 val rows of D=2 (enough for preflight)."""
    from rfdist.data.parquet import write_dataset

    rng = np.random.default_rng(0)
    write_dataset(
        str(root), {"train": {"x": rng.normal(size=(40, 2))}, "val": {"x": rng.normal(size=(20, 2))}}
    )
    return root


def _point_manifest(root: Path, entry: str) -> Path:
    """Replace the train split's first file entry of ``root``'s manifest with ``entry``."""
    manifest = root / "_MANIFEST.json"
    data = json.loads(manifest.read_text())
    data["splits"]["train"]["files"][0] = entry
    manifest.write_text(json.dumps(data))
    return manifest


@pytest.mark.parametrize("entry", ["../../../../etc/passwd", "../other/OTHER_SHARD", "/etc/passwd"])
def test_manifest_entries_outside_the_dataset_are_refused(entry: str, tmp_path: Path) -> None:
    """data validate, train's preflight and the reader all refuse, naming the manifest and entry."""
    from rfdist.data.errors import DataError
    from rfdist.data.reader import open_dataset

    other = _dataset(tmp_path / "other")
    data = _dataset(tmp_path / "mine")
    shard = json.loads((other / "_MANIFEST.json").read_text())["splits"]["train"]["files"][0]
    entry = entry.replace("OTHER_SHARD", shard)  # another dataset's real shard
    _point_manifest(data, entry)
    result = CliRunner().invoke(app, ["data", "validate", str(data)])
    assert result.exit_code == 2
    line = _error_line(result)
    assert "_MANIFEST.json" in line and repr(entry) in line and "leaves the dataset folder" in line
    with pytest.raises(DataError, match="leaves the dataset folder"):
        open_dataset(str(data))
    train = ["train", str(VM), "--set", f"data.path={data}", "--set", "data.synthetic=null",
             "--set", f"storage.path={tmp_path / 'runs'}", "--set", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"]  # fmt: skip
    result = CliRunner().invoke(app, train)
    assert result.exit_code == 2, result.output
    assert repr(entry) in _error_line(result)


def test_a_manifest_entry_that_links_out_of_the_dataset_is_refused(tmp_path: Path) -> None:
    other = _dataset(tmp_path / "other")
    data = _dataset(tmp_path / "mine")
    shard = json.loads((other / "_MANIFEST.json").read_text())["splits"]["train"]["files"][0]
    (data / "train" / "link.parquet").symlink_to(other / shard)
    _point_manifest(data, "train/link.parquet")
    result = CliRunner().invoke(app, ["data", "validate", str(data)])
    assert result.exit_code == 2 and "leads out of the dataset folder" in _error_line(result)


# ------------------------------------------------------------------------ the cluster address
class _Listener:
    """A real TCP listener on a free loopback port that counts the connections it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.address = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


@pytest.fixture()
def other_cluster():
    listener = _Listener()
    yield listener
    listener.sock.close()


JOBS_COMMANDS = {
    "list": ["jobs", "list"],
    "logs": ["jobs", "logs", "rfdist-x"],
    "stop": ["jobs", "stop", "rfdist-x"],
    "status": ["jobs", "status", "rfdist-x"],
    "submit": ["submit", "eval", "models:/vm@champion"],
}


@pytest.mark.parametrize("variable", ["RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"])
@pytest.mark.parametrize("command", list(JOBS_COMMANDS))
def test_the_address_option_wins_over_the_environment(
    command, variable, other_cluster, monkeypatch, tmp_path: Path
) -> None:
    """With the variable naming a live listener, ``--address`` (where nothing listens) is what is
    tried: the command fails naming that address and the listener is never contacted."""
    monkeypatch.setenv(variable, other_cluster.address)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [*JOBS_COMMANDS[command], "--address", DEAD_HTTP])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output  # (submit adds notes)
    line = errors[0]
    assert "127.0.0.1:9 " in line or "127.0.0.1:9)" in line or line.endswith("127.0.0.1:9"), line
    assert other_cluster.address not in result.output
    assert other_cluster.connections == 0, "talked to the cluster the environment names"


def test_without_the_option_the_environment_address_is_used(other_cluster, monkeypatch) -> None:
    """The variable still counts when no ``--address`` is given (and the error names it)."""
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", other_cluster.address)
    result = CliRunner().invoke(app, ["jobs", "list"])
    assert result.exit_code == 2 and other_cluster.address in _error_line(result)
    assert other_cluster.connections >= 1


# ------------------------------------------------------------------------ credentials in jobs
PASSWORD = "PW-s3cr3t-value"
URIS = {
    "MLFLOW_TRACKING_URI": f"http://alice:{PASSWORD}@mlflow.example:5000",
    "MLFLOW_S3_ENDPOINT_URL": f"https://bob:{PASSWORD}@s3.example",
    "AWS_ENDPOINT_URL": f"http://carol:{PASSWORD}@minio.example:9000",
}


def test_uri_passwords_stay_home_without_forward_credentials(tmp_path: Path) -> None:
    """The runtime_env, entrypoint and inline config the submit code builds hold no userinfo."""
    from rfdist.recipes.submit import INLINE_CONFIG_ENV, build_job

    config = tmp_path / "vm.yaml"  # outside the project: its text travels inline
    config.write_text(VM.read_text() + f"\n# mirror: http://dave:{PASSWORD}@mirror.example/x\n")
    overrides = [f"tracking.uri=http://erin:{PASSWORD}@mlflow.example:5000"]
    spec = build_job(
        "train", str(config), overrides=overrides, address=DEAD_HTTP, environ=URIS, validate=False
    )
    env = spec.runtime_env["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "https://s3.example"
    assert env["AWS_ENDPOINT_URL"] == "http://minio.example:9000"
    assert "mirror.example/x" in env[INLINE_CONFIG_ENV]
    assert "tracking.uri=http://mlflow.example:5000" in spec.entrypoint
    assert PASSWORD not in json.dumps([spec.runtime_env, spec.entrypoint, spec.metadata])
    assert any("--forward-credentials" in note for note in spec.notes)
    forwarded = build_job("train", str(config), overrides=overrides, address=DEAD_HTTP, environ=URIS,
                          validate=False, forward_credentials=True)  # fmt: skip
    assert forwarded.runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == URIS["MLFLOW_TRACKING_URI"]
    assert PASSWORD in forwarded.entrypoint  # asked for: sent as given


# ------------------------------------------------------------------------ model integrity
MODEL = "sec-model"
FORMS = ("version", "run", "logged-model")  # models:/NAME/1, runs:/RUN/NAME, models:/m-ID


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny flow (D=2, d=1) with a standardisation, logged and registered in a tmp sqlite store."""
    import mlflow

    from rfdist import ModelSpec, build_model
    from rfdist.tracking.models import log_flow_model

    root = tmp_path_factory.mktemp("sec")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("sec", artifact_location=str(root / "artifacts"))
    spec = ModelSpec(
        data_shape=(2,), latent_dim=1, flow_layers=1, flow_hidden=(4,), density_layers=1, density_hidden=(4,)
    )  # fmt: skip  (the smallest flow: only its files matter here)
    preprocess = {"kind": "standardize", "stats": {"mean": [0.5, -0.5], "std": [2.0, 3.0]}}
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_flow_model(build_model(spec), spec, registered_model_name=MODEL, preprocess=preprocess)
    stored = Path(mlflow.artifacts.download_artifacts(f"models:/{info.model_id}", dst_path=str(root / "dl")))
    folder = next((root / "artifacts").glob(f"**/{info.model_id}/artifacts"))
    assert (folder / "MLmodel").is_file() and stored.is_dir()
    uris = {
        "version": f"models:/{MODEL}/{info.registered_model_version}",
        "run": f"runs:/{run.info.run_id}/{MODEL}",
        "logged-model": f"models:/{info.model_id}",
    }
    return {"tracking": uri, "folder": folder, "uris": uris, "run_id": run.info.run_id,
            "model_id": info.model_id, "version": str(info.registered_model_version)}  # fmt: skip


@pytest.fixture()
def store(logged):
    """``logged``, with every stored file and record put back after the test."""
    import mlflow

    from rfdist.tracking.models import RUN_DIGEST_TAG

    mlflow.set_tracking_uri(logged["tracking"])
    mlflow.set_registry_uri(logged["tracking"])
    client = mlflow.MlflowClient()
    files = {p: p.read_bytes() for p in logged["folder"].rglob("*") if p.is_file() and "code" not in p.parts}
    tag = f"{RUN_DIGEST_TAG}{MODEL}"
    run_tag = client.get_run(logged["run_id"]).data.tags.get(tag)
    version_tags = dict(client.get_model_version(MODEL, logged["version"]).tags)
    model_tags = dict(client.get_logged_model(logged["model_id"]).tags)
    yield logged
    for path, data in files.items():
        path.write_bytes(data)
    if run_tag is not None:
        client.set_tag(logged["run_id"], tag, run_tag)
    for key, value in version_tags.items():
        client.set_model_version_tag(MODEL, logged["version"], key, value)
    client.set_logged_model_tags(logged["model_id"], model_tags)


def _rerecord(store, form: str, key: str, digest: str) -> None:
    """What a writer of the tracking store could do: record ``digest`` for ``key`` in ``form``'s record."""
    import mlflow

    from rfdist.tracking.models import RUN_DIGEST_TAG

    client = mlflow.MlflowClient()
    if form == "version":
        client.set_model_version_tag(MODEL, store["version"], key, digest)
    elif form == "logged-model":
        client.set_logged_model_tags(store["model_id"], {key: digest})
    else:
        tag = f"{RUN_DIGEST_TAG}{MODEL}"
        record = json.loads(client.get_run(store["run_id"]).data.tags.get(tag, "{}"))
        client.set_tag(store["run_id"], tag, json.dumps({**record, key: digest}))


def _load(store, form: str):
    from rfdist.tracking.models import load_flow

    return load_flow(store["uris"][form], tracking_uri=store["tracking"])


def _tamper(folder: Path, name: str) -> None:
    import torch

    path = folder / "artifacts" / name
    if name == "state.pt":
        state = torch.load(path, weights_only=True)
        torch.save({k: v + 0.5 for k, v in state.items()}, path)
    elif name == "spec.json":
        path.write_text(path.read_text().replace('"seed": 0', '"seed": 1'))
    else:  # preprocess.json: another standardisation silently changes every log_prob
        path.write_text(path.read_text().replace("2.0", "0.2"))


@pytest.mark.parametrize("form", FORMS)
def test_every_uri_form_loads_an_untouched_model(store, form: str) -> None:
    loaded = _load(store, form)
    assert loaded.preprocess["stats"]["std"] == [2.0, 3.0]


@pytest.mark.parametrize("name", ["state.pt", "spec.json", "preprocess.json"])
@pytest.mark.parametrize("form", FORMS)
def test_a_tampered_model_file_is_refused(store, form: str, name: str) -> None:
    from rfdist.tracking.models import ModelIntegrityError

    _tamper(store["folder"], name)
    with pytest.raises(ModelIntegrityError, match=rf"{name.replace('.', '[.]')} does not match"):
        _load(store, form)


@pytest.mark.parametrize("form", FORMS)
def test_the_artifacts_own_digest_record_is_not_trusted(store, form: str) -> None:
    """Deleting MLmodel's digest lines, or rewriting them to fit tampered weights, changes nothing."""
    from rfdist.tracking.models import STATE_DIGEST_KEY, ModelIntegrityError, file_digest

    _tamper(store["folder"], "state.pt")
    mlmodel = store["folder"] / "MLmodel"
    lines = mlmodel.read_text().splitlines()
    mlmodel.write_text("\n".join(line for line in lines if "_sha256" not in line) + "\n")
    with pytest.raises(ModelIntegrityError, match=r"state\.pt does not match"):
        _load(store, form)
    forged = file_digest(store["folder"] / "artifacts" / "state.pt")
    mlmodel.write_text(
        "\n".join(lines).replace("metadata:", f"metadata:\n  {STATE_DIGEST_KEY}: {forged}") + "\n"
    )
    with pytest.raises(ModelIntegrityError, match=r"state\.pt does not match"):
        _load(store, form)


@pytest.mark.parametrize("path", ["/etc/hostname", "../../../../etc/hostname", "artifacts/../../x"])
def test_mlmodel_artifact_paths_stay_in_the_model_folder(store, path: str) -> None:
    from rfdist.tracking.models import ModelIntegrityError

    mlmodel = store["folder"] / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("path: artifacts/spec.json", f"path: {path}"))
    for form in FORMS:
        with pytest.raises(ModelIntegrityError, match="leaves the model folder"):
            _load(store, form)


def test_dropping_the_preprocess_entry_from_mlmodel_is_refused(store) -> None:
    """Without it the loader would skip the standardisation: the record says it was there."""
    import yaml

    from rfdist.tracking.models import ModelIntegrityError

    mlmodel = store["folder"] / "MLmodel"
    data = yaml.safe_load(mlmodel.read_text())
    del data["flavors"]["python_function"]["artifacts"]["preprocess"]
    mlmodel.write_text(yaml.safe_dump(data))
    for form in FORMS:
        with pytest.raises(ModelIntegrityError, match=r"preprocess artifact recorded in .* is missing"):
            _load(store, form)


def test_other_uri_forms_are_refused_with_a_reason(store, tmp_path: Path) -> None:
    """A local folder has no record outside itself: nothing could vouch for its files."""
    from rfdist.tracking.models import ModelIntegrityError, load_flow

    with pytest.raises(ModelIntegrityError, match="only models:/ and runs:/ URIs can be verified"):
        load_flow(str(store["folder"]), tracking_uri=store["tracking"])


def test_a_run_without_a_digest_record_is_refused(store) -> None:
    """A runs:/ model logged before the run tag existed: refused, pointing at the registry."""
    import mlflow

    from rfdist.tracking.models import RUN_DIGEST_TAG, ModelIntegrityError

    mlflow.MlflowClient().delete_tag(store["run_id"], f"{RUN_DIGEST_TAG}{MODEL}")
    with pytest.raises(ModelIntegrityError, match=r"no sha256 record .* models:/NAME/VERSION"):
        _load(store, "run")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: {**d, "colour": "blue"}, "spec.json: unknown key 'colour'"),
        (lambda d: {**d, "flow_hidden": [10**9]}, "flow_hidden: 1000000000 is over the limit"),
        (lambda d: {**d, "data_shape": [10**6, 10**6]}, "data_dim: 1000000000000 is over the limit"),
        (lambda d: {**d, "flow_layers": "many"}, "flow_layers: expected a whole number"),
    ],
)
@pytest.mark.parametrize("form", ["version", "run"])
def test_a_recorded_but_unusable_spec_is_one_clear_error(store, form, change, expected) -> None:
    """Even a spec whose digest matches (a newer rfdist, a bad writer) is checked before allocation."""
    from rfdist.tracking.models import SPEC_DIGEST_KEY, ModelIntegrityError, file_digest

    path = store["folder"] / "artifacts" / "spec.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    _rerecord(store, form, SPEC_DIGEST_KEY, file_digest(path))
    with pytest.raises(ModelIntegrityError, match=expected.replace("[", r"\[")) as info:
        _load(store, form)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("form", ["version", "run"])
def test_a_pickled_state_is_one_clear_error(store, form: str) -> None:
    """A state.pt that needs unpickling code is refused by weights_only: one line, not a traceback."""
    import torch

    from rfdist.tracking.models import STATE_DIGEST_KEY, ModelIntegrityError, file_digest

    path = store["folder"] / "artifacts" / "state.pt"
    torch.save({"weights": torch.zeros(1), "extra": _Pickled()}, path)
    _rerecord(store, form, STATE_DIGEST_KEY, file_digest(path))
    with pytest.raises(ModelIntegrityError, match=r"state\.pt is not a plain weights file"):
        _load(store, form)


class _Pickled:
    """An object only full unpickling can rebuild (what weights_only refuses)."""


def test_the_cli_prints_one_line_for_an_unusable_model(store, tmp_path: Path) -> None:
    path = store["folder"] / "artifacts" / "spec.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "colour": "blue"}))
    from rfdist.tracking.models import SPEC_DIGEST_KEY, file_digest

    _rerecord(store, "run", SPEC_DIGEST_KEY, file_digest(path))
    result = CliRunner().invoke(
        app,
        ["eval", store["uris"]["run"], "--data", "synthetic:von-mises", "--tracking-uri", store["tracking"]],
    )
    assert result.exit_code in (1, 2)
    assert "unknown key 'colour'" in _error_line(result)


# ------------------------------------------------------------------------ serving
@pytest.fixture(scope="module")
def served(logged):
    import mlflow

    mlflow.set_registry_uri(logged["tracking"])
    mlflow.set_tracking_uri(logged["tracking"])
    return mlflow.pyfunc.load_model(logged["uris"]["version"])


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"output": "sample", "count": 10**9}, "params.count must be between 1 and 100000"),
        ({"output": "sample", "count": 0}, "params.count must be between 1 and 100000"),
        ({"space": "bogus"}, "params.space must be one of data, model, got 'bogus'"),
        ({"output": "everything"}, "params.output must be one of"),
        ({"seed": -1, "output": "sample"}, "params.seed must be between"),
    ],
)
def test_served_params_are_validated(served, params, expected) -> None:
    """Through MLflow's pyfunc (as ``mlflow models serve`` calls it): a 400-kind MlflowException."""
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=expected) as info:
        served.predict(np.zeros((1, 2), np.float32), params=params)
    assert info.value.get_http_status_code() == 400 and "stack_trace" not in info.value.json_kwargs


def test_unknown_params_are_refused_by_the_model(served) -> None:
    """MLflow drops params its signature does not name before calling the model; called directly
    (or by a server that passes them on) the model refuses them."""
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=r"unknown params \['ouput'\]"):
        served.unwrap_python_model().predict(None, np.zeros((1, 2), np.float32), params={"ouput": "latent"})


def test_the_count_bound_is_configurable(served, monkeypatch) -> None:
    from rfdist.config import SERVE_MAX_COUNT_ENV
    from rfdist.tracking.pyfunc import check_params, serve_max_count

    monkeypatch.setenv(SERVE_MAX_COUNT_ENV, "5")
    assert serve_max_count() == 5
    assert check_params({"output": "sample", "count": 5}, max_count=5)["count"] == 5
    with pytest.raises(Exception, match="between 1 and 5"):
        check_params({"output": "sample", "count": 6}, max_count=5)


def test_non_finite_results_are_json_null(served) -> None:
    """A NaN row's log_prob is ``null`` in the JSON MLflow writes (``NaN`` is not JSON)."""
    from io import StringIO

    from mlflow.pyfunc.scoring_server import predictions_to_json

    rows = np.array([[0.1, 0.2], [np.nan, 0.0]], np.float32)
    for output in ("log_prob", "latent"):
        out = StringIO()
        predictions_to_json(served.predict(rows, params={"output": output}), out)
        body = json.loads(out.getvalue(), parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
        first, second = body["predictions"]
        assert second is None or second == [None], body
        assert isinstance(first, float) or isinstance(first[0], float), body


def test_a_version_registered_after_logging_carries_the_digests(store) -> None:
    """The sweep registers its best trial's logged model afterwards: the version gets the record;
    a version registered by plain ``mlflow.register_model`` has none and is refused."""
    import mlflow

    from rfdist.tracking.models import ModelIntegrityError, load_flow, register_flow

    model_uri = store["uris"]["logged-model"]
    version = register_flow(model_uri, "sec-swept")
    load_flow(f"models:/sec-swept/{version}", tracking_uri=store["tracking"])
    _tamper(store["folder"], "state.pt")
    with pytest.raises(ModelIntegrityError, match=r"state\.pt does not match"):
        load_flow(f"models:/sec-swept/{version}", tracking_uri=store["tracking"])
    bare = mlflow.register_model(model_uri, "sec-bare").version
    with pytest.raises(ModelIntegrityError, match="no sha256 record"):
        load_flow(f"models:/sec-bare/{bare}", tracking_uri=store["tracking"])
