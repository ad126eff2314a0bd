import { ChangeDetectionStrategy, Component, inject } from "@angular/core";

import { ChatStore } from "./chat/chat.store";
import { NewConversationComponent } from "./new-conversation.component";

@Component({
  selector: "chat-conversation-list",
  imports: [NewConversationComponent],
  changeDetection: ChangeDetectionStrategy.OnPush,
  template: `
    <aside class="sidebar">
      <chat-new-conversation />
      <ul class="conversations" id="conversations">
        @for (c of store.conversations(); track c.key) {
          <li class="conversation" [class.active]="c.key === store.selectedKey()" [class.left]="c.left"
              [attr.data-kind]="c.kind" [attr.data-id]="c.id" (click)="store.select(c.key)">
            @if (c.kind === "direct") {
              <span class="dot" [class.online]="store.presence().get(c.id)" [attr.title]="store.presence().get(c.id) ? 'online' : 'offline'"></span>
            } @else {
              <span class="group-icon" title="group">#</span>
            }
            <span class="body">
              <span class="name">{{ c.name }}</span>
              <span class="preview">{{ c.preview }}</span>
            </span>
            <span class="meta">
              @if (c.kind === "group" && c.memberCount) { <span class="members">{{ c.memberCount }} 👤</span> }
              <span class="badge" [hidden]="!c.unread">{{ c.unread }}</span>
            </span>
          </li>
        } @empty {
          <li class="empty">No conversations yet: start one above.</li>
        }
      </ul>
    </aside>
  `,
})
export class ConversationListComponent {
  readonly store = inject(ChatStore);
}
