"""``pyflannelctl``: the operator's tool for a pyflannel (or flanneld) cluster.

- ``config set FILE`` / ``config get``: the network config, validated by the daemon's
  own code and stored with the etcd API the daemons read (:mod:`.store`);
- ``leases``: every host's lease, as a table or ``--json``;
- ``status``: on a host, subnet.env, its lease, and whether the kernel's device,
  routes, FDB and neighbour entries match the leases in etcd;
- ``docker-opts``: flanneld's ``mk-docker-opts.sh`` (:mod:`pyflannel.dockeropts`).

It takes the daemon's ``--etcd-*`` flags and ``FLANNELD_*`` variables, and reads the
systemd unit's environment file, so on a host it points where the daemon points.
Decisions live in :mod:`.report` (pure); :mod:`.commands` does the I/O.
"""
