"""A local Ray head for ``rfdist submit``: loopback only, token auth on, stopped exactly.

    python cluster/local_head.py start [--state-dir DIR] [--num-cpus 4]   # or cluster/local-head.sh
    eval "$(python cluster/local_head.py env)"                             # RAY_AUTH_* + address
    rfdist submit train rfdist/presets/von-mises.yaml --wait
    python cluster/local_head.py stop

What it does, and why:

- **Loopback only.** ``ray start --node-ip-address=127.0.0.1`` alone is not enough: Ray maps a
  loopback node address to the machine's external IP, and then GCS, raylet and the agents
  listen on every interface. With ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the single-machine
  mode Ray uses on macOS/Windows) the node IP stays 127.0.0.1 and every gRPC/HTTP server of the
  head binds to loopback; the dashboard gets ``--dashboard-host=127.0.0.1``. The price: no other
  node can join this head — it is a laptop head, not a cluster (use ``cluster/*.yaml`` for that).
- **Token auth** (``RAY_AUTH_MODE=token``): the token lives in ``STATE_DIR/auth_token`` (mode
  600, generated when missing), handed to Ray by ``RAY_AUTH_TOKEN_PATH`` — the shared
  ``~/.ray/auth_token`` is neither read nor written. It is never printed.
- **Isolation**: free ports picked on 127.0.0.1, a private ``--temp-dir`` (Ray's session files
  and its ``ray_current_cluster`` pointer live there, so a plain ``ray.init()`` elsewhere does
  not find this head), ``--num-cpus`` as a logical budget.
- **Stopping exactly this head**: ``ray stop`` kills every Ray process of the user. ``stop``
  kills only the processes carrying this head's tag (``RFDIST_HEAD_ID`` in their environment,
  inherited by everything ``ray start`` spawns, or this head's temp dir / GCS address on their
  command line) and their descendants, then removes the temp dir.

State (``STATE_DIR/state.json``): head id, temp dir, ports, addresses, token file path.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

PORT_NAMES = (
    "gcs",
    "dashboard",
    "client_server",
    "node_manager",
    "object_manager",
    "dashboard_agent_listen",
    "dashboard_agent_grpc",
    "metrics_export",
    "runtime_env_agent",
)
HEAD_TAG = "RFDIST_HEAD_ID"


def default_state_dir() -> Path:
    return Path(os.environ.get("RFDIST_HEAD_DIR") or Path.cwd() / ".rfdist" / "head")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def ensure_token(path: Path) -> Path:
    """A random token in ``path`` (mode 600), created when missing; never printed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or not path.read_text().strip():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    path.chmod(0o600)
    return path


def ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.is_file() else shutil.which("ray")
    if not found:
        sys.exit("error: the `ray` command is not installed (pip install 'ray[default]')")
    return found


def _psutil():
    try:
        return importlib.import_module("psutil")
    except ImportError:  # Ray vendors psutil; importing ray puts it on sys.path
        import ray  # noqa: F401

        return importlib.import_module("psutil")


def head_processes(state: dict) -> list:
    """Live processes of this head: tagged or naming its temp dir / GCS address, and descendants."""
    psutil = _psutil()
    me = os.getpid()
    markers = [state["temp_dir"], state["gcs_address"]]
    roots = {}
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid == me:
            continue
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            try:
                tagged = proc.environ().get(HEAD_TAG) == state["head_id"]
            except psutil.Error:
                tagged = False
            if tagged or any(marker in cmdline for marker in markers):
                roots[proc.pid] = proc
        except psutil.Error:
            continue
    found = dict(roots)
    for proc in roots.values():
        try:
            found.update({child.pid: child for child in proc.children(recursive=True)})
        except psutil.Error:
            continue
    found.pop(me, None)
    return list(found.values())


