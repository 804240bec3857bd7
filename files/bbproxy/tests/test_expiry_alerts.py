"""The Prometheus alert rules in docs/operating.md ("Certificate expiry") work: Prometheus' own
``promtool`` checks them and runs them over made-up series of the two certificate gauges.

promtool comes with Debian's ``prometheus`` package. Installing that would also start a Prometheus
server, so `make interop-deps` (part of `make test-python`) unpacks the package into
``.interop/prometheus`` instead; ``PROMTOOL=`` names another one. Without it the test fails, with
that hint: a check of the operators' alert rules is not skipped quietly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOC = Path(__file__).parents[3] / "docs" / "operating.md"
UNPACKED = Path(__file__).resolve().parents[3] / ".interop" / "prometheus" / "usr" / "bin" / "promtool"

# At t=0 a legacy chain breaks in 20 days (a cross-sign), a default one in 30, a domain one has
# expired an hour ago; promtool's clock starts at 0, so the gauge values are seconds from then.
# Two workers (instances) report the legacy chain: one alert. An empty label is no label.
UNIT_TESTS = """\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'GAUGE{instance="a:9522",chain="legacy",key_type="rsa"}'
        values: '1728000+0x180'
      - series: 'GAUGE{instance="a:9523",chain="legacy",key_type="rsa"}'
        values: '1728000+0x180'
      - series: 'GAUGE{instance="a:9522",chain="default",key_type="ecdsa"}'
        values: '2592000+0x180'
      - series: 'GAUGE{instance="a:9522",chain="domain",domain="chat.example.net",key_type="rsa"}'
        values: '-3600+0x180'
    alert_rule_test:
      - eval_time: 2h
        alertname: BbproxyCertificateExpiresSoon
        exp_alerts:
          - exp_labels: {severity: warning, chain: legacy, key_type: rsa}
            exp_annotations:
              summary: "bbproxy legacy chain (rsa) breaks in 19.9 days"
          - exp_labels: {severity: warning, chain: domain, domain: chat.example.net, key_type: rsa}
            exp_annotations:
              summary: "bbproxy domain chain chat.example.net (rsa) breaks in -0.1 days"
      - eval_time: 2h
        alertname: BbproxyCertificateExpired
        exp_alerts:
          - exp_labels:
              {severity: critical, instance: "a:9522", chain: domain, domain: chat.example.net, key_type: rsa}
""".replace("GAUGE", "bbproxy_certificate_chain_expiry_timestamp_seconds")


def test_the_documented_alert_rules_fire_when_they_should(tmp_path: Path) -> None:
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool") or str(UNPACKED)
    if not Path(promtool).is_file():
        pytest.fail(f"promtool not found: `make interop-deps` unpacks Debian's prometheus into {UNPACKED}")
    section = DOC.read_text(encoding="utf-8").split("## Certificate expiry", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match is not None, "no ```yaml block under 'Certificate expiry' in docs/operating.md"
    (tmp_path / "rules.yml").write_text(match.group(1))
    (tmp_path / "tests.yml").write_text(UNIT_TESTS)
    check = subprocess.run(
        [promtool, "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    result = subprocess.run(
        [promtool, "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
