"""The tools: the ``kiyotaka-ws`` command (``command.py``: ``main``), what it shares with the demo
(``console.py``), the demo (``demo.py``), ``export`` (``export.py``) and the benchmarks (``bench.py``,
``bench_recording.py``, ``nats_bench.py``, ``bench_export.py``, ``bench_callgrind.py``). Built on the
public API (and the argument table); nothing in the library imports them.
"""
