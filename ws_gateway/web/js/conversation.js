// A session's conversation: its frames (docs/PROTOCOL.md "Session frames") folded into items,
// and one renderer per item type. The page subscribes with since_seq 0, so the model holds
// every frame of the session; after a reconnect it resubscribes from the last seq it applied.
//
// Adding a frame type is one entry in FRAMES (frame → item) and one in RENDERERS (item → DOM).
//
// A request that waits for a person (permission_request, question) is one item, replaced when its
// *_resolved frame arrives. Its buttons do not talk to the gateway themselves: they dispatch a
// bubbling `switchyard:reply` event whose detail is the reply frame, and the page sends it.

import { el, fill, pretty } from './dom.js';

const LINE_PX = 20;
const CHARS_PER_LINE = 90;

export class SessionModel {
  constructor(sessionId, { onTaskSeen, onChange }) {
    this.sessionId = sessionId;
    this.lastSeq = 0;
    this.items = [];
    this.byKey = new Map();
    this.tasks = new Map(); // task id → its turn item
    this.lastItemOfMessage = new Map(); // message id → key of its latest item
    this.seqs = []; // every seq applied, in order (the page's own exactly-once check)
    this.duplicates = 0;
    this.gaps = 0;
    this.onTaskSeen = onTaskSeen; // a task the page has no input for yet
    this.onChange = onChange; // (index) an item from this index on changed
  }

  // Apply one session frame; false for a frame out of order (the caller resubscribes).
  apply(frame) {
    if (frame.seq <= this.lastSeq) {
      this.duplicates += 1;
      return true;
    }
    if (frame.seq !== this.lastSeq + 1) {
      this.gaps += 1;
      return false;
    }
    this.lastSeq = frame.seq;
    this.seqs.push(frame.seq);
    (FRAMES[frame.type] || unknownFrame)(this, frame);
    return true;
  }

  add(item) {
    item.version = 0;
    item.index = this.items.length;
    this.items.push(item);
    this.byKey.set(item.key, item);
    if (item.messageId !== undefined) this.lastItemOfMessage.set(item.messageId, item.key);
    this.onChange(item.index);
    return item;
  }

  touch(item) {
    item.version += 1;
    this.onChange(item.index);
  }

  turn(taskId) {
    let item = this.tasks.get(taskId);
    if (!item) {
      item = this.add({ key: `task:${taskId}`, type: 'turn', taskId, input: null, state: 'pending' });
      this.tasks.set(taskId, item);
      this.onTaskSeen(taskId);
    }
    return item;
  }

  // The message's latest item if it is of this type, else a new one (text after a tool call
  // starts a new block, so the conversation reads in the order things happened).
  tail(messageId, type) {
    const key = this.lastItemOfMessage.get(messageId);
    const last = key && this.byKey.get(key);
    if (last && last.type === type) return last;
    return this.add({ key: `${type}:${messageId}:${this.items.length}`, type, messageId, text: '' });
  }

  setTaskInput(task) {
    const item = this.tasks.get(task.id);
    if (item && item.input === null) {
      item.input = task.input;
      item.agent = task.agent;
      item.model = task.model;
      this.touch(item);
    }
  }

  // The text of an assistant message so far (for tests and the turn summary).
  messageText(messageId) {
    return this.items.filter((i) => i.type === 'text' && i.messageId === messageId).map((i) => i.text).join('');
  }
}

