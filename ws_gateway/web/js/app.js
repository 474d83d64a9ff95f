// The review page: sign-in, the session list, a session's conversation and its change.
// It talks to Switchyard only through the WebSocket protocol (docs/PROTOCOL.md).

import { Connection } from './connection.js';
import { byId, el, perFrame } from './dom.js';
import { SessionList, sessionState } from './sessions.js';
import { SessionModel, estimateItem, renderItem, updateItem } from './conversation.js';
import { VirtualList } from './virtual-list.js';
import { ReviewView, KEYS as REVIEW_KEYS } from './review.js';
import { fillDatalist, loadCatalogue } from './catalogue.js';

const TOKEN_KEY = 'switchyard.token';
const MAX_PROJECT_SUBSCRIPTIONS = 100;

const state = {
  connection: null,
  projects: [],
  session: null, // {id, model, view: 'conversation' | 'change', changeId}
  catalogue: { agents: [], models: [] },
  missingInputs: new Set(),
};

const sessions = new SessionList(byId('projects'), {
  onOpen: (id) => { location.hash = `#/session/${id}`; },
  onMore: (projectId, cursor) => listSessions(projectId, cursor),
});
const conversation = new VirtualList(byId('conversation'), { render: renderItem, update: updateItem, estimate: estimateItem });
let review = null;

// -------------------------------------------------------------------------------- sign-in

function showSignIn(message = '') {
  byId('app').hidden = true;
  byId('sign-out').hidden = true;
  byId('sign-in').hidden = false;
  byId('sign-in-error').textContent = message;
  byId('who').textContent = '';
  byId('token').focus();
}

function connect(token) {
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  state.connection = new Connection(url, token, {
    onHello: (hello) => {
      performance.mark('switchyard:hello');
      byId('sign-in').hidden = true;
      byId('app').hidden = false;
      byId('sign-out').hidden = false;
      byId('who').textContent = `signed in as ${hello.token.name}`;
      resync().catch((error) => console.warn('resync failed', error));
    },
    onFrame: receive,
    onState: (s, detail) => {
      const node = byId('connection');
      node.dataset.state = s;
      node.textContent = detail ? `${s} (${detail})` : s;
    },
    onUnauthorized: (reason) => {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn(`Signed out: ${reason}`);
    },
  });
  review = new ReviewView(byId('review'), { connection: state.connection, onResolved: () => refreshQueue() });
  state.connection.start();
}

byId('sign-in-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const token = byId('token').value.trim();
  byId('token').value = '';
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  connect(token);
});

byId('sign-out').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.connection) state.connection.stop();
  showSignIn();
});

// ----------------------------------------------------------------------- after (re)connecting

async function resync() {
  const conn = state.connection;
  if (state.session) subscribeSession(state.session);
  const { projects } = await conn.request({ type: 'list_projects' });
  state.projects = projects;
  sessions.setProjects(projects);
  fillProjects();
  const ids = projects.map((p) => p.id);
  // Sent back to back: the gateway answers a connection's frames in order, so every list is
  // read after the feed is subscribed and nothing between the two is missed.
  const subscribed = [];
  for (let i = 0; i < ids.length; i += MAX_PROJECT_SUBSCRIPTIONS) {
    subscribed.push(conn.request({ type: 'subscribe_project', project_ids: ids.slice(i, i + MAX_PROJECT_SUBSCRIPTIONS) }));
  }
  await Promise.all([...subscribed, ...ids.map((id) => listSessions(id, null))]);
  if (state.session) {
    showSessionHead();
    refreshQueue();
  }
  state.catalogue = await loadCatalogue(conn);
  fillPickers();
}

async function listSessions(projectId, cursor) {
  const frame = { type: 'list_sessions', project_id: projectId };
  if (cursor) frame.cursor = cursor;
  const page = await state.connection.request(frame);
  sessions.addPage(projectId, page.sessions, page.next_cursor);
}

function receive(frame) {
  if (frame.type === 'session_created' || frame.type === 'session_updated') {
    sessions.upsert(frame.session);
    if (state.session && frame.session.id === state.session.id) {
      showSessionHead();
      refreshQueue();
    }
    return;
  }
  const current = state.session;
  if ('seq' in frame && current && frame.session_id === current.id) {
    if (!current.model.apply(frame)) subscribeSession(current); // out of order: resume from the last seq
    if (frame.type === 'task_state') refreshQueue();
    if (frame.type === 'pending_change') showSessionHead();
    if (frame.type === 'review_comment' && review) review.addComment(frame);
    if (frame.type === 'changes_requested' && review) review.markSent(frame.comment_ids, frame.task_id);
  }
}

// ----------------------------------------------------------------------------- a session

function subscribeSession(current) {
  const conn = state.connection;
  if (!conn || conn.state !== 'online') return;
  conn.request({ type: 'subscribe', session_ids: [current.id], since_seq: current.model.lastSeq })
    .then(() => fetchInputs(current))
    .catch((error) => showError(`Cannot follow session ${current.id}: ${error.message}`));
}

