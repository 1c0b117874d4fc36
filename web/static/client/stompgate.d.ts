// Type declarations of /client/stompgate.js (hand-written; see docs/CLIENT.md).

/** ERROR codes after which the client stops (onStop) instead of reconnecting. */
export declare const FATAL_CODES: readonly ['revoked', 'unauthenticated', 'too_many_sessions'];

export type ClientState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'stopped';

/** x-error-code values of SPEC §4, plus the helper's own. */
export type ErrorCode =
  | 'unauthenticated' | 'token_expired' | 'revoked' | 'forbidden' | 'bad_frame' | 'frame_too_large'
  | 'too_many_subscriptions' | 'too_many_sessions' | 'rate_limited' | 'slow_consumer'
  | 'broker_unavailable' | 'broker_busy' | 'shutting_down' | 'broker'
  | 'refresh_failed' | 'history_failed'
  | (string & {});

export interface StateInfo {
  /** connected: the CONNECTED user-name (the token's sub). */
  user?: string | null;
  /** reconnecting: how long until the next attempt, in ms. */
  delayMs?: number;
  /** reconnecting: consecutive failed attempts so far. */
  attempt?: number;
  /** why: an x-error-code, 'connection_lost', 'connect_failed', 'start', 'retry'. */
  reason?: string;
  /** stopped: the message of the ERROR that stopped it. */
  message?: string;
}

/** The minimal @stomp/stompjs surface the helper uses (stompjs 7 Client). */
export interface StompFrameLike {
  command?: string;
  headers: Record<string, string>;
  body: string;
}
export interface StompClientLike {
  connectHeaders: Record<string, string>;
  readonly connected: boolean;
  activate(): void;
  deactivate(options?: { force?: boolean }): Promise<void>;
  subscribe(destination: string, callback: (frame: StompFrameLike) => void, headers?: Record<string, string>): { unsubscribe(): void };
  publish(params: { destination: string; body?: string; headers?: Record<string, string> }): void;
  watchForReceipt(receiptId: string, callback: (frame: StompFrameLike) => void): void;
}
export type StompClientClass = new (config: Record<string, unknown>) => StompClientLike;

export interface StompgateOptions {
  /** ws(s):// URL of the edge's /ws; default: this page's origin + /ws. */
  url?: string;
  /** Base URL for /api/history and the admission probe; default: derived from url. */
  httpURL?: string;
  /** The JWT sent on CONNECT (Authorization: Bearer) and to /api/history. */
  token?: string;
  /**
   * Returns a fresh JWT for the same sub. Called before exp (then sent to
   * /edge/refresh), after token_expired, and after a 401 from history.
   * Without it, token_expired stops the client.
   */
  getToken?: () => Promise<string>;

  onState?: (state: ClientState, info: StateInfo) => void;
  /** Every ERROR frame and helper failure; the client reacts by itself. */
  onError?: (e: { code: ErrorCode; message: string; frame?: StompFrameLike }) => void;
  /** The client stopped by itself (a FATAL_CODES error, or token_expired without getToken). */
  onStop?: (e: { reason: ErrorCode; message: string }) => void;
  /** After each CONNECTED, once subscriptions are renewed. */
  onConnect?: (e: { user: string | null; frame: StompFrameLike }) => void;

  /** First backoff window, ms (default 500); the window doubles per failure. */
  baseDelayMs?: number;
  /** Backoff window cap, ms (default 30000). */
  maxDelayMs?: number;
  /** Cap of a probed Retry-After, ms (default 120000). */
  maxRetryAfterMs?: number;
  /** A session up this long resets the backoff, ms (default 10000). */
  stableMs?: number;
  /** After shutting_down, reconnect within [0, this) ms (default 1000). */
  shutdownJitterMs?: number;
  /** Refresh this long before exp, at most a third of the lifetime, ms (default 30000). */
  refreshMarginMs?: number;
  /** Retry a failed getToken() this often until exp, ms (default 5000). */
  refreshRetryMs?: number;
  /** STOMP heart-beats both ways, ms (default 10000). */
  heartbeatMs?: number;
  /** Close an attempt without CONNECTED after this, ms (default 10000). */
  connectionTimeoutMs?: number;
  /** Wait for the /edge/refresh RECEIPT, ms (default 10000). */
  receiptTimeoutMs?: number;
  /** HEAD /ws admission probe timeout, ms (default 3000). */
  probeTimeoutMs?: number;
  /**
   * 'auto' (default): WebSocket, switching to SockJS at sockjsPath for good
   * after sockjsAfterFailures attempts in a row failed before CONNECTED
   * while the edge answered the admission probe (a proxy that strips
   * Upgrade). 'websocket' or 'sockjs' fix the transport.
   */
  transport?: 'auto' | 'websocket' | 'sockjs';
  /** SockJS endpoint path (default '/sockjs'). */
  sockjsPath?: string;
  /** Admitted-but-failed attempts before the SockJS fallback (default 2). */
  sockjsAfterFailures?: number;
  /** The SockJS class (default: the sockjs-client bundle served beside the helper). */
  SockJS?: new (url: string) => unknown;
  /** /api/history page size, 1–1000 (default 500). */
  historyPageSize?: number;
  /** A hole the stream does not fill within this is fetched from history, ms (default 300). */
  holeWaitMs?: number;
  /** Unacknowledged send()s kept across reconnects (default 200). */
  maxOutbox?: number;

