// The Angular face of @chat-server/client: provide CHAT_CONFIG once, inject ChatService anywhere.
//
//   providers: [{ provide: CHAT_CONFIG, useFactory: () => {
//     const auth = inject(AuthService);
//     return { url: environment.chatUrl, token: () => auth.token(), userName: auth.name() };
//   } }]
//
// It is the framework-free ChatClient itself (RxJS streams, promise methods), made
// injectable and disconnected when its injector is destroyed.

import { Injectable, InjectionToken, OnDestroy, inject } from "@angular/core";
import { ChatClient, type ChatClientOptions } from "@chat-server/client";

export const CHAT_CONFIG = new InjectionToken<ChatClientOptions>("CHAT_CONFIG");

@Injectable()
export class ChatService extends ChatClient implements OnDestroy {
  constructor() {
    super(inject(CHAT_CONFIG));
  }

  ngOnDestroy(): void {
    this.disconnect();
  }
}
