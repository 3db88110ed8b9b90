"""Error taxonomy, organised by what the caller does next.

- ``ConfigError``: local configuration is wrong (flags, network config, interface).
  Fatal at start-up; the message names the key, the value and the fix.
- ``PeerDataError``: a remote lease (key or JSON) is malformed. Logged and skipped.
- ``RegistryError`` and subclasses: talking to etcd went wrong.
  ``RegistryUnavailable`` is transient (retry with backoff while the data path runs);
  ``LeaseConflict`` means another host won a race for a subnet (allocate again);
  ``ConfigNotFound`` means the network config key does not exist yet (wait);
  ``WatchResyncRequired`` means events were lost (take a full snapshot).
- ``LeaseRevoked``: our own lease disappeared from etcd; the daemon stops cleanly.
- ``BackendError``: the data path could not be set up.

Only ``pyflannel.__main__`` turns these into exit statuses.
"""

from __future__ import annotations


class PyflannelError(Exception):
    """Base of every error pyflannel raises on purpose."""


class ConfigError(PyflannelError):
    """Bad local configuration: fatal, with a message that names the key and the fix."""


class PeerDataError(PyflannelError):
    """A lease written by another host could not be parsed: log it and skip it."""


class RegistryError(PyflannelError):
    """The subnet registry (etcd) failed an operation."""


class RegistryUnavailable(RegistryError):
    """etcd could not be reached or did not answer in time: transient, retry later."""


class RegistryPermissionError(RegistryError):
    """etcd refused the operation (authentication or permission): fix the credentials."""


class ConfigNotFound(RegistryError):
    """The network config key does not exist (yet)."""


class LeaseConflict(RegistryError):
    """Another host created the lease key first: choose another subnet."""


class WatchResyncRequired(RegistryError):
    """The watch cursor is too old (compacted / index cleared): re-list everything."""


class LeaseRevoked(PyflannelError):
    """Our own lease was deleted or expired in etcd; flanneld exits 0 in that case."""


class PoolExhausted(ConfigError):
    """No free subnet is left in the configured network."""


class BackendError(PyflannelError):
    """The backend could not set up or program the data path."""
