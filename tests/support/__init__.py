"""Building blocks for tests against the real kernel and a real etcd.

- `procs`: start long-running processes so that none outlives the test run;
- `netns`: network namespaces and a simulated network of hosts (`Topology`);
- `etcd`: etcd servers and clusters, on loopback or inside namespaces;
- `pki`: a throw-away CA with server and client certificates.

Test modules import them as `support.<module>` (pytest puts `tests/` on the path).
"""
