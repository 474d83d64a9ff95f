// A change under review: the file tree, the diff (diff2html + highlight.js, one file at a time
// as it comes into view, unrendered again far away), and the review loop: accept / reject of
// the whole change, a file or a hunk; accept as a commit; line comments and request changes;
// what changed since my last review (the interdiff); the session's history of changes (any one
// opens, past ones to read); the conflict view with rebase and resolve-with-agent; and the
// worktree's live diff while a turn runs. Everything from the
// change is text: paths go in via textContent, and diff2html escapes every line and name.
//
// A feature is an action (a method), maybe a key in KEYS, and where it needs it a part of the
// bar or of a file section (decorate adds hunk buttons and comment rows to a rendered file).

import { VirtualList } from './virtual-list.js';
import { byId, confirmDialog, el, fill, timeAgo } from './dom.js';
import { splitDiff } from './diffsplit.js';
import { highlighter, languageFor } from './highlight.js';
import { commentForm, commentNode, insertRowAfter, lineOf, numberCell, removeRow, rowOf, where } from './comments.js';

const ROW_PX = 28;
const LINE_PX = 18;
const FILE_HEADER_PX = 40;
// Files with more changed lines than this render when asked, not when scrolled to.
const AUTO_RENDER_LINES = 2500;
const RENDER_MARGIN = '1500px 0px';
const STATUS_LETTERS = { added: 'A', modified: 'M', deleted: 'D', renamed: 'R', copied: 'C', type_changed: 'T' };
const OPEN = ['pending', 'conflict'];

export const KEYS = [
  ['j', 'next file', (r) => r.move(1)],
  ['n', 'next file', (r) => r.move(1)],
  ['k', 'previous file', (r) => r.move(-1)],
  ['p', 'previous file', (r) => r.move(-1)],
  ['a', 'accept this file', (r) => r.reviewFile('accept')],
  ['r', 'reject this file', (r) => r.reviewFile('reject')],
  ['A', 'accept the whole change', (r) => r.reviewAll('accept')],
  ['R', 'reject the whole change', (r) => r.reviewAll('reject')],
  ['m', 'accept the whole change as a commit', (r) => r.acceptAsCommit()],
  ['i', 'since my last review ↔ the whole change', (r) => r.toggleSince()],
  ['q', 'request changes (send the open comments)', (r) => r.requestChanges()],
  ['s', 'toggle unified / side by side', (r) => r.setSplit(!r.split)],
];

function lineCount(text) {
  let n = 0;
  for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', i + 1)) n += 1;
  return n;
}

function statusOf(file) {
  return file.binary ? 'binary' : file.status;
}

function reviewedKey(sessionId) {
  return `switchyard.reviewed.${sessionId}`;
}

// The commit dialog: {mode, message, branch} or null when cancelled.
function commitDialog() {
  const dialog = byId('commit-dialog');
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      if (dialog.returnValue !== 'ok') return resolve(null);
      const mode = dialog.querySelector('input[name="commit-mode"]:checked').value;
      const message = byId('commit-message').value.trim();
      const branch = byId('commit-branch').value.trim();
      resolve({ mode, message: message || null, branch: mode === 'branch' ? branch : null });
    }, { once: true });
    dialog.showModal();
    byId('commit-message').focus();
  });
}

export class ReviewView {
  constructor(container, { connection, onResolved }) {
    this.container = container;
    this.connection = connection;
    this.onResolved = onResolved; // (ack) after an accept / reject / rebase
    this.split = localStorage.getItem('switchyard.split') === '1';
    this.change = null;
    this.mode = 'change'; // 'change' | 'since' (the interdiff) | 'live' (the worktree now)
    this.sections = [];
    this.comments = [];
    this.current = 0;
    this.busy = false;
    this.observer = null;
    this.form = null;
  }

  async open(changeId, { since = null } = {}) {
    this.container.replaceChildren(el('p', { cls: 'meta', text: `Loading change #${changeId}…` }));
    performance.mark('switchyard:diff-requested');
    const frame = { type: 'get_diff', change_id: changeId };
    if (since !== null) frame.since_change_id = since;
    const diff = await this.connection.request(frame);
    performance.mark('switchyard:diff-received');
    this.show(diff, since === null ? 'change' : 'since');
    performance.mark('switchyard:diff-built');
  }

