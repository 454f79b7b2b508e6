/*
 * chat-api web client (local development). Plain ES modules, no build step:
 *   api.js     REST calls (same origin), token minting, WebSocket URL discovery
 *   socket.js  self-reconnecting WebSocket with heartbeat
 *   dom.js     element builder, time formatting
 *   message-view.js   one message on screen (renderMessage) and where read receipts go
 *   members-panel.js  the open conversation's members and the changes the viewer's role allows
 *   lifecycle.js      edits, deletions, reactions, replies, mentions, the change feed (versions decide)
 *   signals.js        typing indicator (typing-indicator) and online dots (presence-dot, data-online)
 *   app.js     state, server frames, routing (#/c/<conversationId>) and the rest of the rendering (this file)
 *
 * Stable data-testid hooks for browser tests:
 *   username-input, sign-in-button, sign-in-error   sign-in form
 *   current-user, switch-user-button                 who is signed in / sign out
 *   connection-status        data-state = connecting | online | offline (click when offline: retry now)
 *   new-conversation-form, new-conversation-recipients, new-conversation-group (checkbox),
 *   new-conversation-title, new-conversation-create, new-conversation-error
 *   conversation-list        the <ul>; empty list shows "No conversations yet."
 *   conversation-item        one per conversation: data-conversation-id, data-unread (count or "" ),
 *                            aria-current="true" when open; inside: conversation-name,
 *                            conversation-preview, conversation-time, unread-badge (only when unread)
 *                            muted-icon (only when muted)
 *   conversation-title, conversation-subtitle, back-button (narrow screens), history-status, message-scroller
 *   members-button           opens/closes members-panel (aria-expanded); inside the panel:
 *                            member-count, member-list, member (data-user-id, data-role; inside: member-name,
 *                            member-role, make-admin-button / make-member-button, remove-member-button),
 *                            rename-form (rename-input, rename-button), add-members-form (add-members-input,
 *                            add-members-button), mute-toggle (checkbox), leave-button, members-error.
 *                            Only the controls the viewer's role allows exist or are visible.
 *   message-list             the <ol>, oldest message at the top
 *   message                  data-message-id (once confirmed), data-temp-id (own messages sent here),
 *                            data-state = sending | sent | failed, data-sender; inside:
 *                            message-sender (groups), message-content, message-time,
 *                            retry-button (failed only), read-receipt ("Read" / "Read by bob", on the newest
 *                            own message each reader has read)
 *                            lifecycle (lifecycle.js, message-view.js): data-deleted="true" and message-deleted
 *                            (a tombstone, no message-content), message-edited, mention (data-user-id),
 *                            reply-quote (data-reply-to; reply-quote-sender, reply-quote-content), reactions >
 *                            reaction (data-emoji, data-count, aria-pressed when ours), message-menu-button >
 *                            message-menu (react-option data-emoji, reply-button, edit-button, delete-button,
 *                            then delete-confirm-button / menu-cancel-button): only what the viewer may do
 *   composer-context         above the composer while replying or editing (data-mode = reply | edit;
 *                            composer-context-text, composer-context-cancel)
 *   mention-badge            in a conversation-item with unread mentions of us
 *   composer-input, send-button
 *   error-toast              transient notices (WebSocket error frames, failed requests)
 */
import { createApi, mintToken, websocketUrl } from "./api.js";
import { formatTime, h, initials, splitNames } from "./dom.js";
import { createLifecycle } from "./lifecycle.js";
import { createMembersPanel } from "./members-panel.js";
import { receiptPlaces, renderMessage } from "./message-view.js";
import { createSignals } from "./signals.js";
import { ChatSocket } from "./socket.js";

const PAGE_SIZE = 30; // history page when opening / scrolling up
const CATCH_UP_PAGE = 100; // page size when catching up after a reconnect
const SEND_TIMEOUT_MS = 15_000; // no echo by then: mark the message failed (retry is safe)
const USER_KEY = "chat.username"; // sessionStorage: one user per tab
const ROUTE = /^#\/c\/([^/?#]+)$/; // #/c/<conversationId>: the open conversation survives a reload

const $ = (id) => document.getElementById(id);
const ui = {
  signin: $("signin"),
  signinForm: $("signin-form"),
  username: $("username"),
  signinError: $("signin-error"),
  app: $("app"),
  connection: $("connection"),
  currentUser: $("current-user"),
  switchUser: $("switch-user"),
  newForm: $("new-conversation"),
  recipients: $("recipients"),
  isGroup: $("is-group"),
  groupTitle: $("group-title"),
  newError: $("new-conversation-error"),
  list: $("conversation-list"),
  listEmpty: $("conversation-empty"),
  noConversation: $("no-conversation"),
  view: $("conversation-view"),
  back: $("back"),
  title: $("conversation-title"),
  subtitle: $("conversation-subtitle"),
  membersButton: $("members-button"),
  membersPanel: $("members-panel"),
  scroller: $("messages"),
  historyStatus: $("history-status"),
  messageList: $("message-list"),
  composer: $("composer"),
  composerInput: $("composer-input"),
  toast: $("toast"),
};

const session = {
  username: null,
  token: null,
  async refreshToken() {
    this.token = await mintToken(this.username);
  },
};
const api = createApi(session);
let wsBase = null;

