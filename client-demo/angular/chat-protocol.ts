// The chat protocol v1 as TypeScript types: DTOs, the ack envelope, error codes,
// and every method and event with its positional arguments. See docs/protocol.md.

export type UserId = string;
export type MessageId = string;
export type MessageStatus = "sent" | "delivered" | "read";
export type PresenceState = "Online" | "Offline";

export interface MessageDto {
  id: MessageId;
  senderId: UserId;
  receiverId: UserId;
  text: string;
  status: MessageStatus;
  /** UTC ISO-8601 with milliseconds, e.g. "2026-11-22T03:04:05.123Z". */
  timestamp: string;
  clientMessageId: string | null;
}

export interface ConversationDto {
  /** The other user's id. */
  id: UserId;
  name: string;
  avatar: string | null;
  previewMessage: string;
  lastActive: string;
  isActive: boolean;
  unreadCount: number;
}

export interface SyncPage {
  messages: MessageDto[];
  /** Opaque; pass back as-is. */
  cursor: string;
  hasMore: boolean;
}

export interface Registered {
  userId: UserId;
  pending: number;
}

export type ErrorCode =
  | "invalid_argument"
  | "forbidden"
  | "not_found"
  | "rate_limited"
  | "unavailable"
  | "internal"
  | "unknown_event";

/** What a refused handshake carries in `connect_error`'s `err.data`. */
export interface HandshakeError {
  code: "unauthorized" | "unavailable" | "internal";
  message: string;
}

export type Ack<T> =
  | { ok: true; data: T }
  | { ok: false; error: { code: ErrorCode; message: string } };

/** Client → server methods: positional arguments and what `data` holds on success. */
export interface ClientMethods {
  RegisterUser: { args: [userName: string]; result: Registered };
  SendMessage: {
    args: [senderId: UserId, receiverId: UserId, message: string, clientMessageId?: string | null];
    result: MessageId;
  };
  GetMessageHistory: {
    args: [user1Id: UserId, user2Id: UserId, skip?: number, take?: number];
    result: MessageDto[];
  };
  GetOnlineStatus: { args: [userId: UserId]; result: boolean };
  GetOnlineUsers: { args: []; result: UserId[] };
  MessageReceived: { args: [messageId: MessageId]; result: null };
  MessageRead: { args: [messageId: MessageId]; result: null };
  GetConversations: { args: []; result: ConversationDto[] };
  MarkConversationRead: { args: [otherUserId: UserId]; result: number };
  Typing: { args: [receiverId: UserId, isTyping: boolean]; result: null };
  Sync: { args: [cursor: string | null, limit?: number]; result: SyncPage };
  /** At most 500 ids; replaces this socket's previous subscription. */
  SubscribePresence: { args: [userIds: UserId[]]; result: Record<UserId, PresenceState> };
}

export type MethodName = keyof ClientMethods;

/** Server → client events and their positional arguments. */
export interface ServerEvents {
  Notify: (text: string) => void;
  ReceiveMessage: (
    senderId: UserId,
    message: string,
    messageId: MessageId,
    status: MessageStatus,
    messageDto: MessageDto,
  ) => void;
  MessageSent: (messageDto: MessageDto) => void;
  MessageStatusChanged: (messageId: MessageId, status: MessageStatus) => void;
  UserStatusChanged: (userId: UserId, state: PresenceState) => void;
  UserTyping: (userId: UserId, isTyping: boolean) => void;
  SessionExpired: () => void;
  /** Live events may have been missed (e.g. a backplane outage): call Sync from your cursor. */
  SyncRequired: () => void;
}

/** Socket.IO's typed-emit shape for the client side (used with Socket<ServerEvents, ClientEmits>). */
export type ClientEmits = {
  [M in MethodName]: (
    ...args: [...ClientMethods[M]["args"], (ack: Ack<ClientMethods[M]["result"]>) => void]
  ) => void;
};