  async openLive(sessionId) {
    this.container.replaceChildren(el('p', { cls: 'meta', text: `Reading session #${sessionId}'s worktree…` }));
    const live = await this.connection.request({ type: 'get_diff', session_id: sessionId, live: true });
    this.show({ ...live, change_id: null, status: 'live', files: live.diff_files, comments: [] }, 'live');
  }

  // Nothing pending: say so, and offer the session's earlier changes (to read) when it has any.
  async openNone(sessionId) {
    this.change = null;
    const note = el('p', { cls: 'meta', text: 'No pending change.' });
    this.container.replaceChildren(note);
    const ack = await this.connection.request({ type: 'list_changes', session_id: sessionId, limit: 50 });
    if (!ack.changes.length) return;
    const list = el('ul', { cls: 'change-history-list', attrs: { id: 'change-history-list', 'aria-label': "This session's changes" } },
      ack.changes.map((c) => el('li', {}, [el('button', {
        text: `#${c.change_id} · ${c.status}${c.task_id ? ` · task #${c.task_id}` : ''} · ${timeAgo(c.created_at)}`,
        attrs: { type: 'button' },
        on: { click: () => this.open(c.change_id).catch((error) => this.fail(error)) },
      })])));
    this.container.replaceChildren(note, el('p', { cls: 'meta', text: 'Earlier changes:' }), list);
  }

  show(diff, mode) {
    this.change = diff;
    this.mode = mode;
    this.comments = diff.comments || [];
    const files = diff.diff_files || diff.files || [];
    for (const file of files.slice(0, 5)) highlighter(languageFor(file.path));
    const { sections, notes } = splitDiff(diff.diff || '', files);
    this.sections = sections;
    this.current = 0;
    this.build(notes);
  }

  // What the reviewer may do with what is shown.
  get isOpen() {
    return this.mode === 'change' && OPEN.includes(this.change.status);
  }

  get actionable() {
    return this.isOpen && !(this.change.conflicts || []).length;
  }

  build(notes) {
    if (this.observer) this.observer.disconnect();
    this.form = null;
    const change = this.change;
    const files = change.diff_files || change.files || [];
    const adds = files.reduce((n, f) => n + f.additions, 0);
    const dels = files.reduce((n, f) => n + f.deletions, 0);
    const title = this.mode === 'live' ? `Worktree of session #${change.session_id}, now` : `Change #${change.change_id}`;
    this.status = el('span', { cls: 'review-status', attrs: { role: 'status', 'aria-live': 'polite' } });
    this.splitButton = el('button', {
      text: this.split ? 'Unified' : 'Side by side', attrs: { type: 'button', id: 'toggle-split', 'aria-pressed': this.split },
      on: { click: () => this.setSplit(!this.split) },
    });
    const since = this.sinceCandidate();
    const bar = el('div', { cls: 'review-bar' }, [
      el('strong', { text: title }),
      el('span', { cls: `badge state-${change.status}`, text: change.status }),
      this.historyPicker(),
      el('span', { cls: 'meta', text: `${files.length} files +${adds} −${dels}${change.diff_truncated || change.truncated ? ' · truncated' : ''}` }),
      this.mode === 'since' || since ? el('button', {
        text: this.mode === 'since' ? 'Show the whole change' : since.label,
        attrs: { type: 'button', id: 'since-toggle', 'aria-pressed': this.mode === 'since' },
        on: { click: () => this.toggleSince() },
      }) : null,
      el('span', { cls: 'spacer' }),
      this.status,
      this.splitButton,
      this.mode === 'change' ? el('button', { text: 'Request changes', attrs: { type: 'button', id: 'request-changes' },
        on: { click: () => this.requestChanges() } }) : null,
      this.mode === 'change' ? el('button', { text: 'Commit…', attrs: { type: 'button', id: 'accept-commit', disabled: !this.actionable },
        on: { click: () => this.acceptAsCommit() } }) : null,
      this.mode === 'change' ? el('button', { text: 'Accept all', attrs: { type: 'button', id: 'accept-all', disabled: !this.actionable },
        on: { click: () => this.reviewAll('accept') } }) : null,
      this.mode === 'change' ? el('button', { text: 'Reject all', attrs: { type: 'button', id: 'reject-all', disabled: !this.isOpen },
        on: { click: () => this.reviewAll('reject') } }) : null,
    ]);
    this.requestButton = bar.querySelector('#request-changes');
    this.treeViewport = el('div', { cls: 'file-tree', attrs: { role: 'listbox', 'aria-label': 'Files', tabindex: 0 } });
    this.pane = el('div', { cls: 'diff-pane', attrs: { tabindex: -1 } });
    const body = el('div', { cls: 'review-body' }, [this.treeViewport, this.pane]);
    fill(this.container,
      bar,
      change.status === 'conflict' && this.mode === 'change' ? this.conflictPanel() : null,
      this.mode === 'since' ? el('p', { cls: 'note interdiff-note', text: `Only what changed since change #${change.since_change_id}, for reading; review the whole change to act on it.` }) : null,
      this.mode === 'live' ? el('p', { cls: 'note', text: 'What the worktree holds now, a turn may still be changing it; it becomes a change to review when the turn ends.' }) : null,
      this.mode === 'change' && !OPEN.includes(change.status) ? el('p', { cls: 'note past-note', text: `Change #${change.change_id} is ${change.status}: shown for reading.` }) : null,
      this.mode === 'change' ? this.commentsPanel() : null,
      ...notes.map((n) => el('p', { cls: 'note', text: n })),
      body,
    );
    this.renderComments();

    this.tree = new VirtualList(this.treeViewport, {
      render: (item) => this.treeRow(item),
      update: (node, item) => node.setAttribute('aria-selected', item.index === this.current ? 'true' : 'false'),
      estimate: () => ROW_PX,
    });
    this.treeItems = this.sections.map((s, i) => ({ key: `f${i}`, version: 0, index: i }));
    this.tree.setItems(this.treeItems);
    this.tree.follow = false;

    this.observer = new IntersectionObserver((entries) => this.visibility(entries), { root: this.pane, rootMargin: RENDER_MARGIN });
    this.fileNodes = this.sections.map((section, i) => this.fileSection(section, i));
    this.pane.replaceChildren(...this.fileNodes);
    for (const node of this.fileNodes) this.observer.observe(node);
  }