let state = freshState();
const messageNodes = new Map(); // render key -> <li>, for the open conversation
// Typing and presence (CONTRACT section 8): see signals.js.
const signals = createSignals({
  me: () => session.username,
  openId: () => state.openId,
  send: (frame) => socket.send(frame), // the socket is created below
  fetchPresence: (userIds) => api.presence(userIds),
  indicator: $("typing-indicator"),
  input: ui.composerInput,
  composer: ui.composer,
});
const membersPanel = createMembersPanel(ui.membersPanel, { onAction: runMemberAction, presenceDot: signals.dot });
let membersPanelOpen = false; // stays as the person left it when they switch conversations
// Edits, deletions, reactions, replies, mentions and the change feed (CONTRACT section 7): see lifecycle.js.
const lifecycle = createLifecycle({
  getState: () => state,
  me: () => session.username,
  socket: { send: (frame) => socket.send(frame) }, // the socket is created below
  api,
  notify,
  renderMessages: () => renderMessages(),
  renderList: () => renderConversationList(),
  list: ui.messageList,
  composer: ui.composer,
  composerInput: ui.composerInput,
  autosize,
});

function freshState() {
  return {
    conversations: new Map(), // conversationId -> row from GET /conversations
    seen: new Set(), // messageIds already counted in the list (echoes of retries repeat them)
    receipts: new Map(), // conversationId -> Map(userId -> {lastReadMessageId, position, readAt}), others only
    gone: new Set(), // conversations we were removed from (or left): a list response on its way must not revive them
    pending: new Map(), // tempMessageId -> own message not yet confirmed
    openId: null,
    openGeneration: 0, // bumps on every open/close; late responses for another view are dropped
    details: null, // GET /conversations/{openId}: title, members (roles), reads
    detailsRequests: 0, // bumps per details request; only the latest one's answer is used
    listChanges: 0, // bumps when a push or a local action changes the list (see refreshConversations)
    messages: [], // confirmed messages of the open conversation, oldest first
    known: new Set(), // their messageIds
    hasOlder: false,
    loadingOlder: false,
  };
}

const socket = new ChatSocket({
  async getUrl(afterFailure) {
    if (afterFailure) await session.refreshToken(); // the refusal may have been an expired token
    wsBase ??= await websocketUrl();
    const separator = wsBase.includes("?") ? "&" : "?";
    return `${wsBase}${separator}Authorization=${encodeURIComponent(session.token)}`;
  },
  onFrame: handleFrame,
  onState: renderConnection,
  onOpen() {
    // Whatever happened while we were away: in-flight sends settle, list and open conversation catch up.
    resendInFlight();
    refreshConversations();
    catchUp();
    if (state.openId) loadDetails(state.openId); // members, titles and receipts that changed meanwhile
  },
  onClose: failSendingMessages,
});

// ---------------------------------------------------------------- sign-in

async function signIn(rawName) {
  const username = rawName.trim();
  if (!username) return;
  ui.signinError.textContent = "";
  try {
    session.username = username;
    await session.refreshToken();
  } catch (error) {
    session.username = null;
    showSignIn(username, `Could not sign in: ${error.message}`);
    return;
  }
  sessionStorage.setItem(USER_KEY, username);
  ui.currentUser.textContent = username;
  ui.signin.hidden = true;
  ui.app.hidden = false;
  socket.start();
  refreshConversations();
  route();
}

function signOut() {
  socket.stop();
  sessionStorage.removeItem(USER_KEY);
  const previous = session.username;
  session.username = null;
  session.token = null;
  for (const p of state.pending.values()) clearTimeout(p.timer);
  state = freshState();
  closeConversation({ replace: true }); // the next user of this tab does not land in our conversation
  renderConversationList();
  showSignIn(previous ?? "", "");
}

function showSignIn(name, error) {
  ui.app.hidden = true;
  ui.signin.hidden = false;
  ui.username.value = name;
  ui.signinError.textContent = error;
  ui.username.focus();
  ui.username.select();
}

// ------------------------------------------------------ conversation list

async function refreshConversations() {
  const user = session.username;
  const changesAtStart = state.listChanges;
  let rows;
  try {
    rows = await api.listConversations();
  } catch (error) {
    notify(`Could not load conversations: ${error.message}`);
    return;
  }
  if (session.username !== user || !Array.isArray(rows)) return;
  const stale = state.listChanges !== changesAtStart;
  // Asked before we left (or were removed from) these: they must not come back.
  if (stale) rows = rows.filter((row) => !state.gone.has(row.conversationId));
  if (stale && state.conversations.size > 0) {
    // A push (or our own read) changed the list while this response was on its way, so the response may
    // predate it and would put an older latest message back. Keep the live rows, take only conversations we
    // did not know (so a busy stream of pushes cannot keep a new one out), and ask again.
    for (const row of rows) {
      if (state.conversations.has(row.conversationId)) continue;
      state.conversations.set(row.conversationId, row);
      if (row.latestMessageId) state.seen.add(row.latestMessageId);
    }
    renderConversationList();
    refreshConversationsSoon();
    return;
  }
  state.conversations = new Map(rows.map((row) => [row.conversationId, row]));
  for (const row of rows) {
    if (row.latestMessageId) state.seen.add(row.latestMessageId);
    state.gone.delete(row.conversationId); // listed by an answer newer than our leaving: we are back in it
  }
  const open = state.conversations.get(state.openId);
  if (open && isUnread(open)) markRead(state.openId);
  renderConversationList();
  signals.refreshPresence(); // pushes may have been missed before this list (sign-in, reconnect)
  if (state.openId && !open) loadDetails(state.openId); // not in our list: still ours? (404 closes it)
  if (state.openId) renderConversationHeader();
}

