"""A minimal asyncio HTTP/1.1 client for etcd's APIs: framing in :mod:`.wire` (pure),
one socket in :mod:`.connection`, keep-alive connections and calls in :mod:`.client`."""