  // ------------------------------------------------------------------ the session's changes

  // Every change of the session, newest first (list_changes): choosing one opens it.
  historyPicker() {
    const change = this.change;
    if (this.mode !== 'change' || !change.change_id) return null;
    const select = el('select', {
      attrs: { id: 'change-history', 'aria-label': "This session's changes" },
      on: { change: () => this.open(Number(select.value)).catch((error) => this.fail(error)) },
    }, [el('option', { text: `#${change.change_id} · ${change.status}`, attrs: { value: change.change_id } })]);
    this.loadHistory(select).catch((error) => this.fail(error));
    return select;
  }

  async loadHistory(select) {
    const shown = this.change.change_id;
    const ack = await this.connection.request({ type: 'list_changes', session_id: this.change.session_id, limit: 50 });
    const options = ack.changes.map((c) => {
      const comments = c.comment_count ? ` · ${c.comment_count} comment${c.comment_count === 1 ? '' : 's'}` : '';
      const task = c.task_id ? ` · task #${c.task_id}` : '';
      return el('option', {
        text: `#${c.change_id} · ${c.status}${task}${comments} · ${timeAgo(c.created_at)}`,
        attrs: { value: c.change_id, selected: c.change_id === shown },
      });
    });
    fill(select, ...options);
  }

  conflictPanel() {
    const change = this.change;
    const conflicts = change.conflicts || [];
    return el('section', { cls: 'conflict-panel', attrs: { 'aria-label': 'Conflict' } }, [
      el('strong', { text: conflicts.length ? 'Rebased with conflicts' : 'This change does not apply to the project checkout' }),
      el('pre', { cls: 'conflict-error', attrs: { id: 'conflict-error' }, text: change.error || '' }),
      conflicts.length ? el('p', { cls: 'meta', text: `The worktree holds conflict markers in: ${conflicts.join(', ')}` }) : null,
      el('div', { cls: 'conflict-actions' }, [
        el('button', { text: "Rebase onto the checkout's HEAD", attrs: { type: 'button', id: 'rebase', disabled: conflicts.length > 0 },
          on: { click: () => this.rebase() } }),
        el('button', { text: 'Resolve with agent', attrs: { type: 'button', id: 'resolve-with-agent', disabled: !conflicts.length },
          on: { click: () => this.resolveWithAgent() } }),
      ]),
    ]);
  }

