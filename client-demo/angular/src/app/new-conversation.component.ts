import { ChangeDetectionStrategy, Component, inject, signal } from "@angular/core";
import { FormsModule } from "@angular/forms";

import { ChatStore } from "./chat/chat.store";

/** New direct chat (a user id) or new group (a title and member ids). */
@Component({
  selector: "chat-new-conversation",
  imports: [FormsModule],
  changeDetection: ChangeDetectionStrategy.OnPush,
  template: `
    <div class="new-conversation">
      <div class="tabs">
        <button type="button" id="new-direct-tab" [class.on]="mode() === 'direct'" (click)="mode.set('direct')">New chat</button>
        <button type="button" id="new-group-tab" [class.on]="mode() === 'group'" (click)="mode.set('group')">New group</button>
      </div>
      @if (mode() === "direct") {
        <form id="new-direct" (ngSubmit)="openDirect()">
          <input id="new-peer" name="peer" [(ngModel)]="peer" placeholder="user id, e.g. bob" maxlength="64">
          <button type="submit">Open</button>
        </form>
      } @else {
        <form id="new-group" (ngSubmit)="createGroup()">
          <input id="group-title" name="title" [(ngModel)]="title" placeholder="group title" maxlength="100">
          <input id="group-members" name="members" [(ngModel)]="members" placeholder="member ids, comma separated">
          <button type="submit">Create</button>
        </form>
      }
    </div>
  `,
})
export class NewConversationComponent {
  private readonly store = inject(ChatStore);
  readonly mode = signal<"direct" | "group">("direct");
  peer = "";
  title = "";
  members = "";

  async openDirect(): Promise<void> {
    const peer = this.peer.trim();
    if (!peer) return;
    this.peer = "";
    await this.store.openDirect(peer);
  }

  async createGroup(): Promise<void> {
    const title = this.title.trim();
    if (!title) return this.store.toast("A group needs a title", true);
    const ids = splitIds(this.members);
    this.title = "";
    this.members = "";
    await this.store.createGroup(title, ids);
  }
}

export function splitIds(text: string): string[] {
  return [...new Set(text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean))];
}
