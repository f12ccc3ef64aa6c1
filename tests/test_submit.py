"""``rfdist submit`` / ``rfdist jobs``: job building (fast) and a real token-auth head (slow).

The slow tests start their own head with ``cluster/local_head.py`` (127.0.0.1, free ports, a
private temp dir, token auth on), drive the real ``rfdist`` CLI in subprocesses against it and
stop exactly that head at the end, checking that its processes are gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rfdist.cli.main import app
from rfdist.recipes.submit import (
    INLINE_CONFIG_ENV,
    Redactor,
    SubmitError,
    build_job,
    is_loopback,
    is_uploaded,
    job_argv,
    job_env,
    resolve_address,
)

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "rfdist" / "presets" / "von-mises.yaml"
HEAD_SCRIPT = ROOT / "cluster" / "local_head.py"
SECRET = "AKIAVERYSECRETVALUE123"


# ------------------------------------------------------------------------------- fast
def test_job_env_forwards_the_allow_list_and_credentials_only_on_request(tmp_path: Path) -> None:
    environ = {
        "MLFLOW_TRACKING_URI": "sqlite:///rel/mlflow.db",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": SECRET,
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-s3cr3t-s3cr3t",
        "RAY_AUTH_TOKEN": "ray-token-ray-token",
        "HOME": "/home/x",
        "PATH": "/usr/bin",
    }
    env = job_env(environ)
    assert set(env) == {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"}
    assert env["MLFLOW_TRACKING_URI"].startswith("sqlite:////")  # made absolute
    with_creds = job_env(environ, forward_credentials=True)
    assert with_creds["AWS_ACCESS_KEY_ID"] == SECRET and "AWS_SECRET_ACCESS_KEY" in with_creds
    assert "RAY_AUTH_TOKEN" not in with_creds  # the cluster has its own token


def test_redactor_hides_secret_values_and_url_passwords() -> None:
    redact = Redactor({"AWS_SECRET_ACCESS_KEY": SECRET, "RAY_AUTH_TOKEN": "tok-tok-tok-tok"})
    text = redact(f"key={SECRET} token tok-tok-tok-tok uri=http://bob:pw@mlflow:5000/x")
    assert SECRET not in text and "tok-tok-tok-tok" not in text and "pw@" not in text
    assert "http://***@mlflow:5000/x" in text


def test_train_job_runs_the_entry_point_with_the_config_relative_to_the_project() -> None:
    spec = build_job(
        "train",
        str(PRESET),
        overrides=["train.max_steps=10"],
        address="http://127.0.0.1:8265",
        working_dir=ROOT,
        environ={"AWS_ACCESS_KEY_ID": SECRET},
    )
    assert spec.entrypoint.startswith(
        "python jobs/train.py rfdist/presets/von-mises.yaml --set train.max_steps=10"
    )
    assert spec.runtime_env["working_dir"] == str(ROOT)
    assert "pip" not in spec.runtime_env
    # storage.path defaults to the relative "runs": pinned so the job does not write into its
    # temporary copy of the project.
    assert f"storage.path={Path.cwd().resolve() / 'runs'}" in spec.entrypoint
    assert (
        SECRET not in json.dumps(spec.runtime_env) and INLINE_CONFIG_ENV not in spec.runtime_env["env_vars"]
    )
    assert spec.submission_id.startswith("rfdist-train-von-mises-")
    # No tracking configured anywhere: this folder's mlflow.db, as `rfdist train` would use.
    assert (
        spec.runtime_env["env_vars"]["MLFLOW_TRACKING_URI"]
        == f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    )
    remote = build_job("train", str(PRESET), working_dir=ROOT, address="http://10.0.0.5:8265", environ={})
    assert any("MLflow server" in note for note in remote.notes) and any("s3://" in n for n in remote.notes)
    served = build_job(
        "train", str(PRESET), overrides=["tracking.uri=http://mlflow:5000", "storage.path=s3://b/runs",
        "data.synthetic=null", "data.path=s3://b/vm"], working_dir=ROOT, address="http://10.0.0.5:8265", environ={},
    )  # fmt: skip
    assert served.notes == [] and "MLFLOW_TRACKING_URI" not in served.runtime_env["env_vars"]
    deps = build_job("train", str(PRESET), working_dir=ROOT, install_deps=True, address="http://127.0.0.1:1")
    assert any(dep.startswith("ray[") for dep in deps.runtime_env["pip"])


def _fake_project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "jobs").mkdir(parents=True)
    (root / "rfdist").mkdir()
    (root / "jobs" / "train.py").write_text("")
    (root / ".gitignore").write_text("/private/\n")
    for folder in ("conf", "private"):
        (root / folder).mkdir()
        (root / folder / "vm.yaml").write_text(PRESET.read_text())
    return root


def test_configs_outside_the_upload_travel_inline(tmp_path: Path) -> None:
    root = _fake_project(tmp_path)
    inside = build_job("train", str(root / "conf" / "vm.yaml"), working_dir=root, address="127.0.0.1:1")
    assert inside.entrypoint.startswith("python jobs/train.py conf/vm.yaml")
    for config in (root / "private" / "vm.yaml", tmp_path / "elsewhere.yaml"):  # ignored; outside
        if not config.exists():
            config.write_text(PRESET.read_text())
        spec = build_job("train", str(config), working_dir=root, address="127.0.0.1:1")
        assert spec.entrypoint.startswith(f"python jobs/train.py @inline:{config.name}")
        env = spec.runtime_env["env_vars"]
        assert env[INLINE_CONFIG_ENV] == PRESET.read_text()
        # Inside the job, the argument becomes a file with the same text and name.
        argv = job_argv([f"@inline:{config.name}", "--set", "a=b"], environ=env)
        assert Path(argv[0]).name == config.name and Path(argv[0]).read_text() == PRESET.read_text()
        assert argv[1:] == ["--set", "a=b"]


def test_eval_job_takes_a_model_uri_and_passes_extra_arguments() -> None:
    spec = build_job(
        "eval",
        "models:/vm@champion",
        extra_args=["--data", "s3://b/vm", "--ood-data", "s3://b/sphere"],
        working_dir=ROOT,
        address="http://127.0.0.1:8265",
    )
    assert (
        spec.entrypoint
        == "python jobs/evaluate.py models:/vm@champion --data s3://b/vm --ood-data s3://b/sphere"
    )
    sweep = build_job("sweep", str(PRESET), working_dir=ROOT, address="http://127.0.0.1:8265")
    assert sweep.entrypoint.startswith("python jobs/sweep.py rfdist/presets/von-mises.yaml")
    with pytest.raises(SubmitError, match="unknown job kind"):
        build_job("serve", str(PRESET), working_dir=ROOT)


def test_cli_rejects_a_bad_config_before_contacting_the_cluster() -> None:
    result = CliRunner().invoke(
        app,
        [
            "submit",
            "train",
            str(PRESET),
            "--address",
            "http://127.0.0.1:9",
            "--set",
            "estimator.num_samples=0",
        ],
    )
    assert result.exit_code == 2
    assert "error: " in result.output and "estimator.num_samples" in result.output
    assert "Traceback" not in result.output


def test_addresses() -> None:
    assert resolve_address(None, {"RAY_API_SERVER_ADDRESS": "127.0.0.1:8265"}) == "http://127.0.0.1:8265"
    assert resolve_address(None, {"RAY_ADDRESS": "http://h:8265/"}) == "http://h:8265"
    with pytest.raises(SubmitError, match="--address"):
        resolve_address(None, {"RAY_ADDRESS": "10.0.0.1:6379"})  # a GCS address is not the Jobs API
    assert is_loopback("http://127.0.0.1:8265") and is_loopback("localhost:8265")
    assert not is_loopback("http://10.1.2.3:8265")


def test_the_upload_leaves_data_runs_and_environments_home(tmp_path: Path) -> None:
    from ray._private.runtime_env.packaging import create_package

    package = tmp_path / "pkg.zip"
    create_package(str(ROOT), package, include_gitignore=True)
    names = zipfile.ZipFile(package).namelist()
    assert (
        "jobs/train.py" in names and "rfdist/recipes/submit.py" in names and "cluster/local_head.py" in names
    )
    banned = (".venv/", "runs/", ".rfdist/", "mlruns/", "data/", ".git/")
    assert not [n for n in names if n.startswith(banned) or n.endswith((".db", ".parquet"))]
    assert package.stat().st_size < 5 * 1024**2


def test_is_uploaded_agrees_with_rays_own_upload(tmp_path: Path) -> None:
    """rfdist's public-library mirror of Ray's ignore rules picks the same files Ray zips."""
    from ray._private.runtime_env.packaging import create_package  # the reference, in the test only

    root = _fake_project(tmp_path)
    (root / "conf" / ".rayignore").write_text("*.tmp\nsecret*\n")
    (root / ".gitignore").write_text("/private/\n*.log\nbuild/\n")
    for name in ("conf/a.tmp", "conf/keep.yaml", "conf/secret.yaml", "x.log", "build/y.yaml", "sub/build/z"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")
    package = tmp_path / "pkg.zip"
    create_package(str(root), package, include_gitignore=True)
    zipped = {n for n in zipfile.ZipFile(package).namelist() if not n.endswith("/")}
    files = [p for p in root.rglob("*") if p.is_file() and p.name not in (".gitignore", ".rayignore")]
    verdicts = {str(p.relative_to(root)): is_uploaded(p, root) for p in files}
    assert verdicts == {name: name in zipped for name in verdicts}
    assert not verdicts["private/vm.yaml"] and verdicts["conf/keep.yaml"] and not verdicts["sub/build/z"]


# ------------------------------------------------------------------------------- slow
def _psutil():
    import importlib

    import ray  # noqa: F401  (Ray vendors psutil and puts it on sys.path)

    return importlib.import_module("psutil")


def _cli_env(tmp: Path, *, token_file: str | None) -> dict[str, str]:
    """The CLI's environment: this checkout first, an empty HOME (no ~/.ray/auth_token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH_", "RAY_ADDRESS", "MLFLOW_"))}
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    if token_file:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_file)
    return env


