"""Nothing here is a pytest test: the Autobahn echo client runs against a live fuzzing server (run.sh)."""

collect_ignore = ["echo_client.py", "fuzzingserver_loopback.py"]