def _read_state(state_dir: Path) -> dict | None:
    path = state_dir / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _wait_for_jobs_api(url: str, token: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(1)
    raise TimeoutError(f"the Jobs API at {url} did not answer within {timeout:.0f}s ({last})")


def start(args: argparse.Namespace) -> int:
    state_dir = args.state_dir.resolve()
    state = _read_state(state_dir)
    if state and head_processes(state):
        print(
            f"error: a head from {state_dir} is already running ({state['dashboard_url']}); stop it first",
            file=sys.stderr,
        )
        return 2
    state_dir.mkdir(parents=True, exist_ok=True)
    ray = ray_executable()
    token_file = ensure_token(
        Path(args.token_file).resolve() if args.token_file else state_dir / "auth_token"
    )
    # Short path: Ray's unix sockets live under the temp dir (108-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="rfdist-ray-")
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))
    head_id = uuid.uuid4().hex
    state = {
        "head_id": head_id,
        "temp_dir": temp_dir,
        "token_file": str(token_file),
        "ports": ports,
        "gcs_address": f"127.0.0.1:{ports['gcs']}",
        "dashboard_url": f"http://127.0.0.1:{ports['dashboard']}",
        "num_cpus": args.num_cpus,
        "started_at": time.time(),
    }
    env = dict(os.environ)
    for name in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(name, None)
    env.update(
        {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_file),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep the node IP on loopback (see module doc)
            "RAY_USAGE_STATS_ENABLED": "0",
            HEAD_TAG: head_id,
            # Job entrypoints say `python`: make it this interpreter.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    command = [
        ray,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--port={ports['gcs']}",
        f"--dashboard-port={ports['dashboard']}",
        f"--ray-client-server-port={ports['client_server']}",
        f"--node-manager-port={ports['node_manager']}",
        f"--object-manager-port={ports['object_manager']}",
        f"--dashboard-agent-listen-port={ports['dashboard_agent_listen']}",
        f"--dashboard-agent-grpc-port={ports['dashboard_agent_grpc']}",
        f"--metrics-export-port={ports['metrics_export']}",
        f"--runtime-env-agent-port={ports['runtime_env_agent']}",
        f"--num-cpus={args.num_cpus}",
        f"--object-store-memory={args.object_store_mb * 1024**2}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    # Written first, so that `stop` can clean up even after a failed start.
    (state_dir / "state.json").write_text(json.dumps(state, indent=2))
    log = state_dir / "start.log"
    began = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=args.timeout)
    if done.returncode != 0:
        print(f"error: `ray start` failed (exit {done.returncode}); see {log}", file=sys.stderr)
        stop_head(state_dir, keep_logs=True)
        return 1
    try:
        _wait_for_jobs_api(state["dashboard_url"], token_file.read_text().strip(), args.timeout)
    except TimeoutError as exc:
        print(f"error: {exc}; logs in {temp_dir}/session_latest/logs", file=sys.stderr)
        stop_head(state_dir, keep_logs=True)
        return 1
    state["start_seconds"] = round(time.monotonic() - began, 1)
    (state_dir / "state.json").write_text(json.dumps(state, indent=2))
    print(f"head       {state['gcs_address']}  (ray.init / rfdist train --address)")
    print(f"dashboard  {state['dashboard_url']}  (Jobs API, token auth on; loopback only)")
    print(f"token      {token_file}  (mode 600)")
    print(f"started in {state['start_seconds']}s; logs in {temp_dir}/session_latest/logs")
    print(f'use it:    eval "$({Path(sys.argv[0]).name} env --state-dir {state_dir})"')
    print(f"stop it:   {Path(sys.argv[0]).name} stop --state-dir {state_dir}")
    return 0


def stop_head(state_dir: Path, *, keep_logs: bool = False, timeout: float = 10.0) -> int:
    """Terminate this head's processes (then kill stragglers); return how many there were."""
    psutil = _psutil()
    state = _read_state(state_dir)
    if state is None:
        return 0
    procs = head_processes(state)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    # Workers spawned while we were stopping.
    for proc in head_processes(state):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if not keep_logs:
        shutil.rmtree(state["temp_dir"], ignore_errors=True)
    (state_dir / "state.json").unlink(missing_ok=True)
    return len(procs)


def stop(args: argparse.Namespace) -> int:
    state_dir = args.state_dir.resolve()
    if _read_state(state_dir) is None:
        print(f"no head recorded in {state_dir}")
        return 0
    count = stop_head(state_dir, keep_logs=args.keep_logs)
    print(f"stopped the head from {state_dir} ({count} processes)")
    return 0


def status(args: argparse.Namespace) -> int:
    state = _read_state(args.state_dir.resolve())
    if state is None:
        print(json.dumps({"running": False}) if args.json else "no head recorded")
        return 1
    procs = head_processes(state)
    if args.json:
        print(json.dumps({**state, "running": bool(procs), "pids": sorted(p.pid for p in procs)}))
    else:
        print(f"{'running' if procs else 'stopped'}: {state['dashboard_url']} ({len(procs)} processes)")
    return 0 if procs else 1


def env(args: argparse.Namespace) -> int:
    state = _read_state(args.state_dir.resolve())
    if state is None:
        print(f"error: no head recorded in {args.state_dir}", file=sys.stderr)
        return 1
    print("export RAY_AUTH_MODE=token")
    print(f"export RAY_AUTH_TOKEN_PATH={state['token_file']}")
    print(f"export RAY_API_SERVER_ADDRESS={state['dashboard_url']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in (("start", start), ("stop", stop), ("status", status), ("env", env)):
        cmd = sub.add_parser(name)
        cmd.set_defaults(fn=fn)
        cmd.add_argument(
            "--state-dir",
            type=Path,
            default=default_state_dir(),
            help="where state.json and the token live (default: $RFDIST_HEAD_DIR or ./.rfdist/head)",
        )
    start_cmd = sub.choices["start"]
    start_cmd.add_argument("--num-cpus", type=int, default=4, help="logical CPUs (default 4)")
    start_cmd.add_argument("--object-store-mb", type=int, default=512)
    start_cmd.add_argument("--token-file", help="use this token file instead of STATE_DIR/auth_token")
    start_cmd.add_argument("--timeout", type=float, default=180.0)
    sub.choices["stop"].add_argument("--keep-logs", action="store_true")
    sub.choices["status"].add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
