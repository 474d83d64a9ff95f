// Agent and model suggestions for the composer's pickers. The catalogue frames (list_agents,
// list_models) come with issue 13; until a gateway answers them, the suggestions are the agents
// and models the visible sessions already use. Either way the fields accept any name.

import { el } from './dom.js';

async function ask(connection, type, field) {
  try {
    const ack = await connection.request({ type });
    return (ack[field] || []).map((entry) => (typeof entry === 'string' ? entry : entry.name || entry.id));
  } catch {
    return []; // not offered by this gateway (invalid_frame) or not reachable: no suggestions
  }
}

export async function loadCatalogue(connection) {
  const [agents, models] = await Promise.all([ask(connection, 'list_agents', 'agents'), ask(connection, 'list_models', 'models')]);
  return { agents, models };
}

export function fillDatalist(list, values) {
  const unique = [...new Set(values.filter(Boolean))].sort();
  list.replaceChildren(...unique.map((value) => el('option', { attrs: { value } })));
}
