"""``hashray demo --serve``: the demo ends on the search service; the page and its items answer.

A subprocess runs the console command (its own local Ray), as a user would; the test waits for the
URL it prints, reads the page, an item and its image over HTTP, then stops it with SIGINT.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]


def test_demo_serve_prints_the_url_and_serves_the_page(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(sys.executable).parent / "hashray"
    out = tmp_path / "demo"
    command = [script, "demo", "--epochs", "1", "--out", out, "--serve", "--port", str(port)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HASHRAY_API_TOKEN": ""},
        start_new_session=True,  # its own group: whatever it leaves behind is stopped below
    )
    lines: list[str] = []
    url: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            found = re.search(r"open (http://\S+/) in a browser", line)
            if found:
                url.append(found.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(800) and url, "".join(lines[-30:])
        assert url[0] == f"http://127.0.0.1:{port}/"
        page = requests.get(url[0], timeout=30)
        assert page.status_code == 200 and "hashray search" in page.text
        item = requests.get(f"{url[0]}sample?split=query", timeout=30).json()
        image = requests.get(f"{url[0]}items/{item['id']}/image", timeout=30)
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        hits = requests.post(f"{url[0]}search", json={"id": item["id"], "k": 5}, timeout=30)
        assert hits.status_code == 404  # a query digit is not in the database codes
        assert (out / "codes" / "mnist5k-adsh-48" / "report.html").exists()
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends the command
        try:
            process.wait(120)
        finally:
            try:  # the command's own Ray processes, should any outlive it
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert process.returncode == 0, "".join(lines[-30:])