function openSession(id, view) {
  if (!state.session || state.session.id !== id) {
    if (state.session && state.connection && state.connection.state === 'online') {
      state.connection.request({ type: 'unsubscribe', session_ids: [state.session.id] }).catch(() => {});
    }
    const current = { id, view, model: null, changeId: null };
    current.model = new SessionModel(id, {
      onTaskSeen: (taskId) => { state.missingInputs.add(taskId); fetchInputsSoon(); },
      onChange: (index) => conversation.changed(index),
    });
    state.session = current;
    state.missingInputs.clear();
    conversation.setItems(current.model.items);
    subscribeSession(current);
    refreshQueue();
  }
  state.session.view = view;
  sessions.select(id);
  byId('empty').hidden = true;
  byId('session').hidden = false;
  showComposer(id);
  byId('composer').hidden = view !== 'conversation';
  showSessionHead();
  showView();
}

const fetchInputsSoon = perFrame(() => state.session && fetchInputs(state.session));

async function fetchInputs(current) {
  const ids = [...state.missingInputs].slice(0, 100);
  if (!ids.length || current !== state.session) return;
  try {
    const { tasks } = await state.connection.request({ type: 'list_tasks', session_id: current.id, task_ids: ids });
    for (const task of tasks) {
      current.model.setTaskInput(task);
      state.missingInputs.delete(task.id);
    }
  } catch {
    // retried after the next (re)subscribe
  }
}

function showSessionHead() {
  const current = state.session;
  if (!current) return;
  const s = sessions.get(current.id);
  byId('session-title').textContent = s ? s.title || `Session ${s.id}` : `Session ${current.id}`;
  byId('session-meta').textContent = s
    ? [`#${s.id}`, s.agent || 'native', s.model, sessionState(s)].filter(Boolean).join(' · ')
    : `#${current.id}`;
  const change = s ? s.pending_change : null;
  const tab = byId('tab-change');
  tab.disabled = false; // with nothing pending it lists the session's earlier changes
  tab.textContent = change ? `Change · ${change.files} file${change.files === 1 ? '' : 's'} +${change.additions} −${change.deletions}` : 'Change';
  if (change && current.view === 'change' && current.changeId !== change.change_id) showView();
}

function showView() {
  const current = state.session;
  const onChange = current.view !== 'conversation';
  byId('conversation').hidden = onChange;
  byId('review').hidden = !onChange;
  byId('tab-conversation').setAttribute('aria-selected', String(!onChange));
  byId('tab-change').setAttribute('aria-selected', String(onChange));
  byId('composer').hidden = onChange; // the diff gets the room
  if (current.view === 'live') {
    current.changeId = null;
    review.openLive(current.id).catch((error) => showError(`Cannot read the worktree: ${error.message}`));
  } else if (onChange) {
    const s = sessions.get(current.id);
    const changeId = s && s.pending_change ? s.pending_change.change_id : null;
    if (changeId !== null && changeId !== current.changeId && state.connection.state === 'online') {
      current.changeId = changeId;
      review.open(changeId).catch((error) => showError(`Cannot load change #${changeId}: ${error.message}`));
    } else if (changeId === null && current.changeId === null && state.connection.state === 'online') {
      review.openNone(current.id).catch((error) => showError(`Cannot list the changes: ${error.message}`));
    }
  } else {
    conversation.changed(0);
  }
}

// A person's answer to a waiting request (the conversation's request items dispatch it). The
// resolved frame that follows updates the item; a reply someone else gave first is an error.
byId('conversation').addEventListener('switchyard:reply', (event) => {
  if (!state.connection || state.connection.state !== 'online') {
    showError('Not connected: the reply was not sent');
    return;
  }
  state.connection.request(event.detail).catch(showRequestError);
});

byId('tab-conversation').addEventListener('click', () => { location.hash = `#/session/${state.session.id}`; });
// A live item's "Show the diff so far": the worktree as it is now.
byId('conversation').addEventListener('click', (event) => {
  if (event.target.closest('.show-live') && state.session) location.hash = `#/session/${state.session.id}/live`;
});
byId('tab-change').addEventListener('click', () => { location.hash = `#/session/${state.session.id}/change`; });

// ------------------------------------------------------------------------ composer and queue

function fillProjects() {
  const select = byId('composer-project');
  const chosen = select.value;
  select.replaceChildren(...state.projects.map((p) => el('option', { text: p.name, attrs: { value: p.id } })));
  if (chosen) select.value = chosen;
}

function fillPickers() {
  fillDatalist(byId('agents'), [...state.catalogue.agents, ...sessions.used('agent')]);
  fillDatalist(byId('models'), [...state.catalogue.models, ...sessions.used('model')]);
}

