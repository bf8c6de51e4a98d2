// The enginel.v1.json WebSocket client: reconnects, resubscribes with `since`, drops duplicates by offset.

export interface EventMessage {
  type: "event";
  channel: string;
  epoch: string | null;
  offset: number | null;
  event: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  data: any;
  ts: string;
}

export type Listener = (event: EventMessage) => void;
export type ConnectionState = "connecting" | "online" | "reconnecting" | "offline";

export interface PresenceMember {
  client: string;
  user: { id: number; username: string };
  camera: { position: number[]; target: number[]; up?: number[] | null; fov?: number | null } | null;
  cursor: number[] | null;
  selection: string[];
  joined_at: string;
  updated_at: string;
}

export interface Hooks {
  /** The subscription is live (first time and after each reconnect): a good moment to read the REST state. */
  onReady?: () => void;
  /** Missed events could not be replayed: reload from REST. */
  onReset?: () => void;
  onFailure?: (error: RealtimeError) => void;
}

interface Channel {
  listeners: Set<Listener>;
  hooks: Set<Hooks>;
  epoch: string | null;
  offset: number | null;
  live: boolean;
}

interface Pending {
  resolve: (value: Record<string, unknown>) => void;
  reject: (error: RealtimeError) => void;
  timer: number;
}

export class RealtimeError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const REQUEST_TIMEOUT = 10_000;
const PING_EVERY = 15_000;
const MAX_BACKOFF = 8_000;

export class Realtime {
  state: ConnectionState = "connecting";
  private ws: WebSocket | null = null;
  private nextId = 1;
  private pending = new Map<number, Pending>();
  private channels = new Map<string, Channel>();
  private stateListeners = new Set<(state: ConnectionState) => void>();
  private backoff = 250;
  private retryTimer: number | undefined;
  private pingTimer: number | undefined;
  private stopped = false;
  private connectedOnce = false;

  constructor(private readonly onAuthLost: () => void) {}

  start(): void {
    window.addEventListener("offline", this.goOffline);
    window.addEventListener("online", this.goOnline);
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    window.removeEventListener("offline", this.goOffline);
    window.removeEventListener("online", this.goOnline);
    window.clearTimeout(this.retryTimer);
    window.clearInterval(this.pingTimer);
    this.channels.clear();
    this.ws?.close(1000, "signed out");
    this.ws = null;
  }

  onState(fn: (state: ConnectionState) => void): () => void {
    this.stateListeners.add(fn);
    fn(this.state);
    return () => void this.stateListeners.delete(fn);
  }

  /** Listen on a channel; events arrive in order, once each, across reconnects. Returns the unsubscribe. */
  subscribe(channel: string, listener: Listener, hooks: Hooks = {}): () => void {
    let state = this.channels.get(channel);
    const fresh = state === undefined;
    if (!state) {
      state = { listeners: new Set(), hooks: new Set(), epoch: null, offset: null, live: false };
      this.channels.set(channel, state);
    }
    state.listeners.add(listener);
    state.hooks.add(hooks);
    if (fresh && this.state === "online") void this.join(channel);
    else if (state.live) hooks.onReady?.();
    return () => {
      const current = this.channels.get(channel);
      if (!current) return;
      current.listeners.delete(listener);
      current.hooks.delete(hooks);
      if (current.listeners.size === 0) {
        this.channels.delete(channel);
        if (this.state === "online" && current.live) this.send("unsubscribe", { channel }).catch(() => undefined);
      }
    };
  }

