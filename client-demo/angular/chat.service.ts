// The Angular face of ChatClient: provide CHAT_CONFIG once, inject ChatService anywhere.
//
//   providers: [{ provide: CHAT_CONFIG, useFactory: () => ({
//     url: environment.chatUrl, token: () => inject(AuthService).token(), userName: "Alice" }) }]
//
//   constructor(private chat: ChatService) {
//     chat.messages$.subscribe((m) => this.thread.upsert(m));
//     chat.connect();
//   }

import { Inject, Injectable, InjectionToken, OnDestroy } from "@angular/core";

import { ChatClient, ChatClientOptions } from "./chat-client.js";

export const CHAT_CONFIG = new InjectionToken<ChatClientOptions>("CHAT_CONFIG");

@Injectable({ providedIn: "root" })
export class ChatService extends ChatClient implements OnDestroy {
  constructor(@Inject(CHAT_CONFIG) options: ChatClientOptions) {
    super(options);
  }

  ngOnDestroy(): void {
    this.disconnect();
  }
}

export { ChatError } from "./chat-client.js";
export type * from "./chat-protocol.js";
