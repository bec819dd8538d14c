// The connection to /ws: reconnects with backoff, reports its state, and hands messages on in
// order. Events already covered by the last `init` (seq not above it) are dropped.

export class Live {
  constructor({ onMessage, onState, onLogin }) {
    this.onMessage = onMessage;
    this.onState = onState;
    // Called before reconnecting when the server ended the socket because the login ended
    // (close code 4401), or when it refused to open one: the page renews its login first.
    this.onLogin = onLogin;
    this.seq = 0;
    this.retry = 0;
    this.ws = null;
    this.timer = null;
  }

  start() {
    this.connect();
    // Reconnect at once when the tab comes back or the network returns.
    window.addEventListener("online", () => this.kick());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.kick();
    });
  }

  kick() {
    if (!this.ws || this.ws.readyState === WebSocket.CLOSED) {
      clearTimeout(this.timer);
      this.retry = 0;
      this.connect();
    }
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.onState("connecting");
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${location.host}/ws`);
    } catch {
      this.schedule();
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.retry = 0;
      this.onState("open");
    };
    ws.onmessage = (e) => {
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        return;
      }
      if (msg.type === "init") {
        this.seq = msg.seq || 0;
      } else if (typeof msg.seq === "number") {
        if (msg.seq <= this.seq) return;
        this.seq = msg.seq;
      }
      this.onMessage(msg);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.onState("closed");
      if (this.onLogin && (e.code === 4401 || !opened)) {
        Promise.resolve(this.onLogin()).finally(() => this.schedule());
      } else {
        this.schedule();
      }
    };
    ws.onerror = () => ws.close();
  }

  schedule() {
    const delay = Math.min(5000, 250 * 2 ** this.retry++);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
