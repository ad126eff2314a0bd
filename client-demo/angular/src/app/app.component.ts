import { ChangeDetectionStrategy, Component, inject } from "@angular/core";

import { SessionService } from "./chat/session.service";
import { ChatShellComponent } from "./chat-shell.component";
import { SignInComponent } from "./sign-in.component";

@Component({
  selector: "chat-root",
  imports: [SignInComponent, ChatShellComponent],
  changeDetection: ChangeDetectionStrategy.OnPush,
  template: `
    @if (session.session(); as s) {
      <!-- keyed by user: signing in as someone else builds a new client -->
      @for (user of [s.userId]; track user) {
        <chat-shell />
      }
    } @else {
      <chat-sign-in />
    }
  `,
})
export class AppComponent {
  readonly session = inject(SessionService);
}
