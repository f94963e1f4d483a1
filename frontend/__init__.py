"""greenroom frontend: IRC and XMPP rooms <-> Redis lists, one greenlet per room."""

__version__ = "0.1.0"
