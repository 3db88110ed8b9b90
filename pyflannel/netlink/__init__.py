"""The kernel adapter: everything that talks rtnetlink, with our own codec (``rtnl``).

Modules here read or change kernel state and nothing else; what to read or change is
decided by pure code in ``pyflannel.core`` and the backends' desired-state modules, which
get plain snapshots (frozen dataclasses) from here and never see a netlink message.
"""