  /** Injection points (tests, bundlers): default globalThis.StompJs.Client, loaded from ./stomp.umd.min.js. */
  Client?: StompClientClass;
  fetch?: typeof fetch;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: unknown) => void;
  now?: () => number;
  random?: () => number;
  debug?: (msg: string) => void;
}

/** A message of a journaled stream, live, replayed or from history. */
export interface JournalMessage {
  seq: number;
  body: string;
  /** For a non-text content type read from history (base64 there). */
  binaryBody?: Uint8Array;
  headers: Record<string, unknown>;
  /** x-user-id: the sender's token sub, stamped by the edge. */
  sender: string | null;
  /** x-message-id / message_id (the idempotency key). */
  messageId: string | null;
  contentType: string | null;
  /** From history only: ISO time. */
  publishedAt?: string;
  source: 'live' | 'replay' | 'history';
}

export interface JournalOptions {
  /** Deliver messages with seq > afterSeq (default 0: the whole stream). */
  afterSeq?: number;
  /** When starting far behind, deliver only the last N. */
  tail?: number;
  /** History no longer holds seq after+1 … before-1: skipped. */
  onGap?: (gap: { after: number; before: number }) => void;
  /** Once everything the edge knew at subscribe time is delivered (and again never). */
  onCaughtUp?: (lastSeq: number) => void;
  /** Messages without x-seq on that destination (default: dropped). */
  onUnsequenced?: (m: Omit<JournalMessage, 'seq'> & { seq: null }) => void;
}

export interface JournalSubscription {
  readonly destination: string;
  /** The last seq delivered. */
  readonly lastSeq: number;
  close(): void;
}

export interface PlainSubscription {
  readonly destination: string;
  close(): void;
}

export interface PresenceOptions {
  /** Send "here" every everyMs (1000–60000, default 10000); TTL is 3×. */
  everyMs?: number;
  /** The set of users changed (sorted, distinct x-user-id values). */
  onChange?: (users: string[]) => void;
}

export interface Presence {
  readonly destination: string;
  /** This tab's id in presence messages. */
  readonly tab: string;
  users(): string[];
  /** Sends leave (best effort) and unsubscribes. */
  close(): void;
}

export declare class StompgateClient {
  constructor(options?: StompgateOptions);
  readonly state: ClientState;
  /** The CONNECTED user-name of the current or last session. */
  readonly user: string | null;
  readonly connected: boolean;
  /** The newest token (after refreshes). */
  readonly token: string;
  start(): Promise<void>;
  stop(reason?: string, message?: string): Promise<void>;
  /** Fetches a token now and sends it to /edge/refresh; true once acknowledged. */
  refresh(): Promise<boolean>;
  journal(destination: string, onMessage: (m: JournalMessage) => void, options?: JournalOptions): JournalSubscription;
  subscribe(destination: string, onMessage: (frame: StompFrameLike) => void, headers?: Record<string, string>): PlainSubscription;
  presence(destination: string, options?: PresenceOptions): Presence;
  /**
   * Resolves on the edge's RECEIPT; kept and re-sent after reconnects with
   * the same amqp-message-id. Rejects with code 'stopped' or 'outbox_full'.
   */
  send(destination: string, body: string, headers?: Record<string, string>): Promise<{ messageId: string }>;
  /** send()s not yet acknowledged. */
  pending(): Array<{ id: string; destination: string; body: string }>;
  /** GET /api/history?destination&after_seq&limit (raw rows, oldest first). */
  history(destination: string, afterSeq: number, limit?: number): Promise<Array<Record<string, unknown>>>;
  /** HEAD on the WebSocket path: the Retry-After (ms) of a 503, else null. */
  probeAdmission(): Promise<number | null>;
}

export declare function backoffDelay(attempt: number, opts?: { baseDelayMs?: number; maxDelayMs?: number }, random?: () => number): number;
export declare function parseRetryAfter(value: string | null | undefined, nowMs?: number): number | null;
export declare function tokenExpiry(token: string): number | null;
export declare function refreshDelay(expMs: number, nowMs: number, marginMs?: number): number;
export declare function parsePresence(body: string): { type: 'join' | 'here' | 'leave'; tab: string; every: number; ttlMs: number } | null;
export declare function randomId(bytes?: number): string;
export declare function fromFrame(frame: StompFrameLike): JournalMessage | (Omit<JournalMessage, 'seq'> & { seq: null });
export declare function fromHistory(row: Record<string, unknown>): JournalMessage;

export declare class SeqBuffer<T = unknown> {
  constructor(lastSeq?: number);
  lastSeq: number;
  push(seq: number, item: T): { dup: boolean; ready: T[] };
  readonly hasHole: boolean;
  readonly firstPending: number | null;
  readonly lastPending: number | null;
  skipTo(seq: number): T[];
}

export declare class PresenceRoster {
  constructor(opts?: { ttlMs?: number });
  apply(user: string, msg: { type: string; tab: string; ttlMs?: number }, nowMs: number): boolean;
  expire(nowMs: number): boolean;
  users(): string[];
  clear(): void;
}
