// One message on screen: a renderer per message, and where read receipts go.
//
// renderMessage(node, message, context) fills an <li> the caller keeps per message (keyed render, see app.js).
// It rebuilds the node only when something visible changed, so a later feature (edits, tombstones,
// reactions, a reply snippet) adds its fields to `signature` and its part to `parts`.

import { formatTime, fullTime, h } from "./dom.js";

/**
 * message: a confirmed message ({messageId, senderId, content, sentAt, position?, tempMessageId?}) or a
 *   pending one of ours (same fields plus state = sending | failed, error).
 * context: {me, isGroup, readBy: [userId]} (readBy: who has read up to this message, shown on it).
 */
export function renderMessage(node, message, context) {
  const { me, isGroup, readBy } = context;
  const mine = message.senderId === me;
  const status = message.state || "sent";
  const signature = JSON.stringify([message.messageId, status, message.error, readBy, message.content, message.sentAt, isGroup]);
  if (node.dataset.signature === signature) return;
  node.dataset.signature = signature;

  node.className = `message ${mine ? "mine" : "theirs"} ${status}`;
  node.dataset.testid = "message";
  node.dataset.state = status;
  node.dataset.sender = message.senderId ?? "";
  setData(node, "messageId", message.messageId);
  setData(node, "tempId", message.tempMessageId);

  const parts = [
    isGroup && !mine ? h("div", { class: "sender", "data-testid": "message-sender" }, message.senderId) : null,
    h("div", { class: "bubble", "data-testid": "message-content" }, message.content),
    metaLine(message, status, readBy, isGroup),
  ];
  node.replaceChildren(...parts.filter(Boolean));
}

function metaLine(message, status, readBy, isGroup) {
  const meta = h(
    "div",
    { class: "meta" },
    h("time", { "data-testid": "message-time", datetime: message.sentAt, title: fullTime(message.sentAt) }, formatTime(message.sentAt, true)),
  );
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
