"""Data-path backends, installed as ``pyflannel.backends``.

The folder stands at the top of the repository but must only ever be imported as
``pyflannel.backends`` (through the committed symlink ``pyflannel/backends``): a
top-level ``backends`` package would load the same files twice under two names.

``BACKENDS`` maps a network-config ``Backend.Type`` (lower-cased, as flanneld looks
it up) to the ``module:Class`` that implements it. Modules are imported lazily so
a process never loads the code of backends it does not run and an unknown type is a
plain lookup failure that the daemon turns into a configuration error.
"""

if not __name__.startswith("pyflannel."):
    raise ImportError("import the backends as pyflannel.backends, not as a top-level package")

BACKENDS: dict[str, str] = {
    "alloc": "pyflannel.backends.alloc:AllocBackend",
    "vxlan": "pyflannel.backends.vxlan:VxlanBackend",
    "udp": "pyflannel.backends.udp:UdpBackend",
    "host-gw": "pyflannel.backends.hostgw:HostGwBackend",
}