let refreshTimer = null;
function refreshConversationsSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refreshConversations, 300);
}

function displayName(row) {
  if (!row) return "Conversation";
  if (row.isGroup) return row.title || "Untitled group";
  return row.title || row.participantId || "Direct conversation";
}

function isUnread(row) {
  return row.isRead === false || (typeof row.unreadCount === "number" && row.unreadCount > 0);
}

/** Badge text: the extension's count when known, a dot when only isRead says so. */
function badgeText(row) {
  if (typeof row.unreadCount === "number" && row.unreadCount > 0) {
    return row.unreadCount > 99 ? "99+" : String(row.unreadCount);
  }
  return row.isRead === false ? "•" : "";
}

// conversationId -> the rendered <li> and what it was rendered from. A row that did not change keeps its
// element: rebuilding every item on each render (a list reload, a push) could land between a click's mousedown
// and its mouseup, and a click whose two halves hit different elements is no click at all.
const listItems = new Map();

function renderConversationList() {
  const rows = [...state.conversations.values()].sort((a, b) =>
    String(b.sentAt ?? "").localeCompare(String(a.sentAt ?? "")),
  );
  const items = rows.map((row) => {
    const key = JSON.stringify([row, row.conversationId === state.openId, session.username]);
    const kept = listItems.get(row.conversationId);
    if (kept && kept.key === key) return kept.li;
    const li = conversationItem(row);
    listItems.set(row.conversationId, { key, li });
    return li;
  });
  const shown = new Set(rows.map((row) => row.conversationId));
  for (const conversationId of listItems.keys()) if (!shown.has(conversationId)) listItems.delete(conversationId);
  const current = ui.list.children;
  if (current.length !== items.length || items.some((li, index) => current[index] !== li)) {
    ui.list.replaceChildren(...items);
  }
  ui.listEmpty.hidden = rows.length > 0;
  const unread = rows.filter(isUnread).length;
  document.title = unread ? `(${unread}) Chat` : "Chat";
}

function conversationItem(row) {
  const badge = badgeText(row);
  const preview = row.latestDeleted
    ? "Message deleted"
    : row.latestContent
    ? (row.senderId === session.username ? "You: " : row.isGroup && row.senderId ? `${row.senderId}: ` : "") +
      row.latestContent
    : "No messages yet";
  const button = h(
    "button",
    {
      type: "button",
      class: `conversation-item${badge ? " unread" : ""}`,
      "data-testid": "conversation-item",
      "data-conversation-id": row.conversationId,
      "data-unread": badge,
      "aria-current": row.conversationId === state.openId ? "true" : null,
    },
    h("span", { class: "avatar", "aria-hidden": "true" }, initials(displayName(row)), row.isGroup ? null : signals.dot(row.participantId)),
    h(
      "span",
      { class: "item-main" },
      h(
        "span",
        { class: "item-top" },
        h("span", { class: "item-name", "data-testid": "conversation-name" }, displayName(row)),
        h("time", { class: "item-time", "data-testid": "conversation-time", datetime: row.sentAt }, formatTime(row.sentAt, false)),
      ),
      h(
        "span",
        { class: "item-bottom" },
        h("span", { class: "item-preview", "data-testid": "conversation-preview" }, preview),
        row.muted ? h("span", { class: "muted-icon", "data-testid": "muted-icon", title: "Muted" }, "🔕") : null,
        row.unreadMentionCount > 0
          ? h("span", { class: "mention-badge", "data-testid": "mention-badge", title: "You were mentioned" }, "@")
          : null,
        badge ? h("span", { class: "badge", "data-testid": "unread-badge" }, badge) : null,
      ),
    ),
  );
  button.addEventListener("click", () => openConversation(row.conversationId));
  return h("li", {}, button);
}

