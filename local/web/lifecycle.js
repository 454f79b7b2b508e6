// Messages that live (CONTRACT section 7): edits, tombstones, reactions, replies, mentions and the change feed.
//
// Versions decide: a message's `version` only grows, so every change (a push, a history page, the change feed)
// is applied only when it is newer than what we hold, and every tab ends in the same state whatever order the
// pushes arrive in. The caller's own reactions (`myReactions`) come with REST messages; pushes do not carry
// them, so they are tracked from our own `react` frames and from `reactions-updated` pushes whose userId is us
// (another tab of ours), each against the version it was learnt at.
//
// Catch-up after a reconnect asks GET /conversations/{id}/changes after the highest changeSeq among the loaded
// messages (each applied change stores its changeSeq on the message), page by page: new messages, edits,
// deletions and reaction counts it missed, each once in its current state.

import { h } from "./dom.js";

const CHANGES_PAGE = 100;
const MAX_CHANGE_PAGES = 50; // a safety stop: 5000 changes missed is a reason to reopen, not to loop
const SNIPPET_CHARS = 200; // the server's reply snippet length (code points)

/**
 * deps: {getState() (app.js state: messages, known, openId, details, conversations, hasOlder), me() (user),
 *   socket, api, notify(text), renderMessages(), renderList(), list (the message <ol>), composer (form),
 *   composerInput, autosize()}.
 */
