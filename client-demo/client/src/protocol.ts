// The chat protocol v2.0 as TypeScript types: DTOs, the ack envelope, error codes,
// and every method and event with its positional arguments (docs/protocol.md).

export type UserId = string;
export type MessageId = string;
export type GroupId = string;
export type MessageStatus = "sent" | "delivered" | "read";
export type PresenceState = "Online" | "Offline";

export interface MessageDto {
  id: MessageId;
  senderId: UserId;
  /** The other user of a direct message; null for a group message. */
  receiverId: UserId | null;
  /** null for a direct message; the group's id for a group message. */
  groupId: GroupId | null;
  text: string;
  /** For a group message, the aggregate over its recipients. */
  status: MessageStatus;
  /** UTC ISO-8601 with milliseconds, e.g. "2026-11-22T03:04:05.123Z". */
  timestamp: string;
  clientMessageId: string | null;
}

export type ConversationKind = "direct" | "group";

export interface ConversationDto {
  kind: ConversationKind;
  /** The other user's id (direct) or the group's id (group). */
  id: UserId | GroupId;
  /** The other user's display name, or the group's title. */
  name: string;
  avatar: string | null;
  previewMessage: string;
  lastActive: string;
  /** Presence of the other user; always false for a group. */
  isActive: boolean;
  unreadCount: number;
  /** The group's size (groups only). */
  memberCount?: number;
}

export type GroupRole = "admin" | "member";

export interface GroupMember {
  userId: UserId;
  name: string;
  role: GroupRole;
  joinedAt: string;
}

export interface GroupDto {
  id: GroupId;
  title: string;
  avatar: string | null;
  createdBy: UserId;
  createdAt: string;
  memberCount: number;
  /** The current members: a removed or departed user is no longer listed. */
  members: GroupMember[];
}

export interface Receipts {
  recipientCount: number;
  deliveredCount: number;
  readCount: number;
  /** Who has read it, when there are at most 100 recipients; else null. */
  readBy: UserId[] | null;
}

export interface SyncPage {
  messages: MessageDto[];
  /** Groups created, renamed or whose membership changed since the cursor (left ones included). */
  groups: GroupDto[];
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
  code: "unauthorized" | "rate_limited" | "unavailable" | "internal";
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

  CreateGroup: { args: [title: string, memberIds: UserId[], clientRequestId?: string | null]; result: GroupDto };
  GetGroup: { args: [groupId: GroupId]; result: GroupDto };
  AddGroupMembers: { args: [groupId: GroupId, userIds: UserId[]]; result: GroupDto };
  /** Removing yourself is leaving. */
  RemoveGroupMember: { args: [groupId: GroupId, userId: UserId]; result: null };
  RenameGroup: { args: [groupId: GroupId, title: string]; result: GroupDto };
  SendGroupMessage: { args: [groupId: GroupId, message: string, clientMessageId?: string | null]; result: MessageId };
  GetGroupHistory: { args: [groupId: GroupId, skip?: number, take?: number]; result: MessageDto[] };
  MarkGroupRead: { args: [groupId: GroupId]; result: number };
  GroupTyping: { args: [groupId: GroupId, isTyping: boolean]; result: null };
  GetMessageReceipts: { args: [messageId: MessageId]; result: Receipts };
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

  ReceiveGroupMessage: (groupId: GroupId, messageDto: MessageDto) => void;
  /** A group was created or renamed, or members joined or went (a removed member gets it once more). */
  GroupChanged: (groupDto: GroupDto) => void;
  UserTypingInGroup: (groupId: GroupId, userId: UserId, isTyping: boolean) => void;
  /** This user's read position in a group moved on another device. */
  GroupReadPositionChanged: (groupId: GroupId, messageId: MessageId) => void;
}

/** Socket.IO's typed-emit shape for the client side (used with Socket<ServerEvents, ClientEmits>). */
export type ClientEmits = {
  [M in MethodName]: (
    ...args: [...ClientMethods[M]["args"], (ack: Ack<ClientMethods[M]["result"]>) => void]
  ) => void;
};