async function createConversation(event) {
  event.preventDefault();
  ui.newError.textContent = "";
  const recipients = splitNames(ui.recipients.value);
  const isGroup = ui.isGroup.checked;
  const title = isGroup ? ui.groupTitle.value.trim() : "";
  if (recipients.length === 0) {
    ui.newError.textContent = "Enter a user name (several, comma-separated, for a group).";
    return;
  }
  const button = ui.newForm.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const reply = await api.createConversation(recipients, isGroup, title);
    ui.newForm.reset();
    await refreshConversations();
    if (reply && reply.conversationId) openConversation(reply.conversationId);
  } catch (error) {
    ui.newError.textContent = error.message;
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------ open conversation

async function openConversation(conversationId) {
  document.body.classList.add("show-conversation");
  setRoute(conversationId);
  if (state.openId === conversationId) return;
  state.openId = conversationId;
  signals.switchedTo(conversationId);
  const generation = ++state.openGeneration;
  state.messages = [];
  state.known = new Set();
  state.hasOlder = false;
  state.loadingOlder = false;
  state.details = null;
  messageNodes.clear();
  lifecycle.reset();
  ui.messageList.replaceChildren();
  ui.noConversation.hidden = true;
  ui.view.hidden = false;
  ui.composerInput.value = "";
  autosize();
  renderConversationHeader();
  renderConversationList();
  ui.historyStatus.textContent = "Loading…";
  if (!matchMedia("(max-width: 480px)").matches) ui.composerInput.focus();
  loadDetails(conversationId);

  let page;
  try {
    page = await api.listMessages(conversationId, { limit: PAGE_SIZE });
  } catch (error) {
    if (generation !== state.openGeneration) return;
    if (isNotOurs(error)) forgetConversation(conversationId, "That conversation is not available.");
    else ui.historyStatus.textContent = `Could not load messages: ${error.message}`;
    return;
  }
  if (generation !== state.openGeneration) return;
  addMessages(page);
  state.hasOlder = page.length === PAGE_SIZE;
  renderMessages({ toBottom: true });
  const row = state.conversations.get(conversationId);
  if (row && isUnread(row)) markRead(conversationId);
  fillViewport();
}

/** `replace`: the URL forgets the conversation without a history entry (signed out, removed from it). */
function closeConversation({ replace = false } = {}) {
  state.openId = null;
  signals.switchedTo(null);
  state.openGeneration += 1;
  state.messages = [];
  state.known = new Set();
  state.details = null;
  messageNodes.clear();
  lifecycle.reset();
  ui.messageList.replaceChildren();
  ui.view.hidden = true;
  ui.noConversation.hidden = false;
  document.body.classList.remove("show-conversation");
  setRoute(null, { replace });
  renderConversationList();
}

/** A 404 (not a member, or no such conversation) or a 400 (not even an id): it is not ours to show. */
function isNotOurs(error) {
  return error.status === 404 || error.status === 400;
}

/**
 * We are no longer in this conversation (we left, were removed, or it never was ours): it leaves the list,
 * closes if open, and its unsent messages go with it.
 */
function forgetConversation(conversationId, notice) {
  state.listChanges += 1;
  state.gone.add(conversationId);
  state.conversations.delete(conversationId);
  state.receipts.delete(conversationId);
  for (const [tempId, message] of state.pending) {
    if (message.conversationId !== conversationId) continue;
    clearTimeout(message.timer);
    state.pending.delete(tempId);
  }
  if (state.openId === conversationId) closeConversation({ replace: true });
  renderConversationList();
  if (notice) notify(notice);
}

/** GET /conversations/{id}: the title, members with roles, and where everyone has read up to. */
async function loadDetails(conversationId) {
  const request = ++state.detailsRequests;
  let details;
  try {
    details = await api.getConversation(conversationId);
  } catch (error) {
    if (request !== state.detailsRequests || state.openId !== conversationId) return;
    if (isNotOurs(error)) forgetConversation(conversationId, "That conversation is not available.");
    return; // otherwise the header keeps what the list row says
  }
  if (request !== state.detailsRequests || state.openId !== conversationId || !details) return;
  state.details = details;
  const row = state.conversations.get(conversationId);
  const me = (details.members ?? []).find((member) => member.userId === session.username);
  if (row) {
    row.title = details.title;
    if (me) row.role = me.role;
  }
  takeReads(conversationId, details.reads ?? [], details.membersNextCursor ? null : details.members ?? []);
  renderConversationHeader();
  renderConversationList();
  renderMessages();
}

/**
 * Read positions from REST (`reads`) merged with the live receipts: for each reader the later one wins, so
 * an answer that left the server before a live receipt does not move that receipt back. `members`, when it
 * is the whole group, also drops the receipts of people no longer in it.
 */
function takeReads(conversationId, reads, members) {
  if (!state.receipts.has(conversationId)) state.receipts.set(conversationId, new Map());
  const receipts = state.receipts.get(conversationId);
  if (members) {
    const present = new Set(members.map((member) => member.userId));
    for (const userId of receipts.keys()) if (!present.has(userId)) receipts.delete(userId);
  }
  for (const read of reads) {
    if (!read || read.userId === session.username || !read.lastReadMessageId) continue;
    recordReceipt(conversationId, read.userId, {
      lastReadMessageId: read.lastReadMessageId,
      position: typeof read.lastReadPosition === "number" ? read.lastReadPosition : undefined,
      readAt: read.readAt ?? "",
    });
  }
}

function recordReceipt(conversationId, userId, receipt) {
  if (!state.receipts.has(conversationId)) state.receipts.set(conversationId, new Map());
  const receipts = state.receipts.get(conversationId);
  const known = receipts.get(userId);
  if (known && String(known.readAt) > String(receipt.readAt)) return; // an older position
  receipts.set(userId, receipt);
}

function renderConversationHeader() {
  const row = state.conversations.get(state.openId);
  const details = state.details;
  const isGroup = Boolean(details ? details.isGroup : row?.isGroup);
  ui.title.textContent = details ? displayName({ ...row, ...details }) : displayName(row);
  const muted = row?.muted ? " · Muted" : "";
  if (!row && !details) {
    ui.subtitle.textContent = "";
  } else if (!isGroup) {
    ui.subtitle.textContent = `Direct conversation${muted}`;
  } else {
    const names = details ? (details.members ?? []).map((member) => member.userId) : [];
    const shown = names.length > 8 ? `${names.slice(0, 8).join(", ")} +${names.length - 8}` : names.join(", ");
    ui.subtitle.textContent = `Group${shown ? ` · ${shown}` : ""}${muted}`;
  }
  renderMembersPanel();
}

function renderMembersPanel() {
  const details = state.details;
  ui.membersButton.hidden = !details;
  if (!details) {
    ui.membersPanel.hidden = true;
    return;
  }
  ui.membersPanel.hidden = !membersPanelOpen;
  ui.membersButton.setAttribute("aria-expanded", String(membersPanelOpen));
  if (!membersPanelOpen) return;
  const row = state.conversations.get(details.conversationId);
  const mine = (details.members ?? []).find((member) => member.userId === session.username);
  membersPanel.render({
    conversationId: details.conversationId,
    isGroup: details.isGroup,
    title: details.title,
    me: session.username,
    myRole: mine?.role ?? row?.role ?? null,
    muted: Boolean(row?.muted),
    members: details.members ?? [],
    more: Boolean(details.membersNextCursor),
  });
}

/** A change asked for in the members panel; throws (the panel shows it) when the server refuses. */
async function runMemberAction(action) {
  const conversationId = state.openId;
  const row = state.conversations.get(conversationId);
  const name = displayName(state.details ?? row);
  if (!conversationId) return;
  if (action.type === "add") {
    const reply = await api.addParticipants(conversationId, action.userIds);
    if (reply && Array.isArray(reply.added) && reply.added.length === 0) notify("Everyone named is already in the group.");
  } else if (action.type === "remove") {
    await api.removeParticipant(conversationId, action.userId);
  } else if (action.type === "leave") {
    await api.removeParticipant(conversationId, session.username);
    forgetConversation(conversationId, `You left “${name}”.`);
    return;
  } else if (action.type === "role") {
    await api.setRole(conversationId, action.userId, action.role);
  } else if (action.type === "rename") {
    const conversation = await api.rename(conversationId, action.title);
    if (conversation) applyTitle(conversationId, conversation.title);
  } else if (action.type === "mute") {
    const reply = await api.setMuted(conversationId, action.muted);
    if (row && reply) row.muted = Boolean(reply.muted);
    renderConversationList();
    renderConversationHeader();
  }
  if (state.openId === conversationId) loadDetails(conversationId); // the pushes say so too; this is the truth
}

function applyTitle(conversationId, title) {
  if (typeof title !== "string") return;
  state.listChanges += 1;
  const row = state.conversations.get(conversationId);
  if (row) row.title = title;
  if (state.details && state.details.conversationId === conversationId) state.details.title = title;
  renderConversationList();
  if (state.openId === conversationId) renderConversationHeader();
}

function toggleMembersPanel() {
  membersPanelOpen = !membersPanelOpen;
  renderMembersPanel();
}

// ----------------------------------------------------------------- routing

function routedConversation() {
  const match = ROUTE.exec(location.hash);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null;
  }
}

