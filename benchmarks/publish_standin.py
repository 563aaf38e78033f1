"""Publish a finished package to the local Hub stand-in and report time and bytes: a first upload,
a second run (nothing should be sent), and an upload killed halfway through the largest GGUF, then
resumed (what is sent again). huggingface_hub runs unchanged, in its own process, over HTTP on
127.0.0.1 (tests/hub_standin.py: the LFS protocol with basic transfer; no Xet).

    .venv/bin/python -m benchmarks.publish_standin --package results/package/smollm2-135m --work /tmp/publish
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.hub_standin import HubStandin
from tests.test_hub import hub_env
from tests.workflow_run import ROOT

TOKEN = "hf_benchmarkWriteToken"


def command(package: Path) -> list[str]:
    return [sys.executable, "-m", "workflow_scripts.publish", "--package", str(package), "--repo-id", "bench/package",
            "--message", "benchmark", "--out", str(package / "published.json")]


def timed(hub: HubStandin, package: Path, home: Path) -> tuple[float, int, int]:
    """One publish: seconds, bytes the Hub received (all requests), bytes of LFS uploads."""
    mark, started = len(hub.requests), time.monotonic()
    proc = subprocess.run(command(package), cwd=ROOT, env=hub_env(hub, home, HF_TOKEN=TOKEN), capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return time.monotonic() - started, hub.bytes_received(mark), sum(r.received for r in hub.uploads(mark))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, required=True, help="a finished results/package/{model}")
    parser.add_argument("--work", type=Path, required=True, help="scratch directory (the package is copied here)")
    ns = parser.parse_args()
    package = Path(shutil.copytree(ns.package, ns.work / "package" / ns.package.name, ignore=shutil.ignore_patterns(
        "published.json")))
    files = {p.name: p.stat().st_size for p in package.iterdir()}
    ggufs = {name: size for name, size in files.items() if name.endswith(".gguf")}
    print(f"package: {len(files)} files, {sum(files.values())} bytes ({len(ggufs)} GGUFs, {sum(ggufs.values())} bytes)")
    with HubStandin() as hub:
        hub.tokens = {TOKEN: "write"}
        for label in ("first upload", "second run"):
            seconds, received, lfs = timed(hub, package, ns.work / "hf-home")
            print(f"{label}: {seconds:.2f} s, {received} bytes received by the Hub ({lfs} in LFS uploads)")
    (package / "published.json").unlink()
    largest = max(ggufs, key=ggufs.get)
    oid = hashlib.sha256((package / largest).read_bytes()).hexdigest()
    with HubStandin() as hub:
        hub.tokens = {TOKEN: "write"}
        hub.upload_cuts[oid] = ggufs[largest] // 2
        proc = subprocess.Popen(command(package), cwd=ROOT, env=hub_env(hub, ns.work / "hf-home", HF_TOKEN=TOKEN),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hub.hook = lambda request: proc.kill() if request.method == "PUT" and request.path.endswith(oid) else None
        proc.wait()
        hub.hook = None
        cut, mark = hub.bytes_received(), len(hub.requests)
        seconds, received, lfs = timed(hub, package, ns.work / "hf-home")
        names = {hashlib.sha256((package / n).read_bytes()).hexdigest(): n for n in ggufs}
        resent = sorted(names[r.path.rsplit("/", 1)[1]] for r in hub.uploads(mark))
        print(f"killed at half of {largest} ({ggufs[largest]} bytes): the Hub had received {cut} bytes; the resumed "
              f"run took {seconds:.2f} s and sent {received} bytes, {lfs} of them in LFS uploads of {resent}")

if __name__ == "__main__":
    main()
