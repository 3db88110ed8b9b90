"""The subnet registry seam: etcd v3, etcd v2 and an in-memory implementation."""
