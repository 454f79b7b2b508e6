// Live signals (CONTRACT.md section 8): "alice is typing…" under the open conversation, and online dots.
//
// Typing, sent: a `typing: true` frame while the composer has text, at most one per 2 s (the server's throttle
// window, so none is wasted), and `typing: false` when the composer is emptied or we move to another
// conversation. Sending the message needs no frame: the server ends a typer's signal with their next message
// (and a `false` after it would push nothing).
// Typing, received: a typer shows until their `typing: false`, their next message, or `expiresInMs`.
//
// Presence: a dot (data-testid presence-dot, data-user-id, data-online = true | false | unknown) for a person,
// made by dot(userId) wherever one is rendered (direct conversations in the list, the members panel). Unknown
// or stale people (not checked for PRESENCE_STALE_MS) are asked for with GET /presence, batched, when their dot
// is rendered; refreshPresence() asks again for everyone (the list loaded: at sign-in and after every
// reconnect, when pushes may have been missed). `presence` pushes (first connection opened, last one closed or
// expired: sent to direct-conversation peers) repaint the dots in place. An answer that left the server before
// a push about the same person does not undo the push.
//
// Stable data-testid hooks: typing-indicator (under the messages; hidden when nobody types), presence-dot.

import { formatTime, h } from "./dom.js";

const TYPING_EVERY_MS = 2000; // one `typing: true` per 2 s at most (CONTRACT.md section 8)
const DEFAULT_EXPIRY_MS = 6000; // if a frame ever lacks expiresInMs
const MAX_EXPIRY_MS = 60_000; // nobody shows as typing longer than this, whatever a frame says
const PRESENCE_BATCH = 100; // GET /presence takes at most 100 users
const PRESENCE_STALE_MS = 60_000; // people without pushes (group members only) are asked again after this

/**
 * options:
 *   me()            the signed-in user (null when signed out); when it changes, everything known is dropped
 *   openId()        the open conversation's id, or null
 *   send(frame)     hands a frame to the socket; returns whether it went
 *   fetchPresence(userIds) -> Promise<[{userId, online, lastActiveAt}]>
 *   indicator       the element that shows who is typing in the open conversation
 *   input, composer the composer's textarea and form
 */
