"""DICOM networking (DIMSE, PS3.7): C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET as an SCP.

``DimseServer`` serves an ``Archive``; ``PeerDirectory`` keeps the known peers. See
docs/dimse.md for the statuses, what a site configures and the conformance summary.
"""

from cloudfilm.dimse.peers import Peer, PeerDirectory, Permission
from cloudfilm.dimse.server import DimseServer

__all__ = ["DimseServer", "Peer", "PeerDirectory", "Permission"]
