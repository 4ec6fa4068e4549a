#!/bin/sh
# Autobahn|Testsuite (cases 1-10: 12.* and 13.* need permessage-deflate) against kiyotaka_ws._transport.wire.
#
# Setup, once (Autobahn|Testsuite runs on Python 2.7 only):
#   ~/.pyenv/versions/2.7.18/bin/python -m pip install 'virtualenv<20.22'
#   ~/.pyenv/versions/2.7.18/bin/python -m virtualenv /work/ab/py2
#   /work/ab/py2/bin/pip install autobahntestsuite==0.8.2
# Run, from the repository root, with the project's Python 3 venv active:
#   AUTOBAHN_PY2=/work/ab/py2/bin/python sh tests/autobahn/run.sh
# The fuzzing server listens on 127.0.0.1:9001 only (fuzzingserver_loopback.py; no web server: -u 0).
# Results: tests/autobahn/reports/clients/index.json (git-ignored); a summary is printed at the end.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY2=${AUTOBAHN_PY2:-/work/ab/py2/bin/python}
cd "$HERE"
rm -rf reports
"$PY2" fuzzingserver_loopback.py -m fuzzingserver -s fuzzingserver.json -u 0 > fuzzingserver.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 50); do
    ss -ltn 2>/dev/null | grep -q '127.0.0.1:9001' && break
    sleep 0.2
done
ss -ltn | grep ':9001' || { echo "fuzzing server did not start; see $HERE/fuzzingserver.log"; exit 1; }
PYTHONPATH="$ROOT" python "$HERE/echo_client.py" ws://127.0.0.1:9001
python - "$HERE/reports/clients/index.json" <<'PY'
import collections, json, sys
results = json.load(open(sys.argv[1]))
for agent, cases in results.items():
    counts = collections.Counter(r["behavior"] for r in cases.values())
    close = collections.Counter(r["behaviorClose"] for r in cases.values())
    print(agent, dict(counts), "close:", dict(close))
    for case, r in sorted(cases.items(), key=lambda kv: [int(x) for x in kv[0].split(".")]):
        if r["behavior"] not in ("OK", "INFORMATIONAL") or r["behaviorClose"] not in ("OK", "INFORMATIONAL"):
            print("  ", case, r["behavior"], r["behaviorClose"])
PY