/** The URL names the open conversation (`#/c/<id>`), or none. */
function setRoute(conversationId, { replace = false } = {}) {
  if (routedConversation() === conversationId) return;
  const url = conversationId
    ? `${location.pathname}${location.search}#/c/${encodeURIComponent(conversationId)}`
    : `${location.pathname}${location.search}`;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
}

/** Opens what the URL names (a reload, back/forward, a pasted link). */
function route() {
  if (!session.username) return;
  const conversationId = routedConversation();
  if (conversationId) openConversation(conversationId);
  else if (state.openId) closeConversation();
}

/**
 * Merges confirmed messages (any order) into the open conversation, skipping known ids. A stored message
 * that carries the tempMessageId of one of ours still pending (history after a lost echo) settles it: it
 * takes over the pending copy's place instead of showing beside it.
 */
function addMessages(messages) {
  let added = 0;
  for (const message of messages) {
    if (!message || !message.messageId) continue;
    settlePending(message);
    if (state.known.has(message.messageId)) {
      lifecycle.merge(message); // a newer version (edited, deleted, reacted to) replaces the one we hold
      continue;
    }
    state.known.add(message.messageId);
    let index = state.messages.length;
    while (index > 0 && sortsAfter(state.messages[index - 1], message)) index -= 1;
    state.messages.splice(index, 0, message);
    added += 1;
  }
  return added;
}

function settlePending(message) {
  const pending = message.tempMessageId ? state.pending.get(message.tempMessageId) : undefined;
  if (!pending || pending.conversationId !== message.conversationId) return;
  clearTimeout(pending.timer);
  state.pending.delete(message.tempMessageId);
}

/** The server's per-conversation `position` when both have one (one order for every reader), else sentAt. */
function sortsAfter(a, b) {
  if (typeof a.position === "number" && typeof b.position === "number") return a.position > b.position;
  return String(a.sentAt) > String(b.sentAt); // ISO strings sort as text; equal times keep arrival order
}

