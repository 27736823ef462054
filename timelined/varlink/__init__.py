"""Varlink protocol layer: framing, interface definitions, server and client transports.

A library of its own: it imports nothing of timelined but itself (a test checks). What an
application must tell it is injected: the server's limits (`ServerLimits`), an error mapper that
names the application's exceptions on the wire (`ErrorMapper`), and the clients' mapper that turns
errors back into the application's exceptions (`ReplyMapper`). `timelined.daemon` declares the
interfaces, registers their handlers and injects those (`daemon/varlink_setup.py`).
"""

# Nothing is re-exported: a client importing `varlink.client` must not load the server (and
# what it imports); callers name the module that owns what they use.
