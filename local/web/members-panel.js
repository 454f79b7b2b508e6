// The members panel of the open conversation: who is in it, with their roles, and the changes the viewer's
// role allows (the same rules as chalicelib/roles.py; the server checks them again and has the last word):
//
//   owner   add people, remove anyone but themselves, make admin / make member, rename, mute, leave
//   admin   add people, remove anyone but the owner, rename, mute, leave
//   member  mute, leave
//
// A direct conversation has no management at all (those routes answer 400): the panel only lists the two.
// The panel owns its DOM and knows nothing of the API: each action goes to onAction(action) -> Promise,
// with action = {type: "add", userIds} | {type: "remove", userId} | {type: "leave"} |
// {type: "role", userId, role} | {type: "rename", title} | {type: "mute", muted}.

import { h, splitNames } from "./dom.js";

const ROLE_LABELS = { owner: "Owner", admin: "Admin", member: "Member" };
const ROLE_ORDER = { owner: 0, admin: 1, member: 2 };

/** What a viewer with `role` may do in a conversation (role null: not known yet, nothing is offered). */
export function permissions(role, isGroup) {
  const manager = isGroup && (role === "owner" || role === "admin");
  return {
    add: manager,
    rename: manager,
    setRoles: isGroup && role === "owner",
    removeOthers: manager,
    leave: isGroup && Boolean(role),
    mute: isGroup && Boolean(role),
  };
}

/** May the viewer (with `allowed` from permissions) remove `target` ({userId, role})? */
function mayRemove(allowed, me, target) {
  return allowed.removeOthers && target.userId !== me && target.role !== "owner";
}

// presenceDot(userId) -> Node | null (optional): the member's online dot, kept current by its maker.
export function createMembersPanel(root, { onAction, presenceDot = () => null }) {
  const error = h("p", { class: "form-error", "data-testid": "members-error", role: "alert" });
  const renameInput = h("input", {
    "data-testid": "rename-input",
    maxlength: "300",
    required: true,
    "aria-label": "Group title",
    placeholder: "Group title",
  });
  const renameForm = h(
    "form",
    { class: "panel-row", "data-testid": "rename-form", autocomplete: "off" },
    renameInput,
    h("button", { type: "submit", "data-testid": "rename-button" }, "Rename"),
  );
  const addInput = h("input", {
    "data-testid": "add-members-input",
    required: true,
    "aria-label": "People to add",
    placeholder: "Add people (comma-separated)",
    autocapitalize: "off",
    spellcheck: "false",
  });
  const addForm = h(
    "form",
    { class: "panel-row", "data-testid": "add-members-form", autocomplete: "off" },
    addInput,
    h("button", { type: "submit", "data-testid": "add-members-button" }, "Add"),
  );
  const count = h("h3", { class: "panel-heading", "data-testid": "member-count" });
  const list = h("ul", { class: "member-list", "data-testid": "member-list" });
  const muteInput = h("input", { type: "checkbox", "data-testid": "mute-toggle" });
  const mute = h("label", { class: "check panel-check" }, muteInput, " Mute notifications");
  const leave = h("button", { type: "button", class: "danger", "data-testid": "leave-button" }, "Leave group");
  root.replaceChildren(renameForm, addForm, count, list, h("div", { class: "panel-footer" }, mute, leave), error);

  let view = null; // what render() was given last
  let busy = false;

  async function act(action, form) {
    if (busy) return;
    busy = true;
    error.textContent = "";
    root.setAttribute("aria-busy", "true");
    for (const control of root.querySelectorAll("button, input")) control.disabled = true;
    try {
      await onAction(action);
      form?.reset();
    } catch (failure) {
      error.textContent = failure.message || "That did not work.";
    } finally {
      busy = false;
      root.removeAttribute("aria-busy");
      for (const control of root.querySelectorAll("button, input")) control.disabled = false;
    }
  }

  renameForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const title = renameInput.value.trim();
    if (title && view && title !== view.title) act({ type: "rename", title });
  });
  addForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const userIds = splitNames(addInput.value);
    if (userIds.length) act({ type: "add", userIds }, addForm);
  });
  muteInput.addEventListener("change", () => act({ type: "mute", muted: muteInput.checked }));
  leave.addEventListener("click", () => act({ type: "leave" }));
  list.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    const row = button && button.closest("[data-user-id]");
    if (!row) return;
    const userId = row.dataset.userId;
    if (button.dataset.action === "remove") act({ type: "remove", userId });
    else act({ type: "role", userId, role: button.dataset.action === "make-admin" ? "admin" : "member" });
  });

  function memberRow(member, allowed, me) {
    const actions = [];
    if (allowed.setRoles && member.userId !== me && member.role !== "owner") {
      actions.push(
        member.role === "admin"
          ? h("button", { type: "button", class: "link-button", "data-action": "make-member", "data-testid": "make-member-button" }, "Make member")
          : h("button", { type: "button", class: "link-button", "data-action": "make-admin", "data-testid": "make-admin-button" }, "Make admin"),
      );
    }
    if (mayRemove(allowed, me, member)) {
      actions.push(
        h("button", { type: "button", class: "link-button danger-text", "data-action": "remove", "data-testid": "remove-member-button" }, "Remove"),
      );
    }
    return h(
      "li",
      { class: "member", "data-testid": "member", "data-user-id": member.userId, "data-role": member.role },
      presenceDot(member.userId),
      h("span", { class: "member-name", "data-testid": "member-name" }, member.userId === me ? `${member.userId} (you)` : member.userId),
      view.isGroup ? h("span", { class: "member-role", "data-testid": "member-role" }, ROLE_LABELS[member.role] ?? member.role) : null,
      h("span", { class: "member-actions" }, ...actions),
    );
  }

  return {
    /**
     * view: {conversationId, isGroup, title, me, myRole, muted, members: [{userId, role}], more: bool}
     * (more: a large group lists its first page only).
     */
    render(next) {
      const changedConversation = !view || view.conversationId !== next.conversationId;
      view = next;
      if (changedConversation) {
        error.textContent = "";
        addForm.reset();
      }
      const allowed = permissions(next.myRole, next.isGroup);
      renameForm.hidden = !allowed.rename;
      addForm.hidden = !allowed.add;
      mute.hidden = !allowed.mute;
      leave.hidden = !allowed.leave;
      if (changedConversation || document.activeElement !== renameInput) renameInput.value = next.title ?? "";
      muteInput.checked = Boolean(next.muted);
      const members = [...next.members].sort(
        (a, b) => (ROLE_ORDER[a.role] ?? 3) - (ROLE_ORDER[b.role] ?? 3) || a.userId.localeCompare(b.userId),
      );
      count.textContent = `${members.length}${next.more ? "+" : ""} ${members.length === 1 ? "member" : "members"}`;
      list.replaceChildren(...members.map((member) => memberRow(member, allowed, next.me)));
    },
  };
}