const FRAMES = {
  task_state(model, f) {
    const item = model.turn(f.task_id);
    Object.assign(item, { state: f.state, attempt: f.attempt, failureReason: f.failure_reason, error: f.error });
    model.touch(item);
  },
  message_started(model, f) {
    model.turn(f.task_id);
    model.add({ key: `message:${f.message_id}`, type: 'message', messageId: f.message_id, status: 'streaming' });
  },
  delta(model, f) {
    const item = model.tail(f.message_id, 'text');
    item.text += f.text;
    model.touch(item);
  },
  reasoning_delta(model, f) {
    const item = model.tail(f.message_id, 'reasoning');
    item.text += f.text;
    model.touch(item);
  },
  tool_call(model, f) {
    const key = `tool:${f.message_id}:${f.tool_call_id}`;
    const item = model.byKey.get(key) || model.add({ key, type: 'tool', messageId: f.message_id });
    item.call = f;
    model.touch(item);
  },
  plan(model, f) {
    model.add({ key: `plan:${f.seq}`, type: 'plan', messageId: f.message_id, entries: f.entries || [] });
  },
  agent_commands(model, f) {
    model.add({ key: `commands:${f.seq}`, type: 'commands', messageId: f.message_id, commands: f.commands || [] });
  },
  permission(model, f) {
    model.add({ key: `permission:${f.seq}`, type: 'permission', messageId: f.message_id, frame: f });
  },
  status(model, f) {
    model.add({ key: `status:${f.seq}`, type: 'status', messageId: f.message_id, frame: f });
  },
  message_complete(model, f) {
    const item = model.byKey.get(`message:${f.message_id}`);
    if (item) {
      Object.assign(item, { status: f.status, frame: f });
      model.touch(item);
    }
  },
  pending_change(model, f) {
    model.add({ key: `change:${f.seq}`, type: 'change', frame: f });
  },
  // The files a running turn has changed so far: one item per turn, replaced as frames come.
  worktree_changed(model, f) {
    const key = `live:${f.task_id}`;
    const item = model.byKey.get(key) || model.add({ key, type: 'live', taskId: f.task_id });
    item.frame = f;
    model.touch(item);
  },
  review_comment(model, f) {
    model.add({ key: `comment:${f.seq}`, type: 'comment', frame: f });
  },
  changes_requested(model, f) {
    model.add({ key: `requested:${f.seq}`, type: 'requested', frame: f });
  },
  permission_request(model, f) {
    model.add({ key: `request:${f.request_id}`, type: 'request', messageId: f.message_id, frame: f, resolved: null });
  },
  question(model, f) {
    model.add({ key: `request:${f.request_id}`, type: 'question', messageId: f.message_id, frame: f, resolved: null });
  },
  permission_resolved(model, f) {
    resolve(model, f, 'request');
  },
  question_resolved(model, f) {
    resolve(model, f, 'question');
  },
};

function resolve(model, f, type) {
  const item = model.byKey.get(`request:${f.request_id}`)
    || model.add({ key: `request:${f.request_id}`, type, messageId: f.message_id, frame: null, resolved: null });
  item.resolved = f;
  model.touch(item);
}

function reply(node, frame) {
  node.dispatchEvent(new CustomEvent('switchyard:reply', { bubbles: true, detail: frame }));
}

// Waiting, or how it ended (and who decided).
function requestState(item) {
  return item.resolved ? item.resolved.state : 'pending';
}

function requestOutcome(item) {
  const r = item.resolved;
  return r ? el('div', { cls: 'meta request-outcome', text: r.reason || r.state }) : null;
}

function unknownFrame(model, f) {
  model.add({ key: `frame:${f.seq}`, type: 'unknown', frame: f });
}

// ------------------------------------------------------------------------------- rendering

function badge(state) {
  return el('span', { cls: `badge state-${String(state).replace(/[^a-z_]/g, '')}`, text: state });
}

