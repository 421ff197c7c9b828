"""The code location image's Python layer, built and started for real, without a Docker engine.

tests/test_deploy.py reads deploy/Dockerfile; this test runs it. It follows the file's own
instructions (so it tests the file, not a copy of it) with every absolute image path mapped into
a temporary folder, one folder per stage:

- COPY copies from the build context (the repository) exactly what the Dockerfile names, so a file
  missing from a COPY breaks the install here as it would in `docker build`;
- RUN runs the Python steps with the same Python (a fresh venv, `pip install --no-deps` of
  deploy/constraints.txt, then of the copied project, then `pip check`); the system steps (users,
  ownership, OS packages: the C compiler the package's extension needs) are not run;
- ENV and WORKDIR give the commands their environment and folder; CMD is started (on a free port on
  127.0.0.1) and must serve the definitions: the production workspace (deploy/workspace.yaml,
  pointed at that port) loads the code location over gRPC.

It also checks that the venv holds exactly the pinned set plus clicklake, with no test files and no
dev extras, and that the installed clicklake.definitions has the same assets as the source tree.
A Dockerfile instruction or RUN command it does not know fails the test, saying so.

Not covered: the base image itself (its OS packages), USER (the test runs as the current user;
test_deploy.py checks the image's user is not root) and file ownership.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PIP_TIMEOUT = 1200  # a cold pip cache downloads a few hundred MB
SERVER_START_TIMEOUT = 180


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        op, _, args = (pending + line).strip().partition(" ")
        out.append((op.upper(), args.strip()))
        pending = ""
    assert not pending, f"deploy/Dockerfile ends inside a continued line: {pending!r}"
    return out


class Image:
    """deploy/Dockerfile replayed in `tmp`: every stage's "/" is a folder of its own."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.args: dict[str, str] = {}
        self.stages: dict[str, Path] = {}
        self.root: Path | None = None
        self.workdir = "/"
        self.env: dict[str, str] = {}
        self.exposed: list[str] = []
        self.cmd: list[str] = []
        self.log: list[str] = []
        # The host's environment minus what would point the commands back at the repository or at
        # the test's own venv (the image has none of it).
        self.base_env = {k: v for k, v in os.environ.items()
                         if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DAGSTER_HOME")
                         and not k.startswith("CLICKLAKE_")}

    # ------------------------------------------------------------------ paths and environment

    def host(self, path: str, root: Path | None = None) -> Path:
        """Where the image path `path` (absolute, or relative to WORKDIR) is in this test."""
        full = os.path.normpath(os.path.join(self.workdir, path))
        return (root or self.root) / full.lstrip("/")

    def run_env(self, **extra: str) -> dict[str, str]:
        return {**self.base_env, **self.env, **extra}

    def _expand(self, value: str) -> str:
        # Absolute image paths in a path list (PATH=/opt/venv/bin:$PATH) are mapped, then
        # $VARS are expanded from the environment the image inherits.
        parts = [str(self.host(p)) if p.startswith("/") and not p.startswith("//") else p
                 for p in value.split(":")]
        env = self.run_env()
        return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], ""), ":".join(parts))

    # ------------------------------------------------------------------ instructions

    def build(self, instructions: list[tuple[str, str]]) -> None:
        for op, args in instructions:  # all understood, before anything runs
            if not hasattr(self, f"_{op.lower()}"):
                pytest.fail(f"deploy/Dockerfile has `{op} {args}`, an instruction "
                            f"tests/test_image_layer.py does not emulate: teach it what {op} "
                            "means for the image before relying on this test")
        for op, args in instructions:
            getattr(self, f"_{op.lower()}")(args)

    def _arg(self, args: str) -> None:
        name, _, default = args.partition("=")
        self.args.setdefault(name, default)

    def _from(self, args: str) -> None:
        words = args.split()
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: self.args[m[1]], words[0])
        m = re.match(r"(?:docker\.io/(?:library/)?)?python:(\d+)\.(\d+)", image)
        assert m, f"FROM {image}: not a python:X.Y image, which this test cannot stand in for"
        if (int(m[1]), int(m[2])) != sys.version_info[:2]:
            pytest.skip(f"the image is {image}; this test needs that Python, not "
                        f"{sys.version_info[0]}.{sys.version_info[1]}")
        self.root = self.tmp / f"stage{len(self.stages)}"
        self.root.mkdir()
        name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
        assert len(words) == 1 or name, f"FROM {args}: not understood"
        self.stages[name or str(len(self.stages))] = self.root
        self.workdir, self.env = "/", {}

    def _env(self, args: str) -> None:
        for pair in shlex.split(args):
            key, eq, value = pair.partition("=")
            assert eq, f"ENV {args}: only the KEY=value form is understood"
            self.env[key] = self._expand(value)
        # The Dockerfile turns pip's cache off (it would only bloat the layer). Here the cache only
        # saves downloads: pip still installs the same pinned files, so reruns keep it.
        self.env.pop("PIP_NO_CACHE_DIR", None)

    def _workdir(self, args: str) -> None:
        self.workdir = os.path.normpath(os.path.join(self.workdir, args))
        self.host(".").mkdir(parents=True, exist_ok=True)

    def _copy(self, args: str) -> None:
        words = shlex.split(args)
        flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
        *sources, dest = [w for w in words if not w.startswith("--")]
        assert sources and set(flags) <= {"from", "chown"}, f"COPY {args}: not understood"
        into_dir = dest.endswith("/") or len(sources) > 1
        for src in sources:
            if "from" in flags:
                origin = self.host(src, root=self.stages[flags["from"]])
                assert origin.is_dir() and src == dest, (
                    f"COPY {args}: only a folder copied to the same path from another stage is "
                    "emulated")
                # A venv holds its own absolute path; the image keeps the path, so a link keeps it.
                target = self.host(dest)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(origin, target_is_directory=True)
                continue
            origin = ROOT / src
            assert origin.exists(), f"COPY {args}: {src} is not in the build context"
            target = self.host(dest)
            if origin.is_dir():
                # As in the image, the folder's contents, minus the bytecode the test run itself
                # may be writing there (pip builds the package from the .py files either way)
                # and extensions built in place (.dockerignore keeps them out of the context).
                shutil.copytree(origin, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
            else:
                target = target / origin.name if into_dir else target
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)

    def _run(self, args: str) -> None:
        assert not re.search(r"[;|<>`]|\$\(|\|\|", args), (
            f"RUN {args}: only commands joined by && are understood")
        for command in args.split("&&"):
            argv = shlex.split(command)
            if argv[0] in ("groupadd", "useradd", "chown"):
                self.log.append(f"not run (users and ownership): {command.strip()}")
            elif argv[0] == "apt-get" or (argv[:2] == ["rm", "-rf"] and all(
                    a.startswith("/var/lib/apt/lists/") for a in argv[2:])):
                # The base image's OS packages (the C compiler): this machine has its own.
                self.log.append(f"not run (OS packages): {command.strip()}")
            elif argv[:2] == ["mkdir", "-p"]:
                for path in argv[2:]:
                    self.host(path).mkdir(parents=True, exist_ok=True)
            elif os.path.basename(argv[0]) in ("python", "python3", "pip", "pip3"):
                # `python` is the base image's interpreter: here the same version, the test's own.
                argv = [sys.executable if a in ("python", "python3") else
                        str(self.host(a)) if a.startswith("/") else a for a in argv]
                self.execute(argv, timeout=PIP_TIMEOUT)
            else:
                pytest.fail(f"deploy/Dockerfile runs `{command.strip()}`, a command "
                            "tests/test_image_layer.py does not know: teach it")

    def _user(self, args: str) -> None:
        self.log.append(f"not emulated: USER {args} (the test runs as the current user)")

    def _expose(self, args: str) -> None:
        self.exposed += args.split()

    def _cmd(self, args: str) -> None:
        assert args.startswith("["), f"CMD {args}: only the exec (JSON) form is understood"
        self.cmd = json.loads(args)

    # ------------------------------------------------------------------ commands in the image

    def execute(self, argv: list[str], timeout: float = 300,
                **extra_env: str) -> subprocess.CompletedProcess:
        """Run `argv` in the image's WORKDIR and environment; fail the test if it fails."""
        proc = subprocess.run(argv, cwd=self.host("."), env=self.run_env(**extra_env),
                              capture_output=True, text=True, timeout=timeout, check=False)
        self.log.append(f"$ {shlex.join(argv)} -> {proc.returncode}")
        if proc.returncode != 0:
            pytest.fail(f"`{shlex.join(argv)}` failed ({proc.returncode}) in the image's "
                        f"{self.workdir}:\n{_tail(proc.stdout)}\n{_tail(proc.stderr)}")
        return proc


