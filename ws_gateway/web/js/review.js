// A change under review: the file tree, the diff (diff2html + highlight.js, one file at a time
// as it comes into view, unrendered again far away), accept / reject of the whole change or of
// a file, and the keyboard. Everything from the change is text: paths go in via textContent,
// and diff2html escapes every line and name it renders.
//
// Later review features (hunks, line comments, the interdiff, accept as a commit, the conflict
// view) each add an action to ACTIONS / KEYS and, where they need it, a part of a file section.

import { VirtualList } from './virtual-list.js';
import { confirmDialog, el, fill } from './dom.js';
import { splitDiff } from './diffsplit.js';
import { highlighter, languageFor } from './highlight.js';

const ROW_PX = 28;
const LINE_PX = 18;
const FILE_HEADER_PX = 40;
// Files with more changed lines than this render when asked, not when scrolled to.
const AUTO_RENDER_LINES = 2500;
const RENDER_MARGIN = '1500px 0px';
const STATUS_LETTERS = { added: 'A', modified: 'M', deleted: 'D', renamed: 'R', copied: 'C', type_changed: 'T' };

export const KEYS = [
  ['j', 'next file', (r) => r.move(1)],
  ['n', 'next file', (r) => r.move(1)],
  ['k', 'previous file', (r) => r.move(-1)],
  ['p', 'previous file', (r) => r.move(-1)],
  ['a', 'accept this file', (r) => r.reviewFile('accept')],
  ['r', 'reject this file', (r) => r.reviewFile('reject')],
  ['A', 'accept the whole change', (r) => r.reviewAll('accept')],
  ['R', 'reject the whole change', (r) => r.reviewAll('reject')],
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

export class ReviewView {
  constructor(container, { connection, onResolved }) {
    this.container = container;
    this.connection = connection;
    this.onResolved = onResolved; // (ack) after an accept / reject
    this.split = localStorage.getItem('switchyard.split') === '1';
    this.change = null;
    this.sections = [];
    this.current = 0;
    this.busy = false;
    this.observer = null;
  }

  async open(changeId) {
    this.container.replaceChildren(el('p', { cls: 'meta', text: `Loading change #${changeId}…` }));
    performance.mark('switchyard:diff-requested');
    const diff = await this.connection.request({ type: 'get_diff', change_id: changeId });
    performance.mark('switchyard:diff-received');
    this.show(diff);
    performance.mark('switchyard:diff-built');
  }

  show(diff) {
    this.change = diff;
    for (const file of (diff.files || []).slice(0, 5)) highlighter(languageFor(file.path));
    const { sections, notes } = splitDiff(diff.diff || '', diff.files || []);
    this.sections = sections;
    this.current = 0;
    this.build(notes);
  }

  build(notes) {
    if (this.observer) this.observer.disconnect();
    const change = this.change;
    const files = change.files || [];
    const adds = files.reduce((n, f) => n + f.additions, 0);
    const dels = files.reduce((n, f) => n + f.deletions, 0);
    const pending = change.status === 'pending';
    this.status = el('span', { cls: 'review-status', attrs: { role: 'status', 'aria-live': 'polite' } });
    this.splitButton = el('button', {
      text: this.split ? 'Unified' : 'Side by side', attrs: { type: 'button', id: 'toggle-split', 'aria-pressed': this.split },
      on: { click: () => this.setSplit(!this.split) },
    });
    const bar = el('div', { cls: 'review-bar' }, [
      el('strong', { text: `Change #${change.change_id}` }),
      el('span', { cls: `badge state-${change.status}`, text: change.status }),
      el('span', { cls: 'meta', text: `${files.length} files +${adds} −${dels}${change.truncated ? ' · truncated' : ''}` }),
      change.error ? el('span', { cls: 'failure', text: change.error }) : null,
      el('span', { cls: 'spacer' }),
      this.status,
      this.splitButton,
      el('button', { text: 'Accept all', attrs: { type: 'button', id: 'accept-all', disabled: !pending },
        on: { click: () => this.reviewAll('accept') } }),
      el('button', { text: 'Reject all', attrs: { type: 'button', id: 'reject-all', disabled: !pending },
        on: { click: () => this.reviewAll('reject') } }),
    ]);
    this.treeViewport = el('div', { cls: 'file-tree', attrs: { role: 'listbox', 'aria-label': 'Files', tabindex: 0 } });
    this.pane = el('div', { cls: 'diff-pane', attrs: { tabindex: -1 } });
    const body = el('div', { cls: 'review-body' }, [this.treeViewport, this.pane]);
    fill(this.container, bar, ...notes.map((n) => el('p', { cls: 'note', text: n })), body);

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
    const pending = this.change.status === 'pending';
    const body = el('div', { cls: 'file-body' });
    fill(node,
      el('header', { cls: 'file-header' }, [
        el('span', { cls: `file-status status-${statusOf(file)}`, text: statusOf(file) }),
        el('span', { cls: 'file-path', text: file.old_path ? `${file.old_path} → ${file.path}` : file.path }),
        el('span', { cls: 'adds', text: `+${file.additions}` }),
        el('span', { cls: 'dels', text: `−${file.deletions}` }),
        file.truncated ? el('span', { cls: 'badge', text: 'truncated' }) : null,
        el('span', { cls: 'spacer' }),
        el('button', { cls: 'accept-file', text: 'Accept file', attrs: { type: 'button', disabled: !pending },
          on: { click: () => this.reviewFiles('accept', [file.path]) } }),
        el('button', { cls: 'reject-file', text: 'Reject file', attrs: { type: 'button', disabled: !pending },
          on: { click: () => this.reviewFiles('reject', [file.path]) } }),
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
    }
    node.style.minHeight = '';
    if (!performance.getEntriesByName('switchyard:first-diff-lines').length && body.querySelector('.d2h-code-line, .d2h-code-side-line')) {
      requestAnimationFrame(() => performance.mark('switchyard:first-diff-lines'));
    }
  }

  unrenderFile(node) {
    node.style.minHeight = `${node.offsetHeight}px`;
    node.replaceChildren();
    node.body = null;
    node.rendered = false;
  }

  setSplit(split) {
    this.split = split;
    localStorage.setItem('switchyard.split', split ? '1' : '0');
    if (!this.change) return;
    this.splitButton.textContent = split ? 'Unified' : 'Side by side';
    this.splitButton.setAttribute('aria-pressed', String(split));
    for (const node of this.fileNodes) if (node.rendered) this.renderFile(node);
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

  reviewFile(action) {
    const file = this.currentFile();
    if (file) this.reviewFiles(action, [file.path]);
  }

  reviewAll(action) {
    this.reviewFiles(action, null);
  }

  async reviewFiles(action, files) {
    if (!this.change || this.change.status !== 'pending' || this.busy) return;
    const count = (this.change.files || []).length;
    const what = files ? files.join(', ') : `all ${count} file${count === 1 ? '' : 's'} of change #${this.change.change_id}`;
    const verb = action === 'accept' ? 'Accept' : 'Reject';
    const consequence = action === 'accept' ? 'into the project checkout' : '(the worktree goes back to its base)';
    if (!(await confirmDialog(`${verb} ${what} ${consequence}?`, verb))) return;
    this.busy = true;
    this.status.textContent = `${verb}ing…`;
    try {
      const frame = { type: 'review', change_id: this.change.change_id, action };
      if (files) frame.files = files;
      const ack = await this.connection.request(frame);
      if (ack.status === 'conflict') {
        this.status.textContent = `Conflict: ${ack.error}`;
      } else {
        this.status.textContent = `${ack.status}: ${(ack.files || []).map((f) => f.path).join(', ')}`;
      }
      this.onResolved(ack);
      if (ack.remainder) {
        await this.open(ack.remainder.change_id);
        this.status.textContent = `${ack.status} ${(ack.files || []).length} file(s); the rest is still pending`;
      } else if (ack.status !== 'conflict') {
        this.change = { ...this.change, status: ack.status };
        this.build([]);
        this.status.textContent = `Change #${ack.change_id} ${ack.status}`;
      }
    } catch (error) {
      this.status.textContent = `${error.code || 'error'}: ${error.message}`;
    } finally {
      this.busy = false;
    }
  }

  // One keystroke of the review view; true when it was one of ours.
  key(event) {
    const binding = KEYS.find(([key]) => key === event.key);
    if (!binding) return false;
    binding[2](this);
    return true;
  }
}
