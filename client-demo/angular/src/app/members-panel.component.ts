import { ChangeDetectionStrategy, Component, inject } from "@angular/core";
import { FormsModule } from "@angular/forms";

import { ChatStore } from "./chat/chat.store";
import { splitIds } from "./new-conversation.component";

/** The open group's members: admins add and remove, anyone leaves. */
@Component({
  selector: "chat-members-panel",
  imports: [FormsModule],
  changeDetection: ChangeDetectionStrategy.OnPush,
  template: `
    @if (store.selectedGroup(); as g) {
      <aside class="members-panel" id="members-panel">
        <h2>{{ g.title }}</h2>
        @if (store.amAdmin()) {
          <form class="rename" (ngSubmit)="rename()">
            <input id="rename-title" name="title" [(ngModel)]="title" placeholder="new title" maxlength="100">
            <button type="submit">Rename</button>
          </form>
        }
        <ul class="members">
          @for (m of g.members; track m.userId) {
            <li class="member" [attr.data-user]="m.userId">
              <span class="dot" [class.online]="m.userId === store.me || store.presence().get(m.userId)"></span>
              <span class="name">{{ m.userId === store.me ? "You" : m.name }}</span>
              @if (m.role === "admin") { <span class="role">admin</span> }
              @if (store.amAdmin() && m.userId !== store.me) {
                <button type="button" class="link remove" (click)="store.removeMember(m.userId)">remove</button>
              }
            </li>
          }
        </ul>
        @if (store.amAdmin()) {
          <form class="add-members" (ngSubmit)="add()">
            <input id="add-members" name="ids" [(ngModel)]="ids" placeholder="user ids to add">
            <button type="submit" id="add-members-button">Add</button>
          </form>
        }
        <button type="button" class="leave" id="leave-group" (click)="store.leave()">Leave group</button>
      </aside>
    }
  `,
})
export class MembersPanelComponent {
  readonly store = inject(ChatStore);
  ids = "";
  title = "";

  async add(): Promise<void> {
    const ids = splitIds(this.ids);
    this.ids = "";
    await this.store.addMembers(ids);
  }

  async rename(): Promise<void> {
    const title = this.title;
    this.title = "";
    await this.store.rename(title);
  }
}