def _tail(text: str, lines: int = 60) -> str:
    # pip's warnings about index locations it ignores can bury the error: drop them.
    kept = [line for line in text.splitlines() if "is ignored: it is neither" not in line]
    return "\n".join(kept[-lines:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pins() -> dict[str, str]:
    lines = (ROOT / "deploy" / "constraints.txt").read_text().splitlines()
    return {_norm(name): version for name, _, version in
            (line.partition("==") for line in lines if line and not line.startswith("#"))}


PROBE = """
import importlib.metadata as md, json
import dagster as dg
import clicklake, clicklake.definitions as d
from clicklake.platform import events, hashtables
assert isinstance(d.defs, dg.Definitions)
print(json.dumps({
    "clicklake": clicklake.__file__,
    "native": hashtables.NATIVE and events._plainjson is not None,
    "files": [str(f) for f in md.files("clicklake")],
    "readme": md.metadata("clicklake").get_payload(),
    "dists": {dist.metadata["Name"]: dist.version for dist in md.distributions()},
    "assets": sorted(k.to_user_string() for k in d.defs.resolve_all_asset_keys()),
}))
"""


def test_image_python_layer_installs_and_serves_the_definitions(tmp_path):
    started = time.monotonic()
    image = Image(tmp_path)
    image.build(_instructions(DOCKERFILE.read_text()))
    final = image.root

    # CMD finds `dagster` where the image's PATH says, in the venv the final stage copied.
    assert image.cmd[:3] == ["dagster", "code-server", "start"], image.cmd
    found = shutil.which(image.cmd[0], path=image.env.get("PATH"))
    assert found and Path(found).is_relative_to(final), (
        f"{image.cmd[0]} is not on the final stage's PATH ({found})")
    bin_dir = Path(found).parent
    python = str(bin_dir / "python")

    # The venv holds exactly the pinned set and clicklake (plus the venv's own pip/setuptools):
    # no dev extra, and clicklake.definitions imports without them, from site-packages.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    probe = json.loads(image.execute([python, "-c", PROBE]).stdout.splitlines()[-1])
    installed = {_norm(n): v for n, v in probe["dists"].items()
                 if _norm(n) not in ("pip", "setuptools", "wheel")}
    assert installed == {**_pins(), "clicklake": project["version"]}, {
        "not pinned": sorted(installed.keys() - _pins().keys() - {"clicklake"}),
        "missing": sorted(_pins().keys() - installed.keys()),
        "other version": sorted(n for n in installed.keys() & _pins().keys()
                                if installed[n] != _pins()[n])}
    # Of the dev extra, only the production instance's storage and run launcher belong there.
    dev = {_norm(re.split(r"[\[<>=!~; ]", r)[0]) for r in project["optional-dependencies"]["dev"]}
    assert dev & installed.keys() <= {"dagster-postgres", "dagster-aws"}, "a dev extra is in it"
    assert Path(probe["clicklake"]).is_relative_to(final), probe["clicklake"]
    assert "site-packages" in Path(probe["clicklake"]).parts, probe["clicklake"]
    # the C extensions built in the build stage (its compiler installed there) and copied along
    assert probe["native"], "clicklake.platform._hashkeys or _plainjson was not built into it"

    # setuptools builds without a missing readme file: the long description shows it was copied.
    assert probe["readme"].strip() == (ROOT / "README.md").read_text().strip(), (
        "the installed clicklake's description is not README.md: is it in the Dockerfile's COPY?")

    # The installed package is the code and nothing else: no tests, no other top-level package.
    for f in probe["files"]:
        parts = Path(f).parts
        assert parts[0] in ("clicklake", f"clicklake-{project['version']}.dist-info") or \
            f.endswith("bin/clicklake"), f"installed outside the package: {f}"
        name = parts[-1]
        assert not ({"tests", "test"} & set(parts) or name.startswith("test_")
                    or name == "conftest.py" or name.endswith("_test.py")), f"test file: {f}"

    from clicklake.definitions import defs

    assert probe["assets"] == sorted(k.to_user_string() for k in defs.resolve_all_asset_keys())

    # The image's command, on a free loopback port. DAGSTER_HOME: the image's own
    # (deploy/dagster.yaml) cannot load here, it needs the PostgreSQL and AWS variables and a
    # database, so the server and the client below get an empty instance folder instead (the code
    # server itself does not open the instance).
    port = _free_port()
    argv = list(image.cmd)
    argv[argv.index("-p") + 1] = str(port)
    argv[argv.index("-h") + 1] = "127.0.0.1"
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The production switch (docs/deploy.md); the AWS names are only read at run time.
    server_env = image.run_env(DAGSTER_HOME=str(home), CLICKLAKE_BACKEND="aws",
                               AWS_REGION="us-east-1")
    server_log = tmp_path / "code-server.log"
    with open(server_log, "w") as log:
        server = subprocess.Popen(argv, cwd=image.host("."), env=server_env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            assert server.poll() is None, f"the code server exited:\n{_tail(server_log.read_text())}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, (
                f"the code server did not listen within {SERVER_START_TIMEOUT} s:\n"
                f"{_tail(server_log.read_text())}")
            time.sleep(0.5)
        image.execute([str(bin_dir / "dagster"), "api", "grpc-health-check", "-p", str(port)],
                      DAGSTER_HOME=str(home))

        # The health check passes even when the module failed to load (the server then serves
        # the error), so the production workspace, pointed at this server, must load the location.
        workspace = yaml.safe_load(image.host("workspace.yaml").read_text())
        [entry] = workspace["load_from"]
        server_cfg = entry["grpc_server"]
        assert str(server_cfg["port"]) == image.cmd[image.cmd.index("-p") + 1]
        assert str(server_cfg["port"]) in image.exposed
        location = server_cfg["location_name"]
        assert location == image.cmd[image.cmd.index("--location-name") + 1]
        server_cfg["port"] = port
        local_ws = tmp_path / "workspace.yaml"
        local_ws.write_text(yaml.safe_dump(workspace))
        validate = image.execute(
            [str(bin_dir / "dagster"), "definitions", "validate", "-w", str(local_ws)],
            DAGSTER_HOME=str(home), CLICKLAKE_CODE_SERVER_HOST="127.0.0.1")
        assert f"Validation successful for code location {location}" in \
            validate.stdout + validate.stderr, _tail(validate.stdout + validate.stderr)
    finally:
        # The server and the process it starts for the definitions: one session, ended together.
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    print(f"image layer built and served in {time.monotonic() - started:.0f} s",
          *image.log, sep="\n")
