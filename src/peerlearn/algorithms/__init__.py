"""Algorithms written the way a plugin writes them: one file each, holding the config section,
the protocol and its registration, on the public modules only (``docs/extending.md``).

The core protocols in ``peerlearn.protocols`` take their settings from the registry and never
import the config package; files here may, as an outside plugin does.
"""
