// A WebSocket that keeps itself connected: exponential backoff with jitter
// (capped at 10 s), a heartbeat every 5 minutes (the server's idle timeout is
// 10), and an immediate retry when the browser comes back online.

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 10_000;
const HEARTBEAT_MS = 5 * 60 * 1000;

export class ChatSocket {
  /**
   * getUrl(afterFailure) -> Promise<string>: the URL to dial; afterFailure is
   *   true when the previous attempt never opened (a chance to re-mint a token).
   * onFrame(frame): every JSON object the server sends.
   * onState(state, retryInMs): "connecting" | "open" | "offline" | "stopped".
   * onOpen(), onClose(): each time a connection opens / an open one ends.
   */
  constructor({ getUrl, onFrame, onState, onOpen, onClose }) {
    this.getUrl = getUrl;
    this.onFrame = onFrame;
    this.onState = onState;
    this.onOpen = onOpen;
    this.onClose = onClose;
    this.ws = null;
    this.state = "stopped";
    this.failures = 0;
    this.lastOpened = false; // the previous attempt opened (then dropped): its token was fine
    this.generation = 0; // bumps on every dial and on stop(), to drop stale work
    this.retryTimer = null;
    this.heartbeatTimer = null;
    this.onlineListener = () => this.reconnectNow();
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  start() {
    if (this.state !== "stopped") return;
    this.failures = 0;
    window.addEventListener("online", this.onlineListener);
    this.connect();
  }

  stop() {
    this.generation += 1;
    window.removeEventListener("online", this.onlineListener);
    clearTimeout(this.retryTimer);
    this.stopHeartbeat();
    const ws = this.ws;
    this.ws = null;
    this.setState("stopped");
    if (ws) ws.close(1000, "bye");
  }

  /** Skip the remaining backoff (e.g. the user clicked the status). */
  reconnectNow() {
    if (this.state !== "offline") return;
    clearTimeout(this.retryTimer);
    this.connect();
  }

  /** Sends a frame if the socket is open; returns whether it was handed over. */
  send(frame) {
    if (!this.isOpen) return false;
    try {
      this.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  async connect() {
    const generation = ++this.generation;
    this.setState("connecting");
    const afterFailure = this.failures > 0 && !this.lastOpened;
    this.lastOpened = false;
    let url;
    try {
      url = await this.getUrl(afterFailure);
    } catch {
      if (generation === this.generation) this.scheduleRetry();
      return;
    }
    if (generation !== this.generation) return; // stopped or redialled meanwhile

    let opened = false;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true;
      this.lastOpened = true;
      this.failures = 0;
      this.setState("open");
      this.startHeartbeat();
      this.onOpen();
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame && typeof frame === "object" && !Array.isArray(frame)) this.onFrame(frame);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return; // an old socket, or stop() already ran
      this.ws = null;
      this.stopHeartbeat();
      if (opened) this.onClose();
      this.scheduleRetry();
    };
  }

  scheduleRetry() {
    if (this.state === "stopped") return;
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.failures);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.failures += 1;
    this.setState("offline", delay);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  startHeartbeat() {
    this.stopHeartbeat();
    this.heartbeatTimer = setInterval(() => this.send({ action: "heartbeat" }), HEARTBEAT_MS);
  }

  stopHeartbeat() {
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
  }

  setState(state, retryInMs) {
    this.state = state;
    this.onState(state, retryInMs);
  }
}