async function loadOlder() {
  if (!state.hasOlder || state.loadingOlder || state.messages.length === 0) return;
  state.loadingOlder = true;
  const generation = state.openGeneration;
  ui.historyStatus.textContent = "Loading earlier messages…";
  let page;
  try {
    page = await api.listMessages(state.openId, { limit: PAGE_SIZE, before: state.messages[0].messageId });
  } catch (error) {
    if (generation === state.openGeneration) {
      state.loadingOlder = false;
      ui.historyStatus.textContent = `Could not load earlier messages: ${error.message}`;
    }
    return;
  }
  if (generation !== state.openGeneration) return;
  state.hasOlder = page.length === PAGE_SIZE;
  // Keep the messages on screen where they are while content grows above them.
  const { scrollHeight, scrollTop } = ui.scroller;
  state.loadingOlder = false;
  addMessages(page);
  renderMessages();
  ui.scroller.scrollTop = scrollTop + (ui.scroller.scrollHeight - scrollHeight);
  fillViewport();
}

/** Loads older pages until the history overflows the view (so scrolling up is possible). */
function fillViewport() {
  if (state.hasOlder && ui.scroller.scrollHeight <= ui.scroller.clientHeight + 40) loadOlder();
}

/** After a reconnect: fetch what the open conversation missed, oldest first. */
async function catchUp() {
  const id = state.openId;
  if (!id) return;
  const generation = state.openGeneration;
  let added = 0;
  let changed = 0;
  try {
    const newest = state.messages.at(-1);
    // The change feed (new messages, edits, deletions, reactions since our highest changeSeq), page by page.
    const feed = newest ? await lifecycle.changesSince(id, () => generation !== state.openGeneration) : null;
    if (feed?.stale) return;
    if (feed) {
      added += addMessages(feed.fresh);
      changed = feed.changed;
    } else if (!newest) {
      const page = await api.listMessages(id, { limit: PAGE_SIZE });
      if (generation !== state.openGeneration) return;
      added += addMessages(page);
      if (state.messages.length >= PAGE_SIZE) state.hasOlder = true;
    } else {
      // A server without the change feed's changeSeq: new messages only.
      let after = newest.messageId;
      for (;;) {
        const page = await api.listMessages(id, { after, limit: CATCH_UP_PAGE });
        if (generation !== state.openGeneration) return;
        added += addMessages(page);
        if (page.length < CATCH_UP_PAGE) break;
        after = page.at(-1).messageId;
      }
    }
  } catch (error) {
    notify(`Could not catch up: ${error.message}`);
    return;
  }
  if (added) {
    renderMessages();
    markRead(id);
  } else if (changed) {
    renderMessages(); // edits, deletions, reactions: nothing new to read
  }
}

// ---------------------------------------------------------------- sending

function sendMessage(event) {
  event.preventDefault();
  const content = ui.composerInput.value.trim();
  if (!content || !state.openId) return;
  if (lifecycle.submitEdit(content)) return; // the composer was editing one of ours: an edit-message frame
  const message = {
    tempMessageId: newTempId(),
    conversationId: state.openId,
    senderId: session.username,
    content,
    sentAt: new Date().toISOString(),
    state: "sending",
    error: "",
    timer: null,
    inFlight: false, // handed to a socket: the server may have stored it even if no echo came back
    ...lifecycle.takeReply(content), // replyTo (the quoted message) and mentions (@userId of members)
  };
  state.pending.set(message.tempMessageId, message);
  ui.composerInput.value = "";
  autosize();
  transmit(message);
  renderMessages({ toBottom: true });
}

/** (Re)sends a pending message under its original tempMessageId, so the server stores it once. */
function transmit(message) {
  clearTimeout(message.timer);
  const sent = socket.send({
    action: "send-message",
    tempMessageId: message.tempMessageId,
    conversationId: message.conversationId,
    content: message.content,
    ...lifecycle.sendFields(message),
  });
  message.state = sent ? "sending" : "failed";
  message.inFlight ||= sent; // once handed over, it may be stored, whatever later attempts do
  message.error = sent ? "" : "Not connected";
  if (sent) {
    message.timer = setTimeout(() => {
      if (state.pending.get(message.tempMessageId) !== message || message.state !== "sending") return;
      markFailed(message, "No reply from the server");
    }, SEND_TIMEOUT_MS);
  }
}

function markFailed(message, reason) {
  clearTimeout(message.timer);
  message.state = "failed";
  message.error = reason;
  if (message.conversationId === state.openId) renderMessages();
}

function failSendingMessages() {
  for (const message of state.pending.values()) {
    if (message.state === "sending") markFailed(message, "Connection lost");
  }
}

/**
 * A message handed to a socket that then dropped (or never answered) may already be stored, and a catch-up
 * would show that copy beside the failed one. Resending it under the same tempMessageId is safe: the server
 * stores nothing new and echoes the original, which settles it. Messages that never left stay failed for the
 * user to retry.
 */
function resendInFlight() {
  for (const message of state.pending.values()) {
    if (message.inFlight && message.state === "failed") transmit(message);
  }
  if (state.openId) renderMessages();
}

function retry(tempMessageId) {
  const message = state.pending.get(tempMessageId);
  if (!message) return;
  transmit(message);
  if (message.state === "failed") notify("Still offline — the message will not be lost, retry once connected.");
  renderMessages();
}

/** The server reads everything so far as read; the badge clears at once (and in other tabs by push). */
function markRead(conversationId) {
  socket.send({ action: "read-messages", conversationId });
  showAsRead(conversationId);
}

