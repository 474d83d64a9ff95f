// The sidebar: projects and their sessions, kept live by the project feed
// (session_created / session_updated carry a session's whole summary; newest state wins).

import { el, perFrame, timeAgo } from './dom.js';

// What a session is doing, for its badge and the state filter.
export function sessionState(s) {
  if (s.running_task_id) return 'running';
  if (s.queued_tasks > 0) return 'queued';
  return s.last_task ? s.last_task.state : 'idle';
}

function matches(filter, s) {
  if (filter === 'all') return true;
  if (filter === 'change') return s.pending_change !== null;
  return sessionState(s) === filter;
}

export class SessionList {
  constructor(container, { onOpen, onMore }) {
    this.container = container;
    this.onOpen = onOpen;
    this.onMore = onMore;
    this.projects = new Map(); // id → {project, sessions: Map, nextCursor}
    this.filter = 'all';
    this.selected = null;
    this.render = perFrame(() => this.draw());
  }

  setProjects(projects) {
    const old = this.projects;
    this.projects = new Map();
    for (const project of projects) {
      const entry = old.get(project.id) || { sessions: new Map(), nextCursor: null };
      this.projects.set(project.id, { ...entry, project });
    }
    this.render();
  }

  addPage(projectId, sessions, nextCursor) {
    const entry = this.projects.get(projectId);
    if (!entry) return;
    for (const s of sessions) this.upsert(s);
    entry.nextCursor = nextCursor;
    this.render();
  }

  upsert(summary) {
    const entry = this.projects.get(summary.project_id);
    if (!entry) return;
    entry.sessions.set(summary.id, summary);
    this.render();
  }

  get(sessionId) {
    for (const entry of this.projects.values()) {
      const s = entry.sessions.get(sessionId);
      if (s) return s;
    }
    return null;
  }

  // Agents and models already used in visible sessions (picker suggestions).
  used(field) {
    const values = new Set();
    for (const entry of this.projects.values()) {
      for (const s of entry.sessions.values()) if (s[field]) values.add(s[field]);
    }
    return [...values];
  }

  setFilter(filter) {
    this.filter = filter;
    this.render();
  }

  select(sessionId) {
    this.selected = sessionId;
    this.render();
  }

  draw() {
    const sections = [];
    for (const [projectId, entry] of this.projects) {
      const sessions = [...entry.sessions.values()]
        .filter((s) => matches(this.filter, s))
        .sort((a, b) => (a.last_active_at < b.last_active_at ? 1 : a.last_active_at > b.last_active_at ? -1 : b.id - a.id));
      const items = sessions.map((s) => this.row(s));
      if (entry.nextCursor) {
        items.push(el('li', {}, [el('button', {
          cls: 'more', text: 'Load more', attrs: { type: 'button' },
          on: { click: () => this.onMore(projectId, entry.nextCursor) },
        })]));
      }
      sections.push(el('section', { cls: 'project', attrs: { 'data-project-id': projectId } }, [
        el('h3', { text: entry.project.name }),
        items.length ? el('ul', { cls: 'session-list' }, items) : el('p', { cls: 'meta', text: 'No sessions' }),
      ]));
    }
    this.container.replaceChildren(...sections);
  }

  row(s) {
    const state = sessionState(s);
    const change = s.pending_change;
    const button = el('button', {
      cls: 'session-row',
      attrs: {
        type: 'button', 'data-session-id': s.id, 'data-state': state,
        'aria-current': s.id === this.selected ? 'true' : null,
      },
      on: { click: () => this.onOpen(s.id) },
    }, [
      el('span', { cls: 'session-title', text: s.title || `Session ${s.id}` }),
      el('span', { cls: 'session-badges' }, [
        el('span', { cls: `badge state-${state}`, text: state }),
        change ? el('span', { cls: 'badge change', text: `change +${change.additions} −${change.deletions}` }) : null,
      ]),
      el('span', { cls: 'meta', text: [`#${s.id}`, s.agent || 'native', s.model, timeAgo(s.last_active_at)]
        .filter(Boolean).join(' · ') }),
    ]);
    return el('li', {}, [button]);
  }
}
