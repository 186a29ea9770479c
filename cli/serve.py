"""`loopgate serve`: the gateway under uvicorn (uvloop + httptools), optionally with simulators."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli._common import CliError, err_console, fail

if TYPE_CHECKING:
    from gateway.config import PoolConfig
    from gateway.settings import Settings
    from sim.profile import SimProfile


def _reveal(value: Any) -> Any:
    """model_dump with secrets written out, for the worker processes' config file."""
    from pydantic import SecretStr

    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_reveal(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_effective_config(settings: Settings, folder: Path) -> Path:
    """Write settings as YAML readable only by this user; workers load it."""
    import yaml

    path = folder / "effective-config.yaml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(_reveal(settings.model_dump(mode="python")), handle, sort_keys=False)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_sim(profile: SimProfile, served_model: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start `loopgate sim` with this profile on a free loopback port; wait for /health."""
    import urllib.request

    port = _free_port()
    cmd = [
        sys.executable, "-m", "cli", "sim",
        "--host", "127.0.0.1", "--port", str(port), "--model", served_model,
        "--style", profile.style, "--ttft", str(profile.ttft), "--itl", str(profile.itl),
        "--output-tokens", str(profile.output_tokens), "--error-rate", str(profile.error_rate),
        "--stall-rate", str(profile.stall_rate), "--seed", str(profile.seed),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"simulator for {served_model} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=0.5) as answer:
                if answer.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"simulator for {served_model} did not become healthy")


def _start_sims(settings: Settings) -> tuple[Settings, list[subprocess.Popen[bytes]]]:
    console = err_console()
    procs: list[subprocess.Popen[bytes]] = []
    pools: dict[str, PoolConfig] = {}
    try:
        for name, pool in settings.pools.items():
            if pool.sim is None:
                pools[name] = pool
                continue
            proc, url = start_sim(pool.sim, pool.served_model)
            procs.append(proc)
            pools[name] = pool.model_copy(update={"endpoints": [url]})
            console.print(
                f"[dim]simulated policy version[/] {name} [dim]({pool.sim.style}) at[/] {url}"
            )
    except BaseException:
        _stop(procs)
        raise
    return settings.model_copy(update={"pools": pools}), procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _shared_signing_key(settings: Settings) -> Settings:
    """Workers must verify each other's response ids: give them one key when none is set."""
    from pydantic import SecretStr

    if settings.ids.keys:
        return settings
    err_console().print(
        "[yellow]warning:[/] ids.keys is not configured: response ids are signed with a key "
        "made for this run; set LOOPGATE_IDS__KEYS so ids survive restarts and replicas"
    )
    ids = settings.ids.model_copy(update={"keys": [SecretStr(secrets.token_urlsafe(32))]})
    return settings.model_copy(update={"ids": ids})


def _multiprocess_metrics(settings: Settings, folder: Path) -> Settings:
    """A fresh prometheus-client multiprocess folder, in the environment before any worker.

    prometheus_client picks its value class when prometheus_client.values is imported, so
    the variable must be set before the (spawned) workers import it; Settings tells the
    app to aggregate at /metrics. Fresh per run: stale files would add old counts.
    """
    path = folder / "metrics"
    path.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    telemetry = settings.telemetry.model_copy(update={"multiprocess_dir": path})
    return settings.model_copy(update={"telemetry": telemetry})


def _banner(settings: Settings, host: str, port: int) -> None:
    console = err_console()
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    base = f"http://{shown}:{port}/v1"
    names = ", ".join(sorted(settings.models)) or "(none)"
    console.print(f"[bold green]Loopgate[/] serving on [bold]{base}[/]  models: {names}")
    console.print(
        f'[dim]Point the OpenAI SDK at it:[/] OpenAI(base_url="{base}", api_key="unused")',
        soft_wrap=True,
    )


def bind(host: str, port: int) -> socket.socket:
    """The listening address, bound before anything starts: a taken port is a clean error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CliError(
                f"{host}:{port} is already in use (another gateway?): stop it, or pick "
                "another with --port",
                code=2,
            ) from None
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", code=2) from None
    sock.set_inheritable(True)  # uvicorn's worker processes serve on it
    return sock


@contextlib.contextmanager
def steerable(settings: Settings) -> Iterator[Settings]:
    """For --simulate: a writable copy of embedded flags and a development admin token.

    The embedded flag file is part of the package and never written; the copy lives in a
    temporary folder for this run. The token is printed once, so that `loopgate flags` and
    `loopgate rollout` work at once; a configured token or admin_tokens are left as they are.
    """
    console = err_console()
    update: dict[str, Any] = {}
    flags = settings.flags
    with tempfile.TemporaryDirectory(prefix="loopgate-simulate-") as folder:
        if flags.source == "file" and flags.file_is_embedded():
            path = Path(folder) / "flags.yaml"
            shutil.copyfile(flags.flags_file(), path)
            path.chmod(0o600)
            flags = flags.model_copy(update={"path": path})
            console.print(
                f"[dim]flags: a writable copy of the embedded flags at[/] {path}", soft_wrap=True
            )
        token = None
        if flags.source != "none" and flags.admin_token is None and not settings.auth.admin_tokens:
            token = "lga-dev-" + secrets.token_urlsafe(18)
            flags = flags.model_copy(update={"admin_token": token})
        update["flags"] = flags
        if token is not None:
            console.print(
                "[yellow]development admin token[/] (this run only, admin role):",
                soft_wrap=True,
            )
            console.print(f"export LOOPGATE_ADMIN_TOKEN={token}", soft_wrap=True, markup=False)
        yield settings.model_copy(update=update)


def register(app: typer.Typer) -> None:
    """Add the serve command."""

    @app.command()
    def serve(
        config: Annotated[
            Path | None, typer.Option("--config", "-c", help="YAML config (default: embedded)")
        ] = None,
        host: Annotated[str | None, typer.Option(help="Listen address")] = None,
        port: Annotated[int | None, typer.Option(help="Listen port")] = None,
        workers: Annotated[int | None, typer.Option(help="Worker processes")] = None,
        simulate: Annotated[
            bool,
            typer.Option("--simulate", help="Start a simulator for each pool with a sim profile"),
        ] = False,
        log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
        access_log: Annotated[bool, typer.Option(help="Log every request")] = False,
    ) -> None:
        """Run the gateway. With --simulate: simulators, writable flags, a dev admin token."""
        from gateway.settings import ConfigError, load_settings

        try:
            settings = load_settings(config)
        except ConfigError as exc:
            raise fail(CliError(str(exc), code=2)) from exc
        server = settings.server.model_copy(
            update={
                k: v
                for k, v in {"host": host, "port": port, "workers": workers}.items()
                if v is not None
            }
        )
        settings = settings.model_copy(update={"server": server})
        try:
            sock = bind(server.host, server.port)
        except CliError as exc:
            raise fail(exc) from exc
        procs: list[subprocess.Popen[bytes]] = []
        # uvicorn drains on SIGTERM/SIGINT, restores the handlers it found, then re-raises the
        # signal: these handlers turn that into a clean exit 0 once the drain is done.
        signal.signal(signal.SIGTERM, _exit_cleanly)
        signal.signal(signal.SIGINT, _exit_cleanly)
        with contextlib.ExitStack() as stack:
            stack.callback(sock.close)
            stack.callback(_stop, procs)
            if simulate:
                settings = stack.enter_context(steerable(settings))
                settings, started = _start_sims(settings)
                procs.extend(started)
            _banner(settings, server.host, sock.getsockname()[1])
            _run(settings, sock, log_level, access_log)
        sys.exit(0)


def _run(settings: Settings, sock: socket.socket, log_level: str, access_log: bool) -> None:
    """uvicorn on the bound socket: one process, or `server.workers` under a supervisor."""
    server = settings.server
    common: dict[str, Any] = {
        "loop": "uvloop",
        # uvicorn's httptools protocol, sending one write per loop iteration
        "http": "gateway.http_server:CorkedHttpToolsProtocol",
        "log_level": log_level,
        "access_log": access_log,
        "proxy_headers": server.proxy_headers,
        "forwarded_allow_ips": server.forwarded_allow_ips,
        "server_header": False,  # no software banner on every answer
        "timeout_graceful_shutdown": math.ceil(server.drain_seconds),
    }
    if server.workers == 1:
        from gateway.app import create_server_app
        from gateway.shutdown import serve as serve_draining

        serve_draining(create_server_app(settings), server.unready_seconds, sock=sock, **common)
        return
    from gateway.app import CONFIG_ENV
    from gateway.shutdown import serve_workers

    settings = _shared_signing_key(settings)
    with tempfile.TemporaryDirectory(prefix="loopgate-") as folder:
        settings = _multiprocess_metrics(settings, Path(folder))
        flag = Path(folder) / "draining"  # the supervisor raises it on SIGTERM
        settings = settings.model_copy(
            update={"server": settings.server.model_copy(update={"drain_flag": flag})}
        )
        os.environ[CONFIG_ENV] = str(write_effective_config(settings, Path(folder)))
        serve_workers(
            "gateway.app:app_from_environment",
            server.workers,
            server.unready_seconds,
            flag,
            sock=sock,
            **common,
        )
