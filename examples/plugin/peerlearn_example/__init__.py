"""An example peerlearn plugin: one algorithm and one model, registered on import.

Installed (``pip install -e examples/plugin``), peerlearn finds it through its entry point;
otherwise a config names it (``plugins = ["peerlearn_example"]``) and it must be importable.
"""

from peerlearn_example import model, uniform

__all__ = ["model", "uniform"]
