"""`--dashboard`: Ray's dashboard on 127.0.0.1 only, reachable over HTTP with the token Ray 2.60 requires by
default for a local cluster, and the message we print says how to get in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(r"""
    import json, os, socket, sys, time, urllib.request, urllib.error
    from types import SimpleNamespace
    import psutil, ray

    sock = socket.socket(); sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]; sock.close()
    context = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, num_cpus=1,
                       configure_logging=False, log_to_driver=False)
    out = {"url": context.dashboard_url}
    try:
        from trainables.driver.launch import dashboard_message
        out["message"] = dashboard_message(context)
        base = "http://" + context.dashboard_url.split("://")[-1]
        token_file = os.path.expanduser("~/.ray/auth_token")
        token = open(token_file).read().strip() if os.path.exists(token_file) else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        deadline = time.time() + 20
        while True:
            try:
                with urllib.request.urlopen(urllib.request.Request(base + "/api/version", headers=headers), timeout=5) as r:
                    out["status"], out["body"] = r.status, json.loads(r.read())
                break
            except (urllib.error.URLError, ConnectionError) as err:
                if getattr(err, "code", None) in (401, 403) or time.time() > deadline:
                    out["status"] = getattr(err, "code", str(err)); break
                time.sleep(0.5)
        try:
            urllib.request.urlopen(base + "/api/version", timeout=5)
            out["without_token"] = 200
        except urllib.error.HTTPError as err:
            out["without_token"] = err.code
        out["token_file"] = bool(token)
        out["listen"] = sorted({c.laddr.ip for c in psutil.net_connections(kind="inet")
                                if c.status == psutil.CONN_LISTEN and c.laddr.port == port})
    finally:
        ray.shutdown()
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow  # starts Ray
def test_dashboard_on_localhost_with_token(tmp_path):
    pytest.importorskip("ray.dashboard")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": root}  # the token goes to $HOME/.ray/auth_token
    env.pop("RAY_AUTH_MODE", None)
    env.pop("RAY_ADDRESS", None)  # and address="local": not a cluster a parallel test started on this machine
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["url"].split("://")[-1].startswith("127.0.0.1:")
    assert out["status"] == 200 and "ray_version" in out["body"], out
    assert out["listen"] == ["127.0.0.1"], out  # not 0.0.0.0: nothing outside this machine reaches it
    assert "127.0.0.1" in out["message"]
    if out["token_file"]:  # Ray 2.60 default: token authentication on, token in ~/.ray/auth_token
        assert out["without_token"] == 401, out
        assert "ray get-auth-token" in out["message"]
