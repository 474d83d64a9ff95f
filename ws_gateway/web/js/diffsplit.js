// Split a change's diff text (worktrees.diff: one `diff --git` section per file, in the order
// of the change's `files`, with `# switchyard:` notes for what was capped or left out) into
// one section per file, so each file can be parsed and rendered on its own, when it is seen.

const SECTION = /^(?:diff --git |# switchyard: )/;
const ESCAPES = { 7: 'a', 8: 'b', 9: 't', 10: 'n', 11: 'v', 12: 'f', 13: 'r' };

// git's C-style quoting of a path in headers (core.quotePath, the default).
export function gitQuote(path) {
  let quoted = false;
  let out = '';
  for (const byte of new TextEncoder().encode(path)) {
    if (byte === 0x22 || byte === 0x5c) {
      out += `\\${String.fromCharCode(byte)}`;
      quoted = true;
    } else if (byte < 0x20 || byte >= 0x7f) {
      out += `\\${ESCAPES[byte] || byte.toString(8).padStart(3, '0')}`;
      quoted = true;
    } else {
      out += String.fromCharCode(byte);
    }
  }
  return quoted ? `"${out}"` : out;
}

function header(file) {
  return `diff --git ${gitQuote(`a/${file.old_path ?? file.path}`)} ${gitQuote(`b/${file.path}`)}`;
}

function units(text) {
  const out = [];
  let start = 0;
  let current = null;
  const lines = text.split('\n');
  let offset = 0;
  for (const line of lines) {
    if (SECTION.test(line)) {
      if (current !== null) out.push(text.slice(start, offset));
      start = offset;
      current = line;
    }
    offset += line.length + 1;
  }
  if (current !== null) out.push(text.slice(start));
  return out;
}

// → {sections: [{file, text, notes}], notes: [change-wide notes]}
export function splitDiff(text, files) {
  const sections = files.map((file) => ({ file, text: '', notes: [] }));
  const notes = [];
  const headers = files.map(header);
  let next = 0;
  for (const unit of units(text)) {
    if (unit.startsWith('# switchyard: ')) {
      const note = unit.trim();
      const from = Math.max(0, next - 1);
      const owner = files.findIndex((f, i) => i >= from && note.startsWith(`# switchyard: ${f.path}: `));
      if (owner === -1) {
        notes.push(note.slice('# switchyard: '.length));
      } else {
        sections[owner].notes.push(note.slice(`# switchyard: ${files[owner].path}: `.length));
        next = Math.max(next, owner + 1);
      }
      continue;
    }
    const first = unit.slice(0, unit.indexOf('\n') === -1 ? unit.length : unit.indexOf('\n'));
    let owner = headers.indexOf(first, next);
    if (owner === -1) owner = next; // a path git spells differently (bytes that are not UTF-8)
    if (owner >= files.length) break;
    sections[owner].text = unit;
    next = owner + 1;
  }
  return { sections, notes };
}
