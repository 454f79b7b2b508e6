// One message on screen: a renderer per message, and where read receipts go.
//
// renderMessage(node, message, context) fills an <li> the caller keeps per message (keyed render, see app.js).
// It rebuilds the node only when something visible changed: each part's fields are in `signature`, and each
// part (sender, reply quote, bubble with mentions or the tombstone, reactions, actions menu, meta line) has a
// small renderer below.

import { formatTime, fullTime, h } from "./dom.js";

/** The quick reactions the message menu offers. */
export const QUICK_EMOJI = ["👍", "❤️", "😂", "🎉", "😮"];

/**
 * message: a confirmed message ({messageId, senderId, content, sentAt, position?, tempMessageId?, and from
 *   CONTRACT section 7: version, editedAt, deletedAt, reactions {emoji: count}, myReactions, replyTo, mentions})
 *   or a pending one of ours (same fields plus state = sending | failed, error).
 * context: {me, isGroup, readBy: [userId] (who has read up to this message, shown on it),
 *   canModerate (we are a group's owner or admin: we may delete others' messages),
 *   menu: null | "open" | "confirm-delete" (this message's actions menu)}.
 */
export function renderMessage(node, message, context) {
  const { me, isGroup, readBy } = context;
  const mine = message.senderId === me;
  const status = message.state || "sent";
  const deleted = Boolean(message.deletedAt);
  const allowed = allowedActions(message, context);
  const signature = JSON.stringify([
    message.messageId,
    status,
    message.error,
    readBy,
    message.content,
    message.sentAt,
    isGroup,
    message.version,
    message.editedAt,
    message.deletedAt,
    message.reactions,
    message.myReactions,
    message.replyTo,
    message.mentions,
    allowed,
    context.menu ?? null,
  ]);
  if (node.dataset.signature === signature) return;
  node.dataset.signature = signature;

  const mentionsMe = !deleted && (message.mentions ?? []).includes(me);
  node.className = `message ${mine ? "mine" : "theirs"} ${status}${deleted ? " deleted" : ""}${mentionsMe ? " mentions-me" : ""}`;
  node.dataset.testid = "message";
  node.dataset.state = status;
  node.dataset.sender = message.senderId ?? "";
  setData(node, "messageId", message.messageId);
  setData(node, "tempId", message.tempMessageId);
  setData(node, "deleted", deleted ? "true" : "");
  setData(node, "version", message.version ? String(message.version) : "");

  const parts = [
    isGroup && !mine ? h("div", { class: "sender", "data-testid": "message-sender" }, message.senderId) : null,
    deleted ? null : replyQuote(message.replyTo, me),
    h("div", { class: "bubble-row" }, bubble(message, deleted), allowed.length ? menuButton(context.menu) : null),
    deleted ? null : reactionChips(message),
    context.menu && allowed.length ? actionsMenu(message, allowed, context.menu) : null,
    metaLine(message, status, readBy, isGroup),
  ];
  node.replaceChildren(...parts.filter(Boolean));
}

/** What the viewer may do to this message: react and reply (anyone), edit (the sender), delete (the sender; a
 * group's owner or admin). Nothing on a pending message or a tombstone. */
export function allowedActions(message, { me, isGroup, canModerate }) {
  if (message.state || !message.messageId || message.deletedAt) return [];
  const mine = message.senderId === me;
  const actions = ["react", "reply"];
  if (mine) actions.push("edit");
  if (mine || (isGroup && canModerate)) actions.push("delete");
  return actions;
}

function bubble(message, deleted) {
  if (deleted) return h("div", { class: "bubble tombstone", "data-testid": "message-deleted" }, "Message deleted");
  return h("div", { class: "bubble", "data-testid": "message-content" }, ...withMentions(message.content, message.mentions));
}

