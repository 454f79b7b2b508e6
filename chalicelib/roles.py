"""Who may change what in a group (CONTRACT.md section 6): the one place roles are checked.

Pure rules over a locked conversation and the roles involved (group management here, message changes
at the end); the chat service calls them inside the
change's transaction, so a role cannot change between the check and the change. Every rule raises a
domain error, in the order a client should meet them: not a member (404, the same as a conversation
that does not exist), not a group (400), lacking the role (403), a request that makes no sense (400).

| change                   | who                                                        |
|--------------------------|------------------------------------------------------------|
| add members              | owner, admin                                               |
| remove a member          | anyone for themselves (leave); owner, admin for others;   |
|                          | nobody removes the owner (the owner may leave)             |
| set a member's role      | owner, for anyone but the owner                            |
| rename                   | owner, admin                                               |
| mute (own settings)      | any member                                                 |
"""

from __future__ import annotations

from chalicelib.errors import CONVERSATION_NOT_FOUND, BadRequest, Forbidden, NotFound
from chalicelib.model import LockedConversation, Role

MANAGERS: frozenset[Role] = frozenset({"owner", "admin"})


def member_of_group(conversation: LockedConversation) -> Role:
    """The caller's role; NotFound for a non-member, BadRequest for a direct conversation."""
    role = member(conversation)
    if not conversation.is_group:
        raise BadRequest("A direct conversation has no members to manage, roles or title")
    return role


def may_add(conversation: LockedConversation) -> None:
    if member_of_group(conversation) not in MANAGERS:
        raise Forbidden("Only the group's owner or an admin adds members")


def may_remove(conversation: LockedConversation, caller: str, target: str, target_role: Role | None) -> None:
    role = member_of_group(conversation)
    if target == caller:
        return  # leaving is everyone's right, the owner's included (ownership passes on)
    if role not in MANAGERS:
        raise Forbidden("Only the group's owner or an admin removes other members")
    if target_role == "owner":
        raise Forbidden("Nobody removes the group's owner")


def may_set_role(conversation: LockedConversation, caller: str, target: str, target_role: Role | None) -> None:
    if member_of_group(conversation) != "owner":
        raise Forbidden("Only the group's owner changes roles")
    if target_role is None:
        raise NotFound("That user is not a member of this conversation")
    if target == caller or target_role == "owner":
        raise BadRequest("The owner's role does not change; the owner may leave, and ownership passes on")


def may_rename(conversation: LockedConversation) -> None:
    if member_of_group(conversation) not in MANAGERS:
        raise Forbidden("Only the group's owner or an admin renames it")


# --- messages (CONTRACT.md section 7) -----------------------------------------------------------------
#
# | change           | who                                                    |
# |------------------|--------------------------------------------------------|
# | edit a message   | its sender                                             |
# | delete a message | its sender; in a group also the owner and the admins   |
# | react            | any member                                             |


def member(conversation: LockedConversation) -> Role:
    """The caller's role in any conversation; NotFound for a non-member."""
    if conversation.caller_role is None:
        raise NotFound(CONVERSATION_NOT_FOUND)
    return conversation.caller_role


def may_edit(conversation: LockedConversation, caller: str, sender: str) -> None:
    member(conversation)
    if sender != caller:
        raise Forbidden("Only its sender edits a message")


def may_delete(conversation: LockedConversation, caller: str, sender: str) -> None:
    role = member(conversation)
    if sender != caller and not (conversation.is_group and role in MANAGERS):
        raise Forbidden("Only its sender, or a group's owner or admin, deletes a message")
