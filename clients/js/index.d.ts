// Type declarations of @ruststacker/client (hand-written; they follow src/*.js).

/** A login's (or refresh's) answer: the session to keep. */
export interface SessionData {
  token: string;
  user_id: number;
  /** RFC 3339: when the access token is refused. */
  expires_at: string;
  refresh_token: string;
  /** RFC 3339. */
  refresh_expires_at?: string;
}

/** A room message, in the shape of `GET /api/chat/history`'s messages. */
export interface Message {
  id: number;
  room_id: number;
  sender_id: number;
  seq: number;
  type: 'text' | 'image' | 'file';
  content: string;
  /** RFC 3339 UTC. */
  timestamp: string;
  client_msg_id: string | null;
}

/** The registry's placement. */
export interface Gateway {
  gateway_id: string;
  address: string;
  port: number;
  load?: number;
  connections?: number;
  max_connections?: number;
}

export interface SendResult {
  message_id: number;
  room_id: number;
  seq: number;
  timestamp: string;
  client_msg_id: string;
  /** A retry of a message already stored: the original id and seq. */
  duplicate: boolean;
}

export interface HistoryPage {
  room_id: number;
  messages: Message[];
  has_more: boolean;
}

export interface JoinedRoom {
  room_id: number;
  name: string | null;
  is_group: boolean;
  is_open?: boolean;
  owner_id?: number | null;
  member_count?: number;
  last_seq: number;
  created_at?: string;
}

/** The minimal browser WebSocket API the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** Meta's base URL, e.g. `http://127.0.0.1:8080`. */
  metaUrl: string;
  /** Send's base URL; default: what Meta's `GET /api/web/config` says. */
  sendUrl?: string;
  /** The registry's base URL; default: as `sendUrl`. */
  registryUrl?: string;
  /** Default: the global `fetch`. */
  fetch?: typeof fetch;
  /** Default: the global `WebSocket` (Node 20: run with `--experimental-websocket`, or pass one). */
  WebSocket?: WebSocketConstructor;
  /** Sent as `device_id` on the WebSocket URL when set. */
  deviceId?: string;
  /** A saved session to resume. */
  session?: SessionData;
  /** Reads the saved session (another tab may have renewed it); checked before each refresh. */
  loadSession?: () => SessionData | null | undefined;
  /** Serializes refreshes; default: the Web Lock `ruststacker.refresh`, else an in-process queue. */
  lock?: <T>(fn: () => Promise<T>) => Promise<T>;
  /** The last `seq` per room a previous run handed to the app (`client.cursors()`). */
  cursors?: Record<string, number>;
  /** Default 60000 (half the remaining life for shorter tokens). */
  renewAheadMs?: number;
  /** A renewal that could not reach the server is tried again after this long (5000). */
  renewRetryMs?: number;
  /** First reconnect delay before jitter (500: the first retry comes after 250-500 ms). */
  reconnectFirstMs?: number;
  /** Reconnect delay ceiling (10000). */
  reconnectMaxMs?: number;
  /** How long a lost gateway is left out of placements (30000). */
  excludeMs?: number;
  /** Acknowledgements are gathered this long into one `ack` frame per room (100). */
  ackDelayMs?: number;
  /** A `ping` frame this often while connected (25000). */
  pingIntervalMs?: number;
  /** Nothing heard for this long: the connection is dropped and made again (60000). */
  silenceTimeoutMs?: number;
  /** A gap the `sync` did not fill by then is read from history (3000). */
  gapTimeoutMs?: number;
  /** After each connect, fill rooms whose last `seq` is past what was delivered (true). */
  catchUp?: boolean;
  /** Message ids remembered for deduplication (10000). */
  dedupeWindow?: number;
  /** Attempts per `sendMessage` (10). */
  sendMaxAttempts?: number;
  /** No new attempt after this long (60000). */
  sendTimeoutMs?: number;
  /** First delay between attempts (250, doubling, jittered). */
  sendRetryFirstMs?: number;
  /** Ceiling of the delay between attempts (5000). */
  sendRetryMaxMs?: number;
  /** Messages per history page (50; the server allows up to 200). */
  historyPageSize?: number;
  /** Builds the WebSocket URL (e.g. behind a proxy). */
  gatewayUrl?: (gateway: Gateway, token: string) => string;
}

export type ConnectionState = 'idle' | 'connecting' | 'online' | 'offline' | 'stopped';

export interface ChatFrame {
  type: 'chat';
  id: number;
  room_id: number;
  sender_id: number;
  seq: number;
  payload: { content: string; timestamp: string; type?: 'text' | 'image' | 'file' };
  client_msg_id?: string | null;
}

export interface SystemFrame {
  type: 'system';
  id: number;
  room_id: number;
  sender_id: number;
  payload: string;
}

export interface AckFrame {
  type: 'ack';
  id: number;
  room_id: number;
  seq: number;
  client_msg_id?: string | null;
}

export interface PongFrame {
  type: 'pong';
}

export type NoticeEvent =
  | 'member_added'
  | 'member_joined'
  | 'member_left'
  | 'member_removed'
  | 'role_changed'
  | 'owner_changed'
  | 'group_renamed'
  | 'join_requested'
  | 'join_rejected'
  | 'dissolved';

export interface NoticeFrame {
  type: 'notice';
  room_id: number;
  event: NoticeEvent;
  user_ids: number[];
  by?: number | null;
  detail?: string | null;
  request_id?: number | null;
}

export interface ReadFrame {
  type: 'read';
  room_id: number;
  user_id: number;
  seq: number;
}

export interface TypingFrame {
  type: 'typing';
  room_id: number;
  user_id: number;
}

export type ServerFrame =
  | ChatFrame
  | SystemFrame
  | AckFrame
  | PongFrame
  | NoticeFrame
  | ReadFrame
  | TypingFrame;