  commentsPanel() {
    this.commentList = el('ol', { cls: 'comment-list' });
    const form = commentForm('Comment on the whole change', {
      onSubmit: (body) => this.comment({ body }),
    });
    form.text.id = 'change-comment';
    this.commentsSummary = el('summary', {});
    return el('details', { cls: 'comments-panel', attrs: { open: true } }, [this.commentsSummary, this.commentList, this.isOpen ? form : null]);
  }

  renderComments() {
    if (this.mode !== 'change') return;
    const open = this.comments.filter((c) => c.state === 'open').length;
    this.commentsSummary.textContent = `Comments (${this.comments.length}${open ? `, ${open} open` : ''})`;
    fill(this.commentList, ...this.comments.map((c) => el('li', {}, [commentNode(c)])));
    this.requestButton.textContent = `Request changes (${open})`;
    this.requestButton.disabled = !this.isOpen || open === 0;
  }

  treeRow(item) {
    const { file } = this.sections[item.index];
    const status = statusOf(file);
    return el('div', {
      cls: 'tree-row', attrs: {
        role: 'option', 'data-index': item.index, 'data-status': status,
        'aria-selected': item.index === this.current ? 'true' : 'false',
      },
      on: { click: () => this.select(item.index, true) },
    }, [
      el('span', { cls: `file-status status-${status}`, text: file.binary ? 'B' : STATUS_LETTERS[file.status] || '?',
        attrs: { title: status } }),
      el('span', { cls: 'tree-path', text: file.path, attrs: { title: file.path } }),
      el('span', { cls: 'adds', text: `+${file.additions}` }),
      el('span', { cls: 'dels', text: `−${file.deletions}` }),
    ]);
  }

  // A file is one placeholder element, sized to its line count, until it comes into view.
  fileSection(section, index) {
    const lines = section.text ? lineCount(section.text) : 1;
    const node = el('section', { cls: 'file', attrs: { 'data-index': index, 'data-path': section.file.path } });
    node.style.minHeight = `${FILE_HEADER_PX + lines * LINE_PX}px`;
    return node;
  }

  fileParts(node) {
    const section = this.sections[Number(node.dataset.index)];
    const { file } = section;
    const body = el('div', { cls: 'file-body', on: { click: (event) => this.diffClick(event, node) } });
    const actions = this.mode === 'change' ? [
      el('button', { cls: 'accept-file', text: 'Accept file', attrs: { type: 'button', disabled: !this.actionable },
        on: { click: () => this.reviewFiles('accept', [file.path]) } }),
      el('button', { cls: 'reject-file', text: 'Reject file', attrs: { type: 'button', disabled: !this.isOpen },
        on: { click: () => this.reviewFiles('reject', [file.path]) } }),
    ] : [];
    fill(node,
      el('header', { cls: 'file-header' }, [
        el('span', { cls: `file-status status-${statusOf(file)}`, text: statusOf(file) }),
        el('span', { cls: 'file-path', text: file.old_path ? `${file.old_path} → ${file.path}` : file.path }),
        el('span', { cls: 'adds', text: `+${file.additions}` }),
        el('span', { cls: 'dels', text: `−${file.deletions}` }),
        file.truncated ? el('span', { cls: 'badge', text: 'truncated' }) : null,
        el('span', { cls: 'spacer' }),
        ...actions,
      ]),
      ...section.notes.map((n) => el('p', { cls: 'note', text: n })),
      body,
    );
    node.body = body;
  }

  visibility(entries) {
    for (const entry of entries) {
      const node = entry.target;
      if (entry.isIntersecting && !node.rendered) this.renderFile(node);
      else if (!entry.isIntersecting && node.rendered) this.unrenderFile(node);
    }
  }

