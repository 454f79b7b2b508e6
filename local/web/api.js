// REST client for the chat API (same origin as this page).
// Errors come back as {"Code", "Message"}; they surface here as ApiError.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `Request failed (${status})`);
    this.status = status;
    this.code = code || "Error";
  }
}

async function request(method, path, { token, body } = {}) {
  const headers = {};
  if (token) headers.Authorization = token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "NetworkError", "The server cannot be reached.");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && typeof data === "object" ? data : {};
    throw new ApiError(response.status, error.Code, error.Message);
  }
  return data;
}

/** Local identity provider: a token for any user name (local server only). */
export async function mintToken(username) {
  const data = await request("POST", "/_local/token", { body: { username } });
  if (!data || typeof data.idToken !== "string") {
    throw new ApiError(500, "BadResponse", "No token in the reply.");
  }
  return data.idToken;
}

/** Where the WebSocket API lives; falls back to port 8001 on this host. */
export async function websocketUrl() {
  try {
    const data = await request("GET", "/_local/config");
    if (data && typeof data.websocketUrl === "string") return data.websocketUrl;
  } catch {
    // fall through to the conventional local address
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.hostname}:8001`;
}

/**
 * Authenticated calls. `session` supplies the token and can re-mint it:
 * a 401 is retried once with a fresh token (local tokens expire).
 */
const conversationPath = (conversationId) => `/conversations/${encodeURIComponent(conversationId)}`;

export function createApi(session) {
  async function call(method, path, body) {
    try {
      return await request(method, path, { token: session.token, body });
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) throw error;
      await session.refreshToken();
      return request(method, path, { token: session.token, body });
    }
  }

  const query = (params) => {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== undefined && value !== null) search.set(key, String(value));
    }
    const text = search.toString();
    return text ? `?${text}` : "";
  };

  return {
    listConversations: () => call("GET", "/conversations"),
    createConversation: (recipientIdArr, isGroup, title) =>
      call("POST", "/conversation", { recipientIdArr, isGroup, title }),
    /** params: {limit, before} (newest first) or {limit, after} (oldest first). */
    listMessages: (conversationId, params) =>
      call("GET", `/conversations/${encodeURIComponent(conversationId)}/messages${query(params)}`),
    /** params: {after (changeSeq), limit}: {changes: [messages in their current state], next}. */
    listChanges: (conversationId, params) => call("GET", `${conversationPath(conversationId)}/changes${query(params)}`),
    listParticipants: (conversationId) =>
      call("GET", `/conversations/${encodeURIComponent(conversationId)}/participants`),
    /** The conversation object with `members` [{userId, role, joinedAt}] and `reads` (read positions). */
    getConversation: (conversationId) => call("GET", conversationPath(conversationId)),
    // Groups (owner/admin rules are the server's; a refusal comes back as ApiError 403 Forbidden).
    addParticipants: (conversationId, userIds) =>
      call("POST", `${conversationPath(conversationId)}/participants`, { userIds }),
    /** Leave (userId = yourself) or remove someone else. */
    removeParticipant: (conversationId, userId) =>
      call("DELETE", `${conversationPath(conversationId)}/participants/${encodeURIComponent(userId)}`),
    setRole: (conversationId, userId, role) =>
      call("PATCH", `${conversationPath(conversationId)}/participants/${encodeURIComponent(userId)}`, { role }),
    rename: (conversationId, title) => call("PATCH", conversationPath(conversationId), { title }),
    setMuted: (conversationId, muted) => call("PUT", `${conversationPath(conversationId)}/settings`, { muted }),
    /** [{userId, online, lastActiveAt}] for at most 100 users (people we share no conversation with: offline). */
    presence: (userIds) => call("GET", `/presence${query({ userIds: userIds.join(",") })}`),
  };
}
