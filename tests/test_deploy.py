"""deploy/: Kubernetes manifests against the bundled Kubernetes schemas (offline), their cross-references,
the Cloud Run service's settings, and a strict lint of the Dockerfile. No cluster, no Docker engine."""

from __future__ import annotations

import io

import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from phonebridge.server.config import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S_VERSION = "1.30.0"  # the oldest minor we support; newer schemas accept these too
MANIFESTS = ("deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml", "ingress.yaml")


def load(path: Path) -> dict[str, Any]:
    (doc,) = list(yaml.safe_load_all(path.read_text()))
    assert isinstance(doc, dict)
    return doc


def k8s(name: str) -> dict[str, Any]:
    return load(DEPLOY / "k8s" / name)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(c, dict)
    return c


def env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


# -- Kubernetes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_is_valid_against_the_kubernetes_schema(name: str) -> None:
    kubernetes_validate.validate(k8s(name), K8S_VERSION, strict=True)


def test_the_schema_check_rejects_a_misspelt_field() -> None:
    broken = copy.deepcopy(k8s("deployment.yaml"))
    c = container(broken)
    c["readinesProbe"] = c.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    assert sorted(load(DEPLOY / "k8s" / "kustomization.yaml")["resources"]) == sorted(MANIFESTS)


def test_grace_period_covers_prestop_plus_the_drain_timeout() -> None:
    deployment = k8s("deployment.yaml")
    c = container(deployment)
    drain = Settings.from_env(env(c)).drain_timeout_s  # the value the server will actually read
    prestop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[0] == "sleep"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert drain == 3600.0
    assert drain + int(prestop[1]) < grace <= drain + int(prestop[1]) + 60