  async renderFile(node, force = false) {
    const index = Number(node.dataset.index);
    const { file, text } = this.sections[index];
    node.rendered = true;
    if (!node.body) this.fileParts(node);
    const body = node.body;
    if (file.binary) {
      body.replaceChildren(el('p', { cls: 'note', text: 'Binary file; its content is not shown.' }));
    } else if (!text) {
      body.replaceChildren(el('p', { cls: 'note', text: 'Not in the stored diff (see the notes).' }));
    } else if (!force && file.additions + file.deletions > AUTO_RENDER_LINES) {
      body.replaceChildren(el('p', { cls: 'note' }, [
        el('span', { text: `${file.additions + file.deletions} changed lines. ` }),
        el('button', { text: 'Show', attrs: { type: 'button' }, on: { click: () => this.renderFile(node, true) } }),
      ]));
    } else {
      const language = languageFor(file.path);
      const hljs = await highlighter(language);
      if (!node.rendered || this.sections[index] === undefined || !this.fileNodes.includes(node)) return;
      const dot = file.path.lastIndexOf('.');
      const ext = dot > file.path.lastIndexOf('/') + 1 ? file.path.slice(dot + 1) : '';
      const ui = new window.Diff2HtmlUI(body, text, {
        outputFormat: this.split ? 'side-by-side' : 'line-by-line',
        drawFileList: false,
        matching: 'lines',
        highlight: true,
        highlightLanguages: new Map([[ext, language]]),
        synchronisedScroll: true,
        fileListToggle: false,
        fileContentToggle: false,
        stickyFileHeaders: false,
        renderNothingWhenEmpty: false,
      }, hljs);
      ui.draw();
      this.decorate(node, file);
    }
    node.style.minHeight = '';
    if (!performance.getEntriesByName('switchyard:first-diff-lines').length && body.querySelector('.d2h-code-line, .d2h-code-side-line')) {
      requestAnimationFrame(() => performance.mark('switchyard:first-diff-lines'));
    }
  }

  // A rendered file gets its hunk buttons, clickable line numbers and its comments' rows.
  decorate(node, file) {
    const body = node.body;
    const hunks = file.hunks || [];
    if (this.mode === 'change' && this.isOpen && hunks.length > 1) {
      // In the side-by-side view each hunk header shows in both halves: buttons go on the left.
      const scope = body.querySelector('.d2h-file-side-diff') || body;
      const headers = [...scope.querySelectorAll('tbody tr')].filter((row) => row.querySelector('td.d2h-info'));
      headers.forEach((row, i) => {
        const hunk = hunks[i];
        if (!hunk) return;
        const cell = row.querySelector('td.d2h-info:not(.d2h-code-linenumber):not(.d2h-code-side-linenumber)') || row.lastElementChild;
        cell.append(el('span', { cls: 'hunk-actions', attrs: { 'data-hunk': hunk.id } }, [
          el('button', { cls: 'accept-hunk', text: `Accept hunk ${hunk.id}`, attrs: { type: 'button', disabled: !this.actionable },
            on: { click: () => this.reviewHunk('accept', file.path, hunk.id) } }),
          el('button', { cls: 'reject-hunk', text: `Reject hunk ${hunk.id}`, attrs: { type: 'button' },
            on: { click: () => this.reviewHunk('reject', file.path, hunk.id) } }),
        ]));
      });
    }
    if (this.mode === 'change' && this.isOpen) body.classList.add('commentable');
    for (const comment of this.comments) {
      if (comment.path !== file.path || !comment.current_line) continue;
      const row = rowOf(body, comment.side, comment.current_line);
      if (row) insertRowAfter(row, commentNode(comment), 'comment-row');
    }
  }

  diffClick(event, node) {
    if (this.mode !== 'change' || !this.isOpen || event.target.closest('button, form')) return;
    const cell = numberCell(event.target);
    const at = lineOf(cell);
    if (!at) return;
    const path = this.sections[Number(node.dataset.index)].file.path;
    if (this.form) removeRow(this.form);
    const label = `Comment on ${where({ path, side: at.side, line: at.line })}`;
    const form = commentForm(label, {
      onSubmit: async (body) => {
        await this.comment({ body, path, line: at.line, side: at.side });
        if (this.form) removeRow(this.form);
        this.form = null;
      },
      onCancel: () => { removeRow(this.form); this.form = null; },
    });
    this.form = insertRowAfter(cell.closest('tr'), form, 'comment-form-row');
    form.text.focus();
  }

  unrenderFile(node) {
    node.style.minHeight = `${node.offsetHeight}px`;
    node.replaceChildren();
    node.body = null;
    node.rendered = false;
  }

