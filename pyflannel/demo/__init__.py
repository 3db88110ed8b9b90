"""The demo cluster of ``scripts/demo.sh``: see :mod:`pyflannel.demo.__main__`.

Self-contained on purpose (it ships its own small namespace code in :mod:`.netns`
rather than the test suite's), since it runs on machines without the tests.
"""