export function createLifecycle(deps) {
  const { socket, api, notify } = deps;
  let menu = null; // {messageId, mode: "open" | "confirm-delete"}
  let composing = null; // {mode: "reply" | "edit", conversationId, messageId, senderId, content}

  const bar = h(
    "div",
    { class: "composer-context", "data-testid": "composer-context", hidden: true },
    h("span", { class: "composer-context-text", "data-testid": "composer-context-text" }),
    h("button", { type: "button", class: "link-button", "data-testid": "composer-context-cancel", "aria-label": "Cancel" }, "✕"),
  );
  deps.composer.before(bar);
  bar.querySelector("button").addEventListener("click", () => cancelComposing());

  const byId = (messageId) => deps.getState().messages.find((m) => m.messageId === messageId);

  // ------------------------------------------------------------- merging

  /** Fields of a new-message frame (or REST message) that section 7 adds. */
  function fields(frame) {
    const out = {};
    for (const key of ["version", "changeSeq", "editedAt", "deletedAt", "reactions", "replyTo", "mentions"]) {
      if (frame[key] !== undefined) out[key] = frame[key];
    }
    if (Array.isArray(frame.myReactions)) {
      out.myReactions = frame.myReactions;
      out.myVersion = frame.version ?? 0; // what we knew of our own reactions, and as of when
    }
    return out;
  }

  /** A full message (history page, change feed, an echo) over the one we hold: only when newer. */
  function merge(incoming) {
    const known = byId(incoming.messageId);
    if (!known || !isNewer(incoming, known)) return false;
    Object.assign(known, { content: incoming.content }, fields(incoming)); // without myReactions: ours are kept
    if (known.deletedAt) clearTombstone(known);
    afterChange(known);
    return true;
  }

  function isNewer(incoming, known) {
    return (incoming.version ?? 0) > (known.version ?? 0);
  }

  function clearTombstone(message) {
    Object.assign(message, { content: "", reactions: {}, myReactions: [], replyTo: null });
  }

  /** Replies quoting a changed message show its new text, or that it was deleted; list rows follow too. */
  function afterChange(message) {
    const state = deps.getState();
    for (const other of state.messages) {
      if (other.replyTo && other.replyTo.messageId === message.messageId) {
        other.replyTo = message.deletedAt
          ? { ...other.replyTo, content: "", deleted: true }
          : { ...other.replyTo, content: snippet(message.content) };
      }
    }
    if (message.deletedAt && menu?.messageId === message.messageId) menu = null;
    if (message.deletedAt && composing?.messageId === message.messageId) {
      cancelComposing();
      notify("That message was deleted.");
    }
  }

  function snippet(content) {
    return [...String(content)].slice(0, SNIPPET_CHARS).join("");
  }

  function updateRow(frame, change) {
    const state = deps.getState();
    const row = state.conversations.get(frame.conversationId);
    if (!row) return;
    if (typeof frame.changeSeq === "number" && frame.changeSeq > (row.changeSeq ?? 0)) row.changeSeq = frame.changeSeq;
    if (row.latestMessageId !== frame.messageId || Object.keys(change).length === 0) return;
    state.listChanges += 1; // a list answer already on its way may predate this (see refreshConversations)
    Object.assign(row, change);
    deps.renderList();
  }

  // -------------------------------------------------------------- pushes

  function onMessageUpdated(frame) {
    const { conversationId, messageId, content } = frame;
    if (!conversationId || !messageId || typeof content !== "string") return;
    updateRow(frame, { latestContent: content });
    if (conversationId !== deps.getState().openId) return;
    const known = byId(messageId);
    if (!known || !isNewer(frame, known) || known.deletedAt) return;
    Object.assign(known, { content, editedAt: frame.editedAt, version: frame.version, changeSeq: frame.changeSeq });
    afterChange(known);
    deps.renderMessages();
  }

  function onMessageDeleted(frame) {
    const { conversationId, messageId } = frame;
    if (!conversationId || !messageId) return;
    updateRow(frame, { latestContent: "", latestDeleted: true });
    if (conversationId !== deps.getState().openId) return;
    const known = byId(messageId);
    if (!known || !isNewer(frame, known)) return;
    Object.assign(known, { deletedAt: frame.deletedAt || new Date().toISOString(), version: frame.version, changeSeq: frame.changeSeq });
    clearTombstone(known);
    afterChange(known);
    deps.renderMessages();
  }

  function onReactionsUpdated(frame) {
    const { conversationId, messageId, userId, emoji } = frame;
    if (!conversationId || !messageId) return;
    updateRow(frame, {});
    if (conversationId !== deps.getState().openId) return;
    const known = byId(messageId);
    if (!known || known.deletedAt) return;
    let changed = false;
    if (userId === deps.me() && typeof emoji === "string" && (frame.version ?? 0) > (known.myVersion ?? 0)) {
      setMine(known, emoji, Boolean(frame.add));
      known.myVersion = frame.version;
      changed = true;
    }
    if (isNewer(frame, known)) {
      Object.assign(known, { reactions: frame.reactions ?? {}, version: frame.version, changeSeq: frame.changeSeq });
      changed = true;
    }
    if (changed) deps.renderMessages();
  }

  function setMine(message, emoji, add) {
    const mine = new Set(message.myReactions ?? []);
    if (add) mine.add(emoji);
    else mine.delete(emoji);
    message.myReactions = [...mine];
  }

  // ------------------------------------------------------------- catch-up

  /** The highest changeSeq among the loaded messages of the open conversation (null: none carries one). */
  function watermark() {
    let highest = null;
    for (const message of deps.getState().messages) {
      if (typeof message.changeSeq === "number" && (highest === null || message.changeSeq > highest)) highest = message.changeSeq;
    }
    return highest;
  }

  /**
   * What the open conversation missed, from the change feed: known messages are updated in place (newer
   * versions only); unknown ones come back for the caller to add, unless they are older than the loaded window
   * (history pages show them, in their current state, when scrolled to). null: no watermark (an old server).
   * isStale(): the view changed meanwhile; the answer is dropped.
   */
  async function changesSince(conversationId, isStale) {
    let after = watermark();
    if (after === null) return null;
    const fresh = [];
    let changed = 0;
    for (let pages = 0; pages < MAX_CHANGE_PAGES; pages += 1) {
      const page = await api.listChanges(conversationId, { after, limit: CHANGES_PAGE });
      if (isStale()) return { fresh: [], changed: 0, stale: true };
      const changes = Array.isArray(page?.changes) ? page.changes : [];
      for (const message of changes) {
        if (!message?.messageId) continue;
        if (deps.getState().known.has(message.messageId)) {
          if (merge(message)) changed += 1;
        } else if (inWindow(message)) {
          fresh.push(message);
        }
      }
      if (changes.length < CHANGES_PAGE || typeof page.next !== "number" || page.next <= after) break;
      after = page.next;
    }
    return { fresh, changed, stale: false };
  }

  function inWindow(message) {
    const state = deps.getState();
    const oldest = state.messages[0];
    if (!oldest || !state.hasOlder) return true;
    if (typeof message.position === "number" && typeof oldest.position === "number") return message.position > oldest.position;
    return String(message.sentAt) > String(oldest.sentAt);
  }

  // ----------------------------------------------------- menu and actions

  /** Per message: what renderMessage needs beyond the message (our role, this message's menu). */
  function viewContext(message) {
    return { canModerate: canModerate(), menu: menu && menu.messageId === message.messageId ? menu.mode : null };
  }

  function canModerate() {
    const state = deps.getState();
    const details = state.details;
    const me = deps.me();
    const role =
      (details?.members ?? []).find((member) => member.userId === me)?.role ?? state.conversations.get(state.openId)?.role;
    return role === "owner" || role === "admin";
  }

  function setMenu(next) {
    menu = next;
    deps.renderMessages();
  }

  deps.list.addEventListener("click", (event) => {
    const control = event.target.closest("button");
    const node = event.target.closest("[data-testid=message]");
    if (!control || !node) return;
    const message = node.dataset.messageId ? byId(node.dataset.messageId) : undefined;
    const testid = control.dataset.testid;
    if (testid === "reply-quote") {
      scrollToMessage(control.dataset.replyTo);
      return;
    }
    if (!message) return;
    if (testid === "message-menu-button") {
      setMenu(menu?.messageId === message.messageId ? null : { messageId: message.messageId, mode: "open" });
    } else if (testid === "react-option" || testid === "reaction") {
      react(message, control.dataset.emoji);
      if (testid === "react-option") setMenu(null);
    } else if (testid === "reply-button") {
      setMenu(null);
      startComposing("reply", message);
    } else if (testid === "edit-button") {
      setMenu(null);
      startComposing("edit", message);
    } else if (testid === "delete-button") {
      setMenu({ messageId: message.messageId, mode: "confirm-delete" });
    } else if (testid === "delete-confirm-button") {
      setMenu(null);
      sendOrSay({ action: "delete-message", conversationId: message.conversationId, messageId: message.messageId });
    } else if (testid === "menu-cancel-button") {
      setMenu(null);
    }
  });

  document.addEventListener("click", (event) => {
    if (menu && !event.target.closest(".message-menu, .message-menu-button")) setMenu(null);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    if (menu) setMenu(null);
    else if (composing) cancelComposing();
  });

  function react(message, emoji) {
    if (!emoji || message.deletedAt) return;
    const add = !(message.myReactions ?? []).includes(emoji);
    const frame = { action: "react", conversationId: message.conversationId, messageId: message.messageId, emoji, add };
    if (!sendOrSay(frame)) return;
    setMine(message, emoji, add); // ours at once; the push brings the counts
    deps.renderMessages();
  }

  function sendOrSay(frame) {
    const sent = socket.send(frame);
    if (!sent) notify("Not connected — try again once you are back online.");
    return sent;
  }

  function scrollToMessage(messageId) {
    const target = messageId ? deps.list.querySelector(`[data-testid="message"][data-message-id="${CSS.escape(messageId)}"]`) : null;
    if (!target) {
      notify("The original message is further up: scroll up to load it.");
      return;
    }
    target.scrollIntoView({ block: "center" });
    target.classList.remove("flash");
    void target.offsetWidth; // restart the highlight
    target.classList.add("flash");
    target.dataset.highlighted = "true";
    setTimeout(() => delete target.dataset.highlighted, 1500);
  }

  // ------------------------------------------------------------- composer

  function startComposing(mode, message) {
    composing = {
      mode,
      conversationId: message.conversationId,
      messageId: message.messageId,
      senderId: message.senderId,
      content: message.content,
    };
    const who = message.senderId === deps.me() ? "yourself" : message.senderId;
    bar.dataset.mode = mode;
    bar.firstChild.textContent = mode === "edit" ? "Editing your message" : `Replying to ${who}: ${snippet(message.content)}`;
    bar.hidden = false;
    if (mode === "edit") deps.composerInput.value = message.content;
    deps.autosize();
    deps.composerInput.focus();
  }

  function cancelComposing() {
    const wasEdit = composing?.mode === "edit";
    composing = null;
    bar.hidden = true;
    delete bar.dataset.mode;
    if (wasEdit) {
      deps.composerInput.value = "";
      deps.composerInput.dispatchEvent(new Event("input")); // resized, and a typing signal under way ends
    }
  }

  /** In edit mode: sends the edit (kept in the composer when offline) and says true; else false. */
  function submitEdit(content) {
    if (composing?.mode !== "edit") return false;
    const { conversationId, messageId, content: before } = composing;
    if (content !== before) {
      const sent = sendOrSay({ action: "edit-message", conversationId, messageId, content });
      if (!sent) return true;
      // An edit is no new message, so it does not end our "typing…" at the others as a send does (signals.js
      // leaves that to the message); say so (the server forwards false only after a true it pushed).
      socket.send({ action: "typing", conversationId, typing: false });
    }
    cancelComposing();
    return true;
  }

  /** For a new message: the reply being composed (then forgotten) and the members named as @userId. */
  function takeReply(content) {
    const reply =
      composing?.mode === "reply" && composing.conversationId === deps.getState().openId
        ? { messageId: composing.messageId, senderId: composing.senderId, content: snippet(composing.content), deleted: false }
        : null;
    if (composing?.mode === "reply") cancelComposing();
    return { replyTo: reply, mentions: mentionsIn(content, memberIds()) };
  }

  function memberIds() {
    const state = deps.getState();
    const members = (state.details?.members ?? []).map((member) => member.userId);
    const row = state.conversations.get(state.openId);
    if (row?.participantId) members.push(row.participantId);
    return new Set(members);
  }

  /** The send-message fields of a pending message: replyTo (an id) and mentions, when it has them. */
  function sendFields(message) {
    const out = {};
    if (message.replyTo?.messageId) out.replyTo = message.replyTo.messageId;
    if (message.mentions?.length) out.mentions = message.mentions;
    return out;
  }

  function mentionsMe(frame) {
    return Array.isArray(frame.mentions) && frame.mentions.includes(deps.me());
  }

  /** A conversation opened, closed or left: no menu, no reply or edit under way. */
  function reset() {
    menu = null;
    if (composing) cancelComposing();
  }

  return {
    frameHandlers: {
      "message-updated": onMessageUpdated,
      "message-deleted": onMessageDeleted,
      "reactions-updated": onReactionsUpdated,
    },
    fields,
    merge,
    changesSince,
    viewContext,
    submitEdit,
    takeReply,
    sendFields,
    mentionsMe,
    reset,
  };
}

/** The members named as `@userId` in `content` (trailing punctuation ignored), each once, in order. */
export function mentionsIn(content, members) {
  const found = [];
  for (const match of String(content).matchAll(/@([^\s@]+)/g)) {
    let name = match[1];
    while (name && !members.has(name) && /[.,!?;:)\]}'"]$/.test(name)) name = name.slice(0, -1);
    if (members.has(name) && !found.includes(name)) found.push(name);
  }
  return found;
}
