"""pyflannel: a flanneld-compatible overlay network daemon written in asyncio Python.

The package is layered: ``model`` and ``core`` are pure (no I/O, ``now`` passed in);
``registry`` adapts etcd; ``netlink`` adapts the kernel; ``backends`` program the data
path; ``daemon`` wires it all together and ``__main__`` is the only place that exits.
"""

__version__ = "0.1.0"