  rerender(path) {
    for (const node of this.fileNodes) if (node.rendered && (!path || node.dataset.path === path)) this.renderFile(node);
  }

  setSplit(split) {
    this.split = split;
    localStorage.setItem('switchyard.split', split ? '1' : '0');
    if (!this.change) return;
    this.splitButton.textContent = split ? 'Unified' : 'Side by side';
    this.splitButton.setAttribute('aria-pressed', String(split));
    this.rerender();
  }

  select(index, scroll) {
    if (!this.sections.length) return;
    const previous = this.current;
    this.current = Math.max(0, Math.min(index, this.sections.length - 1));
    for (const i of [previous, this.current]) {
      if (this.treeItems[i]) {
        this.treeItems[i].version += 1;
      }
    }
    this.tree.changed(0);
    const top = this.current * ROW_PX;
    const vp = this.treeViewport;
    if (top < vp.scrollTop || top + ROW_PX > vp.scrollTop + vp.clientHeight) vp.scrollTop = top - vp.clientHeight / 2;
    if (scroll) {
      const node = this.fileNodes[this.current];
      node.scrollIntoView({ block: 'start' });
      if (!node.rendered) this.renderFile(node);
      node.querySelector('.file-header button')?.focus({ preventScroll: true });
    }
  }

  move(step) {
    this.select(this.current + step, true);
  }

  currentFile() {
    return this.sections[this.current]?.file;
  }

  // ------------------------------------------------------------------ since my last review

  remember() {
    if (this.change && this.change.change_id) localStorage.setItem(reviewedKey(this.change.session_id), String(this.change.change_id));
  }

  sinceCandidate() {
    const change = this.change;
    if (this.mode !== 'change' || !change.change_id) return null;
    const reviewed = Number(localStorage.getItem(reviewedKey(change.session_id))) || null;
    if (reviewed && reviewed < change.change_id) return { id: reviewed, label: `Since my last review (#${reviewed})` };
    if (change.supersedes) return { id: change.supersedes, label: `Since change #${change.supersedes}` };
    return null;
  }

  toggleSince() {
    if (!this.change || this.mode === 'live' || this.busy) return;
    if (this.mode === 'since') {
      this.open(this.change.change_id).catch((error) => this.fail(error));
      return;
    }
    const since = this.sinceCandidate();
    if (since) this.open(this.change.change_id, { since: since.id }).catch((error) => this.fail(error));
  }

  // ------------------------------------------------------------------ comments

  async comment(frame) {
    const ack = await this.connection.request({ type: 'comment', change_id: this.change.change_id, ...frame });
    this.addComment(ack.comment);
    this.remember();
    this.status.textContent = `Comment added on ${where(ack.comment)}`;
  }

  // A comment of this change (our own ack, or a review_comment frame from anyone).
  // Frames replayed before the view has loaded a change are in what get_diff returns.
  addComment(comment) {
    if (!this.change || this.mode !== 'change' || comment.change_id !== this.change.change_id) return;
    if (this.comments.some((c) => c.comment_id === comment.comment_id)) return;
    this.comments.push(comment);
    this.renderComments();
    if (comment.path) this.rerender(comment.path);
  }

  markSent(commentIds, taskId) {
    if (!this.change) return;
    for (const comment of this.comments) {
      if (commentIds.includes(comment.comment_id)) Object.assign(comment, { state: 'sent', task_id: taskId });
    }
    this.renderComments();
    this.rerender();
  }

  async requestChanges() {
    if (!this.isOpen || this.busy) return;
    const open = this.comments.filter((c) => c.state === 'open').length;
    if (!open) return;
    if (!(await confirmDialog(`Send ${open} open comment${open === 1 ? '' : 's'} to the agent as the session's next task?`, 'Request changes'))) return;
    await this.act('Requesting changes', async () => {
      const ack = await this.connection.request({ type: 'request_changes', change_id: this.change.change_id });
      this.markSent(ack.comment_ids, ack.task_id);
      this.remember();
      this.status.textContent = `Task #${ack.task_id} queued with ${ack.comment_ids.length} comment(s)`;
      this.onResolved(ack);
    });
  }

  // ------------------------------------------------------------------ accept, reject, rebase

  reviewFile(action) {
    const file = this.currentFile();
    if (file) this.reviewFiles(action, [file.path]);
  }

