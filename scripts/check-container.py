#!/usr/bin/env python3
"""Checks that Containerfile and compose.yaml parse and say what they must, without building:

- Containerfile: every instruction is one the builders know, continuation lines close, the
  runtime stage runs as a non-root user with a HEALTHCHECK on /healthz and the OCI labels,
  and every `COPY --from` names an earlier stage;
- compose.yaml: valid YAML (PyYAML) with RabbitMQ (health-checked), the server (waiting for a
  healthy broker, with its dashboard) and a worker without a fixed name, secrets from the env
  file only.

Run by make test (tests/ops.rs). Exits 1 with one line per problem.
"""
import re
import sys
from pathlib import Path

import yaml

root = Path(__file__).resolve().parent.parent
problems = []

INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
                "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}
lines, current = [], ""
for number, raw in enumerate((root / "Containerfile").read_text().splitlines(), 1):
    if not current and (not raw.strip() or raw.lstrip().startswith("#")):
        continue
    if current and raw.lstrip().startswith("#"):
        continue  # a comment inside a continued instruction
    current += raw.rstrip("\\") + " "
    if not raw.endswith("\\"):
        lines.append((number, current.strip()))
        current = ""
if current:
    problems.append("Containerfile: the last instruction's continuation never ends")
stages, user, final = [], None, []
for number, text in lines:
    word = text.split()[0].upper()
    if word not in INSTRUCTIONS:
        problems.append(f"Containerfile:{number}: unknown instruction {word}")
    if word == "FROM":
        m = re.search(r"\bAS\s+(\S+)", text, re.I)
        stages.append(m.group(1) if m else None)
        final = []
    final.append((word, text))
    m = re.search(r"--from=(\S+)", text)
    if m and m.group(1) not in stages[:-1]:
        problems.append(f"Containerfile:{number}: COPY --from={m.group(1)} names no earlier stage")
if len(stages) < 2:
    problems.append("Containerfile: not multi-stage")
words = {w for w, _ in final}
users = [t.split()[1] for w, t in final if w == "USER"]
if not users or users[-1] in ("root", "0"):
    problems.append("Containerfile: the runtime stage does not run as a non-root user")
if not any(w == "HEALTHCHECK" and "/healthz" in t for w, t in final):
    problems.append("Containerfile: no HEALTHCHECK on /healthz in the runtime stage")
for label in ("title", "description", "version", "licenses"):
    if not any(w == "LABEL" and f"org.opencontainers.image.{label}=" in t for w, t in final):
        problems.append(f"Containerfile: no org.opencontainers.image.{label} label")

compose = yaml.safe_load((root / "compose.yaml").read_text())
services = compose.get("services", {})
for name in ("rabbitmq", "server", "worker"):
    if name not in services:
        problems.append(f"compose.yaml: no {name} service")
if "healthcheck" not in services.get("rabbitmq", {}):
    problems.append("compose.yaml: rabbitmq has no health check")
for name in ("server", "worker"):
    s = services.get(name, {})
    if s.get("depends_on", {}).get("rabbitmq", {}).get("condition") != "service_healthy":
        problems.append(f"compose.yaml: {name} does not wait for a healthy rabbitmq")
    if not s.get("env_file"):
        problems.append(f"compose.yaml: {name} takes no env file (the token)")
    env = s.get("environment", {}) or {}
    if any(k in env for k in ("VPD_TOKEN", "VPD_AMQP_URL")):
        problems.append(f"compose.yaml: {name} sets a secret in the file itself")
if "container_name" in services.get("worker", {}):
    problems.append("compose.yaml: the worker has a fixed name, so it cannot scale")
if "--preview" not in services.get("server", {}).get("command", []):
    problems.append("compose.yaml: the server serves no dashboard")
if services.get("server", {}).get("build", {}).get("dockerfile") != "Containerfile":
    problems.append("compose.yaml: the server is not built from Containerfile")

for p in problems:
    print(p)
if problems:
    sys.exit(1)
print(f"Containerfile: {len(stages)} stages, {len(lines)} instructions; compose.yaml: {', '.join(services)}")