def test_probes_and_service_point_at_the_server() -> None:
    deployment, service = k8s("deployment.yaml"), k8s("service.yaml")
    c = container(deployment)
    assert c["ports"] == [{"name": "http", "containerPort": 8080}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["args"] == ["serve", "--agent", "/app/agent.py", "--workers", "1"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert k8s("pdb.yaml")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = k8s("hpa.yaml")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_pod_runs_as_non_root_with_secrets_from_a_secret() -> None:
    deployment = k8s("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    c = container(deployment)
    secret_envs = {e["name"] for e in c["env"] if "valueFrom" in e}
    assert secret_envs == {"TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "GEMINI_API_KEY"}
    Settings.from_env({**env(c), "TWILIO_AUTH_TOKEN": "t"}).check()  # the plain values are a valid config


# -- Cloud Run ----------------------------------------------------------------------------------------------

def test_cloud_run_service_has_what_phone_calls_need() -> None:
    service = load(DEPLOY / "cloudrun" / "service.yaml")
    assert (service["apiVersion"], service["kind"]) == ("serving.knative.dev/v1", "Service")
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert int(annotations["autoscaling.knative.dev/minScale"]) >= 1
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"
    assert annotations["run.googleapis.com/sessionAffinity"] == "true"
    assert template["spec"]["timeoutSeconds"] == 3600
    (c,) = template["spec"]["containers"]
    assert c["ports"] == [{"name": "http1", "containerPort": 8080}]
    # Cloud Run kills an instance 10 s after SIGTERM: the drain must fit.
    assert Settings.from_env(env(c)).drain_timeout_s < 10
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    # As many calls routed to an instance as it takes: fewer idles it, more hear the busy message.
    assert template["spec"]["containerConcurrency"] == Settings.from_env(env(c)).max_calls
    assert "PHONEBRIDGE_MAX_CALLS" in env(c)  # set, not the default 200 by accident
    assert Settings.from_env(env(container(k8s("deployment.yaml")))).max_calls == Settings.from_env(env(c)).max_calls


def test_cloud_run_secrets_are_created_granted_and_the_service_is_publicly_invokable_in_the_readme() -> None:
    """deploy/README.md's commands and service.yaml name the same secrets, account, image and service."""
    service = load(DEPLOY / "cloudrun" / "service.yaml")
    spec = service["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if "valueFrom" in e}
    assert secrets == {"twilio-auth-token", "gemini-api-key"}
    text = (DEPLOY / "README.md").read_text()
    for name in secrets:
        assert f"gcloud secrets create {name} " in text
    assert "for s in twilio-auth-token gemini-api-key; do" in text
    assert "--role=roles/secretmanager.secretAccessor" in text
    assert f"--member=serviceAccount:{spec['serviceAccountName']}" in text
    name = service["metadata"]["name"]
    assert f"gcloud run services add-iam-policy-binding {name} " in text
    assert "--member=allUsers --role=roles/run.invoker" in text
    image = c["image"]
    assert f"docker push {image}" in text
    build = load(DEPLOY / "cloudbuild.yaml")
    (step,) = build["steps"]
    pushed = build["images"][0].replace("${_REGION}", "REGION").replace("$PROJECT_ID", "PROJECT")
    assert pushed == image and "deploy/Dockerfile" in step["args"]
    assert (DEPLOY.parent / build["substitutions"]["_AGENT"]).is_file()
    assert (DEPLOY.parent / build["substitutions"]["_REQUIREMENTS"]).is_file()


# -- the Ingress ------------------------------------------------------------------------------------------

def test_the_ingress_keeps_a_call_up_for_an_hour_and_reaches_the_service() -> None:
    ingress, service = k8s("ingress.yaml"), k8s("service.yaml")
    annotations = ingress["metadata"]["annotations"]
    cloud_run = load(DEPLOY / "cloudrun" / "service.yaml")["spec"]["template"]["spec"]["timeoutSeconds"]
    nginx = dict(nginx_block(NGINX_CONF.read_text(), "location /twilio/"))
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        value = int(annotations[f"nginx.ingress.kubernetes.io/{name}"])
        assert value == cloud_run == seconds(nginx[name.replace("-", "_")]) == 3600
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    public = Settings.from_env(env(container(k8s("deployment.yaml")))).public_url or ""
    assert rule["host"] == public.removeprefix("https://") and ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/twilio/", "Prefix")  # /metrics and /readyz stay inside
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


# -- Dockerfile ---------------------------------------------------------------------------------------------

INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER", "WORKDIR",
    "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}


def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(fileobj=(DEPLOY / "Dockerfile").open("rb"))
    return parser


def lint(text: str) -> list[str]:
    """Strict syntax: known instructions only, exec forms valid JSON string arrays, a FROM first."""
    # A file object, not a path: DockerfileParser otherwise writes ./Dockerfile into the working directory.
    parser = DockerfileParser(fileobj=io.BytesIO())
    parser.content = text
    problems: list[str] = []
    seen_from = False
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "COMMENT":
            continue
        if instruction not in INSTRUCTIONS:
            problems.append(f"line {item['startline'] + 1}: unknown instruction {instruction}")
        if instruction not in ("ARG", "FROM") and not seen_from:
            problems.append(f"line {item['startline'] + 1}: {instruction} before FROM")
        seen_from = seen_from or instruction == "FROM"
        exec_form = value.split("CMD", 1)[1].strip() if instruction == "HEALTHCHECK" and "CMD" in value else value
        if instruction in ("CMD", "ENTRYPOINT", "HEALTHCHECK") and exec_form.lstrip().startswith("["):
            try:
                parsed = json.loads(exec_form)
                assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed)
            except (ValueError, AssertionError):
                problems.append(f"line {item['startline'] + 1}: {instruction} exec form is not a JSON string array")
    return problems


def test_dockerfile_lints_clean() -> None:
    assert lint((DEPLOY / "Dockerfile").read_text()) == []


def test_the_lint_catches_broken_lines() -> None:
    assert lint('RUN echo hi\nFROM python:3.11-slim\nCMD ["a", b]\nCOPPY x y\n') == [
        "line 1: RUN before FROM", "line 3: CMD exec form is not a JSON string array", "line 4: unknown instruction COPPY",
    ]


def test_image_is_slim_non_root_healthchecked_and_signal_ready() -> None:
    parser = dockerfile()
    structure = [i for i in parser.structure if i["instruction"] != "COMMENT"]
    by = {i["instruction"]: i["value"] for i in structure}  # the last of each: the final stage's
    assert parser.baseimage.startswith("python:") and parser.baseimage.endswith("-slim")
    user = by["USER"].split(":")[0]
    assert user not in ("root", "0") and user.isdigit()
    assert by["STOPSIGNAL"] == "SIGTERM"
    assert by["EXPOSE"] == "8080"
    # Exec form so phonebridge is PID 1 and receives SIGTERM itself (a shell would swallow it).
    assert json.loads(by["ENTRYPOINT"]) == ["phonebridge"]
    assert json.loads(by["CMD"]) == ["serve", "--agent", "/app/agent.py"]
    healthcheck = by["HEALTHCHECK"]
    assert re.search(r"--interval=\d+s", healthcheck) and "/healthz" in healthcheck
    # USER comes after every RUN of the final stage: nothing runs as root at run time.
    final = structure[max(i for i, item in enumerate(structure) if item["instruction"] == "FROM"):]
    order = [item["instruction"] for item in final]
    assert order.index("USER") > max(i for i, name in enumerate(order) if name == "RUN")


def test_the_agents_own_dependencies_have_a_layer_before_the_agent_file() -> None:
    structure = [i for i in dockerfile().structure if i["instruction"] != "COMMENT"]
    final = structure[max(i for i, item in enumerate(structure) if item["instruction"] == "FROM"):]
    lines = [f"{item['instruction']} {item['value']}" for item in final]
    requirements = next(line for line in lines if line.startswith("ARG REQUIREMENTS="))
    default = requirements.split("=", 1)[1]
    assert (DEPLOY.parent / default).is_file()  # the default exists in the build context
    copy_req = lines.index("COPY ${REQUIREMENTS} /app/requirements.txt")
    install = lines.index("RUN pip install --no-cache-dir -r /app/requirements.txt")
    copy_agent = lines.index("COPY ${AGENT} /app/agent.py")
    assert lines.index(requirements) < copy_req < install < copy_agent  # agent edits keep the layer cached
    # The default lists nothing, and is a file pip accepts: comments only.
    assert all(not line.strip() or line.startswith("#") for line in (DEPLOY.parent / default).read_text().splitlines())


def test_healthcheck_command_is_python_that_compiles() -> None:
    healthcheck = next(i["value"] for i in dockerfile().structure if i["instruction"] == "HEALTHCHECK")
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<healthcheck>", "exec")


# -- nginx, and what the topology run needed (bench/topology, tests/test_topology.py) ------------------------

NGINX_CONF = DEPLOY / "nginx" / "phonebridge.conf"


def nginx_block(text: str, opener: str) -> list[tuple[str, str]]:
    """The (directive, arguments) lines of the block opened by `opener` (no nested blocks inside it)."""
    text = re.sub(r"#.*", "", text)
    body = text.split(opener + " {", 1)[1].split("}", 1)[0]
    return [(m.group(1), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s*([^;]*);", body, flags=re.MULTILINE)]


def seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)(s|m|h)?", value)
    assert match, value
    return int(match.group(1)) * {"s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]


def test_nginx_example_proxies_websockets_for_as_long_as_cloud_run_lets_a_call_last() -> None:
    location = nginx_block(NGINX_CONF.read_text(), "location /twilio/")
    directives = dict(location)
    headers = dict(v.split(None, 1) for k, v in location if k == "proxy_set_header")
    # No URI after the upstream: the request URI (and so the signed query string) is passed unchanged.
    assert directives["proxy_pass"] == "http://phonebridge"
    assert directives["proxy_http_version"] == "1.1"
    assert headers["Upgrade"] == "$http_upgrade" and headers["Connection"] == "$connection_upgrade"
    assert headers["X-Forwarded-Proto"] == "$scheme" and headers["Host"] == "$host"
    cloud_run = load(DEPLOY / "cloudrun" / "service.yaml")["spec"]["template"]["spec"]["timeoutSeconds"]
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        assert seconds(directives[timeout]) == cloud_run == 3600
    assert "error" in directives["proxy_next_upstream"].split()  # a crashed instance's requests move on


def test_nginx_upstream_balances_open_connections_and_marks_crashed_instances_down() -> None:
    upstream = nginx_block(NGINX_CONF.read_text(), "upstream phonebridge")
    assert ("least_conn", "") in upstream
    servers = [v for k, v in upstream if k == "server"]
    assert len(servers) >= 2 and all("max_fails=1" in s for s in servers)


def test_the_drain_covers_the_longest_call_the_proxy_allows_and_the_probes_are_what_the_topology_used() -> None:
    import sys

    sys.path.insert(0, str(DEPLOY.parent / "bench"))
    import topology  # the readiness path its controller probed

    deployment = k8s("deployment.yaml")
    c = container(deployment)
    stream_timeout = seconds(dict(nginx_block(NGINX_CONF.read_text(), "location /twilio/"))["proxy_read_timeout"])
    drain = Settings.from_env(env(c)).drain_timeout_s
    assert drain >= stream_timeout  # a call the proxy keeps up finishes within the drain
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= drain + int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert c["readinessProbe"]["httpGet"]["path"] == topology.READY_PATH
    # Each probe period a draining pod stays routable is a window of politely refused calls.
    assert c["readinessProbe"]["periodSeconds"] * c["readinessProbe"]["failureThreshold"] <= 10