export const RENDERERS = {
  turn: {
    render(item) {
      const node = el('div', { cls: 'turn' });
      RENDERERS.turn.update(node, item);
      return node;
    },
    update(node, item) {
      const head = el('div', { cls: 'turn-head' }, [
        el('span', { cls: 'who', text: 'You' }),
        badge(item.state),
        item.attempt > 1 ? el('span', { cls: 'meta', text: `attempt ${item.attempt}` }) : null,
        el('span', { cls: 'meta', text: [item.agent || 'native', item.model].filter(Boolean).join(' · ') }),
      ]);
      const input = el('div', { cls: 'prompt', text: item.input === null ? '…' : item.input });
      const failure = item.failureReason
        ? el('div', { cls: 'failure', text: `${item.failureReason}${item.error ? `: ${item.error}` : ''}` })
        : null;
      fill(node, head, input, failure);
    },
  },
  message: {
    render(item) {
      const node = el('div', { cls: 'message-head' });
      RENDERERS.message.update(node, item);
      return node;
    },
    update(node, item) {
      const f = item.frame || {};
      const usage = f.completion_tokens ? `${f.prompt_tokens ?? '?'} → ${f.completion_tokens} tokens` : '';
      fill(
        node,
        el('span', { cls: 'who', text: 'Agent' }),
        badge(item.status),
        el('span', { cls: 'meta', text: [f.stop_reason, usage].filter(Boolean).join(' · ') }),
        f.error ? el('div', { cls: 'failure', text: f.error }) : null,
      );
    },
  },
  text: {
    render(item) {
      const node = el('div', { cls: 'text' });
      node.append(document.createTextNode(item.text));
      node.rendered = item.text.length;
      return node;
    },
    update(node, item) {
      // Streaming: append only what is new.
      node.firstChild.appendData(item.text.slice(node.rendered));
      node.rendered = item.text.length;
    },
  },
  reasoning: {
    render(item) {
      const body = el('div', { cls: 'reasoning-text' });
      body.append(document.createTextNode(item.text));
      const node = el('details', { cls: 'reasoning' }, [el('summary', { text: 'Reasoning' }), body]);
      node.rendered = item.text.length;
      return node;
    },
    update(node, item) {
      node.lastChild.firstChild.appendData(item.text.slice(node.rendered));
      node.rendered = item.text.length;
    },
  },
  tool: {
    render(item) {
      const node = el('details', { cls: 'tool' });
      RENDERERS.tool.update(node, item);
      return node;
    },
    update(node, item) {
      const c = item.call;
      const open = node.open;
      const locations = (c.locations || []).map((l) => l.path).filter(Boolean).join(', ');
      fill(
        node,
        el('summary', {}, [
          el('span', { cls: 'tool-name', text: c.name || c.kind || 'tool' }),
          badge(c.status),
          el('span', { cls: 'meta', text: [c.kind, locations].filter(Boolean).join(' · ') }),
        ]),
        el('div', { cls: 'label', text: 'Input' }),
        el('pre', { cls: 'tool-io', text: pretty(c.input) }),
        el('div', { cls: 'label', text: 'Output' }),
        el('pre', { cls: 'tool-io', text: pretty(c.output) }),
      );
      node.open = open;
    },
  },
  plan: {
    render(item) {
      return el('div', { cls: 'plan' }, [
        el('div', { cls: 'label', text: 'Plan' }),
        el('ol', {}, item.entries.map((e) => el('li', { cls: `plan-${e.status}` }, [
          badge(e.status), el('span', { text: e.content }),
          e.priority ? el('span', { cls: 'meta', text: e.priority }) : null,
        ]))),
      ]);
    },
  },
  commands: {
    render(item) {
      return el('details', { cls: 'commands' }, [
        el('summary', { text: `Agent commands (${item.commands.length})` }),
        el('ul', {}, item.commands.map((c) => el('li', {}, [
          el('code', { text: `/${c.name}` }), el('span', { cls: 'meta', text: c.description || '' }),
        ]))),
      ]);
    },
  },
  permission: {
    render(item) {
      const f = item.frame;
      return el('div', { cls: `permission decision-${f.decision}` }, [
        el('span', { cls: 'label', text: 'Permission' }),
        badge(f.decision),
        el('span', { text: pretty(f.permission) }),
        f.reason ? el('span', { cls: 'meta', text: f.reason }) : null,
      ]);
    },
  },
  status: {
    render(item) {
      const f = item.frame;
      return el('div', { cls: 'status-line' }, [badge(f.state), el('span', { cls: 'meta', text: f.detail || '' })]);
    },
  },
  change: {
    render(item) {
      const f = item.frame;
      const files = f.files || [];
      const add = files.reduce((n, x) => n + (x.additions || 0), 0);
      const del = files.reduce((n, x) => n + (x.deletions || 0), 0);
      return el('div', { cls: 'change-line' }, [
        el('span', { cls: 'label', text: `Change #${f.change_id}` }),
        badge(f.status),
        el('span', { cls: 'meta', text: `${files.length} file${files.length === 1 ? '' : 's'} +${add} −${del}` }),
        f.error ? el('div', { cls: 'failure', text: f.error }) : null,
      ]);
    },
  },
  live: {
    render(item) {
      const node = el('div', { cls: 'live' });
      RENDERERS.live.update(node, item);
      return node;
    },
    update(node, item) {
      const f = item.frame;
      const files = (f.files || []).slice(0, 20);
      const rest = f.total_files - files.length;
      fill(
        node,
        el('div', { cls: 'live-head' }, [
          el('span', { cls: 'label', text: 'Files changed so far' }),
          el('span', { cls: 'meta', text: `${f.total_files} file${f.total_files === 1 ? '' : 's'} +${f.additions} −${f.deletions}` }),
          el('button', { cls: 'show-live', text: 'Show the diff so far', attrs: { type: 'button', 'data-task-id': f.task_id } }),
        ]),
        el('ul', { cls: 'live-files' }, files.map((x) => el('li', {}, [
          el('span', { cls: 'file-path', text: x.path }),
          el('span', { cls: 'adds', text: `+${x.additions}` }),
          el('span', { cls: 'dels', text: `−${x.deletions}` }),
        ]))),
        rest > 0 ? el('div', { cls: 'meta', text: `and ${rest} more` }) : null,
      );
    },
  },
  comment: {
    render(item) {
      const f = item.frame;
      const where = f.path ? `${f.path}:${f.line}${f.side === 'old' ? ' (old side)' : ''}` : 'the change';
      return el('div', { cls: 'change-line' }, [
        el('span', { cls: 'label', text: `Comment on change #${f.change_id}` }),
        el('span', { cls: 'meta', text: `${f.author} on ${where}` }),
        el('span', { cls: 'comment-body', text: f.body }),
      ]);
    },
  },
  requested: {
    render(item) {
      const f = item.frame;
      const count = f.comment_ids.length;
      return el('div', { cls: 'change-line' }, [
        el('span', { cls: 'label', text: `Changes requested on change #${f.change_id}` }),
        el('span', { cls: 'meta', text: `task #${f.task_id} with ${count} comment${count === 1 ? '' : 's'}` }),
      ]);
    },
  },
  request: {
    render(item) {
      const node = el('div', { cls: 'request' });
      RENDERERS.request.update(node, item);
      return node;
    },
    update(node, item) {
      const f = item.frame || {};
      const state = requestState(item);
      node.dataset.state = state;
      const choices = state === 'pending' && item.frame
        ? el('div', { cls: 'request-options' }, (f.options || []).map((option) => el('button', {
          text: option.name || option.option_id,
          cls: `reply reply-${String(option.kind).replace(/[^a-z_]/g, '')}`,
          attrs: { type: 'button', 'data-option-id': option.option_id },
          on: { click: () => reply(node, { type: 'permission_reply', request_id: f.request_id, option_id: option.option_id }) },
        })))
        : null;
      fill(
        node,
        el('div', { cls: 'request-head' }, [
          el('span', { cls: 'label', text: 'Permission asked' }),
          badge(state),
          el('span', { cls: 'request-title', text: f.title || f.permission || '' }),
          f.tool_kind ? el('span', { cls: 'meta', text: f.tool_kind }) : null,
        ]),
        f.command ? el('pre', { cls: 'tool-io request-command', text: f.command }) : null,
        (f.paths || []).length ? el('div', { cls: 'meta', text: f.paths.join(', ') }) : null,
        choices,
        requestOutcome(item),
      );
    },
  },
  question: {
    render(item) {
      const node = el('div', { cls: 'request question' });
      RENDERERS.question.update(node, item);
      return node;
    },
    update(node, item) {
      const f = item.frame || {};
      const state = requestState(item);
      node.dataset.state = state;
      const pending = state === 'pending' && item.frame;
      const fields = (f.questions || []).map((q, index) => el('fieldset', { cls: 'question-field' }, [
        el('legend', { text: q.header || `Question ${index + 1}` }),
        el('div', { text: q.question || '' }),
        ...(q.options || []).map((option) => el('label', { cls: 'question-option' }, [
          el('input', {
            attrs: { type: q.multiple ? 'checkbox' : 'radio', name: `q-${f.request_id}-${index}`, value: option.label, disabled: !pending },
          }),
          el('span', { text: option.label }),
          option.description ? el('span', { cls: 'meta', text: option.description }) : null,
        ])),
      ]));
      const send = () => {
        const answers = (f.questions || []).map((_, index) => [...node.querySelectorAll(`input[name="q-${f.request_id}-${index}"]:checked`)].map((input) => input.value));
        if (answers.some((chosen) => chosen.length === 0)) return;
        reply(node, { type: 'question_reply', request_id: f.request_id, answers });
      };
      fill(
        node,
        el('div', { cls: 'request-head' }, [el('span', { cls: 'label', text: 'The agent asks' }), badge(state)]),
        ...fields,
        pending ? el('div', { cls: 'request-options' }, [
          el('button', { text: 'Answer', cls: 'reply reply-answer', attrs: { type: 'button' }, on: { click: send } }),
          el('button', {
            text: 'Dismiss', cls: 'reply reply-dismiss', attrs: { type: 'button' },
            on: { click: () => reply(node, { type: 'question_reply', request_id: f.request_id, dismiss: true }) },
          }),
        ]) : null,
        item.resolved && item.resolved.answers ? el('div', { cls: 'meta', text: item.resolved.answers.map((a) => a.join(', ')).join(' · ') }) : null,
        requestOutcome(item),
      );
    },
  },
  unknown: {
    render(item) {
      return el('details', { cls: 'unknown' }, [
        el('summary', { text: item.frame.type }),
        el('pre', { cls: 'tool-io', text: pretty(item.frame) }),
      ]);
    },
  },
};

export function renderItem(item) {
  const node = RENDERERS[item.type].render(item);
  node.dataset.key = item.key;
  return node;
}

export function updateItem(node, item) {
  const renderer = RENDERERS[item.type];
  if (renderer.update) renderer.update(node, item);
  else node.replaceWith(renderer.render(item));
}

export function estimateItem(item) {
  if (item.type === 'text') return LINE_PX * (1 + Math.ceil(item.text.length / CHARS_PER_LINE)) + 8;
  if (item.type === 'turn') return 72;
  if (item.type === 'live') return 60 + 20 * Math.min(20, (item.frame.files || []).length);
  if (item.type === 'request' || item.type === 'question') return 96;
  return 36;
}
