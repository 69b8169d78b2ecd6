"""peerlearn: decentralized learning, simulated in virtual time, deployed, or emulated."""

__version__ = "0.1.0"
