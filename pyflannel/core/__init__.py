"""Pure decisions: allocation, lease diffing, renewal timing, subnet.env, reconciliation.

Nothing here performs I/O, imports asyncio, sockets, netlink code or an etcd client, or
reads the clock: time comes in as an argument.
"""