/** The content as text nodes, with each `@userId` of a mentioned user in a highlighted span. */
function withMentions(content, mentions) {
  const names = (mentions ?? []).filter(Boolean);
  if (!names.length) return [content];
  const pattern = new RegExp(`@(${names.map(escapeRegExp).sort((a, b) => b.length - a.length).join("|")})(?![\\w-])`, "g");
  const out = [];
  let last = 0;
  for (const match of content.matchAll(pattern)) {
    if (match.index > last) out.push(content.slice(last, match.index));
    out.push(h("span", { class: "mention", "data-testid": "mention", "data-user-id": match[1] }, match[0]));
    last = match.index + match[0].length;
  }
  if (last < content.length) out.push(content.slice(last));
  return out;
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function replyQuote(reply, me) {
  if (!reply || !reply.messageId) return null;
  const who = reply.senderId === me ? "You" : reply.senderId;
  return h(
    "button",
    {
      type: "button",
      class: `reply-quote${reply.deleted ? " deleted" : ""}`,
      "data-testid": "reply-quote",
      "data-reply-to": reply.messageId,
      title: "Show the original message",
    },
    h("span", { class: "reply-sender", "data-testid": "reply-quote-sender" }, who),
    h("span", { class: "reply-content", "data-testid": "reply-quote-content" }, reply.deleted ? "Message deleted" : reply.content),
  );
}

function reactionChips(message) {
  const counts = Object.entries(message.reactions ?? {}).filter(([, count]) => count > 0);
  if (!counts.length) return null;
  const mine = new Set(message.myReactions ?? []);
  return h(
    "div",
    { class: "reactions", "data-testid": "reactions" },
    ...counts.map(([emoji, count]) =>
      h(
        "button",
        {
          type: "button",
          class: `reaction${mine.has(emoji) ? " mine" : ""}`,
          "data-testid": "reaction",
          "data-emoji": emoji,
          "data-count": String(count),
          "aria-pressed": String(mine.has(emoji)),
          title: mine.has(emoji) ? "Remove your reaction" : "React",
        },
        `${emoji} ${count}`,
      ),
    ),
  );
}

function menuButton(menu) {
  return h(
    "button",
    {
      type: "button",
      class: "message-menu-button",
      "data-testid": "message-menu-button",
      "aria-label": "Message actions",
      "aria-haspopup": "menu",
      "aria-expanded": String(Boolean(menu)),
    },
    "⋯",
  );
}

function actionsMenu(message, allowed, menu) {
  if (menu === "confirm-delete") {
    return h(
      "div",
      { class: "message-menu", "data-testid": "message-menu", role: "menu" },
      h("span", { class: "menu-question" }, "Delete for everyone?"),
      h("button", { type: "button", class: "danger", "data-testid": "delete-confirm-button", role: "menuitem" }, "Delete"),
      h("button", { type: "button", class: "link-button", "data-testid": "menu-cancel-button", role: "menuitem" }, "Cancel"),
    );
  }
  const mine = new Set(message.myReactions ?? []);
  return h(
    "div",
    { class: "message-menu", "data-testid": "message-menu", role: "menu" },
    h(
      "span",
      { class: "quick-reactions" },
      ...QUICK_EMOJI.map((emoji) =>
        h(
          "button",
          {
            type: "button",
            class: `react-option${mine.has(emoji) ? " mine" : ""}`,
            "data-testid": "react-option",
            "data-emoji": emoji,
            "aria-pressed": String(mine.has(emoji)),
            role: "menuitem",
          },
          emoji,
        ),
      ),
    ),
    h("button", { type: "button", class: "link-button", "data-testid": "reply-button", role: "menuitem" }, "Reply"),
    allowed.includes("edit")
      ? h("button", { type: "button", class: "link-button", "data-testid": "edit-button", role: "menuitem" }, "Edit")
      : null,
    allowed.includes("delete")
      ? h("button", { type: "button", class: "link-button danger-text", "data-testid": "delete-button", role: "menuitem" }, "Delete")
      : null,
  );
}

function metaLine(message, status, readBy, isGroup) {
  const meta = h(
    "div",
    { class: "meta" },
    h("time", { "data-testid": "message-time", datetime: message.sentAt, title: fullTime(message.sentAt) }, formatTime(message.sentAt, true)),
  );
  if (message.editedAt && !message.deletedAt) {
    meta.append(h("span", { class: "edited", "data-testid": "message-edited", title: `Edited ${fullTime(message.editedAt)}` }, "edited"));
  }
  if (status === "sending") meta.append(h("span", { class: "status" }, "Sending…"));
  if (status === "failed") {
    meta.append(
      h("span", { class: "status failed-text", title: message.error }, `Not sent${message.error ? ` (${message.error})` : ""}`),
      h("button", { type: "button", class: "retry", "data-testid": "retry-button" }, "Retry"),
    );
  }
  if (readBy.length) {
    meta.append(h("span", { class: "receipt", "data-testid": "read-receipt" }, isGroup ? `Read by ${readBy.join(", ")}` : "Read"));
  }
  return meta;
}

function setData(node, key, value) {
  if (value) node.dataset[key] = value;
  else delete node.dataset[key];
}

/**
 * Each reader's receipt goes on the newest own confirmed message they have read: index -> [userId].
 * readers: [{userId, lastReadMessageId, position, readAt}] (position: the read message's place in the
 * conversation when known; else the read message is looked up among `items`; else readAt decides).
 */
export function receiptPlaces(items, readers, me) {
  const places = new Map();
  for (const reader of readers) {
    const readIndex = items.findIndex((m) => m.messageId && m.messageId === reader.lastReadMessageId);
    let place = -1;
    items.forEach((message, index) => {
      if (message.state || message.senderId !== me) return; // pending, or not mine
      if (hasRead(reader, message, index, readIndex)) place = index;
    });
    if (place >= 0) places.set(place, [...(places.get(place) ?? []), reader.userId]);
  }
  return places;
}

function hasRead(reader, message, index, readIndex) {
  if (typeof reader.position === "number" && typeof message.position === "number") return message.position <= reader.position;
  if (readIndex >= 0) return index <= readIndex;
  return Boolean(reader.readAt) && String(message.sentAt) <= String(reader.readAt);
}