def _rfdist(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rfdist.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A real `ray start --head` on 127.0.0.1 with token auth; stopped (only it) afterwards."""
    state_dir = tmp_path_factory.mktemp("head")
    script = [sys.executable, str(HEAD_SCRIPT)]
    started = subprocess.run(
        [*script, "start", "--state-dir", str(state_dir), "--num-cpus", "4", "--timeout", "240"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    state_file = state_dir / "state.json"
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        state = json.loads(state_file.read_text())
        assert (Path(state["token_file"]).stat().st_mode & 0o777) == 0o600
        token = Path(state["token_file"]).read_text().strip()
        assert token not in started.stdout + started.stderr  # never printed
        yield {**state, "state_dir": state_dir, "tmp": tmp_path_factory.mktemp("cli")}
    finally:
        status = subprocess.run(
            [*script, "status", "--json", "--state-dir", str(state_dir)], capture_output=True, text=True
        )
        pids = json.loads(status.stdout or "{}").get("pids", [])
        stopped = subprocess.run(
            [*script, "stop", "--state-dir", str(state_dir)], capture_output=True, text=True
        )
        assert stopped.returncode == 0, stopped.stderr
        psutil = _psutil()
        alive = [
            p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        assert not alive, f"head processes still alive after stop: {alive}"


@pytest.mark.slow
def test_the_head_listens_on_loopback_only(head) -> None:
    psutil = _psutil()
    sys.path.insert(0, str(HEAD_SCRIPT.parent))
    try:
        import local_head
    finally:
        sys.path.pop(0)
    listening = []
    for proc in local_head.head_processes(head):
        try:
            listening += [
                (proc.name(), c.laddr) for c in proc.net_connections("inet") if c.status == "LISTEN"
            ]
        except psutil.Error:
            continue
    ports = {addr.port for _, addr in listening}
    assert head["ports"]["dashboard"] in ports and head["ports"]["gcs"] in ports
    exposed = [
        (name, addr) for name, addr in listening if addr.ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")
    ]
    assert not exposed, f"non-loopback listeners: {exposed}"


@pytest.mark.slow
def test_submitting_without_the_token_is_refused(head) -> None:
    address = head["dashboard_url"]
    no_token = _rfdist(
        ["submit", "train", str(PRESET), "--address", address], _cli_env(head["tmp"], token_file=None)
    )
    assert no_token.returncode == 2
    assert no_token.stderr.strip().splitlines()[-1] == (
        f"error: the Ray cluster at {address} requires a token: set RAY_AUTH_MODE=token and "
        "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token)"
    )
    wrong = head["tmp"] / "wrong_token"
    wrong.write_text(uuid.uuid4().hex)
    refused = _rfdist(["jobs", "list", "--address", address], _cli_env(head["tmp"], token_file=str(wrong)))
    assert refused.returncode == 2 and "refused the token" in refused.stderr
    assert wrong.read_text() not in refused.stdout + refused.stderr
    allowed = _rfdist(
        ["jobs", "list", "--address", address], _cli_env(head["tmp"], token_file=head["token_file"])
    )
    assert allowed.returncode == 0, allowed.stderr


@pytest.mark.slow
def test_the_address_option_wins_over_the_variable_on_a_real_head(head) -> None:
    """``RAY_API_SERVER_ADDRESS`` names a dead port; ``--address`` the head: the head answers and
    the command prints the address it used (the reverse case is in tests/test_security.py)."""
    address = head["dashboard_url"]
    env = {
        **_cli_env(head["tmp"], token_file=head["token_file"]),
        "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:9",
    }
    listed = _rfdist(["jobs", "list", "--address", address], env)
    assert listed.returncode == 0, listed.stderr
    assert f"cluster: {address.rstrip('/')}" in listed.stderr.splitlines()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_submit_train_succeeds_and_registers_the_model(head, tmp_path: Path) -> None:
    import mlflow
    import torch

    from rfdist.tracking.models import load_model

    name = f"vm-job-{uuid.uuid4().hex[:6]}"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = _cli_env(head["tmp"], token_file=head["token_file"])
    env["AWS_SECRET_ACCESS_KEY"] = SECRET  # must not reach the job or the output
    job_id = f"{name}-train"
    result = _rfdist(
        [
            "submit", "train", str(PRESET), "--address", head["dashboard_url"], "--wait", "--job-id", job_id,
            "--set", f"name={name}", "--set", f"registry.name={name}",
            # a 100-step job (what the console must stay quiet over) with small batches and splits
            "--set", "scaling.num_workers=1", "--set", "train.max_steps=100", "--set", "train.batch_size=8",
            "--set", "train.checkpoint_every=50", "--set", "train.log_every=50",
            "--set", "data.train_rows=400", "--set", "data.test_rows=200",
            "--set", f"storage.path={tmp_path / 'runs'}", "--set", f"tracking.uri={tracking}",
        ],
        env,
        timeout=1100,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f"job {job_id} SUCCEEDED" in result.stdout
    assert SECRET not in output and "AWS_SECRET_ACCESS_KEY" not in output
    # one quiet console: rfdist's lines, none of Ray Data's progress bars (cursor escapes, blank
    # lines), Ray's INFO lines, colours, or MLflow's own words about the registration
    lines = output.splitlines()
    assert len(lines) <= 30, f"{len(lines)} lines:\n{output[-6000:]}"
    for noise in ("\x1b", "Successfully registered model", "Created version", " INFO ", "Running Dataset"):
        assert noise not in output, (noise, output[-6000:])
    assert output.count("[rfdist] step 100/100") == 1 and output.count("registered model") <= 1, output

    client = mlflow.MlflowClient(tracking, registry_uri=tracking)  # not the process-wide registry
    experiment = client.get_experiment_by_name("rfdist")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["scaling.num_workers"] == "1" and run.data.params["train.max_steps"] == "100"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/nll")] == [50, 100]
    versions = client.search_model_versions(f"name = '{name}'")
    assert [str(v.version) for v in versions] == ["1"] and versions[0].run_id == run.info.run_id
    model = load_model(f"models:/{name}@latest", tracking_uri=tracking)
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))).all()
    assert model.sample(5).shape == (5, 2)
    assert any((tmp_path / "runs" / name).glob("checkpoint_*/state.pt"))

    logs = _rfdist(["jobs", "logs", job_id, "--address", head["dashboard_url"]], env)
    assert logs.returncode == 0 and len(logs.stdout.splitlines()) <= 30, logs.stdout[-6000:]
    assert "\x1b" not in logs.stdout and "[rfdist] step 100/100" in logs.stdout, logs.stdout[-6000:]

    listed = _rfdist(["jobs", "list", "--address", head["dashboard_url"]], env)
    assert listed.returncode == 0 and any(
        line.startswith(f"{job_id}  SUCCEEDED") for line in listed.stdout.splitlines()
    ), listed.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_bad_config_fails_on_the_cluster_with_its_error_in_the_logs(head, tmp_path: Path) -> None:
    env = _cli_env(head["tmp"], token_file=head["token_file"])
    job_id = f"bad-config-{uuid.uuid4().hex[:6]}"
    outside = tmp_path / "outside.yaml"  # not in the uploaded project: travels inline
    outside.write_text(PRESET.read_text())
    result = _rfdist(
        [
            "submit", "train", str(outside), "--address", head["dashboard_url"], "--wait", "--no-validate",
            "--job-id", job_id, "--set", "estimator.num_samples=0",
        ],
        env,
        timeout=500,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"job {job_id} FAILED" in result.stdout
    assert (
        "entrypoint  python jobs/train.py @inline:outside.yaml --set estimator.num_samples=0" in result.stdout
    )
    logs = _rfdist(["jobs", "logs", job_id, "--address", head["dashboard_url"]], env)
    assert logs.returncode == 0, logs.stderr
    errors = [line for line in logs.stdout.splitlines() if line.startswith("error: ")]
    assert errors and "estimator.num_samples" in errors[-1], logs.stdout[-3000:]
    assert "outside.yaml" in errors[-1]  # the inline config came back under its own name
    assert "Traceback" not in logs.stdout
    followed = _rfdist(["jobs", "logs", job_id, "--follow", "--address", head["dashboard_url"]], env)
    assert followed.returncode == 1 and f"job {job_id} FAILED" in followed.stdout
    status = _rfdist(["jobs", "status", job_id, "--address", head["dashboard_url"]], env)
    assert status.returncode == 1 and status.stdout.strip() == "FAILED"
    stop = _rfdist(["jobs", "stop", job_id, "--address", head["dashboard_url"]], env)
    assert stop.returncode == 0 and "was not running" in stop.stdout
