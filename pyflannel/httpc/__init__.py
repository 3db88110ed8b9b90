"""A minimal asyncio HTTP/1.1 client for etcd's APIs: framing in :mod:`.wire` (pure),
one socket in :mod:`.connection`, keep-alive connections and calls in :mod:`.client`,
long polls (etcd v2 watches) in :mod:`.longpoll`, and the v2 API's request targets,
form bodies and basic auth in :mod:`.urls` (pure)."""