  reviewAll(action) {
    this.reviewFiles(action, null);
  }

  reviewHunk(action, path, hunk) {
    this.review(action, { hunks: { [path]: [hunk] } }, `hunk ${hunk} of ${path}`);
  }

  reviewFiles(action, files) {
    const count = (this.change.files || []).length;
    const what = files ? files.join(', ') : `all ${count} file${count === 1 ? '' : 's'} of change #${this.change.change_id}`;
    this.review(action, files ? { files } : {}, what);
  }

  async acceptAsCommit() {
    if (!this.actionable || this.busy) return;
    const choice = await commitDialog();
    if (!choice) return;
    const frame = { mode: choice.mode };
    if (choice.message) frame.message = choice.message;
    if (choice.branch !== null) frame.branch = choice.branch;
    await this.submitReview('accept', frame, choice.mode === 'branch' ? `Committing onto ${choice.branch}` : 'Committing');
  }

  async review(action, selection, what) {
    if (!this.isOpen || this.busy || (action === 'accept' && !this.actionable)) return;
    const verb = action === 'accept' ? 'Accept' : 'Reject';
    const consequence = action === 'accept' ? 'into the project checkout' : '(the worktree goes back to its base)';
    if (!(await confirmDialog(`${verb} ${what} ${consequence}?`, verb))) return;
    await this.submitReview(action, selection, `${verb}ing`);
  }

  async submitReview(action, extra, doing) {
    await this.act(doing, async () => {
      const ack = await this.connection.request({ type: 'review', change_id: this.change.change_id, action, ...extra });
      this.remember();
      this.onResolved(ack);
      const commit = ack.commit ? ` as ${ack.commit.slice(0, 12)} on ${ack.branch}` : '';
      if (ack.remainder) {
        await this.open(ack.remainder.change_id);
        this.status.textContent = ack.status === 'conflict'
          ? `Conflict: ${ack.error} (the rest is still pending)`
          : `${ack.status} ${(ack.files || []).length} file(s)${commit}; the rest is still pending`;
      } else if (ack.status === 'conflict') {
        await this.open(ack.change_id);
        this.status.textContent = `Conflict: ${ack.error}`;
      } else {
        this.change = { ...this.change, status: ack.status };
        this.build([]);
        this.status.textContent = `Change #${ack.change_id} ${ack.status}${commit}`;
      }
    });
  }

  async rebase() {
    if (!this.isOpen || this.busy) return;
    if (!(await confirmDialog("Move this session onto the checkout's HEAD, merging its work there (3-way, in the worktree)?", 'Rebase'))) return;
    await this.act('Rebasing', async () => {
      const ack = await this.connection.request({ type: 'rebase', change_id: this.change.change_id });
      this.onResolved(ack);
      if (!ack.remainder) {
        this.change = { ...this.change, status: ack.status };
        this.build([]);
        this.status.textContent = "The session is on the checkout's HEAD now, with nothing left to review";
        return;
      }
      await this.open(ack.remainder.change_id);
      const conflicts = ack.remainder.conflicts || [];
      this.status.textContent = conflicts.length
        ? `Rebased with conflicts in ${conflicts.join(', ')}`
        : `Rebased cleanly as change #${ack.remainder.change_id}`;
    });
  }

  async resolveWithAgent() {
    if (!this.isOpen || this.busy || !(this.change.conflicts || []).length) return;
    await this.act('Asking the agent', async () => {
      const ack = await this.connection.request({ type: 'resolve_with_agent', change_id: this.change.change_id });
      this.onResolved(ack);
      this.status.textContent = `Task #${ack.task_id} asks the agent to resolve ${ack.files.join(', ')}; its change shows here when the turn ends`;
    });
  }

  async act(doing, work) {
    this.busy = true;
    this.status.textContent = `${doing}…`;
    try {
      await work();
    } catch (error) {
      this.fail(error);
    } finally {
      this.busy = false;
    }
  }

  fail(error) {
    if (this.status) this.status.textContent = `${error.code || 'error'}: ${error.message}`;
  }

  // One keystroke of the review view; true when it was one of ours.
  key(event) {
    const binding = KEYS.find(([key]) => key === event.key);
    if (!binding) return false;
    binding[2](this);
    return true;
  }
}
