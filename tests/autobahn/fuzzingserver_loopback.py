# Python 2.7 (Autobahn|Testsuite): run `wstest` with every listening socket bound to 127.0.0.1.
# autobahn's listenWS() binds all interfaces and takes no option for it, so the reactor's listenTCP
# default interface is changed before wstest starts. Arguments are wstest's.
import sys

from twisted.internet import reactor

_listen_tcp = reactor.listenTCP


def _listen_tcp_loopback(port, factory, backlog=50, interface=""):
    return _listen_tcp(port, factory, backlog, interface or "127.0.0.1")


reactor.listenTCP = _listen_tcp_loopback

# Imported after the patch: wstest may import the reactor's users.
from autobahntestsuite.wstest import run

if __name__ == "__main__":
    sys.exit(run())