function showAsRead(conversationId) {
  state.listChanges += 1;
  const row = state.conversations.get(conversationId);
  if (row) {
    row.isRead = true;
    if (typeof row.unreadCount === "number") row.unreadCount = 0;
    row.unreadMentionCount = 0; // a read resets it (CONTRACT section 7)
  }
  renderConversationList();
}

function newTempId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  // Insecure origins (e.g. a LAN address over http) lack randomUUID.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// --------------------------------------------------------- server frames

const frameHandlers = {
  "new-message": onNewMessage,
  "read-messages": onReadMessages,
  "conversation-created": onConversationCreated,
  "participants-updated": onParticipantsUpdated,
  "conversation-updated": onConversationUpdated,
  ...lifecycle.frameHandlers, // message-updated, message-deleted, reactions-updated
  typing: signals.onTyping,
  presence: signals.onPresence,
  error: onErrorFrame,
};

function handleFrame(frame) {
  const handler = Object.hasOwn(frameHandlers, frame.type) ? frameHandlers[frame.type] : undefined;
  if (handler) handler(frame); // frames this client does not know are ignored, as the contract asks
}

function onNewMessage(frame) {
  const { messageId, tempMessageId, conversationId, senderId, content, sentAt, position } = frame;
  if (!messageId || !conversationId) return;
  const mine = senderId === session.username;
  state.listChanges += 1;
  signals.messageFrom(conversationId, senderId); // their message ends their typing

  settlePending(frame);

  const firstSighting = !state.seen.has(messageId);
  state.seen.add(messageId);
  const row = state.conversations.get(conversationId);
  if (!row) {
    refreshConversationsSoon(); // someone started a conversation with us
  } else if (firstSighting) {
    if (String(sentAt) >= String(row.sentAt ?? "")) {
      Object.assign(row, { latestContent: content, senderId, sentAt, latestMessageId: messageId });
      row.latestDeleted = Boolean(frame.deletedAt); // the echo of a deleted message's retried send
    }
    if (mine) {
      row.isRead = true;
    } else if (conversationId !== state.openId) {
      row.isRead = false;
      if (typeof row.unreadCount === "number") row.unreadCount += 1;
      if (lifecycle.mentionsMe(frame)) row.unreadMentionCount = (row.unreadMentionCount ?? 0) + 1;
    }
  }

  if (conversationId === state.openId) {
    const message = { messageId, conversationId, senderId, content, sentAt, position, ...lifecycle.fields(frame) };
    if (tempMessageId) message.tempMessageId = tempMessageId;
    addMessages([message]);
    renderMessages({ toBottom: mine });
    if (!mine && firstSighting) markRead(conversationId);
  }
  renderConversationList();
}

function onReadMessages(frame) {
  const { conversationId, userId, lastReadMessageId, readAt } = frame;
  if (!conversationId) return;
  if (userId === session.username) {
    showAsRead(conversationId); // read in another tab or device of ours
    return;
  }
  if (!userId || !lastReadMessageId) return;
  recordReceipt(conversationId, userId, { lastReadMessageId, position: undefined, readAt: readAt ?? "" });
  if (conversationId === state.openId) renderMessages();
}

/** A new conversation we are in (ours or someone else's): listed at once, before any message. */
function onConversationCreated(frame) {
  const { conversationId, title, isGroup, createdBy, createdAt, participants } = frame;
  if (!conversationId) return;
  state.gone.delete(conversationId);
  if (state.conversations.has(conversationId)) return;
  state.listChanges += 1;
  const me = session.username;
  state.conversations.set(conversationId, {
    conversationId,
    title: title ?? "",
    isGroup: Boolean(isGroup),
    sentAt: createdAt,
    latestContent: "",
    senderId: "",
    isRead: true,
    participantId: (participants ?? []).find((user) => user !== me) ?? "",
    unreadCount: 0,
    latestMessageId: null,
    muted: false,
    role: isGroup ? (createdBy === me ? "owner" : "member") : null,
  });
  renderConversationList();
}

/** Someone joined, left, was removed or changed role. If it was us who went, the conversation goes too. */
function onParticipantsUpdated(frame) {
  const { conversationId, by } = frame;
  const added = Array.isArray(frame.added) ? frame.added : [];
  const removed = Array.isArray(frame.removed) ? frame.removed : [];
  const roles = frame.roles && typeof frame.roles === "object" ? frame.roles : {};
  if (!conversationId) return;
  const me = session.username;
  const row = state.conversations.get(conversationId);
  if (removed.includes(me)) {
    if (!row && state.openId !== conversationId) {
      state.gone.add(conversationId); // already forgotten (we left from this tab)
      return;
    }
    const name = displayName(row);
    forgetConversation(conversationId, by === me ? `You left “${name}”.` : `${by || "Someone"} removed you from “${name}”.`);
    return;
  }
  state.listChanges += 1;
  if (added.includes(me) || !row) {
    state.gone.delete(conversationId);
    refreshConversationsSoon(); // we were added: the list row (with its latest message) comes from the server
  }
  const receipts = state.receipts.get(conversationId);
  for (const userId of removed) receipts?.delete(userId);
  if (row) {
    if (roles[me]) row.role = roles[me];
    if (removed.includes(row.participantId) && Array.isArray(frame.participants)) {
      row.participantId = frame.participants.find((user) => user !== me) ?? "";
    }
  }
  const details = state.details;
  if (details && details.conversationId === conversationId) {
    // Shown at once; the details reloaded below confirm it (joinedAt, reads of the newcomers).
    const members = (details.members ?? []).filter((member) => !removed.includes(member.userId));
    for (const userId of added) {
      if (!members.some((member) => member.userId === userId)) members.push({ userId, role: "member", joinedAt: null });
    }
    details.members = members.map((member) => (roles[member.userId] ? { ...member, role: roles[member.userId] } : member));
    renderConversationHeader();
  }
  if (conversationId === state.openId) {
    loadDetails(conversationId);
    renderMessages();
  }
  renderConversationList();
}

