// @chat-server/client: a typed, framework-free client for the chat-server protocol v2.0.
export { ChatClient, ChatError, userIdOf } from "./client.js";
export type {
  ChatClientOptions,
  ClientErrorCode,
  ConnectionState,
  GroupTypingChange,
  PresenceChange,
  ReadPositionChange,
  StatusChange,
  TypingChange,
} from "./client.js";
export type * from "./protocol.js";
