import { ChangeDetectionStrategy, Component, computed, inject } from "@angular/core";

import { ChatStore } from "./chat/chat.store";

@Component({
  selector: "chat-connection-banner",
  changeDetection: ChangeDetectionStrategy.OnPush,
  template: `
    <div id="connection" class="banner" [class.up]="up()" [attr.data-state]="state()" role="status">
      @switch (state()) {
        @case ("connected") { @if (!store.ready()) { Catching up… } }
        @case ("expired") { Session expired: signing in again… }
        @case ("connecting") { Connecting… }
        @default { Offline: reconnecting. Messages you send now go out when the connection is back. }
      }
    </div>
  `,
})
export class ConnectionBannerComponent {
  readonly store = inject(ChatStore);
  readonly state = this.store.connection;
  readonly up = computed(() => this.state() === "connected" && this.store.ready());
}