function onConversationUpdated(frame) {
  const { conversationId, title } = frame;
  if (!conversationId || !state.conversations.has(conversationId)) return;
  applyTitle(conversationId, title);
  if (conversationId === state.openId) loadDetails(conversationId); // an answer already on its way may predate it
}

function onErrorFrame(frame) {
  const text = frame.message || frame.code || "The server reported an error.";
  const pending = frame.tempMessageId ? state.pending.get(frame.tempMessageId) : undefined;
  if (pending) {
    pending.inFlight = false; // refused by the server: only the user retries it
    markFailed(pending, text);
  }
  notify(text);
}

// --------------------------------------------------------- message list

/**
 * Keyed render: each message keeps its <li> (a pending message keeps it when confirmed,
 * both are keyed by tempMessageId), so scrolling and text selection survive updates.
 */
function renderMessages({ toBottom = false } = {}) {
  const scroller = ui.scroller;
  const nearBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  const pending = [...state.pending.values()].filter((m) => m.conversationId === state.openId);
  const items = [...state.messages, ...pending];
  const receipts = receiptPlaces(items, readers(), session.username);
  const row = state.conversations.get(state.openId);
  const isGroup = Boolean(state.details ? state.details.isGroup : row?.isGroup);

  const wanted = new Set();
  let cursor = ui.messageList.firstChild;
  items.forEach((message, index) => {
    const key = message.tempMessageId || message.messageId;
    wanted.add(key);
    let node = messageNodes.get(key);
    if (!node) {
      node = document.createElement("li");
      messageNodes.set(key, node);
    }
    renderMessage(node, message, {
      me: session.username,
      isGroup,
      readBy: receipts.get(index) ?? [],
      ...lifecycle.viewContext(message), // our role (who may delete what) and this message's menu
    });
    if (node === cursor) cursor = cursor.nextSibling;
    else ui.messageList.insertBefore(node, cursor);
  });
  for (const [key, node] of messageNodes) {
    if (!wanted.has(key)) {
      node.remove();
      messageNodes.delete(key);
    }
  }

  if (!state.loadingOlder) {
    ui.historyStatus.textContent = state.hasOlder
      ? ""
      : items.length
        ? "Beginning of the conversation"
        : "No messages yet — say hello.";
  }
  if (toBottom || nearBottom) scroller.scrollTop = scroller.scrollHeight;
}

/** Other members' read positions in the open conversation (from `reads` and live receipts). */
function readers() {
  const receipts = state.receipts.get(state.openId);
  if (!receipts) return [];
  return [...receipts].map(([userId, receipt]) => ({ userId, ...receipt }));
}

// ---------------------------------------------------------------- chrome

function renderConnection(socketState, retryInMs) {
  const view = {
    connecting: ["connecting", "Connecting…", "Connecting to the chat server"],
    open: ["online", "Online", "Connected"],
    offline: ["offline", "Offline", `Reconnecting in ${Math.ceil((retryInMs ?? 0) / 1000)} s — click to retry now`],
    stopped: ["offline", "Offline", "Signed out"],
  }[socketState];
  ui.connection.dataset.state = view[0];
  ui.connection.textContent = view[1];
  ui.connection.title = view[2];
  ui.connection.disabled = socketState !== "offline";
}

let toastTimer = null;
function notify(text) {
  ui.toast.textContent = text;
  ui.toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    ui.toast.hidden = true;
  }, 6000);
}

function autosize() {
  const input = ui.composerInput;
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  input.style.overflowY = input.scrollHeight > 160 ? "auto" : "hidden";
}

// ---------------------------------------------------------------- wiring

ui.signinForm.addEventListener("submit", (event) => {
  event.preventDefault();
  signIn(ui.username.value);
});
ui.switchUser.addEventListener("click", signOut);
ui.connection.addEventListener("click", () => socket.reconnectNow());
ui.newForm.addEventListener("submit", createConversation);
ui.back.addEventListener("click", () => closeConversation());
ui.membersButton.addEventListener("click", toggleMembersPanel);
window.addEventListener("popstate", route);
window.addEventListener("hashchange", route);
ui.composer.addEventListener("submit", sendMessage);
ui.composerInput.addEventListener("input", autosize);
ui.composerInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.scroller.addEventListener("scroll", () => {
  if (ui.scroller.scrollTop < 120) loadOlder();
});
ui.messageList.addEventListener("click", (event) => {
  const button = event.target.closest("[data-testid=retry-button]");
  const item = button && button.closest("[data-temp-id]");
  if (item) retry(item.dataset.tempId);
});

const savedUser = sessionStorage.getItem(USER_KEY);
if (savedUser) signIn(savedUser);
else showSignIn("", "");
