// The WebSocket connection: sign-in by an `auth` frame, requests answered by id, and
// reconnection with backoff. The token is only ever sent inside the auth frame.

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;
const UNAUTHORIZED = 4401;

export class RequestError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

export class Connection {
  constructor(url, token, handlers) {
    this.url = url;
    this.token = token;
    // onHello(hello), onFrame(frame), onState(state, detail), onUnauthorized(reason)
    this.handlers = handlers;
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.backoff = BACKOFF_MIN_MS;
    this.stopped = false;
    this.timer = null;
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, 'signed out');
  }

  // Drop the socket as if the network had: used by the tests' reconnect check too.
  drop() {
    if (this.ws) this.ws.close(4000, 'dropped');
  }

  open() {
    this.setState('connecting');
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.addEventListener('open', () => ws.send(JSON.stringify({ type: 'auth', token: this.token })));
    ws.addEventListener('message', (event) => this.receive(event.data));
    ws.addEventListener('close', (event) => this.closed(ws, event));
  }

  receive(text) {
    const frame = JSON.parse(text);
    if (frame.type === 'hello') {
      this.backoff = BACKOFF_MIN_MS;
      this.setState('online');
      this.handlers.onHello(frame);
      return;
    }
    if ((frame.type === 'ack' || frame.type === 'error' || frame.type === 'pong') && this.pending.has(frame.id)) {
      const { resolve, reject } = this.pending.get(frame.id);
      this.pending.delete(frame.id);
      if (frame.type === 'error') reject(new RequestError(frame.code, frame.message));
      else resolve(frame);
      return;
    }
    this.handlers.onFrame(frame);
  }

  closed(ws, event) {
    if (ws !== this.ws) return;
    this.ws = null;
    for (const { reject } of this.pending.values()) reject(new RequestError('disconnected', 'connection lost'));
    this.pending.clear();
    if (event.code === UNAUTHORIZED) {
      this.stopped = true;
      this.setState('offline');
      this.handlers.onUnauthorized(event.reason || 'the token was refused');
      return;
    }
    if (this.stopped) {
      this.setState('offline');
      return;
    }
    this.setState('reconnecting', `retrying in ${Math.round(this.backoff / 100) / 10}s`);
    this.timer = setTimeout(() => this.open(), this.backoff);
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
  }

  setState(state, detail = '') {
    this.state = state;
    this.handlers.onState(state, detail);
  }

  // Send a request; resolves with its ack (or pong), rejects with a RequestError.
  request(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN || this.state !== 'online') {
      return Promise.reject(new RequestError('disconnected', 'not connected'));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ ...frame, id }));
    });
  }
}