  send(type: string, body: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || this.state !== "online") {
      return Promise.reject(new RealtimeError("OFFLINE", "Not connected."));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = window.setTimeout(() => {
        this.pending.delete(id);
        reject(new RealtimeError("TIMEOUT", `${type} got no answer.`));
      }, REQUEST_TIMEOUT);
      this.pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ type, id, ...body }));
    });
  }

  async presence(channel: string): Promise<PresenceMember[]> {
    const result = await this.send("presence", { channel });
    return (result.members as PresenceMember[]) ?? [];
  }

  private connect(): void {
    if (this.stopped || this.ws) return;
    this.setState(this.connectedOnce ? "reconnecting" : "connecting");
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws/`, "enginel.v1.json");
    this.ws = ws;
    ws.onmessage = (message) => this.receive(ws, message);
    ws.onclose = (event) => this.closed(ws, event);
  }

  private receive(ws: WebSocket, message: MessageEvent): void {
    if (ws !== this.ws || typeof message.data !== "string") return;
    let msg: { type?: string; id?: number; result?: Record<string, unknown>; error?: { code: string; message: string } };
    try {
      msg = JSON.parse(message.data);
    } catch {
      return;
    }
    if (msg.type === "welcome") {
      this.connectedOnce = true;
      this.backoff = 250;
      this.setState("online");
      this.pingTimer = window.setInterval(() => this.ping(), PING_EVERY);
      for (const channel of this.channels.keys()) void this.join(channel);
    } else if (msg.type === "result" || msg.type === "error") {
      const pending = this.pending.get(msg.id ?? -1);
      if (!pending) return;
      this.pending.delete(msg.id as number);
      window.clearTimeout(pending.timer);
      if (msg.type === "result") pending.resolve(msg.result ?? {});
      else pending.reject(new RealtimeError(msg.error?.code ?? "ERROR", msg.error?.message ?? "Error"));
    } else if (msg.type === "event") {
      this.dispatch(msg as unknown as EventMessage);
    }
  }

  private async join(channel: string): Promise<void> {
    const state = this.channels.get(channel);
    if (!state) return;
    const since = state.epoch !== null && state.offset !== null ? { epoch: state.epoch, offset: state.offset } : null;
    try {
      const result = await this.send("subscribe", since ? { channel, since } : { channel });
      state.live = true;
      if (!since) {
        state.epoch = result.epoch as string;
        state.offset = result.offset as number;
      } else if (result.recovered === false) {
        // The gap is older than the server's history: nothing to replay, the page must reload its data.
        state.epoch = result.epoch as string;
        state.offset = result.offset as number;
        state.hooks.forEach((h) => h.onReset?.());
      }
      // Recovered: the missed events follow this answer in order and advance the offset as they arrive.
      state.hooks.forEach((h) => h.onReady?.());
    } catch (error) {
      if (error instanceof RealtimeError && (error.code === "OFFLINE" || error.code === "TIMEOUT")) return;
      state.hooks.forEach((h) => h.onFailure?.(error as RealtimeError));
    }
  }

  private dispatch(event: EventMessage): void {
    const state = this.channels.get(event.channel);
    if (!state) return;
    if (event.epoch !== null && event.offset !== null) {
      if (state.epoch === event.epoch && state.offset !== null && event.offset <= state.offset) return; // seen
      state.epoch = event.epoch;
      state.offset = event.offset;
    }
    if (event.event === "subscription.ended") {
      state.live = false;
      if (event.data?.reason === "events_lost") {
        void this.join(event.channel);
        return;
      }
    }
    state.listeners.forEach((fn) => fn(event));
  }

  private closed(ws: WebSocket, event: CloseEvent): void {
    if (ws !== this.ws) return;
    this.ws = null;
    window.clearInterval(this.pingTimer);
    for (const [id, pending] of this.pending) {
      window.clearTimeout(pending.timer);
      pending.reject(new RealtimeError("OFFLINE", "The connection closed."));
      this.pending.delete(id);
    }
    for (const state of this.channels.values()) state.live = false;
    if (this.stopped) return;
    if (event.code === 4001) {
      this.setState("offline");
      this.onAuthLost();
      return;
    }
    if (!navigator.onLine) {
      this.setState("offline");
      return; // the "online" event reconnects
    }
    this.setState("reconnecting");
    window.clearTimeout(this.retryTimer);
    this.retryTimer = window.setTimeout(() => this.connect(), this.backoff);
    this.backoff = Math.min(MAX_BACKOFF, this.backoff * 2);
  }

  private ping(): void {
    this.send("ping").catch(() => {
      // No answer: the socket is dead even if the browser has not noticed; start again.
      if (this.state === "online") this.ws?.close(4000, "ping timeout");
    });
  }

  private readonly goOffline = (): void => {
    this.setState("offline");
    this.ws?.close(1000, "offline");
  };

  private readonly goOnline = (): void => {
    window.clearTimeout(this.retryTimer);
    this.backoff = 250;
    this.connect();
  };

  private setState(state: ConnectionState): void {
    if (this.state === state) return;
    this.state = state;
    this.stateListeners.forEach((fn) => fn(state));
  }
}