export interface Ack {
  id: number;
  room_id: number;
  seq: number;
  client_msg_id: string | null;
}

export interface Disconnected {
  /** The close code (null when no socket was opened: no placement, no session renewal). */
  code: number | null;
  reason: string;
  gateway: string | null;
  willReconnect: boolean;
  retryInMs: number | null;
}

export interface ClientEvents {
  /** A new session pair (login, renewal, password change): save it. */
  session: SessionData;
  /** The session ended: the refresh was refused (`invalid_refresh_token`, `refresh_token_reused`) or `logged_out`. */
  session_ended: { error: string; message: string };
  state: { state: ConnectionState; [key: string]: unknown };
  connecting: { attempt: number };
  /** The welcome frame arrived: the connection is live. */
  connected: { gateway: Gateway; deviceId: string | null };
  disconnected: Disconnected;
  /** Closed with a code that means do not reconnect (4009, 4410, 1002, 1003, 1007, 1009). */
  stopped: { code: number; reason: string; gateway: string | null };
  /** Every server frame as it arrived, before any other event. */
  frame: ServerFrame | Record<string, unknown>;
  system: SystemFrame;
  /** A room message: each once, in `seq` order per room, without holes. */
  message: Message;
  /** The sender's ACK of one of this user's messages. */
  ack: Ack;
  pong: PongFrame;
  notice: NoticeFrame;
  /** `user_id` has read `room_id` up to `seq` (this user's other devices, and members of small rooms). */
  read: { room_id: number; user_id: number; seq: number };
  /** `user_id` is typing in `room_id`. */
  typing: { room_id: number; user_id: number };
  /** Messages `after_seq < seq < before_seq` of a room are missing and are being asked for. */
  gap: { room_id: number; after_seq: number; before_seq: number };
  /** An `ack` frame went to the gateway. */
  acknowledged: { room_id: number; seq: number };
  /** A send failed in a way worth retrying; it is tried again after `retryInMs`. */
  send_retry: { room_id: number; client_msg_id: string; attempt: number; error: ApiError; retryInMs: number };
  /** A listener threw. */
  listener_error: { event: string; error: unknown };
}

export class ApiError extends Error {
  constructor(status: number, name: string, message: string, data?: unknown);
  /** The HTTP status; 0 when the server was not reached. */
  status: number;
  /** The API's `error` name (e.g. `not_a_member`), `http_<status>`, or `unreachable`. */
  name: string;
  data: unknown;
  /** Whether trying again later may succeed (network, 429, 5xx). */
  readonly retryable: boolean;
}

/** The session ended (or there is none): log in again. */
export class SessionEndedError extends ApiError {
  constructor(name: string, message: string);
}

/** Close codes after which the client does not reconnect by itself. */
export const NO_RECONNECT: readonly number[];
/** 4401: the token was revoked; the client renews and reconnects, or its session ends. */
export const TOKEN_REVOKED: 4401;

/** A fresh `client_msg_id`. */
export function newClientMsgId(): string;

export class Client {
  constructor(options: ClientOptions);

  on<K extends keyof ClientEvents>(event: K, fn: (value: ClientEvents[K]) => void): () => void;
  once<K extends keyof ClientEvents>(event: K, fn: (value: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(event: K, fn: (value: ClientEvents[K]) => void): void;

  readonly session: SessionData | null;
  readonly userId: number | null;
  readonly state: ConnectionState;
  /** When the next reconnect is due (ms since the epoch), or null. */
  readonly nextReconnectAt: number | null;

  register(user: { username: string; password: string; nickname?: string | null }): Promise<{
    user_id: number; username: string; nickname: string; avatar: string; created_at: string;
  }>;
  login(username: string, password: string): Promise<SessionData>;
  resume(session: SessionData): void;
  renew(): Promise<boolean>;
  changePassword(oldPassword: string, newPassword: string): Promise<SessionData>;
  logout(): Promise<void>;

  urls(): Promise<{ meta: string; send: string; registry: string }>;
  request<T = any>(
    service: 'meta' | 'send' | 'registry',
    method: string,
    path: string,
    body?: unknown,
    opts?: { auth?: boolean },
  ): Promise<T>;
  me(): Promise<{ user_id: number; username: string; nickname: string; avatar: string; created_at: string }>;
  joinedRooms(): Promise<{ room_ids: number[]; rooms: JoinedRoom[] }>;
  createGroup(name: string, memberIds: number[], opts?: { open?: boolean }): Promise<{
    room_id: number; name: string; owner_id: number; member_ids: number[]; is_open: boolean; created_at: string;
  }>;
  directRoom(userId: number): Promise<{ room_id: number; created: boolean; [key: string]: unknown }>;
  members(roomId: number): Promise<{ room_id: number; members: Array<Record<string, unknown>> }>;
  placement(exclude?: string[]): Promise<Gateway>;

  sendMessage(
    roomId: number,
    content: string,
    opts?: { type?: 'text' | 'image' | 'file'; clientMsgId?: string },
  ): Promise<SendResult>;

  history(roomId: number, opts?: { afterSeq?: number; limit?: number }): Promise<HistoryPage>;
  historyPages(
    roomId: number,
    opts?: { afterSeq?: number; limit?: number; untilSeq?: number },
  ): AsyncGenerator<Message[], void, void>;
  historyBefore(roomId: number, beforeSeq: number, limit?: number): Promise<HistoryPage>;

  connect(): Promise<void>;
  disconnect(): void;
  close(): void;
  ping(): Promise<void>;
  sync(roomId: number, afterSeq: number): boolean;
  markRead(roomId: number, seq: number): boolean;
  typing(roomId: number): boolean;
  cursors(): Record<string, number>;
}
