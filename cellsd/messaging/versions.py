"""Inter-cell protocol versions: what each end speaks, what each message needs.

Each link negotiates, in its Hello exchange (cellsd.links.amp.Hello), the
highest version both ends speak; a message whose method needs a newer
version than its link has is refused before sending with
:class:`~cellsd.errors.CellProtocolTooOld`, naming both versions. Nothing
here imports Twisted or the link layer.
"""

from __future__ import annotations

from collections.abc import Sequence

#: The inter-cell protocol versions this code speaks. Version 1 is the
#: protocol of cellsd before versions were negotiated (a peer whose Hello
#: carries no ``versions`` speaks only it); version 2 adds negotiation.
PROTOCOL_VERSIONS: tuple[int, ...] = (1, 2)

#: The protocol version each message method needs, when newer than 1;
#: a link that negotiated less refuses the message before sending it.
METHOD_VERSIONS: dict[str, int] = {}


def required_version(method_name: str) -> int:
    """The inter-cell protocol version a message method needs."""
    return METHOD_VERSIONS.get(method_name, 1)


def common_version(ours: Sequence[int], theirs: Sequence[int] | None) -> int:
    """The highest version both ends speak; 1 for a peer that states
    none (it predates negotiation) or shares none."""
    shared = set(ours) & set(theirs or (1,))
    return max(shared) if shared else 1