export function createSignals({ me, openId, send, fetchPresence, indicator, input, composer }) {
  let owner = null; // whose signals these are
  let typingIn = null; // conversation where we sent `typing: true` and have not ended it
  let lastTrueAt = 0;
  const typers = new Map(); // conversationId -> Map(userId -> expiry timer), in the order they started
  const presence = new Map(); // userId -> {online, lastActiveAt, checkedAt, push}
  let pushes = 0; // counts presence pushes: an answer asked before a push about someone keeps the push
  const wanted = new Set(); // people to ask GET /presence about at the next flush
  let flushTimer = null;

  /** Drops what belongs to a previous user of this tab. */
  function current() {
    const user = me();
    if (user !== owner) {
      owner = user;
      typingIn = null;
      lastTrueAt = 0;
      for (const conversation of typers.values()) for (const timer of conversation.values()) clearTimeout(timer);
      typers.clear();
      presence.clear();
      wanted.clear();
    }
    return user;
  }

  // ------------------------------------------------------------ typing, sent

  function stopTyping() {
    if (typingIn) send({ action: "typing", conversationId: typingIn, typing: false });
    typingIn = null;
    lastTrueAt = 0;
  }

  function onInput() {
    if (!current()) return;
    const conversationId = openId();
    const hasText = input.value.trim() !== "";
    if (typingIn && (typingIn !== conversationId || !hasText)) stopTyping();
    if (!hasText || !conversationId) return;
    const now = Date.now();
    if (typingIn === conversationId && now - lastTrueAt < TYPING_EVERY_MS) return;
    if (send({ action: "typing", conversationId, typing: true })) {
      typingIn = conversationId;
      lastTrueAt = now;
    }
  }

  input.addEventListener("input", onInput);
  composer.addEventListener("submit", () => {
    // The message (if there is one to send) ends the signal for the receivers; typing again shows at once.
    if (input.value.trim() !== "") {
      typingIn = null;
      lastTrueAt = 0;
    }
  });

  // -------------------------------------------------------- typing, received

  function dropTyper(conversationId, userId) {
    const conversation = typers.get(conversationId);
    if (!conversation || !conversation.has(userId)) return false;
    clearTimeout(conversation.get(userId));
    conversation.delete(userId);
    if (conversation.size === 0) typers.delete(conversationId);
    return true;
  }

  function onTyping(frame) {
    const { conversationId, userId } = frame;
    const user = current();
    if (!user || typeof conversationId !== "string" || typeof userId !== "string" || userId === user) return;
    dropTyper(conversationId, userId);
    if (frame.typing === true) {
      const expiresInMs = Number.isFinite(frame.expiresInMs) ? frame.expiresInMs : DEFAULT_EXPIRY_MS;
      const timer = setTimeout(
        () => {
          if (dropTyper(conversationId, userId)) renderTyping();
        },
        Math.min(Math.max(expiresInMs, 0), MAX_EXPIRY_MS),
      );
      if (!typers.has(conversationId)) typers.set(conversationId, new Map());
      typers.get(conversationId).set(userId, timer);
    }
    renderTyping();
  }

  /** A message from `senderId` arrived: they are no longer typing it. */
  function messageFrom(conversationId, senderId) {
    if (dropTyper(conversationId, senderId)) renderTyping();
  }

  function typingText(names) {
    if (names.length === 0) return "";
    if (names.length === 1) return `${names[0]} is typing…`;
    if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
    if (names.length === 3) return `${names[0]}, ${names[1]} and ${names[2]} are typing…`;
    return `${names[0]}, ${names[1]} and ${names.length - 2} others are typing…`;
  }

  function renderTyping() {
    const conversationId = openId();
    const names = conversationId && typers.has(conversationId) ? [...typers.get(conversationId).keys()] : [];
    const text = typingText(names);
    if (indicator.textContent !== text) indicator.textContent = text;
    indicator.hidden = text === "";
  }

  /** The open conversation changed (to `conversationId`, or null: none). */
  function switchedTo(conversationId) {
    if (typingIn && typingIn !== conversationId) stopTyping();
    renderTyping();
  }

  // ----------------------------------------------------------------- presence

  function describe(userId, known) {
    if (!known) return "";
    if (known.online) return `${userId} is online`;
    const when = known.lastActiveAt ? formatTime(known.lastActiveAt, true) : "";
    return when ? `${userId} is offline (last active ${when})` : `${userId} is offline`;
  }

  function paintDot(node, entry) {
    const known = entry && !entry.pending ? entry : undefined; // asked about, no answer yet: unknown
    const online = known ? String(Boolean(known.online)) : "unknown";
    if (node.dataset.online !== online) node.dataset.online = online;
    const label = describe(node.dataset.userId, known);
    node.title = label;
    if (label) node.setAttribute("aria-label", label);
    else node.removeAttribute("aria-label");
  }

  function paintAll(userIds) {
    for (const node of document.querySelectorAll(".presence-dot")) {
      if (userIds.has(node.dataset.userId)) paintDot(node, presence.get(node.dataset.userId));
    }
  }

  /** A dot for `userId` (null for nobody, or for ourselves): painted now, kept current in place. */
  function dot(userId) {
    const user = current();
    if (!user || !userId || userId === user) return null;
    const node = h("span", { class: "presence-dot", "data-testid": "presence-dot", "data-user-id": userId, role: "img" });
    const known = presence.get(userId);
    paintDot(node, known);
    if (!known || Date.now() - known.checkedAt > PRESENCE_STALE_MS) ask([userId]);
    return node;
  }

  function ask(userIds) {
    for (const userId of userIds) wanted.add(userId);
    if (wanted.size && flushTimer === null) flushTimer = setTimeout(flush, 0);
  }

  /** Asks again about everyone we know of or show (pushes may have been missed, e.g. while offline). */
  function refreshPresence() {
    if (!current()) return;
    const shown = [...document.querySelectorAll(".presence-dot")].map((node) => node.dataset.userId);
    ask([...presence.keys(), ...shown]);
  }

  function flush() {
    flushTimer = null;
    const user = current();
    const userIds = [...wanted];
    wanted.clear();
    if (!user) return;
    const now = Date.now();
    for (const userId of userIds) {
      // Asked: a dot rendered meanwhile does not ask again (an unknown one stays unknown until the answer).
      const known = presence.get(userId);
      if (known) known.checkedAt = now;
    }
    for (let start = 0; start < userIds.length; start += PRESENCE_BATCH) {
      load(user, userIds.slice(start, start + PRESENCE_BATCH));
    }
  }

  async function load(user, userIds) {
    const since = pushes;
    for (const userId of userIds) {
      if (!presence.has(userId)) presence.set(userId, { online: false, lastActiveAt: null, checkedAt: Date.now(), push: 0, pending: true });
    }
    let rows;
    try {
      rows = await fetchPresence(userIds);
    } catch {
      rows = null; // the dots keep what they show; the next list load asks again
    }
    if (current() !== user) return;
    const changed = new Set();
    for (const row of Array.isArray(rows) ? rows : []) {
      if (!row || typeof row.userId !== "string") continue;
      const known = presence.get(row.userId);
      if (known && known.push > since) continue; // a push newer than this answer
      presence.set(row.userId, {
        online: Boolean(row.online),
        lastActiveAt: row.lastActiveAt ?? null,
        checkedAt: Date.now(),
        push: known?.push ?? 0,
        pending: false,
      });
      changed.add(row.userId);
    }
    for (const userId of userIds) {
      const known = presence.get(userId);
      if (known?.pending) presence.delete(userId); // no answer about them: unknown again, asked next time
    }
    paintAll(changed);
  }

  function onPresence(frame) {
    const { userId } = frame;
    if (!current() || typeof userId !== "string" || typeof frame.online !== "boolean") return;
    pushes += 1;
    presence.set(userId, { online: frame.online, lastActiveAt: frame.lastActiveAt ?? null, checkedAt: Date.now(), push: pushes, pending: false });
    paintAll(new Set([userId]));
  }

  return {
    dot,
    refreshPresence,
    onTyping,
    onPresence,
    messageFrom,
    switchedTo,
  };
}
