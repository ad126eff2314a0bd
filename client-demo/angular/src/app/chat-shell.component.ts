import { ChangeDetectionStrategy, Component, OnInit, inject } from "@angular/core";

import { CHAT_CONFIG, ChatService } from "./chat/chat.service";
import { ChatStore, cursorKey } from "./chat/chat.store";
import { SessionService } from "./chat/session.service";
import { ConnectionBannerComponent } from "./connection-banner.component";
import { ConversationListComponent } from "./conversation-list.component";
import { ConversationViewComponent } from "./conversation-view.component";

/** Everything after sign-in. The client, and the state built on it, live as long as this component. */
@Component({
  selector: "chat-shell",
  imports: [ConnectionBannerComponent, ConversationListComponent, ConversationViewComponent],
  changeDetection: ChangeDetectionStrategy.OnPush,
  providers: [
    {
      provide: CHAT_CONFIG,
      useFactory: () => {
        const session = inject(SessionService);
        const me = session.session()!;
        return {
          url: location.origin,
          token: () => session.token(),
          userName: me.name,
          // Where Sync resumes: the store saves the cursor after every catch-up.
          cursor: localStorage.getItem(cursorKey(me.userId)),
        };
      },
    },
    ChatService,
    ChatStore,
  ],
  template: `
    <chat-connection-banner />
    <header class="topbar">
      <span id="me">{{ who() }}</span>
      <button type="button" class="link" id="signout" (click)="session.signOut()">Sign out</button>
    </header>
    <main class="shell" [class.open]="store.selectedKey() !== null">
      <chat-conversation-list />
      <chat-conversation-view />
    </main>
    <div class="toasts">
      @for (t of store.toasts(); track t.id) {
        <div class="toast" [class.error]="t.error" (click)="store.dismiss(t.id)">{{ t.text }}</div>
      }
    </div>
  `,
})
export class ChatShellComponent implements OnInit {
  readonly store = inject(ChatStore);
  readonly session = inject(SessionService);

  who(): string {
    const s = this.session.session()!;
    return s.name === s.userId ? s.userId : `${s.name} (${s.userId})`;
  }

  ngOnInit(): void {
    void this.store.start();
  }
}