function showComposer(sessionId) {
  byId('composer').hidden = false;
  const s = sessionId === null ? null : sessions.get(sessionId);
  byId('composer-project').disabled = sessionId !== null;
  if (s) byId('composer-project').value = s.project_id;
  byId('composer-session').textContent = sessionId === null ? 'a new session' : `follow-up in session #${sessionId}`;
  byId('composer-submit').textContent = sessionId === null ? 'Start session' : 'Send';
  if (sessionId === null) byId('queue').replaceChildren();
  if (s) {
    byId('composer-agent').value = s.agent || '';
    byId('composer-model').value = s.model || '';
  }
  fillPickers();
}

byId('new-session').addEventListener('click', () => { location.hash = '#/new'; });

byId('composer').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = byId('composer-input').value;
  if (!input.trim()) return;
  const frame = { type: 'submit', input };
  const agent = byId('composer-agent').value.trim();
  const model = byId('composer-model').value.trim();
  if (agent && agent !== 'native') frame.agent = agent;
  if (model) frame.model = model;
  if (byId('composer-fresh').checked) frame.fresh_context = true;
  if (state.session && location.hash.startsWith('#/session/')) frame.session_id = state.session.id;
  else frame.project_id = Number(byId('composer-project').value);
  byId('composer-error').textContent = '';
  try {
    const ack = await state.connection.request(frame);
    byId('composer-input').value = '';
    byId('composer-fresh').checked = false;
    if (!frame.session_id) location.hash = `#/session/${ack.session_id}`;
    else refreshQueue();
  } catch (error) {
    byId('composer-error').textContent = `${error.code}: ${error.message}`;
  }
});

const refreshQueue = perFrame(async () => {
  const current = state.session;
  if (!current || !state.connection || state.connection.state !== 'online') return;
  try {
    const { tasks } = await state.connection.request({ type: 'list_tasks', session_id: current.id });
    if (current === state.session) showQueue(tasks);
  } catch {
    // shown again after the next update
  }
});

function showQueue(tasks) {
  byId('queue').replaceChildren(...tasks.map((task) => el('li', { attrs: { 'data-task-id': task.id } }, [
    el('span', { cls: `badge state-${task.state}`, text: task.state }),
    el('span', { cls: 'queue-input', text: task.input }),
    el('button', {
      text: 'Cancel', cls: 'cancel-task', attrs: { type: 'button', disabled: Boolean(task.cancel_requested_at) },
      on: { click: () => state.connection.request({ type: 'cancel', task_id: task.id }).then(refreshQueue, showRequestError) },
    }),
  ])));
}

function showRequestError(error) {
  showError(`${error.code}: ${error.message}`);
}

function showError(text) {
  byId('composer-error').textContent = text;
}

// --------------------------------------------------------------------------- routing, keys

function route() {
  const match = /^#\/session\/(\d+)(?:\/(change|live))?$/.exec(location.hash);
  if (match) {
    openSession(Number(match[1]), match[2] || 'conversation');
    return;
  }
  if (state.session && state.connection && state.connection.state === 'online') {
    state.connection.request({ type: 'unsubscribe', session_ids: [state.session.id] }).catch(() => {});
  }
  state.session = null;
  sessions.select(null);
  byId('session').hidden = true;
  byId('empty').hidden = location.hash === '#/new';
  if (location.hash === '#/new') {
    showComposer(null);
    byId('composer-input').focus();
  } else {
    byId('composer').hidden = true;
  }
}

window.addEventListener('hashchange', route);

const GLOBAL_KEYS = [
  ['?', 'this help'],
  ['c', 'conversation'],
  ['d', 'the change (diff)'],
];

document.addEventListener('keydown', (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement) return;
  if (document.querySelector('dialog[open]')) return;
  if (event.key === '?') {
    byId('help').showModal();
  } else if (event.key === 'c' && state.session) {
    location.hash = `#/session/${state.session.id}`;
  } else if (event.key === 'd' && state.session && !byId('tab-change').disabled) {
    location.hash = `#/session/${state.session.id}/change`;
  } else if (!(state.session && state.session.view !== 'conversation' && review && review.key(event))) {
    return;
  }
  event.preventDefault();
});

byId('help-keys').replaceChildren(...[...GLOBAL_KEYS, ...REVIEW_KEYS].flatMap(([key, what]) => [
  el('dt', {}, [el('kbd', { text: key })]), el('dd', { text: what }),
]));
byId('state-filter').addEventListener('change', (event) => sessions.setFilter(event.target.value));

// For the browser tests: what the page applied (seqs in order, duplicates dropped, gaps seen).
window.switchyardPage = Object.freeze({
  session: () => {
    const m = state.session && state.session.model;
    return m && { id: m.sessionId, lastSeq: m.lastSeq, seqs: [...m.seqs], duplicates: m.duplicates, gaps: m.gaps };
  },
  messageText: (messageId) => state.session && state.session.model.messageText(messageId),
  connectionState: () => state.connection && state.connection.state,
});

route();
const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) connect(saved);
else showSignIn();
