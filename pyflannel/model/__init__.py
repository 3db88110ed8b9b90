"""Pure value types: subnets and their etcd keys, leases, the network config."""
