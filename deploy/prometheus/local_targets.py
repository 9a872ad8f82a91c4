#!/usr/bin/env python3
"""Prometheus file_sd targets of a local `kvasir up` cluster, from the lines it prints.

`kvasir up` prints one line per process once it listens, for example
  kvasir up: coordinator pid=1 http=127.0.0.1:8000 rpc=127.0.0.1:40111
  kvasir up: cachestore pid=2 rpc=127.0.0.1:41000 http=127.0.0.1:41001 capacity=1GiB
  kvasir up: decode-0 pid=4 rpc=127.0.0.1:42000 http=127.0.0.1:42001
This reads them (a file, or standard input) and prints the JSON list that file_sd_configs reads,
with the labels `component` (coordinator, cachestore, prefill, decode, worker) and
`process_name` (not `process`: the coordinator's kvasir_process_restarts_total has a label of that
name, which a target label would shadow).
  local_targets.py kvasir-up.log > targets.json
"""
import json
import re
import sys

LINE = re.compile(r"^kvasir up: (?P<process>[a-z]+(?:-\d+)?) pid=\d+ .*?\bhttp=(?P<http>\S+)")


def component(process):
    name = process.rsplit("-", 1)[0] if re.search(r"-\d+$", process) else process
    return name if name in ("coordinator", "cachestore", "prefill", "decode") else "worker"


def targets(lines):
    found = {}
    for line in lines:
        m = LINE.match(line.strip())
        if m:
            found[m["process"]] = m["http"]  # a later line (a restart) wins
    return [{"targets": [http], "labels": {"component": component(p), "process_name": p}}
            for p, http in sorted(found.items())]


def main(argv):
    lines = open(argv[1]).readlines() if len(argv) > 1 else sys.stdin.readlines()
    result = targets(lines)
    if not result:
        print("local_targets.py: no 'kvasir up: NAME pid=... http=...' line found", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
