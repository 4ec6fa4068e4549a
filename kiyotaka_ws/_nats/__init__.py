"""The NATS integration's machinery; the public face is ``kiyotaka_ws.nats``.

``subjects.py`` (subject names, escaping, status messages), ``loop.py`` (the private asyncio
thread: nothing else in the library uses asyncio), ``consumer.py`` (NATS as a client's source,
for ``KiyotakaClient.from_nats``), ``relay.py`` (``Relay``: a client publishing to NATS).

This package's ``__init__`` imports nothing, and only ``relay.py`` imports the client: the client
imports ``consumer.py`` for ``from_nats``, so nothing here may lead back to the client from there
(no import cycle, lazy ones included). That is also why the public module ``kiyotaka_ws.nats``,
which offers ``Relay``, sits outside this package.
"""
